"""One stage-2 training step of BOSSA's reference `Blip2Musecoco` on CPU (forward, backward, clip,
AdamW; fp32): the PyTorch side of a Rust stage-2 step benchmark.

BOSSA's code is imported at run time from a checkout given by --bossa-repo, in the scratch venv
that python_interop/bossa_reference.py describes (nothing of BOSSA is copied here):

    /tmp/bossa_venv/bin/python python_interop/bench_bossa_stage2.py --bossa-repo /tmp/bossa_ref \\
        --preset demo --threads 2

Presets (`--set SECTION.KEY=N` overrides any of their numbers, e.g. `--set musecoco.n_layer=2`):
- demo: MusicGen decoder 64 wide x 2 layers x 4 heads, ffn 128; Q-Former 64 x 4 layers x 4 heads,
  intermediate 128, 8 queries; MuseCoco 128 x 4 layers x 4 heads, ffn 512; batch 16 of 600 tokens
  (padding included) and 508 audio frames.
- medium: MusicGen 256 wide, 8 layers of which BOSSA keeps 8 // 2 + 1 = 5, 8 heads, ffn 1024;
  Q-Former 256 x 6 layers x 8 heads, intermediate 1024, 32 queries; MuseCoco 512 x 6 layers x 8
  heads, ffn 2048; batch 8 of 1000 tokens, 508 frames.
`musicgen.num_hidden_layers` is the decoder config's depth before BOSSA's `n // 2 + 1` cut.

The batch is made by BOSSA's `collate_fn_musecoco2` (augment=False, deperf=True, as many tokens as
--tokens) from seeded random 4-bar note lists whose REMI fills about 90% of the row, so the rest is
padding; the audio is --frames random codes per row. train_stage2.py's step: `model.train()`
(dropout on; MusicGen stays in eval mode, BOSSA disables its `train`), AdamW over all parameters
(frozen ones get no gradient) with lr 1e-4, betas (0.9, 0.999), weight decay 0.05, and
`clip_grad_norm_(model.parameters(), 1)`.
"""
import json
import statistics
import time

import numpy as np

import bossa_reference as bossa

PRESETS = {
    "demo": dict(
        musicgen=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128),
        qformer=dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128),
        musecoco=dict(n_embd=128, n_head=4, n_layer=4, ffn_dim=512),
        queries=8, batch=16, tokens=600, frames=508,
    ),
    "medium": dict(
        musicgen=dict(hidden_size=256, num_hidden_layers=8, num_attention_heads=8, ffn_dim=1024),
        qformer=dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=8, intermediate_size=1024),
        musecoco=dict(n_embd=512, n_head=8, n_layer=6, ffn_dim=2048),
        queries=32, batch=8, tokens=1000, frames=508,
    ),
}
# Tokens before the lead sheet and between the parts: </s>, 60 attributes, <sep>; <sep>; </s>.
FIXED_TOKENS = 64


def random_note(rng, bar):
    """A 4/4 octMIDI row: bar, position, program 0, pitch, duration, velocity, 4/4, tempo 80.6 bpm."""
    return [bar, int(rng.integers(48)), 0, int(rng.integers(36, 96)), int(rng.integers(1, 30)), int(rng.integers(10, 31)), 9, 28]


def notes_within(dataset, rng, budget, redact):
    """Random notes over 4 bars, added one at a time while their REMI fits `budget` tokens."""
    notes = []
    while True:
        candidate = sorted(notes + [random_note(rng, len(notes) % 4)])  # octMIDI rows are sorted
        if len(dataset.note2token(np.array(candidate), redact_performance=redact)) > budget:
            return np.array(notes, dtype=np.int64)
        notes = candidate


def sample_batch(dataset, rng, batch, tokens, frames):
    """`batch` rows of 4 bars: a lead sheet of at most a sixth of the row, and a piano part that
    brings the row's REMI (prefix and separators included) to about 90% of `tokens`."""
    rows = []
    for _ in range(batch):
        lead = notes_within(dataset, rng, tokens // 6, redact=True)
        budget = int(0.9 * tokens) - FIXED_TOKENS - len(dataset.note2token(lead, redact_performance=True))
        audio = rng.integers(2048, size=(4, frames), dtype=np.int64)
        rows.append((audio, notes_within(dataset, rng, budget, redact=False), lead))
    return dataset.collate_fn_musecoco2(rows, "cpu", max_time=frames, max_token=tokens, augment=False, deperf=True)


def main():
    parser = bossa.stage2_arguments(__doc__.split("\n")[0], PRESETS)
    parser.add_argument("--steps", type=int, default=5, help="timed steps, after one untimed warm-up step")
    args = parser.parse_args()
    s = bossa.preset_with_overrides(parser, args, PRESETS)

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    rss_after_torch = bossa.peak_rss_mib()
    torch.manual_seed(args.seed)
    model, dataset = bossa.stage2_model(args.bossa_repo, s["musicgen"], s["qformer"], s["musecoco"], s["queries"])
    model.train()
    rss_after_build = bossa.peak_rss_mib()

    groups, frozen = bossa.parameter_groups(model)
    trainable = {g: bossa.count(p for _, p in params) for g, params in groups.items()}
    frozen_counts = {g: bossa.count(p for _, p in params) for g, params in frozen.items()}
    decoder = model.blip2qformer.musicgen_decoder.decoder
    kept = len(decoder.layers)
    cross = bossa.count(p for n, p in decoder.named_parameters() if "encoder_attn" in n)
    sinusoid = bossa.count(decoder.embed_positions.parameters())
    print(f"BOSSA Blip2Musecoco stage-2 step on CPU, {torch.get_num_threads()} torch threads, fp32, torch {torch.__version__}")
    print(f"preset {args.preset}: {json.dumps(s)}; MusicGen layers kept {kept}")
    print(
        f"parameters: {sum(trainable.values()):,} trainable (Q-Former {trainable['qformer']:,}, LoRA {trainable['lora']:,}, "
        f"musecoco_proj {trainable['proj']:,}); {sum(frozen_counts.values()):,} frozen (MuseCoco {frozen_counts['musecoco']:,}; "
        f"MusicGen decoder and enc_to_dec_proj {frozen_counts['musicgen']:,}, of which {cross:,} masked cross-attention and "
        f"{sinusoid:,} sinusoid table)"
    )

    codes, tokens, codec_pad_mask, leadsheet_mask, pad_mask = sample_batch(
        dataset, np.random.default_rng(args.seed), s["batch"], s["tokens"], s["frames"]
    )
    targets = int((~(leadsheet_mask | pad_mask)).sum())
    print(f"batch: {tuple(tokens.shape)} tokens, {int((~pad_mask).sum())} real, {targets} targets; codes {tuple(codes.shape)}")

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=[0.9, 0.999], weight_decay=0.05)
    times = []
    for step in range(args.steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad()
        loss = model(codes, tokens, codec_pad_mask, leadsheet_mask, pad_mask)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step > 0:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"loss {loss.item():.3f} after {args.steps + 1} steps")
    print(f"  step: {median:.3f} s median of {args.steps} (min {min(times):.3f}, max {max(times):.3f}; {s['batch'] / median:.2f} samples/s)")
    print(
        f"  peak resident memory: {bossa.peak_rss_mib():.0f} MiB (after importing torch {rss_after_torch:.0f}, "
        f"after building the model {rss_after_build:.0f})"
    )


if __name__ == "__main__":
    main()
