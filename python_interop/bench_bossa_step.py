"""One stage-1 training step of BOSSA's reference `Blip2Qformer` on CPU, at the demo's tiny config:
the PyTorch side of `benches/stage1_step.rs` (its CMG line is the Rust side of the ratio).

BOSSA's code is imported at run time from a checkout given by --bossa-repo (nothing of it is copied
here). Export one outside this repository, e.g.

    mkdir -p /tmp/bossa_ref && git -C <bare mirror of zhaojw1998/bossa-piano-cover-arrangement> \
        archive HEAD -- . ':(exclude)musecoco/hf_musecoco/midi_utils/midiprocessor/legacy_tools/tools/midi_model' \
        | tar -x -C /tmp/bossa_ref

(the excluded folder holds binary models that stage 1 does not use).

Environment. BOSSA pins transformers==4.48.0; its model_Qformer.py imports helpers that
transformers 5 no longer has (`transformers.modeling_utils.apply_chunking_to_forward`, ...), so
this runs in a scratch venv, not the project's, with the project's torch:

    python3.11 -m venv /tmp/bossa_venv
    /tmp/bossa_venv/bin/pip install transformers==4.48.0   # brings tokenizers 0.21, huggingface_hub 0.x
    echo ~/.cache/stylebridge/venv/lib/python3.11/site-packages \
        > /tmp/bossa_venv/lib/python3.11/site-packages/stylebridge_venv.pth   # torch 2.13.0 (after, so
                                                                              # transformers 4.48 wins)
    /tmp/bossa_venv/bin/python python_interop/bench_bossa_step.py --bossa-repo /tmp/bossa_ref --threads 2

Nothing is downloaded: every hub name BOSSA loads is replaced by a config built here (see
`patch_hub_loads`). What differs from BOSSA's own construction, and why:
- MusicGen: `init_audio_encoder` loads "facebook/musicgen-large"; it gets a random MusicGen whose
  decoder is the demo's (width 64, 2 layers, 4 heads, ffn 128, 4 codebooks x 2048) with a tiny T5
  and EnCodec beside it (BOSSA only uses `get_unconditional_inputs` and `enc_to_dec_proj` of them).
  BOSSA's own rule keeps 2 // 2 + 1 = 2 decoder layers, as the Rust side does.
- Q-Former: `init_Qformer` reads "bert-base-uncased"; it gets a BertConfig of the demo's shape
  (hidden 64, 4 layers, 4 heads, intermediate 128; other fields are bert-base's, which are
  BertConfig's defaults). `load_pretrained=False` (no MusicBERT). BOSSA then fixes 8194 positions;
  the demo has 256, so the position table is rebuilt with 256 rows (same init) after construction.
- Stage-2-only modules that model_blip2.py imports (utils.inference: torchaudio, scipy;
  musecoco's modeling: pytorch-fast-transformers) are replaced by empty stand-ins.
- torch.distributed must be initialised (BOSSA calls `dist.get_rank()`): a 1-process gloo group.
"""
import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
import types


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def stub_stage2_imports():
    """model_blip2.py imports `nucleus_filter` and `MuseCocoLMHeadModel` for stage 2 only; their
    modules pull in torchaudio, scipy and a compiled CUDA extension, so give them empty stand-ins."""

    def unavailable(name):
        def fail(*args, **kwargs):
            raise RuntimeError(f"{name} is stage-2 only and was not imported by this benchmark")

        return fail

    inference = types.ModuleType("utils.inference")
    inference.nucleus_filter = unavailable("utils.inference.nucleus_filter")
    sys.modules["utils.inference"] = inference
    for name in ["musecoco", "musecoco.hf_musecoco"]:
        sys.modules[name] = types.ModuleType(name)
    modeling = types.ModuleType("musecoco.hf_musecoco.modeling_musecoco")
    modeling.MuseCocoLMHeadModel = unavailable("MuseCocoLMHeadModel")
    sys.modules["musecoco.hf_musecoco.modeling_musecoco"] = modeling


def tiny_musicgen_config():
    """The demo's frozen MusicGen (experiments/demo.yaml `model.musicgen.tiny`) plus the smallest
    T5 and EnCodec the composite config needs. T5's width (32) differs from the decoder's (64) so
    that `enc_to_dec_proj` exists, as in musicgen-large (768 -> 2048)."""
    from transformers import EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, T5Config

    decoder = MusicgenDecoderConfig(
        vocab_size=2048,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        ffn_dim=128,
        num_codebooks=4,
        pad_token_id=2048,
        bos_token_id=2048,
    )
    text = T5Config(vocab_size=32, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2)
    audio = EncodecConfig(
        num_filters=4, hidden_size=16, codebook_size=2048, codebook_dim=16, upsampling_ratios=[4, 4], num_lstm_layers=1
    )
    return MusicgenConfig.from_sub_models_config(text, audio, decoder)


def tiny_bert_config():
    from transformers import BertConfig

    return BertConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128)


def patch_hub_loads(model_blip2):
    """Replace the three hub loads of `Blip2Qformer.__init__` (fixed names, not arguments) with the
    configs above and a randomly initialised MusicGen. Only names inside model_blip2 are rebound."""
    from transformers import MusicgenForConditionalGeneration

    def musicgen_config(name):
        assert name == "facebook/musicgen-large", name
        return tiny_musicgen_config()

    def random_musicgen(name, config):
        return MusicgenForConditionalGeneration(config=config)

    def bert_config(name):
        assert name == "bert-base-uncased", name
        return tiny_bert_config()

    model_blip2.MusicgenConfig = types.SimpleNamespace(from_pretrained=musicgen_config)
    model_blip2.MusicgenForConditionalGeneration = types.SimpleNamespace(from_pretrained=random_musicgen)
    model_blip2.BertConfig = types.SimpleNamespace(from_pretrained=bert_config)


def set_positions(model, positions):
    """BOSSA hard-codes MusicBERT's 8194 positions; rebuild the table at the demo's size."""
    import torch
    from torch import nn

    embeddings = model.Qformer.bert.embeddings
    table = nn.Embedding(positions, model.Qformer.config.hidden_size)
    table.weight.data.normal_(mean=0.0, std=model.Qformer.config.initializer_range)  # BERT `_init_weights`
    embeddings.position_embeddings = table
    embeddings.register_buffer("position_ids", torch.arange(positions).expand((1, -1)))
    model.Qformer.config.max_position_embeddings = positions


def demo_batch(batch, max_notes, frames, codebook, generator):
    """The batch of benches/stage1_step.rs: 20 lead-sheet notes, `<s>`, 100 piano notes, `</s>`,
    padding; in BOSSA's mask conventions (`leadsheet_mask` 0 on the lead sheet, `pad_mask` 1 on
    real notes, `codec_pad_mask` over the frames + 4 delayed steps)."""
    import torch

    lead, piano = 20, min(100, max_notes - 22)
    note = [4, 260, 388, 517 + 60, 780, 920, 940, 1200]
    tokens = torch.ones(batch, max_notes, 8, dtype=torch.long)
    is_lead = torch.zeros(batch, max_notes, dtype=torch.long)
    is_real = torch.zeros(batch, max_notes, dtype=torch.long)
    for b in range(batch):
        for n in range(min(lead + piano + 2, max_notes)):
            if n == lead:
                tokens[b, n] = 0
            elif n == lead + piano + 1:
                tokens[b, n] = 2
            else:
                tokens[b, n] = torch.tensor([v + (n + b) % 4 for v in note])
            is_real[b, n] = 1
            is_lead[b, n] = int(n < lead)
    return dict(
        codec=torch.randint(codebook, (batch, 4, frames), generator=generator),
        notes=tokens.view(batch, max_notes * 8),
        codec_pad_mask=torch.ones(batch, frames + 4, dtype=torch.long),
        leadsheet_mask=1 - is_lead,
        pad_mask=is_real,
    )


def count(params):
    return sum(p.numel() for p in params)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bossa-repo", required=True, help="checkout of zhaojw1998/bossa-piano-cover-arrangement")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the Rust bench's STAGE1_BENCH_THREADS)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps, after one untimed warm-up step")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-notes", type=int, default=160)
    parser.add_argument("--frames", type=int, default=508)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.bossa_repo, "model_blip2.py")):
        sys.exit(f"--bossa-repo {args.bossa_repo}: no model_blip2.py there; give a BOSSA checkout")

    import torch
    import torch.distributed as dist
    import transformers

    # Composite-config dumps and deprecation notices; MusicGen's one-off notice that the fully
    # masked cross-attention falls back from SDPA to eager attention is silenced with them.
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    rss_after_torch = peak_rss_mib()
    sys.path.insert(0, os.path.abspath(args.bossa_repo))
    stub_stage2_imports()
    import model_blip2

    patch_hub_loads(model_blip2)
    with tempfile.TemporaryDirectory() as rendezvous:
        dist.init_process_group("gloo", init_method=f"file://{rendezvous}/pg", rank=0, world_size=1)
        try:
            torch.manual_seed(args.seed)
            model = model_blip2.Blip2Qformer(num_query_token=8, cross_attention_freq=2, embed_dim=32, load_pretrained=False)
            set_positions(model, 256)
            model.train()
            rss_after_build = peak_rss_mib()

            trainable = [p for p in model.parameters() if p.requires_grad]
            decoder = model.musicgen_decoder
            positions = count(decoder.decoder.embed_positions.parameters())
            cross = count(p for n, p in decoder.named_parameters() if "encoder_attn" in n)
            print(f"BOSSA Blip2Qformer stage-1 step on CPU, {torch.get_num_threads()} torch threads, fp32, torch {torch.__version__}")
            print(
                f"parameters: {count(trainable):,} trainable (Q-Former, heads, audio LayerNorm); frozen MusicGen decoder "
                f"{count(decoder.parameters()):,} = {count(decoder.parameters()) - positions - cross:,} "
                f"+ {cross:,} cross-attention + {positions:,} sinusoid table; "
                f"attention: {decoder.config._attn_implementation}"
            )

            x = demo_batch(args.batch, args.max_notes, args.frames, 2048, torch.Generator().manual_seed(args.seed))
            # train_stage1.py: AdamW over all parameters (frozen ones get no grad), betas (0.9, 0.999),
            # weight decay 0.05; clip_grad_norm_ 1 (CLIP); fp32 path (no GradScaler on CPU).
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=[0.9, 0.999], weight_decay=0.05)
            times = []
            for step in range(args.steps + 1):
                start = time.perf_counter()
                optimizer.zero_grad()
                out = model(**x)
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                if step > 0:
                    times.append(time.perf_counter() - start)
            median = statistics.median(times)
            print(
                f"demo: batch {args.batch}, {args.max_notes} notes/sequence, {args.frames} frames; "
                f"loss {out.loss.item():.3f} (C {out.loss_contrastive.item():.3f}, M {out.loss_matching.item():.3f}, "
                f"G {out.loss_lm.item():.3f})"
            )
            print(f"  CMG: {median:.3f} s/step median of {args.steps} ({args.batch / median:.1f} samples/s)")
            print(
                f"  peak resident memory: {peak_rss_mib():.0f} MiB (after importing torch {rss_after_torch:.0f}, "
                f"after building the model {rss_after_build:.0f})"
            )
        finally:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
