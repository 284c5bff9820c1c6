"""A tiny EnCodec at the real facebook/encodec_32khz shape (32 kHz, hop 640 -> 50 codes/s, 4
codebooks of 2048) for `make demo`, saved with `save_pretrained` (HF format, read by the Rust
loader like the real checkpoint).

Why the codebooks are initialised from data: a freshly built HF EnCodec has all-zero codebooks,
so every frame gets code 0 and the codes carry nothing about the audio (measured on the embedded
corpus: 1 distinct code per codebook). EnCodec's own training starts by initialising each residual
codebook from encoder outputs (k-means); doing that step alone, seeded, on the demo corpus is the
cheapest honest stand-in for a pretrained codec (SPEC 9): the encoder stays random, the codes
become informative (about 1700-2000 distinct codes per codebook on the corpus).

Codebooks are drawn from the frames of at most `--max-files` files spread over the sorted list
(64 files give ~60k frames for 2048 codes; all 672 files of the demo corpus took 89 s).

    python demo_encodec.py OUT_DIR --corpus CORPUS_DIR [--seed 0] [--max-files 64]
"""
import argparse
import glob
import os
import wave

import numpy as np
import torch
from transformers import EncodecConfig, EncodecModel

SHAPE = dict(
    sampling_rate=32000, upsampling_ratios=[8, 5, 4, 4], codebook_size=2048, target_bandwidths=[2.2],
    num_filters=4, hidden_size=16, num_lstm_layers=2, num_residual_layers=1, kernel_size=7, last_kernel_size=7,
    use_causal_conv=False, pad_mode="reflect", use_conv_shortcut=False, normalize=False, audio_channels=1,
)


def read_wav(path, sample_rate):
    with wave.open(path) as w:
        if w.getsampwidth() != 2:
            raise SystemExit(f"{path}: only 16-bit PCM WAV is read here")
        if w.getframerate() != sample_rate:
            raise SystemExit(f"{path}: {w.getframerate()} Hz, expected {sample_rate} (corpus synth --sample-rate)")
        x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768.0
        return x.reshape(-1, w.getnchannels()).mean(axis=1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--corpus", required=True, help="folder of NAME.wav files (stylebridge corpus synth)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-files", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    model = EncodecModel(EncodecConfig(**SHAPE)).eval()
    files = sorted(glob.glob(os.path.join(args.corpus, "*.wav")))
    if not files:
        raise SystemExit(f"no .wav files in {args.corpus}")
    if args.max_files < 1:
        raise SystemExit(f"--max-files must be at least 1, got {args.max_files}")
    stride = max(1, -(-len(files) // args.max_files))
    files = files[::stride]
    with torch.no_grad():
        frames = torch.cat([model.encoder(torch.from_numpy(read_wav(f, SHAPE["sampling_rate"]))[None, None])[0].T for f in files])
        generator = torch.Generator().manual_seed(args.seed)
        residual = frames
        n_q = model.quantizer.get_num_quantizers_for_bandwidth(SHAPE["target_bandwidths"][0])
        for layer in model.quantizer.layers[:n_q]:
            picks = torch.randperm(len(residual), generator=generator)[: SHAPE["codebook_size"]]
            codebook = residual[picks].clone()
            if len(codebook) < SHAPE["codebook_size"]:
                raise SystemExit(f"the corpus gives {len(residual)} frames, fewer than the {SHAPE['codebook_size']} codes")
            layer.codebook.embed.copy_(codebook)
            layer.codebook.embed_avg.copy_(codebook)
            layer.codebook.inited.fill_(1.0)
            residual = residual - codebook[torch.cdist(residual, codebook).argmin(dim=1)]
    model.save_pretrained(args.out_dir)
    print(f"tiny EnCodec with codebooks from {len(frames)} frames of {len(files)} files -> {args.out_dir}")


if __name__ == "__main__":
    main()
