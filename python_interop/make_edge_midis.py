"""Write the hand-made edge-case MIDI files of tests/data/midi/ (requires `mido`).

Each file isolates one behaviour of the OctupleMIDI / REMI encoders or of miditoolkit's
parsing; the golden token files in tests/data/golden/edge/ hold what the BOSSA reference
encoders produce for them. Events are given as absolute ticks and written raw, so the
files contain exactly the event order described (overlaps, stray note-offs, tempo events
spread over tracks), which a higher-level writer would normalise away.

    python python_interop/make_edge_midis.py tests/data/midi
"""
import sys
from pathlib import Path

import mido


def meta(tick, kind, **kw):
    return (tick, mido.MetaMessage(kind, **kw))


def msg(tick, kind, **kw):
    return (tick, mido.Message(kind, **kw))


def note(start, end, pitch, vel=80, ch=0):
    return [msg(start, "note_on", note=pitch, velocity=vel, channel=ch),
            msg(end, "note_off", note=pitch, velocity=0, channel=ch)]


def tempo(tick, bpm):
    return meta(tick, "set_tempo", tempo=mido.bpm2tempo(bpm))


def ts(tick, num, den):
    return meta(tick, "time_signature", numerator=num, denominator=den)


def save(path, tpb, tracks):
    """tracks: lists of (tick, message); a stable sort by tick keeps the given order at ties."""
    f = mido.MidiFile(type=1, ticks_per_beat=tpb)
    for events in tracks:
        track = mido.MidiTrack()
        last = 0
        for tick, m in sorted(events, key=lambda e: e[0]):
            track.append(m.copy(time=tick - last))
            last = tick
        track.append(mido.MetaMessage("end_of_track", time=0))
        f.tracks.append(track)
    f.save(path)


def melody(tpb, beats, pitches, step=1.0, dur=0.9, ch=0, vel=90):
    events = []
    for i in range(int(beats / step)):
        start = round(i * step * tpb)
        events += note(start, start + round(dur * step * tpb), pitches[i % len(pitches)], vel, ch)
    return events


def main(out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scale = [60, 62, 64, 65, 67, 69, 71, 72]

    # 3/4 with triplets, off-grid ticks, long notes (duration bucket clamp) and two tracks.
    t = 480
    piano = melody(t, 24, [48, 52, 55], step=1 / 3, dur=0.5, ch=1, vel=60)
    piano += note(17, 17 + 40 * t, 36, 70, ch=1) + note(3 * t + 7, 3 * t + 7 + 5, 38, 50, ch=1)
    save(out / "meter_3_4.mid", t, [[ts(0, 3, 4), tempo(0, 96)],
                                    [meta(0, "track_name", name="MELODY"), msg(0, "program_change", program=73)]
                                    + melody(t, 24, scale),
                                    [meta(0, "track_name", name="PIANO")] + piano])

    # 6/8 and 7/8 at unusual resolutions.
    t = 384
    save(out / "meter_6_8.mid", t, [[ts(0, 6, 8), tempo(0, 72)],
                                    melody(t, 18, scale, step=0.5, dur=0.8) + note(t * 3, t * 6, 40, 100)])
    t = 96
    save(out / "meter_7_8.mid", t, [[ts(0, 7, 8), tempo(0, 150)],
                                    melody(t, 21, scale[::-1], step=0.5) + melody(t, 21, [36, 43], step=3.5, dur=1.0)])

    # Signature changes: at a bar line, in mid-bar, and in a second track.
    t = 480
    save(out / "meter_changes.mid", t, [[ts(0, 4, 4), ts(8 * t, 3, 4), ts(12 * t, 6, 8), ts(14 * t + t // 2, 7, 8)],
                                        [ts(30 * t, 5, 4)] + melody(t, 40, scale, step=0.5)])

    # Tempo changes mid-song and mid-bar, out-of-range tempos (clipped), a repeated tempo.
    save(out / "tempo_changes.mid", t, [[tempo(0, 120), tempo(4 * t, 80), tempo(6 * t, 80), tempo(7 * t, 200),
                                         tempo(9 * t + 240, 300), tempo(12 * t, 10), tempo(16 * t, 121)],
                                        melody(t, 20, scale)])

    # Tempo events in two tracks that leave miditoolkit's list unsorted, and the same
    # music with the tempos in order (what a correct parser sees).
    unsorted = [[tempo(0, 100), tempo(8 * t, 140), tempo(16 * t, 70)], [tempo(4 * t, 180)] + melody(t, 24, scale)]
    save(out / "tempo_unsorted.mid", t, unsorted)
    save(out / "tempo_unsorted_sorted.mid", t, [[tempo(0, 100), tempo(4 * t, 180), tempo(8 * t, 140), tempo(16 * t, 70)],
                                                melody(t, 24, scale)])

    # A tempo at tick 0 in a later track replaces every tempo read before it (miditoolkit).
    save(out / "tempo_zero_later_track.mid", t, [[tempo(0, 100), tempo(4 * t, 180)], [tempo(0, 66)] + melody(t, 12, scale)])

    # Drums (channel 9), bass, and a program change while a note sounds (program at note-off).
    drums = []
    for beat in range(16):
        drums += note(beat * t, beat * t + 60, 36 if beat % 2 == 0 else 38, 100, ch=9)
        drums += note(beat * t + t // 2, beat * t + t // 2 + 30, 42, 70, ch=9)
    bass = [msg(0, "program_change", program=33, channel=2)] + melody(t, 16, [36, 43, 41, 38], step=2, ch=2)
    keys = note(0, 3 * t, 64, ch=3) + [msg(t, "program_change", program=5, channel=3)] + note(4 * t, 5 * t, 67, ch=3)
    save(out / "drums.mid", t, [[tempo(0, 110)], drums, bass, keys])

    # Overlaps: same pitch overlapping (FIFO pairing), duplicates, zero-length notes,
    # a note never closed, stray note-offs, velocity-0 note-ons, two channels in one track.
    ov = [msg(0, "note_on", note=60, velocity=90), msg(t // 2, "note_on", note=60, velocity=70),
          msg(t, "note_off", note=60), msg(2 * t, "note_off", note=60)]
    ov += note(2 * t, 3 * t, 64) + note(2 * t, 3 * t, 64)
    ov += note(3 * t, 3 * t, 67, 50)
    ov += [msg(3 * t, "note_on", note=72, velocity=60), msg(4 * t, "note_on", note=72, velocity=0)]
    ov += [msg(4 * t, "note_off", note=50), msg(5 * t, "note_on", note=55, velocity=40)]
    ov += note(5 * t, 7 * t, 48, 70, ch=4) + note(6 * t, 6 * t + 10, 48, 75, ch=5)
    save(out / "overlapping.mid", t, [[tempo(0, 120)], ov])

    # Notes past bar 255 (OctupleMIDI drops them, REMI keeps them), a note ending far
    # after the last onset, and an unsupported signature after the last onset (never
    # reached by the encoder, so no error).
    far = note(0, t, 60) + note(4 * t * 100, 4 * t * 100 + t, 62) + note(4 * t * 300, 4 * t * 400, 64)
    far += note(6000 * t, 6001 * t, 65)  # position 72000 >= 2^16: dropped by both encoders
    save(out / "past_last_bar.mid", t, [[ts(0, 4, 4), ts(7000 * t, 3, 128)], far])

    # Rounding half to even: at 24 ticks per beat, tick 1 -> 0.5 -> 0, tick 3 -> 1.5 -> 2.
    t = 24
    save(out / "odd_ppq.mid", t, [[tempo(0, 100)],
                                  [e for k in range(12) for e in note(k, k + 1 + k % 3, 60 + k)]])

    # Empty bars between notes; and a file with no notes at all.
    t = 480
    save(out / "empty_bars.mid", t, [[ts(0, 4, 4)], note(0, t, 60) + note(4 * t * 5 + t, 4 * t * 5 + 2 * t, 62)])
    save(out / "no_notes.mid", t, [[ts(0, 4, 4), tempo(0, 90)], [msg(0, "program_change", program=3)]])


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/midi")
