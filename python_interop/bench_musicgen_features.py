"""Time transformers' MusicGen decoder the way BOSSA's stage 1 runs it, for benches/musicgen_features.rs.

    python bench_musicgen_features.py --layers L --hidden D --heads H --ffn F --vocab V \
        --run-layers N --batch B --steps S --threads T --iters K
Builds the decoder with `num_hidden_layers = N` (BOSSA `init_audio_encoder`; random weights: only
the time matters), feeds it delayed codes `[B, 4, S]` with the unconditional, fully masked encoder
state BOSSA passes, under `torch.no_grad()` on the CPU with T threads, and prints one JSON line
{"best_s": ..., "runs": K} (the fastest run: the least disturbed on a shared machine).
"""
import argparse
import json
import time

import torch
from transformers import MusicgenDecoderConfig
from transformers.models.musicgen.modeling_musicgen import MusicgenDecoder


def main():
    p = argparse.ArgumentParser()
    for name in ["layers", "hidden", "heads", "ffn", "vocab", "run-layers", "batch", "steps", "threads", "iters"]:
        p.add_argument(f"--{name}", type=int, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = MusicgenDecoderConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, num_attention_heads=args.heads, ffn_dim=args.ffn,
        num_hidden_layers=args.run_layers, num_codebooks=4, pad_token_id=args.vocab, bos_token_id=args.vocab,
    )
    decoder = MusicgenDecoder(config).eval()
    input_ids = torch.randint(0, args.vocab + 1, (args.batch * 4, args.steps))
    encoder_hidden_states = torch.zeros(args.batch, 1, args.hidden)
    encoder_attention_mask = torch.zeros(args.batch, 1, dtype=torch.long)

    def run():
        with torch.no_grad():
            return decoder(
                input_ids=input_ids, encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_attention_mask, use_cache=False,
            ).last_hidden_state

    run()  # warm-up
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    print(json.dumps({"best_s": min(times), "runs": args.iters}))


if __name__ == "__main__":
    main()
