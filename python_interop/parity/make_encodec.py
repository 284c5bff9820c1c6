"""Build a tiny random HF `EncodecModel`, save it with `save_pretrained`, and dump reference codes.

Used by tests/parity_encodec.rs (and tests/arrange.rs for an EnCodec BOSSA's checkpoints can read):
    python make_encodec.py OUT_DIR --variant {music32k,codes2048,causal} [--dtype D] [--legacy-names]
Writes OUT_DIR/model/ (config.json + model.safetensors, as `save_pretrained` writes them) and
OUT_DIR/reference.safetensors with `audio` [1, 1, L] (float32) and `codes` [n_q, T] (int64):
`EncodecModel.encode(audio).audio_codes[0, 0]`.
"""
import argparse

import torch
from safetensors.torch import load_file, save_file
from transformers import EncodecConfig, EncodecModel

# Two shapes of the same architecture: the first mirrors facebook/encodec_32khz (non-causal,
# reflect padding, identity shortcuts); the second flips every option the encode path reads.
VARIANTS = {
    "music32k": dict(
        sampling_rate=8000, upsampling_ratios=[4, 2, 2], num_filters=4, hidden_size=8, codebook_size=32,
        # 4 quantizers: floor(1000 * 10.0 / (ceil(8000 / 16) * log2(32)))
        target_bandwidths=[10.0], use_causal_conv=False, pad_mode="reflect", use_conv_shortcut=False,
        num_lstm_layers=2, num_residual_layers=1, kernel_size=7, last_kernel_size=7,
    ),
    # music32k with 2048-code codebooks, as facebook/encodec_32khz has: what MusicGen's (and so
    # BOSSA's checkpoints') embeddings of 2048 + 1 rows read.
    "codes2048": dict(
        sampling_rate=8000, upsampling_ratios=[4, 2, 2], num_filters=4, hidden_size=8, codebook_size=2048,
        # 4 quantizers: floor(1000 * 22.0 / (ceil(8000 / 16) * log2(2048)))
        target_bandwidths=[22.0], use_causal_conv=False, pad_mode="reflect", use_conv_shortcut=False,
        num_lstm_layers=2, num_residual_layers=1, kernel_size=7, last_kernel_size=7,
    ),
    "causal": dict(
        sampling_rate=6000, upsampling_ratios=[3, 2], num_filters=6, hidden_size=12, codebook_size=16,
        # bandwidths[0] -> 3 quantizers of the 4 the last bandwidth allows
        target_bandwidths=[12.0, 16.0], use_causal_conv=True, pad_mode="constant", use_conv_shortcut=True,
        num_lstm_layers=1, num_residual_layers=2, dilation_growth_rate=3, kernel_size=5, last_kernel_size=3,
        compress=3, residual_kernel_size=5, normalize=True,
    ),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument(
        "--legacy-names", action="store_true",
        help="rename weight-norm tensors to weight_g/weight_v, as transformers 4.x checkpoints (the hub's) name them",
    )
    parser.add_argument("--samples", type=int, default=1234)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    config = EncodecConfig(**VARIANTS[args.variant])
    model = EncodecModel(config).eval()
    # `_init_weights` zeroes the codebooks. Fill each with frames of the residual it will see (as
    # EnCodec's k-means init does), so that the codes vary over time and across codebooks.
    with torch.no_grad():
        residual = model.encoder(torch.randn(1, config.audio_channels, 4096))[0].T
        for layer in model.quantizer.layers:
            pick = torch.randint(0, residual.shape[0], (config.codebook_size,))
            layer.codebook.embed.copy_(residual[pick] + 0.01 * torch.randn_like(residual[pick]))
            residual = residual - layer.decode(layer.encode(residual.T[None]))[0].T
    dtype = getattr(torch, args.dtype)
    model = model.to(dtype)
    model.save_pretrained(f"{args.out_dir}/model")
    if args.legacy_names:
        path = f"{args.out_dir}/model/model.safetensors"
        renamed = {
            k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v"): v
            for k, v in load_file(path).items()
        }
        save_file(renamed, path, metadata={"format": "pt"})
    # Reference: the saved files loaded back as fp32 (weights rounded to `dtype` as stored).
    model = EncodecModel.from_pretrained(f"{args.out_dir}/model", dtype=torch.float32).eval()

    audio = 0.5 * torch.randn(1, 1, args.samples)
    with torch.no_grad():
        codes = model.encode(audio).audio_codes  # [chunks=1, batch=1, n_q, T]
    save_file({"audio": audio.contiguous(), "codes": codes[0, 0].contiguous()}, f"{args.out_dir}/reference.safetensors")


if __name__ == "__main__":
    main()
