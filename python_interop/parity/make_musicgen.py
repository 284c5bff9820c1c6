"""Build a tiny random HF `MusicgenForConditionalGeneration`, save it with `save_pretrained`, and
dump the decoder hidden states that stage 1 uses, computed the way BOSSA computes them.

Used by tests/parity_musicgen.rs:
    python make_musicgen.py OUT_DIR --variant {small,odd} [--dtype D] [--max-shard-size S]
Writes OUT_DIR/model/ (config.json + safetensors) and OUT_DIR/reference.safetensors with
- `codes` [2, K, T] (int64) and `input_ids` [2, K, T + K]: the codes in audiocraft's delay pattern;
- `hidden_states.{i}` [2, T + K, D]: the full decoder's `output_hidden_states` (i = 0 embeddings);
- `features.{n}` for n = 1..L: `last_hidden_state` of the decoder rebuilt with `num_hidden_layers = n`
  (BOSSA `init_audio_encoder`), i.e. `layer_norm(output of layer n)`;
- `features_without_cross_attention.{n}`: the same without any encoder input; equal to `features.{n}`
  exactly (the unconditional encoder state is zero and fully masked, and the projections have no bias).
"""
import argparse
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import (
    EncodecConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    T5Config,
)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from delay_pattern import delay_pattern  # noqa: E402  (python_interop/, one level up)

VARIANTS = {
    "small": dict(vocab_size=32, hidden_size=16, num_attention_heads=4, num_hidden_layers=3, ffn_dim=32, num_codebooks=4),
    # Odd width (the sinusoid gets a zero column), 3 codebooks, 5 layers.
    "odd": dict(vocab_size=16, hidden_size=21, num_attention_heads=3, num_hidden_layers=5, ffn_dim=40, num_codebooks=3),
}


def bossa_decoder_states(model, input_ids, n_layers, cross_attention: bool):
    """Run `model.decoder.model.decoder` truncated to `n_layers` as BOSSA's stage 1 does."""
    config = model.config.decoder
    truncated = type(model.decoder.model.decoder)(
        MusicgenDecoderConfig(**{**config.to_dict(), "num_hidden_layers": n_layers})
    ).eval()
    missing, unexpected = truncated.load_state_dict(model.decoder.model.decoder.state_dict(), strict=False)
    assert not missing and all(k.startswith("layers.") for k in unexpected), (missing, unexpected)
    bs = input_ids.shape[0]
    kwargs = {}
    if cross_attention:
        uncond = model.get_unconditional_inputs(num_samples=bs)
        mask = uncond.attention_mask
        kwargs = dict(
            encoder_attention_mask=mask,
            encoder_hidden_states=model.enc_to_dec_proj(uncond.encoder_outputs[0]) * mask[..., None],
        )
    with torch.no_grad():
        return truncated(input_ids=input_ids.reshape(-1, input_ids.shape[-1]), **kwargs).last_hidden_state


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--max-shard-size", default=None, help="e.g. 40KB to write a sharded checkpoint")
    parser.add_argument("--frames", type=int, default=11)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    shape = VARIANTS[args.variant]
    # As in MusicGen, the pad/BOS code is the extra last row of each embedding table.
    special = shape["vocab_size"]
    decoder = MusicgenDecoderConfig(**shape, pad_token_id=special, bos_token_id=special, max_position_embeddings=64)
    text = T5Config(vocab_size=20, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2)
    audio = EncodecConfig(upsampling_ratios=[2, 2], num_filters=2, hidden_size=4, codebook_size=decoder.vocab_size)
    config = MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder)
    model = MusicgenForConditionalGeneration(config).eval()
    dtype = getattr(torch, args.dtype)
    model = model.to(dtype)
    save_kwargs = {"max_shard_size": args.max_shard_size} if args.max_shard_size else {}
    model.save_pretrained(f"{args.out_dir}/model", **save_kwargs)
    # Reference: the saved files loaded back as fp32 (a cast of the in-memory model would also
    # round the non-persistent position table).
    model = MusicgenForConditionalGeneration.from_pretrained(f"{args.out_dir}/model", dtype=torch.float32).eval()

    k, pad = decoder.num_codebooks, decoder.pad_token_id
    codes = torch.randint(0, decoder.vocab_size, (2, k, args.frames))
    input_ids = delay_pattern(codes, pad)
    out = {"codes": codes, "input_ids": input_ids}
    with torch.no_grad():
        uncond = model.get_unconditional_inputs(num_samples=2)
        full = model.decoder.model.decoder(
            input_ids=input_ids.reshape(-1, input_ids.shape[-1]),
            encoder_hidden_states=model.enc_to_dec_proj(uncond.encoder_outputs[0]) * uncond.attention_mask[..., None],
            encoder_attention_mask=uncond.attention_mask,
            output_hidden_states=True,
        )
    for i, h in enumerate(full.hidden_states):
        out[f"hidden_states.{i}"] = h
    for n in range(1, decoder.num_hidden_layers + 1):
        out[f"features.{n}"] = bossa_decoder_states(model, input_ids, n, cross_attention=True)
        out[f"features_without_cross_attention.{n}"] = bossa_decoder_states(model, input_ids, n, cross_attention=False)
    save_file({name: t.contiguous() for name, t in out.items()}, f"{args.out_dir}/reference.safetensors")


if __name__ == "__main__":
    main()
