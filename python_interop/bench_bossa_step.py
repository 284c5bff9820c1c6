"""One stage-1 training step of BOSSA's reference `Blip2Qformer` on CPU, at the demo's tiny config:
the PyTorch side of `benches/stage1_step.rs` (its CMG line is the Rust side of the ratio).

BOSSA's code is imported at run time from a checkout given by --bossa-repo, in the scratch venv
that python_interop/bossa_reference.py describes (nothing of BOSSA is copied here):

    /tmp/bossa_venv/bin/python python_interop/bench_bossa_step.py --bossa-repo /tmp/bossa_ref --threads 2

Shapes: the demo's (experiments/demo.yaml). Beside what bossa_reference.py replaces for every
entry point:
- MusicGen decoder width 64, 2 layers, 4 heads, ffn 128; BOSSA's rule keeps 2 // 2 + 1 = 2 layers,
  as the Rust side does.
- Q-Former hidden 64, 4 layers, 4 heads, intermediate 128, 8 queries. BOSSA fixes 8194 positions;
  the demo has 256, so the position table is rebuilt with 256 rows (same init) after construction.
- MuseCoco and utils.inference (stage 2 only) are replaced by empty stand-ins.
- torch.distributed must be initialised (BOSSA calls `dist.get_rank()`): a 1-process gloo group.
"""
import argparse
import statistics
import tempfile
import time

from bossa_reference import bert_config, count, import_model_blip2, musicgen_config, patch_hub_loads, peak_rss_mib, set_positions


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

    import torch
    import torch.distributed as dist
    import transformers

    # Composite-config dumps and deprecation notices; MusicGen's one-off notice that the fully
    # masked cross-attention falls back from SDPA to eager attention is silenced with them.
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    rss_after_torch = peak_rss_mib()
    model_blip2 = import_model_blip2(args.bossa_repo, stage=1)
    patch_hub_loads(model_blip2, musicgen_config(64, 2, 4, 128), bert_config(64, 4, 4, 128))
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
