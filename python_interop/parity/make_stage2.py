"""Golden values for the stage-2 loss (tests/data/golden/stage2) from BOSSA's own `Blip2Musecoco`.

Builds a tiny `Blip2Musecoco` with BOSSA's classes (hub loads replaced as python_interop/
bossa_reference.py describes, in the scratch venv described there), seed 0, every parameter noised
so that no bias is zero and no LayerNorm is the identity, every LoRA `lora_B` random so the
adapters matter; makes a 2-row batch with BOSSA's `collate_fn_musecoco2` (augment=False,
deperf=True) from two synthetic octMIDI note lists; runs `Blip2Musecoco.forward` in eval mode and
`loss.backward()`. Writes into OUT:
- model.safetensors, config.json: the state dict saved with torch.save, converted by
  python_interop/convert.py --format bossa-stage2 (heads given with --set);
- io.safetensors: inputs, intermediates, the loss, chosen logits and gradients (see README.md).

    /tmp/bossa_venv/bin/python python_interop/parity/make_stage2.py --bossa-repo /tmp/bossa_ref \\
        --out tests/data/golden/stage2
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

INTEROP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, INTEROP)
import bossa_reference as bossa  # noqa: E402  (python_interop/, one level up)

# Shapes. MusicGen's config has 3 layers, of which BOSSA keeps 3 // 2 + 1 = 2; MuseCoco's heads are
# 5 wide, so q/k/v map 16 -> 15 as the 1B model maps 2048 -> 2040.
MUSICGEN = dict(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, ffn_dim=32)
QFORMER = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
QUERIES, CROSS_ATTENTION_FREQ = 4, 2
MUSECOCO = dict(n_embd=16, n_head=3, n_layer=2, ffn_dim=32)
HEADS = ["qformer.num_attention_heads=2", "musecoco.n_head=3", "musicgen.num_attention_heads=2"]
FRAMES = 508  # BOSSA's AUD_LEN * SR
SHORT_FRAMES = 300  # row 1's audio: padded with code 2048, masked in the Q-Former's cross-attention
POSITION_TABLE = "blip2qformer.musicgen_decoder.decoder.embed_positions.weights"  # MusicGen's fixed sinusoid


def note(bar, position, pitch, duration, program=0, velocity=20, time_signature=9, tempo=28):
    """One octMIDI row: bar, position (12 per beat), program, pitch, duration bucket, velocity bin
    (velocity // 4), time-signature id (9 = 4/4 in octMIDI's ts_list), tempo bin (28 = 80.6 bpm)."""
    return [bar, position, program, pitch, duration, velocity, time_signature, tempo]


def note_lists():
    """(track, lead sheet) pairs. Row 0: bars 0-1 of 4/4, chords under a melody, a tempo change in
    bar 1, exactly 160 tokens; row 1: bar 3 of 3/4 (BOSSA shifts it to bar 0), fewer notes, so it
    is padded."""
    lead0 = [note(0, 0, 72, 12), note(0, 0, 48, 24, velocity=15), note(0, 0, 55, 24, velocity=15),
             note(0, 12, 74, 12), note(0, 24, 76, 18, velocity=22), note(1, 0, 77, 12, tempo=30),
             note(1, 0, 53, 30, velocity=15, tempo=30), note(1, 18, 79, 6, tempo=30)]
    track0 = [note(0, 0, 36, 24, velocity=18), note(0, 0, 60, 12), note(0, 0, 64, 12), note(0, 0, 72, 12, velocity=24),
              note(0, 12, 67, 6), note(0, 18, 74, 6, velocity=23), note(0, 24, 43, 18, velocity=17),
              note(0, 24, 76, 18, velocity=25), note(0, 36, 64, 9), note(1, 0, 41, 30, tempo=30),
              note(1, 0, 65, 12, tempo=30), note(1, 12, 69, 12, tempo=30)]
    lead1 = [note(3, 0, 67, 12, time_signature=8), note(3, 0, 43, 36, velocity=15, time_signature=8),
             note(3, 12, 69, 24, time_signature=8)]
    track1 = [note(3, 0, 31, 36, velocity=16, time_signature=8), note(3, 0, 67, 12, velocity=23, time_signature=8),
              note(3, 12, 59, 6, time_signature=8), note(3, 24, 69, 12, velocity=24, time_signature=8)]
    return [(np.array(sorted(t), dtype=np.int64), np.array(sorted(l), dtype=np.int64)) for t, l in ((track0, lead0), (track1, lead1))]


def noised(model, generator):
    """Noise every parameter but MusicGen's fixed sinusoid; LoRA B (zero at BOSSA's init) random.
    MuseCoco's `_float_tensor` buffer (`torch.FloatTensor(1)`, uninitialised memory that only
    carries a dtype) is zeroed so that the file is the same on every run."""
    with torch.no_grad():
        model.musecoco.decoder.embed_positions._float_tensor.zero_()
        for name, p in model.named_parameters():
            if name == POSITION_TABLE:
                continue
            scale = 0.2 if name.endswith("lora_B") else 0.05
            p.add_(torch.randn(p.shape, generator=generator) * scale)


def shifted_cross_entropy(logits, targets):
    """HF causal-LM loss by hand: logits at t predict the target at t + 1, -100 ignored, mean."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets[:, 1:].reshape(-1), ignore_index=-100)


def capture(module, store, key, pick):
    return module.register_forward_hook(lambda m, args, out: store.__setitem__(key, pick(out).detach().clone()))


def logit_positions(tokens, pad_mask, queries, pos_start):
    """A few positions per row of the sequence MuseCoco sees (queries first): the soft prompt, the
    first tokens, both sides of the first positioned token, around the second <sep> (it predicts the
    first target), the last real tokens, and where the row is padded its first and last pad."""
    rows = []
    for b in range(tokens.shape[0]):
        real, second_sep = int((~pad_mask[b]).sum()), int((tokens[b] == 984).nonzero()[-1])
        within = [0, 1, pos_start - 1, pos_start, pos_start + 1, second_sep - 1, second_sep, second_sep + 1, real - 3, real - 2, real - 1]
        if real < tokens.shape[1]:
            within += [real, tokens.shape[1] - 1]
        rows.append(list(range(queries)) + [queries + i for i in sorted(set(within))])
    width = max(len(r) for r in rows)
    return torch.tensor([r + [r[-1]] * (width - len(r)) for r in rows], dtype=torch.long)  # short rows repeat their last


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bossa-repo", required=True, help="checkout of zhaojw1998/bossa-piano-cover-arrangement")
    parser.add_argument("--out", required=True, help="folder for model.safetensors, config.json, io.safetensors")
    parser.add_argument("--max-token", type=int, default=160, help="collate_fn_musecoco2's max_token")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import transformers
    from safetensors.torch import save_file

    transformers.logging.set_verbosity_error()
    torch.manual_seed(args.seed)
    model, dataset = bossa.stage2_model(args.bossa_repo, MUSICGEN, QFORMER, MUSECOCO, QUERIES, CROSS_ATTENTION_FREQ)
    generator = torch.Generator().manual_seed(args.seed)
    noised(model, generator)
    model.eval()

    notes = note_lists()
    audio = [torch.randint(2048, (4, n), generator=generator).numpy() for n in (FRAMES, SHORT_FRAMES)]
    batch = [(a, t.copy(), l.copy()) for a, (t, l) in zip(audio, notes)]  # the collate edits them in place
    codes, tokens, codec_pad_mask, leadsheet_mask, pad_mask = dataset.collate_fn_musecoco2(
        batch, "cpu", max_token=args.max_token, augment=False, deperf=True
    )
    assert codes.shape == (2, 4, FRAMES) and tokens.shape == (2, args.max_token), (codes.shape, tokens.shape)
    assert pad_mask[1].any() and not pad_mask[0].any(), "row 0 fills max_token exactly, row 1 is padded"

    captured = {}
    hooks = [
        capture(model.blip2qformer.musicgen_decoder, captured, "audio_repr", lambda out: out[0]),
        capture(model.blip2qformer.Qformer.bert, captured, "query_output", lambda out: out.last_hidden_state),
        capture(model.musecoco_proj, captured, "inputs_musecoco", lambda out: out),
        capture(model.musecoco, captured, "logits", lambda out: out.logits),
    ]
    out = model(codes, tokens, codec_pad_mask, leadsheet_mask, pad_mask)
    for hook in hooks:
        hook.remove()
    loss = out["loss"]
    loss.backward()

    # Self-check without Rust: BOSSA's targets and the shifted cross-entropy by hand.
    targets = F.pad(tokens.masked_fill(leadsheet_mask | pad_mask, -100), (QUERIES, 0), value=-100)
    by_hand = shifted_cross_entropy(captured["logits"], targets)
    assert torch.allclose(by_hand, loss.detach(), rtol=1e-6, atol=0), (by_hand.item(), loss.item())
    for b in range(len(notes)):
        # The targets are the tokens after the second <sep> through the final </s> (no truncation here).
        real, second_sep = int((~pad_mask[b]).sum()), int((tokens[b] == 984).nonzero()[-1])
        assert tokens[b, real - 1] == 2 and (targets[b] != -100).nonzero().flatten().tolist() == list(range(QUERIES + second_sep + 1, QUERIES + real))
        print(f"row {b}: {real} real tokens, lead sheet 62..{second_sep - 1}, <sep> {second_sep}, targets {second_sep + 1}..{real - 1}")

    groups, _ = bossa.parameter_groups(model)
    grads = {f"grad.{name}": dict(model.named_parameters())[name].grad for name in (
        "musecoco_proj.weight", "musecoco_proj.bias", "blip2qformer.query_tokens",
        "musecoco.decoder.layers.0.self_attn.lora_q.lora_A", "musecoco.decoder.layers.0.self_attn.lora_q.lora_B")}
    squared = {f"grad_sq_sum.{group}": torch.tensor(sum(float(p.grad.double().square().sum()) for _, p in params), dtype=torch.float64)
               for group, params in groups.items()}

    pos_start = 61  # Blip2Musecoco.forward: encode_input_ids(token, pos_start=61)
    positions = logit_positions(tokens, pad_mask, QUERIES, pos_start)
    io = {
        "codes": codes.long(),
        "tokens": tokens.long(),
        "codec_pad_mask": codec_pad_mask.long(),
        "leadsheet_mask": leadsheet_mask.long(),
        "pad_mask": pad_mask.long(),
        "targets": targets,
        "pos_start": torch.tensor(pos_start),
        "token_embeds": model.musecoco.decoder.encode_input_ids(tokens, pos_start=pos_start).detach(),
        "audio_repr": captured["audio_repr"],
        "query_output": captured["query_output"],
        "inputs_musecoco": captured["inputs_musecoco"],
        "loss": loss.detach(),
        "logit_positions": positions,
        "logits": torch.gather(captured["logits"], 1, positions[..., None].expand(-1, -1, captured["logits"].shape[-1])),
        **{k: v.detach().clone() for k, v in grads.items()},
        **squared,
    }
    for b, (track, lead) in enumerate(notes):
        io[f"track_{b}"], io[f"leadsheet_{b}"] = torch.from_numpy(track), torch.from_numpy(lead)

    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = os.path.join(scratch, "bossa_stage2_tiny.pt")
        torch.save(model.state_dict(), checkpoint)
        convert = [sys.executable, os.path.join(INTEROP, "convert.py"), "--format", "bossa-stage2", checkpoint, args.out]
        subprocess.run(convert + [a for s in HEADS for a in ("--set", s)], check=True)
    save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(args.out, "io.safetensors"))
    print(f"loss {loss.item():.6f}; " + ", ".join(f"{k} {v.item():.6e}" for k, v in squared.items()))


if __name__ == "__main__":
    main()
