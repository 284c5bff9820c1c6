//! A lead sheet as the generator sees it: a range of its bars, each with the time signature,
//! length and tempo the piano part must follow and its place in seconds; the redacted REMI tokens
//! of the lead sheet over any window of those bars (as training feeds them); and the way back,
//! from the piano tokens of every bar to a [`Score`] on the lead sheet's timeline.
//!
//! The lead sheet is any score, usually melody (program 0) plus chords (program 4) as
//! `stylebridge leadsheet` writes it ([`LeadSheet::to_score`](crate::data::leadsheet::LeadSheet::to_score));
//! its bars are the OctupleMIDI bar grid ([`BarGrid`]), which is how training numbered them.
use anyhow::{ensure, Context, Result};
use std::cmp::Reverse;
use std::ops::Range;

use super::grammar::BarSpec;
use crate::data::encodings::{bin_to_velocity, bucket_to_duration, remi, score_to_octuples, tempo_to_bin, time_signature_id, Octuple, DRUM_PROGRAM};
use crate::data::leadsheet::CHORD_PROGRAM;
use crate::data::midi::{ControlChange, Instrument, Note, Score, TempoChange, TimeSignature, SUSTAIN_PEDAL};
use crate::data::segments::{pos_to_tick, BarGrid, TempoMap};

/// Name of the piano track of a generated score.
pub const PIANO_TRACK: &str = "PIANO";

/// One bar of a passage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PassageBar {
    /// Signature, length and tempo the piano part follows.
    pub spec: BarSpec,
    /// Where the bar starts, in 1/12-beat positions from the passage's first bar.
    pub start_pos: u32,
    /// Start and end on the lead sheet's timeline (seconds from its beginning).
    pub start_seconds: f64,
    pub end_seconds: f64,
}

/// Bars `first_bar..first_bar + len` of a lead sheet.
#[derive(Debug, Clone)]
pub struct Passage {
    first_bar: usize,
    bars: Vec<PassageBar>,
    /// Lead-sheet notes of the passage, bars counted from its first bar, in training order.
    lead: Vec<Octuple>,
    ticks_per_beat: u32,
    /// Lead-sheet tick where the passage starts (its tick 0).
    start_tick: u32,
    /// Lead-sheet position where the passage starts.
    start_pos: u32,
    tempo_changes: Vec<TempoChange>,
    time_signatures: Vec<TimeSignature>,
}

impl Passage {
    /// Bars `start_bar..start_bar + bars` of `lead_sheet` (to its last bar when `bars` is `None`).
    pub fn new(lead_sheet: &Score, start_bar: usize, bars: Option<usize>) -> Result<Self> {
        ensure!(lead_sheet.note_count() > 0, "the lead sheet has no notes");
        let grid = BarGrid::from_score(lead_sheet).context("cannot lay the lead sheet's bars")?;
        let total = grid.bars.len();
        ensure!(start_bar < total, "start bar {start_bar} is outside the lead sheet's {total} bars (0..={})", total - 1);
        let count = bars.unwrap_or(total - start_bar);
        ensure!(count >= 1, "a passage needs at least 1 bar");
        ensure!(
            start_bar + count <= total,
            "bars {start_bar}..{} reach past the lead sheet's {total} bars (at most {} from bar {start_bar})",
            start_bar + count,
            total - start_bar
        );
        let end_bar = start_bar + count;
        let tpb = lead_sheet.ticks_per_beat;
        let tempo = TempoMap::new(lead_sheet);
        let seconds_at = |pos: u32| tempo.seconds_at(grid.pos_to_tick_exact(pos));
        let start_pos = grid.bar_start_pos(start_bar);
        let mut passage_bars = Vec::with_capacity(count);
        for index in start_bar..end_bar {
            let bar = grid.bars[index];
            let (n, d) = (bar.numerator, bar.denominator);
            let spec = time_signature_id(n, d)
                .with_context(|| format!("bar {index} is in {n}/{d}, a time signature REMI cannot express"))
                .and_then(|ts| {
                    let bpm = tempo.bpm_at(grid.pos_to_tick_exact(bar.start_pos), tpb);
                    BarSpec::new(ts, tempo_to_bin(bpm)).with_context(|| format!("bar {index} ({n}/{d}) cannot be written in REMI"))
                })?;
            passage_bars.push(PassageBar {
                spec,
                start_pos: bar.start_pos - start_pos,
                start_seconds: seconds_at(bar.start_pos),
                end_seconds: seconds_at(bar.start_pos + bar.length_pos),
            });
        }
        let mut lead: Vec<Octuple> = score_to_octuples(lead_sheet)
            .context("cannot encode the lead sheet")?
            .into_iter()
            .filter(|n| (start_bar..end_bar).contains(&(n.bar as usize)))
            .map(|n| Octuple { bar: n.bar - start_bar as u32, ..n })
            .collect();
        // BOSSA's training order: pitch high to low within (bar, onset, program).
        lead.sort_by_key(|n| (n.bar, n.position, n.program, Reverse(n.pitch)));
        let (start_tick, end_tick) = (pos_to_tick(start_pos, tpb), pos_to_tick(grid.bar_start_pos(end_bar), tpb));
        Ok(Self {
            first_bar: start_bar,
            bars: passage_bars,
            lead,
            ticks_per_beat: tpb,
            start_tick,
            start_pos,
            tempo_changes: from_tick(&lead_sheet.tempo_changes, |t| t.tick, start_tick, end_tick, |t, tick| TempoChange { tick, ..t }),
            time_signatures: from_tick(&lead_sheet.time_signatures, |t| t.tick, start_tick, end_tick, |t, tick| TimeSignature { tick, ..t }),
        })
    }

    /// Index of the passage's first bar in the lead sheet.
    pub fn first_bar(&self) -> usize {
        self.first_bar
    }

    pub fn bars(&self) -> &[PassageBar] {
        &self.bars
    }

    pub fn len(&self) -> usize {
        self.bars.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bars.is_empty()
    }

    /// Signature, length and tempo of each of `bars`.
    pub fn bar_specs(&self, bars: Range<usize>) -> Vec<BarSpec> {
        self.bars[bars].iter().map(|b| b.spec).collect()
    }

    /// Start of the first and end of the last of `bars` in seconds on the lead sheet's timeline.
    pub fn seconds(&self, bars: Range<usize>) -> (f64, f64) {
        (self.bars[bars.start].start_seconds, self.bars[bars.end - 1].end_seconds)
    }

    /// The lead-sheet notes of `bars`, bars counted from `bars.start`, in training order.
    pub fn lead_notes(&self, bars: Range<usize>) -> Vec<Octuple> {
        self.lead.iter().filter(|n| bars.contains(&(n.bar as usize))).map(|n| Octuple { bar: n.bar - bars.start as u32, ..*n }).collect()
    }

    /// The lead sheet of `bars` as stage 2 reads it: REMI with tempo and velocity redacted
    /// (`<unk>`), bars counted from `bars.start`, empty bars left out as the encoder leaves them.
    pub fn lead_tokens(&self, bars: Range<usize>) -> Vec<u32> {
        remi::tokens(&self.lead_notes(bars), true)
    }

    /// The piano part back as a score: `bar_tokens` holds the REMI tokens of every bar of the
    /// passage (each ending with `b-1`). The score keeps the lead sheet's ticks per beat, tempo map
    /// and time signatures from the passage's first bar on, shifted so that bar starts at tick 0;
    /// a note starts at its bar's start + onset, lasts the shortest duration of its bucket (at
    /// least a tick) and takes the centre velocity of its bin. Program 0 is track PIANO, every
    /// other program its own track.
    pub fn to_score(&self, bar_tokens: &[Vec<u32>]) -> Result<Score> {
        ensure!(bar_tokens.len() == self.bars.len(), "{} bars of piano tokens for a passage of {} bars", bar_tokens.len(), self.bars.len());
        let tpb = self.ticks_per_beat;
        let tick = |pos: u32| pos_to_tick(self.start_pos + pos, tpb) - self.start_tick;
        let mut by_program: Vec<Vec<Note>> = vec![Vec::new(); DRUM_PROGRAM as usize + 1];
        for (index, (tokens, bar)) in bar_tokens.iter().zip(&self.bars).enumerate() {
            let bar_ends = tokens.iter().filter(|&&t| t == remi::BAR_END).count();
            ensure!(bar_ends == 1 && tokens.last() == Some(&remi::BAR_END), "bar {index}: the tokens of one bar end with b-1 (found {bar_ends} b-1)");
            let notes = remi::decode(tokens).with_context(|| format!("bar {index}: not valid REMI"))?;
            for n in notes {
                let length = bar.spec.length();
                ensure!(n.position < length, "bar {index}: onset {} is past the bar's {length} positions", n.position);
                let start = tick(bar.start_pos + n.position);
                let end = tick(bar.start_pos + n.position + bucket_to_duration(n.duration)).max(start + 1);
                let pitch = if n.program == DRUM_PROGRAM { n.pitch.saturating_sub(128) } else { n.pitch };
                by_program[n.program.min(DRUM_PROGRAM) as usize].push(Note { start, end, pitch: pitch.min(127) as u8, velocity: bin_to_velocity(n.velocity) });
            }
        }
        let instruments = by_program
            .into_iter()
            .enumerate()
            .filter(|(_, notes)| !notes.is_empty())
            .map(|(program, mut notes)| {
                notes.sort();
                let is_drum = program == DRUM_PROGRAM as usize;
                let name = match program {
                    0 => PIANO_TRACK.to_string(),
                    _ if is_drum => "DRUMS".to_string(),
                    _ => format!("PROGRAM {program}"),
                };
                Instrument { name, program: if is_drum { 0 } else { program as u8 }, is_drum, notes, control_changes: Vec::new() }
            })
            .collect();
        Ok(Score { ticks_per_beat: tpb, instruments, tempo_changes: self.tempo_changes.clone(), time_signatures: self.time_signatures.clone() })
    }
}

impl Passage {
    /// BOSSA's `add_pedal` on the passage's timeline: the sustain pedal goes down (64 = 72) at
    /// every bar line and chord change (an onset of the lead sheet's chord track, program 4) and
    /// comes up (64 = 0) 0.05 s before the next one; the last span gets none, as in BOSSA.
    pub fn pedal(&self) -> Vec<ControlChange> {
        let tpb = self.ticks_per_beat;
        let tick = |pos: u32| pos_to_tick(self.start_pos + pos, tpb) - self.start_tick;
        let mut changes: Vec<u32> = self.bars.iter().map(|b| tick(b.start_pos)).collect();
        changes.extend(self.lead.iter().filter(|n| n.program == u32::from(CHORD_PROGRAM)).map(|n| tick(self.bars[n.bar as usize].start_pos + n.position)));
        changes.sort_unstable();
        changes.dedup();
        let score = Score { ticks_per_beat: tpb, instruments: Vec::new(), tempo_changes: self.tempo_changes.clone(), time_signatures: Vec::new() };
        let tempo = TempoMap::new(&score);
        let mut pedal = Vec::with_capacity(2 * changes.len());
        for pair in changes.windows(2) {
            let release = tempo.tick_at(tempo.seconds_at(f64::from(pair[1])) - 0.05).round().max(f64::from(pair[0])) as u32;
            pedal.push(ControlChange { tick: pair[0], controller: SUSTAIN_PEDAL, value: 72 });
            pedal.push(ControlChange { tick: release, controller: SUSTAIN_PEDAL, value: 0 });
        }
        pedal
    }
}

/// Events of a map from `start` on, shifted by `-start`: the one in force at `start` (the last
/// at or before it, in tick order) moved to tick 0, then those before `end`.
fn from_tick<T: Copy>(events: &[T], tick_of: impl Fn(&T) -> u32, start: u32, end: u32, at: impl Fn(T, u32) -> T) -> Vec<T> {
    let mut sorted = events.to_vec();
    sorted.sort_by_key(&tick_of); // stable: the file's order among events of one tick
    let in_force = sorted.iter().rposition(|e| tick_of(e) <= start);
    let later = sorted.iter().filter(|e| tick_of(e) > start && tick_of(e) < end).map(|&e| at(e, tick_of(&e) - start));
    in_force.map(|i| at(sorted[i], 0)).into_iter().chain(later).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::leadsheet::MELODY_PROGRAM;

    const TPB: u32 = 480;

    /// A lead sheet: a melody note on beat 2 and a chord on beat 1 of every bar.
    fn lead_sheet(meter: (u32, u32), bars: u32, tempos: &[(u32, f64)]) -> Score {
        let bar = TPB * 4 * meter.0 / meter.1;
        let melody = (0..bars).map(|b| Note { start: b * bar + TPB, end: b * bar + 2 * TPB, pitch: 72 + (b % 5) as u8, velocity: 90 }).collect();
        let chords = (0..bars).flat_map(|b| [48u8, 52, 55].map(|p| Note { start: b * bar, end: (b + 1) * bar, pitch: p, velocity: 80 })).collect();
        Score {
            ticks_per_beat: TPB,
            instruments: vec![
                Instrument { name: "MELODY".into(), program: MELODY_PROGRAM, is_drum: false, notes: melody, control_changes: Vec::new() },
                Instrument { name: "CHORDS".into(), program: CHORD_PROGRAM, is_drum: false, notes: chords, control_changes: Vec::new() },
            ],
            tempo_changes: tempos.iter().map(|&(tick, bpm)| TempoChange { tick, bpm }).collect(),
            time_signatures: vec![TimeSignature { tick: 0, numerator: meter.0, denominator: meter.1 }],
        }
    }

    fn ids(names: &str) -> Vec<u32> {
        names.split_whitespace().map(remi::token_id).collect()
    }

    fn names(ids: &[u32]) -> String {
        ids.iter().map(|&t| remi::token_name(t)).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn pedal_follows_bars_and_chord_changes() {
        // 3 bars of 4/4 at 120 bpm (0.5 s a beat): a chord per bar, and one more on beat 3 of bar 1.
        let mut score = lead_sheet((4, 4), 3, &[(0, 120.0)]);
        score.instruments[1].notes.push(Note { start: 6 * TPB, end: 8 * TPB, pitch: 50, velocity: 80 });
        let passage = Passage::new(&score, 0, None).unwrap();
        let pedal: Vec<(u32, u8)> = passage.pedal().iter().map(|c| (c.tick, c.value)).collect();
        // Down at 0, 4, 6 and 8 beats; up 0.05 s (48 ticks at 960 ticks/s) before the next change.
        let beat = TPB;
        assert_eq!(pedal, vec![(0, 72), (4 * beat - 48, 0), (4 * beat, 72), (6 * beat - 48, 0), (6 * beat, 72), (8 * beat - 48, 0)]);
        assert!(passage.pedal().iter().all(|c| c.controller == 64));
        // From bar 1 on, the passage's own timeline.
        let later = Passage::new(&score, 1, None).unwrap();
        assert_eq!(later.pedal()[0].tick, 0);
        assert_eq!(later.pedal()[2].tick, 2 * beat);
    }

    #[test]
    fn bars_of_a_four_four_passage() {
        let score = lead_sheet((4, 4), 6, &[(0, 120.0)]);
        let passage = Passage::new(&score, 2, Some(3)).unwrap();
        assert_eq!((passage.first_bar(), passage.len()), (2, 3));
        let bar = passage.bars()[1];
        assert_eq!((bar.spec.time_signature(), bar.spec.length(), bar.spec.tempo()), (9, 48, 35));
        assert_eq!(bar.start_pos, 48);
        assert_eq!(passage.seconds(0..3), (4.0, 10.0));
        // To the end by default.
        assert_eq!(Passage::new(&score, 1, None).unwrap().len(), 5);
        // The lead sheet of passage bars 1..3 (lead-sheet bars 3, 4), redacted, bars renumbered.
        let tokens = passage.lead_tokens(1..3);
        let expected = "s-9 <unk> o-0 i-4 p-55 d-27 <unk> p-52 d-27 <unk> p-48 d-27 <unk> o-12 i-0 p-75 d-12 <unk> b-1 \
                        s-9 <unk> o-0 i-4 p-55 d-27 <unk> p-52 d-27 <unk> p-48 d-27 <unk> o-12 i-0 p-76 d-12 <unk> b-1";
        assert_eq!(names(&tokens), expected);
    }

    #[test]
    fn piano_tokens_become_notes_at_the_right_ticks() {
        let score = lead_sheet((4, 4), 6, &[(0, 100.0), (3 * 1920, 80.0)]);
        let passage = Passage::new(&score, 2, Some(3)).unwrap();
        let bars = [
            ids("s-9 t-33 o-0 i-0 p-60 d-12 v-20 p-55 d-1 v-31 b-1"),
            ids("s-9 t-33 b-1"),
            ids("s-9 t-29 o-24 i-0 p-64 d-6 v-10 i-33 p-40 d-24 v-0 b-1"),
        ];
        let out = passage.to_score(&bars).unwrap();
        assert_eq!(out.ticks_per_beat, TPB);
        assert_eq!(out.instruments.len(), 2);
        let (piano, bass) = (&out.instruments[0], &out.instruments[1]);
        assert_eq!((piano.name.as_str(), piano.program, bass.program), (PIANO_TRACK, 0, 33));
        // Bar 0 at tick 0; bucket 12 = 12 positions = one beat; bar 2 starts at 3840.
        let got: Vec<(u32, u32, u8, u8)> = piano.notes.iter().map(|n| (n.start, n.end, n.pitch, n.velocity)).collect();
        assert_eq!(got, [(0, 40, 55, 126), (0, 480, 60, 82), (3840 + 960, 3840 + 960 + 240, 64, 42)]);
        assert_eq!(bass.notes[0].start, 4800);
        assert_eq!(bass.notes[0].end - bass.notes[0].start, 1440, "bucket 24 = 36 positions");
        // The tempo in force at bar 2 (100 bpm) moves to tick 0; the change at lead-sheet bar 3
        // lands one bar in.
        assert_eq!(out.tempo_changes, [TempoChange { tick: 0, bpm: 100.0 }, TempoChange { tick: 1920, bpm: 80.0 }]);
        assert_eq!(out.time_signatures, [TimeSignature { tick: 0, numerator: 4, denominator: 4 }]);
        // The round trip through the encoder gives the same notes back.
        let again = remi::encode(&out).unwrap();
        assert_eq!(remi::decode(&again).unwrap().len(), 4);
    }

    #[test]
    fn a_three_four_passage_keeps_its_meter_and_tempo() {
        let score = lead_sheet((3, 4), 5, &[(0, 90.0), (3 * 1440, 60.0)]);
        let passage = Passage::new(&score, 1, Some(3)).unwrap();
        let specs = passage.bar_specs(0..3);
        assert!(specs.iter().all(|s| s.time_signature() == 8 && s.length() == 36));
        assert_eq!(specs.iter().map(|s| s.tempo()).collect::<Vec<_>>(), [tempo_to_bin(90.0), tempo_to_bin(90.0), tempo_to_bin(60.0)]);
        assert_eq!(passage.bars().iter().map(|b| b.start_pos).collect::<Vec<_>>(), [0, 36, 72]);
        // Bar 1 of the lead sheet starts at 2 s (3 beats at 90 bpm); bar 3 lasts 3 s at 60 bpm.
        let (start, end) = passage.seconds(0..3);
        assert!((start - 2.0).abs() < 1e-9 && (end - 9.0).abs() < 1e-9, "{start} {end}");
        let empty = specs.iter().map(|s| s.empty_bar()).collect::<Vec<_>>();
        let mut bars = empty.clone();
        bars[1] = ids("s-8 t-28 o-12 i-0 p-67 d-12 v-25 o-35 i-0 p-60 d-0 v-25 b-1");
        let out = passage.to_score(&bars).unwrap();
        let starts: Vec<u32> = out.instruments[0].notes.iter().map(|n| n.start).collect();
        assert_eq!(starts, [1440 + 480, 1440 + 35 * 40]);
        assert_eq!(out.instruments[0].notes[1].end, 1440 + 35 * 40 + 1, "a zero-length bucket still lasts a tick");
        assert_eq!(out.tempo_changes, [TempoChange { tick: 0, bpm: 90.0 }, TempoChange { tick: 2880, bpm: 60.0 }]);
        assert_eq!(out.time_signatures, [TimeSignature { tick: 0, numerator: 3, denominator: 4 }]);
        // All bars empty: a score with no notes but the same maps.
        assert_eq!(passage.to_score(&empty).unwrap().note_count(), 0);
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let score = lead_sheet((4, 4), 4, &[(0, 120.0)]);
        let msg = |r: Result<Passage>| format!("{:#}", r.unwrap_err());
        let silent = Score { instruments: Vec::new(), ..score.clone() };
        assert!(msg(Passage::new(&silent, 0, None)).contains("no notes"));
        assert!(msg(Passage::new(&score, 4, None)).contains("start bar 4 is outside the lead sheet's 4 bars"));
        assert!(msg(Passage::new(&score, 2, Some(3))).contains("bars 2..5 reach past the lead sheet's 4 bars"));
        assert!(msg(Passage::new(&score, 0, Some(0))).contains("at least 1 bar"));
        let odd = Score { time_signatures: vec![TimeSignature { tick: 0, numerator: 3, denominator: 128 }], ..score.clone() };
        assert!(msg(Passage::new(&odd, 0, None)).contains("3/128"));
        let passage = Passage::new(&score, 0, Some(2)).unwrap();
        let empty = ids("s-9 t-35 b-1");
        let err = format!("{:#}", passage.to_score(std::slice::from_ref(&empty)).unwrap_err());
        assert!(err.contains("1 bars of piano tokens for a passage of 2"), "{err}");
        let err = format!("{:#}", passage.to_score(&[empty.clone(), ids("s-9 t-35 o-50 i-0 p-60 d-3 v-3 b-1")]).unwrap_err());
        assert!(err.contains("bar 1: onset 50 is past the bar's 48 positions"), "{err}");
        let err = format!("{:#}", passage.to_score(&[empty.clone(), ids("s-9 t-35 p-60 b-1")]).unwrap_err());
        assert!(err.contains("bar 1: not valid REMI"), "{err}");
        let err = format!("{:#}", passage.to_score(&[empty.clone(), ids("s-9 t-35 b-1 s-9 t-35 b-1")]).unwrap_err());
        assert!(err.contains("found 2 b-1"), "{err}");
    }
}
