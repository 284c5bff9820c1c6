//! Bar grid, tempo map and the 4-bar / 2-bar-hop segments that training pairs are cut from.
//!
//! The bar grid follows the OctupleMIDI reference (`MIDI_to_encoding` in BOSSA `utils/octMIDI.py`,
//! from MusicBERT), because segments select notes by the bar index that encoding gives them:
//! - ticks become positions of 1/12 beat with Python's `round` (half to even);
//! - a time signature applies from the position its tick rounds to; before the first one, 4/4;
//!   of several on one position the last wins;
//! - a bar's length is fixed when the bar starts (`n * 48 // d` positions of the *reduced*
//!   signature, see [`reduce_time_signature`]), so a change in mid-bar moves the grid from the next
//!   bar on;
//! - the reference builds the grid only up to the last note onset; here it runs on to cover the last
//!   note's end, so the final bar's end (and a segment's end time) is known.
//!
//! Seconds come from the tempo map: 120 bpm until the first tempo change (the MIDI default), each
//! change in force from its tick on; of several on one tick the last wins.
use serde::{Deserialize, Serialize};

use crate::data::encodings::reduce_time_signature;
use crate::data::midi::{Score, DEFAULT_BPM};
use crate::yaml::{Problems, Validate};

/// Onset resolution of both encodings: 12 positions per beat (quarter note).
pub const POSITIONS_PER_BEAT: u32 = 12;
/// OctupleMIDI time signatures: denominators 1..=2^6, numerator at most 2 x denominator.
const MAX_TS_DENOMINATOR: u32 = 64;
/// Bars a grid may hold: far beyond any song (100k bars of 4/4 at 120 bpm last 55 hours), and a
/// bound on what a file's last tick can make the grid (and the `segments` listing) allocate.
pub const MAX_BARS: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum GridError {
    #[error("time signature {numerator}/{denominator} at tick {tick} cannot be encoded (OctupleMIDI allows denominators 1..64)")]
    UnsupportedTimeSignature { numerator: u32, denominator: u32, tick: u32 },
    #[error("time signature {numerator}/{denominator} at tick {tick} gives bars shorter than 1/12 beat")]
    BarTooShort { numerator: u32, denominator: u32, tick: u32 },
    #[error("segments need 1 ..= {MAX_BARS} bars and a hop of 1 ..= {MAX_BARS} bars (got {bars} bars, hop {hop})")]
    BadSegmentSpec { bars: usize, hop: usize },
    #[error("the notes reach tick {tick} (position {end_pos}), which takes more than {MAX_BARS} bars, the most a grid holds")]
    TooManyBars { tick: u32, end_pos: u32 },
}

/// Tick to 1/12-beat position with Python's `round(tick * 12 / tpb)` (ties to even).
pub fn tick_to_pos(tick: u32, ticks_per_beat: u32) -> u32 {
    let scaled = u64::from(tick) * u64::from(POSITIONS_PER_BEAT);
    let tpb = u64::from(ticks_per_beat.max(1));
    let (q, r) = (scaled / tpb, scaled % tpb);
    let up = match (2 * r).cmp(&tpb) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Equal => q % 2 == 1,
        std::cmp::Ordering::Less => false,
    };
    u32::try_from(q + u64::from(up)).unwrap_or(u32::MAX)
}

/// Position to tick the way the reference decoder does it: `pos * tpb // 12`.
pub fn pos_to_tick(pos: u32, ticks_per_beat: u32) -> u32 {
    let tick = u64::from(pos) * u64::from(ticks_per_beat) / u64::from(POSITIONS_PER_BEAT);
    u32::try_from(tick).unwrap_or(u32::MAX)
}

/// Tick <-> seconds through a score's tempo changes.
#[derive(Debug, Clone)]
pub struct TempoMap {
    /// (start tick, seconds at that tick, seconds per tick), sorted, first at tick 0.
    spans: Vec<(f64, f64, f64)>,
}

impl TempoMap {
    pub fn new(score: &Score) -> Self {
        let tpb = f64::from(score.ticks_per_beat.max(1));
        let seconds_per_tick = |bpm: f64| 60.0 / (bpm * tpb);
        let mut changes: Vec<(u32, f64)> = score.tempo_changes.iter().map(|t| (t.tick, t.bpm)).collect();
        changes.sort_by_key(|&(tick, _)| tick); // stable: file order among equal ticks
        let mut spans = vec![(0.0, 0.0, seconds_per_tick(DEFAULT_BPM))];
        for (tick, bpm) in changes {
            let tick = f64::from(tick);
            let &(last_tick, last_seconds, last_rate) = spans.last().expect("spans start non-empty");
            let seconds = last_seconds + (tick - last_tick) * last_rate;
            if tick == last_tick {
                spans.pop();
            }
            spans.push((tick, seconds, seconds_per_tick(bpm)));
        }
        Self { spans }
    }

    fn span_at(&self, tick: f64) -> (f64, f64, f64) {
        let i = self.spans.partition_point(|&(start, _, _)| start <= tick);
        self.spans[i.saturating_sub(1)]
    }

    /// Seconds at a (possibly fractional) tick.
    pub fn seconds_at(&self, tick: f64) -> f64 {
        let (start, seconds, rate) = self.span_at(tick);
        seconds + (tick - start) * rate
    }

    /// Fractional tick at a time in seconds (the inverse of [`seconds_at`](Self::seconds_at)).
    pub fn tick_at(&self, seconds: f64) -> f64 {
        let i = self.spans.partition_point(|&(_, s, _)| s <= seconds);
        let (start, span_seconds, rate) = self.spans[i.saturating_sub(1)];
        start + (seconds - span_seconds) / rate
    }

    /// Beats per minute in force at a tick.
    pub fn bpm_at(&self, tick: f64, ticks_per_beat: u32) -> f64 {
        let (_, _, rate) = self.span_at(tick);
        60.0 / (rate * f64::from(ticks_per_beat.max(1)))
    }
}

/// One bar of the grid, in 1/12-beat positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Bar {
    pub start_pos: u32,
    pub length_pos: u32,
    /// The reduced time signature in force when the bar starts (it sets the bar's length).
    pub numerator: u32,
    pub denominator: u32,
}

/// Bar lines of a score, as the OctupleMIDI encoding numbers them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BarGrid {
    pub ticks_per_beat: u32,
    pub bars: Vec<Bar>,
}

impl BarGrid {
    /// The grid covering every note of `score` (onsets and ends); empty for a score without notes.
    pub fn from_score(score: &Score) -> Result<Self, GridError> {
        let tpb = score.ticks_per_beat;
        let notes = || score.instruments.iter().flat_map(|i| &i.notes);
        let onset_end = notes().map(|n| tick_to_pos(n.start, tpb) + 1).max().unwrap_or(0);
        let end_pos = notes().map(|n| tick_to_pos(n.end, tpb)).max().unwrap_or(0).max(onset_end);
        Self::covering(score, end_pos, onset_end)
    }

    /// The grid of `score`'s time signatures with bars until one reaches past `end_pos`. A
    /// signature OctupleMIDI cannot encode is an error if it takes effect before `strict_end` (the
    /// reference fails there too); past it, where the reference builds no grid, it is skipped.
    pub fn covering(score: &Score, end_pos: u32, strict_end: u32) -> Result<Self, GridError> {
        let tpb = score.ticks_per_beat;
        // (position, reduced signature, original), sorted stably by position.
        let mut changes = Vec::with_capacity(score.time_signatures.len());
        for ts in &score.time_signatures {
            let (n, d) = reduce_time_signature(ts.numerator, ts.denominator);
            let pos = tick_to_pos(ts.tick, tpb);
            if d == 0 || d > MAX_TS_DENOMINATOR || !d.is_power_of_two() || n == 0 {
                if pos < strict_end {
                    return Err(GridError::UnsupportedTimeSignature { numerator: ts.numerator, denominator: ts.denominator, tick: ts.tick });
                }
                continue;
            }
            changes.push((pos, (n, d), ts));
        }
        changes.sort_by_key(|c| c.0);
        let signature_at = |pos: u32| {
            let i = changes.partition_point(|c| c.0 <= pos);
            i.checked_sub(1).map(|i| (changes[i].1, Some(changes[i].2)))
        };
        let mut bars = Vec::new();
        let mut pos = 0u32;
        while pos < end_pos {
            if bars.len() == MAX_BARS {
                return Err(GridError::TooManyBars { tick: pos_to_tick(end_pos, tpb), end_pos });
            }
            let ((n, d), origin) = signature_at(pos).unwrap_or(((4, 4), None));
            let length = n * 4 * POSITIONS_PER_BEAT / d;
            if length == 0 {
                let ts = origin.copied().unwrap_or(crate::data::midi::TimeSignature { tick: 0, numerator: n, denominator: d });
                return Err(GridError::BarTooShort { numerator: ts.numerator, denominator: ts.denominator, tick: ts.tick });
            }
            bars.push(Bar { start_pos: pos, length_pos: length, numerator: n, denominator: d });
            pos = pos.saturating_add(length);
        }
        Ok(Self { ticks_per_beat: tpb, bars })
    }

    /// Index of the bar holding a position (positions past the grid belong to no bar).
    pub fn bar_of_pos(&self, pos: u32) -> Option<usize> {
        let i = self.bars.partition_point(|b| b.start_pos <= pos);
        let bar = self.bars.get(i.checked_sub(1)?)?;
        (pos < bar.start_pos + bar.length_pos).then_some(i - 1)
    }

    /// Index of the bar holding a note that starts at `tick`.
    pub fn bar_of_tick(&self, tick: u32) -> Option<usize> {
        self.bar_of_pos(tick_to_pos(tick, self.ticks_per_beat))
    }

    /// Position where bar `index` starts; `index == len` gives the end of the last bar.
    pub fn bar_start_pos(&self, index: usize) -> u32 {
        match self.bars.get(index) {
            Some(bar) => bar.start_pos,
            None => self.bars.last().map_or(0, |b| b.start_pos + b.length_pos),
        }
    }

    /// Fractional tick of a position (exact; `pos_to_tick` floors it like the reference decoder).
    pub fn pos_to_tick_exact(&self, pos: u32) -> f64 {
        f64::from(pos) * f64::from(self.ticks_per_beat) / f64::from(POSITIONS_PER_BEAT)
    }
}

/// The `segments:` config section: how songs are cut into training pairs (SPEC 2).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SegmentConfig {
    pub bars: u32,
    pub hop_bars: u32,
}

impl Default for SegmentConfig {
    fn default() -> Self {
        Self { bars: 4, hop_bars: 2 }
    }
}

impl Validate for SegmentConfig {
    fn validate(&self, at: &str, p: &mut Problems) {
        p.check((1..=64).contains(&self.bars), at, "bars", || format!("is {}; must be 1..=64", self.bars));
        p.check((1..=self.bars.max(1)).contains(&self.hop_bars), at, "hop_bars", || format!("is {}; must be 1..=bars ({})", self.hop_bars, self.bars));
    }
}


/// How to cut a song: `bars` bars per segment, advancing `hop` bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSpec {
    pub bars: usize,
    pub hop: usize,
}

impl Default for SegmentSpec {
    /// BOSSA: 4-bar segments with a 2-bar hop.
    fn default() -> Self {
        Self { bars: 4, hop: 2 }
    }
}

/// One segment: bars `first_bar..end_bar` of the grid.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Segment {
    pub index: usize,
    pub first_bar: usize,
    pub end_bar: usize,
    pub start_tick: u32,
    pub end_tick: u32,
    pub start_seconds: f64,
    pub end_seconds: f64,
    /// Notes (all tracks) whose onset falls in the segment's bars.
    pub notes: usize,
}

/// Cut a score into segments. As in BOSSA `dataset.py`, only whole segments are listed: a window
/// starts every `hop` bars from bar 0 while all its `bars` bars lie inside the grid.
pub fn segments(score: &Score, spec: SegmentSpec) -> Result<(BarGrid, Vec<Segment>), GridError> {
    if !(1..=MAX_BARS).contains(&spec.bars) || !(1..=MAX_BARS).contains(&spec.hop) {
        return Err(GridError::BadSegmentSpec { bars: spec.bars, hop: spec.hop });
    }
    let grid = BarGrid::from_score(score)?;
    let tempo = TempoMap::new(score);
    let mut notes_per_bar = vec![0usize; grid.bars.len()];
    for note in score.instruments.iter().flat_map(|i| &i.notes) {
        if let Some(bar) = grid.bar_of_tick(note.start) {
            notes_per_bar[bar] += 1;
        }
    }
    let tpb = score.ticks_per_beat;
    let segments = (0..)
        .map(|k| k * spec.hop)
        .take_while(|&first| first + spec.bars <= grid.bars.len())
        .enumerate()
        .map(|(index, first_bar)| {
            let end_bar = first_bar + spec.bars;
            let (start_pos, end_pos) = (grid.bar_start_pos(first_bar), grid.bar_start_pos(end_bar));
            Segment {
                index,
                first_bar,
                end_bar,
                start_tick: pos_to_tick(start_pos, tpb),
                end_tick: pos_to_tick(end_pos, tpb),
                start_seconds: tempo.seconds_at(grid.pos_to_tick_exact(start_pos)),
                end_seconds: tempo.seconds_at(grid.pos_to_tick_exact(end_pos)),
                notes: notes_per_bar[first_bar..end_bar].iter().sum(),
            }
        })
        .collect();
    Ok((grid, segments))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::midi::{Instrument, Note, TempoChange, TimeSignature};

    const TPB: u32 = 480;

    fn score(signatures: &[(u32, u32, u32)], tempos: &[(u32, f64)], last_tick: u32) -> Score {
        Score {
            ticks_per_beat: TPB,
            instruments: vec![Instrument {
                name: "PIANO".into(),
                program: 0,
                is_drum: false,
                notes: vec![
                    Note { start: 0, end: 240, pitch: 60, velocity: 90 },
                    Note { start: last_tick - 240, end: last_tick, pitch: 64, velocity: 90 },
                ],
                control_changes: vec![],
            }],
            tempo_changes: tempos.iter().map(|&(tick, bpm)| TempoChange { tick, bpm }).collect(),
            time_signatures: signatures
                .iter()
                .map(|&(tick, numerator, denominator)| TimeSignature { tick, numerator, denominator })
                .collect(),
        }
    }

    fn bar_ticks(grid: &BarGrid) -> Vec<u32> {
        grid.bars.iter().map(|b| pos_to_tick(b.start_pos, grid.ticks_per_beat)).collect()
    }

    #[test]
    fn python_round_half_to_even() {
        // 20 ticks at 480 tpb is half a position: round(0.5) = 0, round(1.5) = 2, round(2.5) = 2.
        assert_eq!([20, 60, 100, 21, 59].map(|t| tick_to_pos(t, TPB)), [0, 2, 2, 1, 1]);
        assert_eq!(tick_to_pos(480 * 7, TPB), 84);
        assert_eq!(pos_to_tick(84, TPB), 3360);
        // 100 tpb: 12 positions do not divide a beat evenly; the decoder floors.
        assert_eq!(pos_to_tick(1, 100), 8);
    }

    #[test]
    fn reduce_rule_matches_reference() {
        assert_eq!(reduce_time_signature(4, 4), (4, 4));
        assert_eq!(reduce_time_signature(6, 8), (6, 8));
        assert_eq!(reduce_time_signature(9, 4), (3, 4));
        assert_eq!(reduce_time_signature(4, 128), (2, 64));
        assert_eq!(reduce_time_signature(25, 8), (5, 8));
        assert_eq!(reduce_time_signature(3, 0), (3, 0));
    }

    #[test]
    fn quadruple_meter_grid_and_default() {
        let grid = BarGrid::from_score(&score(&[(0, 4, 4)], &[], 4 * 1920)).unwrap();
        assert_eq!(bar_ticks(&grid), [0, 1920, 3840, 5760]);
        // No time signature at all: 4/4, same grid.
        let default = BarGrid::from_score(&score(&[], &[], 4 * 1920)).unwrap();
        assert_eq!(default, grid);
        assert!(grid.bars.iter().all(|b| b.length_pos == 48 && (b.numerator, b.denominator) == (4, 4)));
    }

    #[test]
    fn triple_and_compound_meters() {
        let three_four = BarGrid::from_score(&score(&[(0, 3, 4)], &[], 4 * 1440)).unwrap();
        assert_eq!(bar_ticks(&three_four), [0, 1440, 2880, 4320]);
        let six_eight = BarGrid::from_score(&score(&[(0, 6, 8)], &[], 3 * 1440)).unwrap();
        assert_eq!(bar_ticks(&six_eight), [0, 1440, 2880]);
        assert_eq!(six_eight.bars[0].length_pos, 36);
        let seven_eight = BarGrid::from_score(&score(&[(0, 7, 8)], &[], 3 * 1680)).unwrap();
        assert_eq!(bar_ticks(&seven_eight), [0, 1680, 3360]);
        assert_eq!(seven_eight.bars[2].length_pos, 42);
    }

    #[test]
    fn mid_bar_change_moves_grid_from_next_bar() {
        // 4/4, then 3/4 announced one beat into bar 1 (tick 2400): bar 1 keeps 4 beats.
        let grid = BarGrid::from_score(&score(&[(0, 4, 4), (2400, 3, 4)], &[], 3840 + 3 * 1440)).unwrap();
        assert_eq!(bar_ticks(&grid), [0, 1920, 3840, 5280, 6720]);
        assert_eq!((grid.bars[1].numerator, grid.bars[2].numerator), (4, 3));
        // A change on the bar line applies at once.
        let grid = BarGrid::from_score(&score(&[(0, 4, 4), (1920, 3, 4)], &[], 1920 + 2 * 1440)).unwrap();
        assert_eq!(bar_ticks(&grid), [0, 1920, 3360]);
        // Two signatures at the same tick: the later one wins.
        let grid = BarGrid::from_score(&score(&[(0, 4, 4), (0, 3, 4)], &[], 2880)).unwrap();
        assert_eq!(bar_ticks(&grid), [0, 1440]);
    }

    #[test]
    fn bar_lookup() {
        let grid = BarGrid::from_score(&score(&[(0, 3, 4)], &[], 2 * 1440)).unwrap();
        assert_eq!(grid.bar_of_tick(0), Some(0));
        assert_eq!(grid.bar_of_tick(1439), Some(1)); // rounds to position 36 = bar 1
        assert_eq!(grid.bar_of_tick(1400), Some(0));
        assert_eq!(grid.bar_of_tick(2880), None);
    }

    #[test]
    fn unencodable_signatures_are_errors() {
        let err = BarGrid::from_score(&score(&[(0, 3, 128)], &[], 1920)).unwrap_err();
        assert!(err.to_string().contains("3/128"), "{err}");
        let err = BarGrid::from_score(&score(&[(0, 1, 64)], &[], 1920)).unwrap_err();
        assert!(err.to_string().contains("shorter"), "{err}");
        // After the last onset (tick 1680) the reference never looks at signatures: skipped.
        let grid = BarGrid::from_score(&score(&[(0, 4, 4), (1800, 3, 128)], &[], 1920)).unwrap();
        assert_eq!(bar_ticks(&grid), [0]);
    }

    #[test]
    fn tempo_changes_mid_song_give_seconds() {
        // 120 bpm for 2 bars (4 s), then 60 bpm: bar 2 ends 4 s later.
        let s = score(&[(0, 4, 4)], &[(0, 120.0), (3840, 60.0)], 4 * 1920);
        let map = TempoMap::new(&s);
        assert!((map.seconds_at(3840.0) - 4.0).abs() < 1e-12);
        assert!((map.seconds_at(5760.0) - 8.0).abs() < 1e-12);
        assert!((map.tick_at(6.0) - 4800.0).abs() < 1e-9);
        assert!((map.bpm_at(4000.0, TPB) - 60.0).abs() < 1e-12);
        // No tempo before the first change: 120 bpm (1 beat = 0.5 s) until tick 960.
        let late = TempoMap::new(&score(&[], &[(960, 60.0)], 1920));
        assert!((late.seconds_at(1920.0) - 3.0).abs() < 1e-12);
        // Unsorted input and duplicates on one tick: sorted, the last of a tick wins.
        let messy = TempoMap::new(&score(&[], &[(960, 90.0), (0, 100.0), (960, 60.0)], 1920));
        assert!((messy.seconds_at(1920.0) - (1.2 + 2.0)).abs() < 1e-12);
    }

    #[test]
    fn four_bar_segments_with_two_bar_hop() {
        // 9 bars of 4/4 at 120 bpm (2 s a bar): windows at bars 0, 2, 4 (4+4 <= 9), not 6.
        let s = score(&[(0, 4, 4)], &[(0, 120.0)], 9 * 1920);
        let (grid, segs) = segments(&s, SegmentSpec::default()).unwrap();
        assert_eq!(grid.bars.len(), 9);
        assert_eq!(segs.iter().map(|s| (s.first_bar, s.end_bar)).collect::<Vec<_>>(), [(0, 4), (2, 6), (4, 8)]);
        assert_eq!((segs[1].start_tick, segs[1].end_tick), (3840, 11520));
        assert!((segs[2].start_seconds - 8.0).abs() < 1e-12 && (segs[2].end_seconds - 16.0).abs() < 1e-12);
        assert_eq!(segs.iter().map(|s| s.notes).collect::<Vec<_>>(), [1, 0, 0]);
        // Configurable: 2-bar windows, 1-bar hop.
        let (_, segs) = segments(&s, SegmentSpec { bars: 2, hop: 1 }).unwrap();
        assert_eq!(segs.len(), 8);
        assert!(segments(&s, SegmentSpec { bars: 4, hop: 0 }).is_err());
        // Fewer bars than a window: none.
        let short = score(&[(0, 4, 4)], &[], 3 * 1920);
        assert!(segments(&short, SegmentSpec::default()).unwrap().1.is_empty());
    }

    #[test]
    fn segments_follow_meter_and_tempo_changes() {
        // 2 bars 4/4 @120 (4 s), then 3/4 @90 (2 s a bar) for 6 bars.
        let s = score(&[(0, 4, 4), (3840, 3, 4)], &[(0, 120.0), (3840, 90.0)], 3840 + 6 * 1440);
        let (grid, segs) = segments(&s, SegmentSpec::default()).unwrap();
        assert_eq!(grid.bars.len(), 8);
        let times: Vec<(f64, f64)> = segs.iter().map(|s| (s.start_seconds, s.end_seconds)).collect();
        let expected = [(0.0, 8.0), (4.0, 12.0), (8.0, 16.0)];
        for (got, want) in times.iter().zip(expected) {
            assert!((got.0 - want.0).abs() < 1e-9 && (got.1 - want.1).abs() < 1e-9, "{got:?} vs {want:?}");
        }
        assert_eq!(segs[1].start_tick, 3840);
    }
}
