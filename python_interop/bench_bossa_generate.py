"""Stage-2 generation with BOSSA's reference code on CPU: the windowed loop of
test_stage2_generate.ipynb around `Blip2Musecoco.generate_nucleus2` (top-k 15, t = 1) over an
8-bar lead sheet, random weights; the PyTorch side of a Rust generation benchmark.

BOSSA's code is imported at run time from a checkout given by --bossa-repo, in the scratch venv
that python_interop/bossa_reference.py describes (nothing of BOSSA is copied here):

    /tmp/bossa_venv/bin/python python_interop/bench_bossa_generate.py --bossa-repo /tmp/bossa_ref \\
        --preset demo --threads 2
    /tmp/bossa_venv/bin/python python_interop/bench_bossa_generate.py --bossa-repo /tmp/bossa_ref \\
        --preset 1b --threads 2 --cap 6 --extrapolate-to 300

Presets (`--set SECTION.KEY=N` overrides any of their numbers, e.g. `--set musecoco.n_layer=12`):
- demo: MuseCoco 128 x 4 layers x 4 heads, ffn 512; Q-Former 64 x 4 x 4 heads, intermediate 128,
  8 queries; MusicGen decoder 64 x 2 layers x 4 heads, ffn 128.
- 1b: MuseCoco-1B's shape (musecoco/1b/model/config.json: 2048 x 24 layers x 24 heads, ffn 8192,
  LoRA r16); Q-Former BERT-base (768 x 12 x 12 heads, intermediate 3072, 32 queries, so the soft
  prompt is BOSSA's 32 x 2048); MusicGen decoder at the demo's shape (the audio side runs once per
  window and is timed apart: add MusicGen-large's 25 layers from their own measurement).

The lead sheet: 8 bars of 4/4 at 121.9 bpm (tempo bin 35), a melody of 4 notes and a 3-note chord
per bar, sliced by BOSSA's `collate_fn_inference` (bars 0-4, 2-6, 4-8; 508 audio frames each, cut
from 900 random codes). The notebook's loop: window 0 starts from its lead-sheet slice; window
w > 0 appends bars 3-4 of window w-1's output to its slice.

Random weights rarely end a bar (`b-1`, id 5) or the piece (`</s>`, id 2), so `generate_nucleus2`'s
own stops (4 bar ends or `</s>`) would make the length a matter of chance: the lm_head rows of
those two tokens are zeroed (a zero logit is never in the top 15 of ~1250 random ones), and each
window instead stops after --cap new tokens (its loop's iterations are capped: every iteration is
one MuseCoco call and one sampled token). Without bar ends, "bars 3-4 of window w-1" are taken to
be the second half of its new tokens, so every window w > 0 starts from cap / 2 carried tokens.

Per-token cost: `generate_nucleus2` passes `past_key_values`, but BOSSA's `AttentionLayer` keeps
the layer inputs and re-projects every past position through k/v (+ LoRA) and reruns the causal
product over the whole context at each new token, so a token costs a + b * context. With
--extrapolate-to N (for the 1B shape, where N tokens per window would take hours on 2 cores), one
more `generate_nucleus2` call (a prefill and 3 decode steps) is timed at the longest context of
such a run (window 2's slice plus N/2 carried tokens); a and b are fitted by least squares to all
timed decode calls, and a line to the 4 timed prefills in the same way; an arrangement of N new
tokens per window (windows 1 and 2 carrying N/2) is summed from those lines, plus each window's
audio side as timed.
"""
import contextlib
import json
import time

import numpy as np

import bossa_reference as bossa

AUDIO = dict(musicgen=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128))
PRESETS = {
    "demo": dict(
        qformer=dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128), queries=8,
        musecoco=dict(n_embd=128, n_head=4, n_layer=4, ffn_dim=512), **AUDIO,
    ),
    "1b": dict(
        qformer=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072), queries=32,
        musecoco=dict(n_embd=2048, n_head=24, n_layer=24, ffn_dim=8192), **AUDIO,
    ),
}
BAR_END, END = 5, 2
TEMPO_BIN, BEATS, POSITIONS_PER_BEAT = 35, 4, 12
BARS, HOP, WINDOW = 8, 2, 4
PROBE_ITERATIONS = 4  # a prefill and 3 decode steps


def lead_sheet():
    """8 bars of octMIDI rows (bar, position, program, pitch, duration, velocity, 4/4 = 9, tempo)
    and their onset times; the downbeats, the last one extrapolated as the notebook does."""
    from utils.octMIDI import e2b

    seconds_per_beat = 60.0 / e2b(TEMPO_BIN)
    rows = []
    for bar in range(BARS):
        root = 48 + (5 * bar) % 12
        rows += [[bar, 0, 0, root + i, 36, 15, 9, TEMPO_BIN] for i in (0, 4, 7)]
        rows += [[bar, 12 * beat, 0, 72 + (2 * bar + 3 * beat) % 12, 12, 20, 9, TEMPO_BIN] for beat in range(BEATS)]
    rows = np.array(sorted(rows), dtype=np.int64)
    times = (rows[:, 0] * BEATS + rows[:, 1] / POSITIONS_PER_BEAT) * seconds_per_beat
    downbeats = np.arange(BARS + 1) * BEATS * seconds_per_beat
    return rows, times, downbeats


@contextlib.contextmanager
def capped_generation(cap):
    """`generate_nucleus2` imports tqdm at call time and loops over `tqdm(range(...))`: hand it the
    first `cap` iterations only."""
    import itertools

    import tqdm

    full = tqdm.tqdm
    tqdm.tqdm = lambda iterable, *args, **kwargs: itertools.islice(iterable, cap)
    try:
        yield
    finally:
        tqdm.tqdm = full


class CallTimer:
    """Wall time and context length (prompt + tokens) of every MuseCoco call."""

    def __init__(self, module):
        self.calls, self.first_call_at = [], None
        module.register_forward_pre_hook(self.before, with_kwargs=True)
        module.register_forward_hook(self.after, with_kwargs=True)

    def before(self, module, args, kwargs):
        self.started = time.perf_counter()
        if self.first_call_at is None:
            self.first_call_at = self.started

    def after(self, module, args, kwargs, output):
        self.calls.append((time.perf_counter() - self.started, kwargs["attention_mask"].shape[1]))

    def reset(self):
        self.calls, self.first_call_at = [], None


def fit_line(points):
    """Least-squares a, b of seconds = a + b * context."""
    x, y = np.array([p[1] for p in points], dtype=float), np.array([p[0] for p in points])
    b, a = np.polyfit(x, y, 1) if len(set(x)) > 1 else (0.0, float(y.mean()))
    return float(a), float(b)


def main():
    parser = bossa.stage2_arguments(__doc__.split("\n")[0], PRESETS)
    parser.add_argument("--cap", type=int, default=300, help="new tokens per window")
    parser.add_argument("--extrapolate-to", type=int, help="also estimate an arrangement of this many new tokens per window")
    parser.add_argument("--top-k", type=int, default=15)
    args = parser.parse_args()
    if args.cap < 2:
        parser.error("--cap must be at least 2 (a prefill and one decode step)")
    preset = bossa.preset_with_overrides(parser, args, PRESETS)

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    model, dataset = bossa.stage2_model(args.bossa_repo, preset["musicgen"], preset["qformer"], preset["musecoco"], preset["queries"])
    model.eval()
    with torch.no_grad():
        model.musecoco.lm_head.weight[[BAR_END, END]] = 0
    built = time.perf_counter() - start
    print(f"BOSSA Blip2Musecoco generation on CPU, {torch.get_num_threads()} torch threads, fp32, torch {torch.__version__}")
    print(f"preset {args.preset}: {json.dumps(preset)}; MuseCoco {bossa.count(model.musecoco.parameters()):,} parameters; built in {built:.0f} s")

    notes, times, downbeats = lead_sheet()
    rng = np.random.default_rng(args.seed)
    codes = rng.integers(2048, size=(4, 900), dtype=np.int64)
    audio, audio_mask, slices = dataset.collate_fn_inference(
        [codes, downbeats, None, None, times, notes.copy()], "cpu", [0, BARS], HOP, WINDOW
    )
    assert len(slices) == 3, f"{len(slices)} windows"

    timer = CallTimer(model.musecoco)
    carried, windows = torch.zeros(1, 0, dtype=torch.long), []
    for w, slice_ in enumerate(slices):
        context = torch.cat([slice_, carried], dim=1)
        timer.reset()
        start = time.perf_counter()
        with capped_generation(args.cap):
            tokens = model.generate_nucleus2(audio[w:w + 1], context, audio_mask[w:w + 1], t=1, p=None, k=args.top_k)
        seconds = time.perf_counter() - start
        new = tokens.shape[1] - context.shape[1]
        carried = tokens[:, tokens.shape[1] - new // 2:]
        prefill, steps = timer.calls[0], timer.calls[1:]
        windows.append(dict(seconds=seconds, audio=timer.first_call_at - start, prefill=prefill, steps=steps, lead=slice_.shape[1], new=new))
        decode = sum(t for t, _ in steps)
        print(
            f"window {w} (bars {HOP * w}-{HOP * w + WINDOW}): context {preset['queries']} queries + {slice_.shape[1]} lead-sheet tokens"
            f" + {context.shape[1] - slice_.shape[1]} carried = {context.shape[1] + preset['queries']}; {new} new tokens in {seconds:.2f} s"
            f" ({new / seconds:.1f} tokens/s; audio side {windows[-1]['audio']:.2f} s, prefill {prefill[0]:.2f} s,"
            f" {len(steps)} decode steps {decode:.2f} s = {decode / max(len(steps), 1) * 1e3:.1f} ms/token)"
        )
    total, new = sum(w["seconds"] for w in windows), sum(w["new"] for w in windows)
    print(f"arrangement (8 bars, {args.cap} new tokens per window): {total:.2f} s, {new} tokens, {new / total:.1f} tokens/s")

    if args.extrapolate_to:
        # One more call at the longest context of the estimated run (window 2's slice and n / 2
        # carried tokens), so that the fit spans the contexts it is used for.
        n = args.extrapolate_to
        filler = carried.repeat(1, n // 2 // max(carried.shape[1], 1) + 1)[:, : n // 2]
        timer.reset()
        with capped_generation(PROBE_ITERATIONS):
            model.generate_nucleus2(audio[2:3], torch.cat([slices[2], filler], dim=1), audio_mask[2:3], t=1, p=None, k=args.top_k)
        probe = dict(prefill=timer.calls[0], steps=timer.calls[1:])
        print(f"probe at context {probe['prefill'][1]}: prefill {probe['prefill'][0]:.2f} s, decode steps "
              + ", ".join(f"{t:.2f} s" for t, _ in probe["steps"]))
        timed = windows + [probe]
        a, b = fit_line([s for w in timed for s in w["steps"]])
        prefill_a, prefill_b = fit_line([w["prefill"] for w in timed])
        if b < 0 or prefill_b < 0:
            print("note: a longer context timed faster: the machine's load moved during the run, so the estimate below is unreliable")
        estimate = 0.0
        for i, w in enumerate(windows):
            context = preset["queries"] + w["lead"] + (n // 2 if i else 0)
            estimate += w["audio"] + prefill_a + prefill_b * context + sum(a + b * (context + k) for k in range(1, n))
        print(
            f"extrapolated to {n} new tokens per window: decode step {a:.3f} s + {b * 1e3:.3f} ms per context position,"
            f" prefill {prefill_a:.3f} s + {prefill_b * 1e3:.3f} ms per position: {estimate:.0f} s per arrangement"
            f" ({3 * n / estimate:.2f} tokens/s)"
        )
    print(f"peak resident memory: {bossa.peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
