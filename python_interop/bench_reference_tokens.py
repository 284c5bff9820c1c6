"""Run BOSSA's reference OctupleMIDI and REMI encoders on MIDI files: time them, or dump
their token ids as golden files for tests/tokens_golden.rs.

The reference code is imported from a BOSSA checkout the user supplies (it is not part of
this repository): `utils/octMIDI.py` (MIDI_to_encoding, note_encode), `utils/REMI.py`
(note2token) and MuseCoco's tokenizer and VocabManager under `musecoco/hf_musecoco`.
The REMI path chains them exactly as the `__main__` block of `utils/octMIDI.py` does.
Needs: miditoolkit==1.0.1, numpy, transformers==4.48.0 (tokenizer only, no torch).

    # benchmark (the Rust side is `cargo bench --bench tokens`)
    python python_interop/bench_reference_tokens.py --bossa ~/bossa ../shared/data/pop909/POP909
    # golden files
    python python_interop/bench_reference_tokens.py --bossa ~/bossa --golden-out DIR FILE.mid ...
"""
import argparse
import json
import sys
import time
from pathlib import Path


def load_reference(bossa):
    sys.path.insert(0, str(bossa))
    import miditoolkit
    import numpy as np
    from musecoco.hf_musecoco.midi_utils.midiprocessor.vocab_manager import VocabManager
    from musecoco.hf_musecoco.tokenization_musecoco import MuseCocoTokenizer
    from utils.octMIDI import MIDI_to_encoding, e2b, e2d, e2t, e2v, note_encode
    from utils.REMI import note2token

    vm = VocabManager()
    tk = MuseCocoTokenizer.from_pretrained(str(Path(bossa) / "musecoco" / "1b" / "tokenizer"))

    def remi_ids(encoding):
        if len(encoding) == 0:
            prompt = []
        else:
            prompt = np.array([[*e] for e in encoding], dtype=int)
            drum = prompt[:, 2] == 128
            prompt[drum, 3] = np.array([vm.convert_pitch_to_id(p - 128, True) for p in prompt[drum, 3]], dtype=int)
            prompt[~drum, 3] = np.array([vm.convert_pitch_to_id(p, False) for p in prompt[~drum, 3]], dtype=int)
            prompt[:, 4] = np.array([vm.convert_dur_to_id(e2d(d)) for d in prompt[:, 4]])
            prompt[:, 5] = np.array([vm.convert_vel_to_id(e2v(v)) for v in prompt[:, 5]])
            prompt[:, 6] = np.array([vm.convert_ts_to_id(e2t(s)) for s in prompt[:, 6]])
            prompt[:, 7] = np.array([vm.convert_tempo_to_id(e2b(b)) for b in prompt[:, 7]])
        tokens = note2token(prompt)
        return tk(" ".join(tokens))["input_ids"][:-1]

    def encode(path):
        midi = miditoolkit.midi.parser.MidiFile(str(path))
        encoding = MIDI_to_encoding(midi)
        notes = sum(len(i.notes) for i in midi.instruments)
        return [int(x) for x in note_encode(encoding)], [int(x) for x in remi_ids(encoding)], notes

    return encode


def midi_files(inputs):
    for item in map(Path, inputs):
        if item.is_dir():
            yield from sorted(p for p in item.rglob("*.mid") if "versions" not in p.parts)
        else:
            yield item


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bossa", required=True, type=Path, help="checkout of zhaojw1998/bossa-piano-cover-arrangement")
    ap.add_argument("--golden-out", type=Path, help="write <stem>.json with the token ids of each file here")
    ap.add_argument("--json", action="store_true", help="print the timing as one JSON object (for benches/tokens.rs)")
    ap.add_argument("inputs", nargs="+", help="MIDI files or folders (searched for *.mid)")
    args = ap.parse_args()
    encode = load_reference(args.bossa)
    files = list(midi_files(args.inputs))
    if args.golden_out:
        args.golden_out.mkdir(parents=True, exist_ok=True)
        for path in files:
            octuple, remi, _ = encode(path)
            out = args.golden_out / f"{path.stem}.json"
            out.write_text(json.dumps({"octuple": octuple, "remi": remi}, separators=(",", ":")) + "\n")
            print(f"{path} -> {out} ({len(octuple)} octuple, {len(remi)} remi ids)")
        return
    start = time.perf_counter()
    notes = 0
    for path in files:
        notes += encode(path)[2]
    seconds = time.perf_counter() - start
    if args.json:
        print(json.dumps({"songs": len(files), "notes": notes, "seconds": seconds}))
        return
    print(f"reference (python) parse + octuple + remi: {len(files)} songs, {notes} notes in {seconds:.2f} s: "
          f"{len(files) / seconds:.1f} songs/s, {notes / seconds:.0f} notes/s")


if __name__ == "__main__":
    main()
