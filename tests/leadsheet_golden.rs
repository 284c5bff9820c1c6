//! Parity with BOSSA's POP909 lead sheets (`data_processing/arrange_pop909.py`): the golden files
//! in tests/data/bossa_leadsheet/ hold the reference's lead-sheet events for three songs (triple
//! meter; 7 tempo changes; irregular beats; skipped when ../shared/data/pop909 is absent), and
//! `read_chord`'s voicing of every chord label POP909 uses.
use std::path::Path;

use stylebridge::data::leadsheet::{parse_chord, Pop909Song, CHORD_PROGRAM, MELODY_PROGRAM};
use stylebridge::data::midi::Score;
use stylebridge::data::segments::{tick_to_pos, BarGrid, TempoMap};

/// (bar, position in bar, program, pitch, duration in positions, velocity, beats per bar)
type Event = (i64, u32, u8, u8, u32, u8, u32);

fn golden(name: &str) -> Vec<(Event, u32)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/bossa_leadsheet/{name}.tsv"));
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .skip(1)
        .map(|line| {
            let v: Vec<i64> = line.split('\t').map(|f| f.parse().unwrap()).collect();
            ((v[0], v[1] as u32, v[2] as u8, v[3] as u8, v[4] as u32, v[5] as u8, v[6] as u32), v[7] as u32)
        })
        .collect()
}

/// Events of a lead-sheet score, bars counted from `first_bar` (earlier notes left out).
fn events(score: &Score, first_bar: usize) -> Vec<(Event, u32)> {
    let grid = BarGrid::from_score(score).unwrap();
    let tempo = TempoMap::new(score);
    let tpb = score.ticks_per_beat;
    let mut events = Vec::new();
    for inst in &score.instruments {
        assert!(inst.program == MELODY_PROGRAM || inst.program == CHORD_PROGRAM);
        for n in &inst.notes {
            let pos = tick_to_pos(n.start, tpb);
            let bar_index = grid.bar_of_pos(pos).unwrap();
            if bar_index < first_bar {
                continue;
            }
            let bar = grid.bars[bar_index];
            let bpm = tempo.bpm_at(f64::from(n.start), tpb).clamp(16.0, 256.0);
            let tempo_bin = (12.0 * (bpm / 16.0).log2()).round_ties_even() as u32;
            let event = (
                (bar_index - first_bar) as i64,
                pos - bar.start_pos,
                inst.program,
                n.pitch,
                tick_to_pos(n.end, tpb) - pos,
                n.velocity,
                bar.numerator,
            );
            events.push((event, tempo_bin));
        }
    }
    events.sort();
    events
}

/// Ours, numbered like BOSSA: bar 0 at the first annotated downbeat, the pickup left out, and
/// without the song's last chord (BOSSA reads chords as markers and drops the last one).
fn ours(dir: &Path) -> Vec<(Event, u32)> {
    let song = Pop909Song::load(dir).unwrap();
    let mut sheet = song.lead_sheet.clone();
    let last_chord = sheet.chords.iter().map(|c| c.start).max().unwrap();
    sheet.chords.retain(|c| c.start != last_chord);
    events(&sheet.to_score(), song.first_downbeat_bar)
}

#[test]
fn pop909_lead_sheets_match_bossa() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/pop909/POP909");
    if !root.is_dir() {
        eprintln!("skipping: {} is absent", root.display());
        return;
    }
    for song in ["034", "092", "152"] {
        let mut want = golden(song);
        want.sort();
        let got = ours(&root.join(song));
        let events = |v: &[(Event, u32)]| v.iter().map(|(e, _)| *e).collect::<Vec<_>>();
        let (want_events, got_events) = (events(&want), events(&got));
        // Bar, position, program, pitch, duration, velocity and meter: identical, note for note.
        assert_eq!(want_events.len(), got_events.len(), "{song}: number of lead-sheet notes");
        if let Some(i) = (0..want.len()).find(|&i| want_events[i] != got_events[i]) {
            panic!("{song}: first difference at sorted note {i}: reference {:?}, ours {:?}", want_events[i], got_events[i]);
        }
        // Tempo: ours follows the annotated beats (exact seconds), BOSSA reads the MIDI's tempo at
        // the unquantised onset; they differ by one bin only next to a tempo change.
        let off: Vec<(u32, u32)> = want.iter().zip(&got).filter(|(a, b)| a.1 != b.1).map(|(a, b)| (a.1, b.1)).collect();
        assert!(off.iter().all(|(a, b)| a.abs_diff(*b) == 1), "{song}: tempo bins {off:?}");
        assert!(off.len() * 40 <= want.len(), "{song}: {} of {} tempo bins differ", off.len(), want.len());
    }
}

#[test]
fn chord_voicings_match_bossa_read_chord() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bossa_leadsheet/chord_voicings.tsv");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut checked = 0;
    for line in text.lines().skip(1) {
        let (label, pitches) = line.split_once('\t').unwrap();
        let want: Vec<u8> = pitches.split(',').filter(|p| !p.is_empty()).map(|p| p.parse().unwrap()).collect();
        let got = parse_chord(label).unwrap().map(|c| c.pitches()).unwrap_or_default();
        assert_eq!(got, want, "chord {label}");
        checked += 1;
    }
    assert_eq!(checked, 320);
}

/// The lead-sheet MIDI we write is BOSSA's arranger input: its `read_leadsheet` (bars from the
/// file's time signatures via pretty_midi) sees exactly our notes, bars, meters and tempo bins.
#[test]
fn written_lead_sheet_reads_the_same_in_bossa_inference() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/examples/waltz");
    let sheet = Pop909Song::load(&dir).unwrap().lead_sheet;
    let mut want = golden("waltz_read_leadsheet");
    want.sort();
    // The reference's grid of 1/12 beats stops one point before the file's end, and it clamps note
    // ends there: notes ending with the song (the final chord) come out one position shorter.
    let score = sheet.to_score();
    let song_end = score.instruments.iter().flat_map(|i| &i.notes).map(|n| tick_to_pos(n.end, score.ticks_per_beat)).max().unwrap();
    let bars = BarGrid::from_score(&score).unwrap();
    let mut got = events(&score, 0);
    for ((bar, pos, .., dur, _, _), _) in &mut got {
        if bars.bars[*bar as usize].start_pos + *pos + *dur == song_end {
            *dur -= 1;
        }
    }
    assert_eq!(got, want);
}
