"""A tiny MusicGen decoder for `make demo`, pretrained as a language model over the EnCodec codes
of the demo corpus's training split, saved with `save_pretrained` (HF `MusicgenForCausalLM`
format, read by the Rust loader like the real checkpoint) and then frozen by stage 1 as the paper
freezes MusicGen-Large.

Why pretrain (SPEC 9, measured on the demo corpus): with a random frozen decoder the stage-1
contrastive and matching losses stay at chance (ln 16 and the 1:2 prior) even on the training
pairs, so retrieval is at chance; 600 LM steps give the decoder features that vary with the
music's context, as a pretrained MusicGen's do, and stage 1 then learns (figures in
experiments/demo.yaml). Only training-split songs are used (the song
lists of `stylebridge prepare`'s manifest), so test audio is never seen.

    python demo_musicgen.py OUT_DIR --encodec ENCODEC_DIR --corpus CORPUS_DIR \
        --manifest SHARDS/manifest.json [--steps 600] [--seed 0] [--threads 2]
"""
import argparse
import json
import math
import os
import shutil
import tempfile
import time

import torch
from transformers import EncodecModel, MusicgenDecoderConfig, MusicgenForCausalLM

from delay_pattern import delay_pattern
from demo_encodec import read_wav

# The shape of stylebridge's default `tiny` MusicGen (TinyMusicgen::default, experiments/demo.yaml).
SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128)


def encode_songs(encodec_dir, corpus, songs):
    model = EncodecModel.from_pretrained(encodec_dir).eval()
    bandwidth = model.config.target_bandwidths[0]
    codes = []
    with torch.no_grad():
        for song in songs:
            path = os.path.join(corpus, f"{song}.wav")
            if not os.path.isfile(path):
                raise SystemExit(f"{path}: missing (the manifest lists song {song})")
            audio = torch.from_numpy(read_wav(path, model.config.sampling_rate))
            codes.append(model.encode(audio[None, None], bandwidth=bandwidth).audio_codes[0, 0])
    return codes, model.config


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--encodec", required=True, help="the HF EnCodec folder prepare used")
    parser.add_argument("--corpus", required=True, help="folder of NAME.wav files")
    parser.add_argument("--manifest", required=True, help="stylebridge prepare's manifest.json (train songs)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=250, help="frames per training window (5 s)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    try:
        with open(args.manifest) as f:
            songs = json.load(f)["songs"]["train"]
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"{args.manifest}: cannot read the training songs ({e})")
    if not songs:
        raise SystemExit(f"{args.manifest}: no training songs")
    codes, codec = encode_songs(args.encodec, args.corpus, songs)
    k, codebook = codes[0].shape[0], codec.codebook_size
    config = MusicgenDecoderConfig(
        vocab_size=codebook, num_codebooks=k, pad_token_id=codebook, bos_token_id=codebook,
        max_position_embeddings=2048, **SHAPE,
    )
    model = MusicgenForCausalLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    # Linear warm-up, then constant: measured on the demo corpus (600 steps), the loss sits on a
    # unigram plateau (~7.0) until about step 300 and then falls to ~5.4 at 3e-3; a cosine decay
    # (loss 6.8) or 6e-3 (6.7) leave the decoder on the plateau.
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    generator = torch.Generator().manual_seed(args.seed)
    pad, start = codebook, time.time()
    for step in range(1, args.steps + 1):
        windows = []
        for _ in range(args.batch):
            song = codes[torch.randint(len(codes), (1,), generator=generator).item()]
            at = torch.randint(max(1, song.shape[1] - args.frames), (1,), generator=generator).item()
            windows.append(delay_pattern(song[None, :, at : at + args.frames], pad)[0])
        ids = torch.nn.utils.rnn.pad_sequence([w.T for w in windows], batch_first=True, padding_value=pad).transpose(1, 2)
        b, _, steps = ids.shape
        logits = model(input_ids=ids.reshape(b * k, steps)).logits.view(b, k, steps, -1)
        targets = ids[:, :, 1:].masked_fill(ids[:, :, 1:] == pad, -100)
        loss = torch.nn.functional.cross_entropy(logits[:, :, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == args.steps:
            print(f"step {step}/{args.steps} loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)

    # Written whole or not at all: a killed run leaves no half-saved folder under OUT_DIR's name.
    parent = os.path.dirname(os.path.abspath(args.out_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".musicgen-", dir=parent)
    model.save_pretrained(staging)
    os.chmod(staging, 0o755)  # mkdtemp makes it private; the checkpoint is an ordinary folder
    shutil.rmtree(args.out_dir, ignore_errors=True)
    os.replace(staging, args.out_dir)
    frames = sum(c.shape[1] for c in codes)
    print(f"tiny MusicGen LM: {args.steps} steps on {frames} frames of {len(songs)} training songs, "
          f"final loss {loss.item():.3f} (uniform {math.log(codebook):.3f}) -> {args.out_dir}")


if __name__ == "__main__":
    main()
