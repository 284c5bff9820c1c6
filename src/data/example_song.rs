//! The small song the project ships in `data/examples/waltz/` for the demo and the end-to-end
//! tests, generated here (never copied from a dataset): a 3/4 waltz in C with a one-beat pickup,
//! 16 bars, 96 bpm slowing to 84 for the last 4 bars. It is laid out like a POP909 song folder:
//! `waltz.mid` (tracks MELODY and PIANO), `chord_midi.txt` and `beat_midi.txt` (POP909's triple
//! meter convention: column 2 marks every bar, column 3 every other bar).
//!
//! Regenerate with `cargo run --example make_example_song` (a test checks the shipped files match).
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::data::leadsheet::{parse_chord, Chord, MELODY_TRACK};
use crate::data::midi::{self, Instrument, Note, Score, TempoChange, TimeSignature};
use crate::data::segments::TempoMap;

pub const NAME: &str = "waltz";
const TPB: u32 = 480;
const BAR: u32 = 3 * TPB;
const PICKUP: u32 = TPB;
const CHORDS: [&str; 16] = [
    "C:maj", "A:min", "F:maj", "G:7", "C:maj/3", "A:min7", "D:min7", "G:7", //
    "F:maj7", "E:min7", "A:min", "D:7", "F:maj", "G:sus4", "G:7", "C:maj",
];
/// Melody rhythm per bar, in twelfths of a beat (3 beats = 36).
const RHYTHMS: [&[u32]; 16] = [
    &[12, 12, 12], &[24, 12], &[18, 6, 12], &[24, 12], //
    &[12, 12, 12], &[24, 12], &[18, 6, 12], &[36], //
    &[12, 12, 12], &[24, 12], &[18, 6, 12], &[24, 12], //
    &[12, 12, 12], &[18, 6, 12], &[24, 12], &[36],
];
const RITARDANDO_BAR: u32 = 12;

fn bar_start(bar: u32) -> u32 {
    PICKUP + bar * BAR
}

fn chord(bar: usize) -> Chord {
    parse_chord(CHORDS[bar]).ok().flatten().expect("the example's chord labels are valid")
}

/// Melody: chord tones between D4 and A5, each note the chord tone nearest a small step from the
/// previous one (up in even bars, down in odd), ending on C5.
fn melody() -> Vec<Note> {
    let mut notes = vec![Note { start: 0, end: PICKUP - 40, pitch: 67, velocity: 88 }];
    let mut previous: i32 = 67;
    for (bar, rhythm) in RHYTHMS.iter().enumerate() {
        let c = chord(bar);
        let tones: Vec<i32> = (62..=81).filter(|&p| c.sounds(p)).collect();
        let step = if bar % 2 == 0 { 2 } else { -2 };
        let mut tick = bar_start(bar as u32);
        for (k, &length) in rhythm.iter().enumerate() {
            let target = if bar == RHYTHMS.len() - 1 { 72 } else { previous + step };
            let pitch = *tones
                .iter()
                .filter(|&&p| p != previous || tones.len() == 1)
                .min_by_key(|&&p| ((p - target).abs(), p))
                .expect("every chord has tones in range");
            let duration = length * TPB / 12;
            let velocity = if k == 0 { 96 } else { 84 };
            notes.push(Note { start: tick, end: tick + duration - 40, pitch: pitch as u8, velocity });
            previous = pitch;
            tick += duration;
        }
    }
    notes
}

/// Piano: bass on beat 1, the chord (BOSSA's voicing) on beats 2 and 3; the last bar held.
fn piano() -> Vec<Note> {
    let mut notes = Vec::new();
    for bar in 0..CHORDS.len() {
        let (c, start) = (chord(bar), bar_start(bar as u32));
        let last = bar == CHORDS.len() - 1;
        // Everything ends 1/12 beat before the next beat, the final chord too (so it ends on the
        // last point of the annotated beat grid rather than past it).
        let bass_end = if last { start + BAR - 40 } else { start + TPB - 40 };
        notes.push(Note { start, end: bass_end, pitch: 36 + c.bass, velocity: 76 });
        let beats: &[u32] = if last { &[1] } else { &[1, 2] };
        for &beat in beats {
            let (on, off) = (start + beat * TPB, if last { start + BAR - 40 } else { start + (beat + 1) * TPB - 40 });
            notes.extend(c.pitches().into_iter().map(|pitch| Note { start: on, end: off, pitch, velocity: 62 }));
        }
    }
    notes.sort();
    notes
}

/// The example song as a score.
pub fn score() -> Score {
    Score {
        ticks_per_beat: TPB,
        instruments: vec![
            Instrument { name: MELODY_TRACK.into(), program: 0, is_drum: false, notes: melody(), control_changes: vec![] },
            Instrument { name: "PIANO".into(), program: 0, is_drum: false, notes: piano(), control_changes: vec![] },
        ],
        tempo_changes: vec![TempoChange { tick: 0, bpm: 96.0 }, TempoChange { tick: bar_start(RITARDANDO_BAR), bpm: 84.0 }],
        time_signatures: vec![
            TimeSignature { tick: 0, numerator: 1, denominator: 4 },
            TimeSignature { tick: PICKUP, numerator: 3, denominator: 4 },
        ],
    }
}

/// `chord_midi.txt`: `start end label` in seconds, `N` over the pickup.
fn chord_file(tempo: &TempoMap) -> String {
    let seconds = |tick: u32| tempo.seconds_at(f64::from(tick));
    let mut text = format!("{}\t{}\tN\n", seconds(0), seconds(PICKUP));
    for (bar, label) in CHORDS.iter().enumerate() {
        let bar = bar as u32;
        let _ = writeln!(text, "{}\t{}\t{label}", seconds(bar_start(bar)), seconds(bar_start(bar + 1)));
    }
    text
}

/// `beat_midi.txt`: one line per beat, `time downbeat every-other-downbeat`.
fn beat_file(tempo: &TempoMap) -> String {
    let beats = (PICKUP + CHORDS.len() as u32 * BAR) / TPB;
    let mut text = String::new();
    for beat in 0..beats {
        let in_bars = beat.checked_sub(1); // beat 0 is the pickup
        let downbeat = in_bars.is_some_and(|b| b % 3 == 0);
        let every_other = in_bars.is_some_and(|b| b % 6 == 0);
        let flag = |on: bool| if on { "1.0" } else { "0.0" };
        let _ = writeln!(text, "{} {} {}", tempo.seconds_at(f64::from(beat * TPB)), flag(downbeat), flag(every_other));
    }
    text
}

/// Write `dir/waltz.mid`, `dir/chord_midi.txt` and `dir/beat_midi.txt`.
pub fn write(dir: &Path) -> Result<()> {
    let score = score();
    let tempo = TempoMap::new(&score);
    midi::write(&score, &dir.join(format!("{NAME}.mid")))?;
    for (file, text) in [("chord_midi.txt", chord_file(&tempo)), ("beat_midi.txt", beat_file(&tempo))] {
        let path = dir.join(file);
        crate::atomic::write(&path, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::segments::BarGrid;

    #[test]
    fn waltz_has_a_pickup_and_sixteen_bars_of_three_four() {
        let score = score();
        let grid = BarGrid::from_score(&score).unwrap();
        let lengths: Vec<u32> = grid.bars.iter().map(|b| b.length_pos).collect();
        assert_eq!(lengths, [[12].as_slice(), &[36; 16]].concat());
        // Every bar's melody fills it exactly (rhythms sum to 3 beats).
        assert!(RHYTHMS.iter().all(|r| r.iter().sum::<u32>() == 36));
        // 96 bpm for the pickup and 12 bars (37 beats), then 84 bpm for 12 beats.
        let end = TempoMap::new(&score).seconds_at(f64::from(bar_start(16)));
        assert!((end - (37.0 * 60.0 / 96.0 + 12.0 * 60.0 / 84.0)).abs() < 1e-9, "{end}");
        let melody = &score.instruments[0].notes;
        assert!(melody.iter().all(|n| (62..=81).contains(&n.pitch)));
        assert_eq!(melody.last().map(|n| n.pitch), Some(72));
    }
}
