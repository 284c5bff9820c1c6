//! Segment <-> audio window pairing and the per-epoch augmentations (SPEC 2, BOSSA `dataset.py`).
//!
//! Each 4-bar segment is paired with the 10.16 s (508-frame) EnCodec window centred on the
//! segment's centre: BOSSA's `mid_frame = (start + end) * 50 // 2`, window `mid +- 254`.
//! `prepare` stores the window plus a margin on each side (1 s = 50 frames), so the loader can
//! shift the window by up to +-1 s (the loose pairing) without re-encoding. Frames outside the
//! track hold the pad code and are masked; BOSSA's Python slice turns a window that starts
//! before 0 into an empty (all-pad) one, which is plainly unintended.
//!
//! Augmentations drawn fresh each epoch, keyed by (seed, epoch, row) so that they do not depend
//! on thread timing: the shift (uniform integer frames in [-margin, margin]) and a transposition
//! (BOSSA `np.random.randint(-6, 6)`: -6..=5, i.e. all 12 keys) applied to lead sheet and target
//! alike, drums excepted. A transposed pitch that would leave 0..=127 moves an octave back
//! towards the range instead (BOSSA would emit an out-of-range token).
use anyhow::{Context, Result};
use std::cmp::Reverse;
use std::sync::LazyLock;

use crate::data::encodings::{octuple, remi, score_to_octuples, Octuple, TIME_SIGNATURES};
use crate::data::midi::Score;
use crate::data::segments::{segments, Segment, SegmentSpec, TempoMap};

/// BOSSA's audio window: 10.16 s.
pub const WINDOW_SECONDS: f64 = 10.16;
/// Largest random shift of the audio window against its segment.
pub const SHIFT_SECONDS: f64 = 1.0;
/// BOSSA `np.random.randint(-6, 6)`: -6..=5 semitones.
pub const TRANSPOSE_RANGE: (i32, i32) = (-6, 5);

/// Window and margin in code frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    pub window_frames: usize,
    pub margin_frames: usize,
}

impl WindowSpec {
    /// Frames of `window_seconds` and `shift_seconds` at `frame_rate` (508 and 50 at 50 Hz).
    pub fn from_seconds(frame_rate: f64, window_seconds: f64, shift_seconds: f64) -> Result<Self> {
        anyhow::ensure!(
            frame_rate > 0.0 && window_seconds > 0.0 && shift_seconds >= 0.0,
            "window needs a positive frame rate and length and a non-negative shift \
             (frame rate {frame_rate}, window {window_seconds} s, shift {shift_seconds} s)"
        );
        Ok(Self {
            window_frames: (window_seconds * frame_rate).round() as usize,
            margin_frames: (shift_seconds * frame_rate).round() as usize,
        })
    }

    pub fn stored_frames(&self) -> usize {
        self.window_frames + 2 * self.margin_frames
    }

    /// First song frame of the window centred on a segment (BOSSA's integer arithmetic).
    pub fn window_start(&self, start_seconds: f64, end_seconds: f64, frame_rate: f64) -> i64 {
        let mid = ((start_seconds + end_seconds) * frame_rate / 2.0).floor() as i64;
        mid - (self.window_frames / 2) as i64
    }

    /// Codes `[n_q, stored_frames]` around the window starting at `window_start`, cut from a
    /// whole track's codes `[n_q, frames]` (row-major); frames outside the track get `pad`.
    /// Returns (song frame of column 0, codes).
    pub fn cut(&self, track: &[u16], n_q: usize, window_start: i64, pad: u16) -> (i64, Vec<u16>) {
        let frames = track.len() / n_q.max(1);
        let first = window_start - self.margin_frames as i64;
        let stored = self.stored_frames();
        let mut out = vec![pad; n_q * stored];
        for q in 0..n_q {
            for (j, slot) in out[q * stored..(q + 1) * stored].iter_mut().enumerate() {
                let frame = first + j as i64;
                if frame >= 0 && (frame as usize) < frames {
                    *slot = track[q * frames + frame as usize];
                }
            }
        }
        (first, out)
    }

    /// The model's window shifted by `shift` frames, out of a stored row: codes `[n_q, window]`
    /// written into `codes`, and 1/0 per frame into `mask` (0 = pad, outside the track).
    pub fn shifted(&self, stored: &[u16], n_q: usize, shift: i32, pad: u16, codes: &mut [i64], mask: &mut [u8]) {
        let (window, total) = (self.window_frames, self.stored_frames());
        let offset = (self.margin_frames as i64 + i64::from(shift)).clamp(0, (total - window) as i64) as usize;
        mask.fill(0);
        for q in 0..n_q {
            let src = &stored[q * total + offset..q * total + offset + window];
            for (j, (&code, out)) in src.iter().zip(&mut codes[q * window..(q + 1) * window]).enumerate() {
                *out = i64::from(code);
                if code != pad {
                    mask[j] = 1;
                }
            }
        }
    }
}

/// A segment's notes for both parts, bars counted from the segment's first note.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentPair {
    pub segment: Segment,
    pub meter: (u32, u32),
    pub tempo_bpm: f64,
    pub lead: Vec<Octuple>,
    /// The piano arrangement's notes.
    pub target: Vec<Octuple>,
}

/// Cut the target (the piano arrangement) and the lead sheet (on one timeline) into segments, as
/// BOSSA's dataset does: windows start at `first_bar` (BOSSA's bar 0: a POP909 song's first
/// annotated downbeat) and every `spec.hop` bars after it; notes by bar index of the OctupleMIDI
/// grid, segments missing either part dropped, bars offset by the earlier part's first bar, notes
/// sorted high pitch first within (bar, position, program) (`pitch_order='high_to_low'`, BOSSA's
/// training setting).
pub fn segment_pairs(target: &Score, lead: &Score, spec: SegmentSpec, first_bar: usize) -> Result<Vec<SegmentPair>> {
    let mut both = target.clone();
    both.instruments.extend(lead.instruments.iter().cloned());
    // Every window of `spec.bars` bars, then those in phase with `first_bar`, numbered from 0.
    let (grid, every_bar) = segments(&both, SegmentSpec { hop: 1, ..spec }).context("cannot build the bar grid")?;
    anyhow::ensure!(spec.hop >= 1, "segments need a hop of at least 1 bar");
    let segs = every_bar
        .into_iter()
        .filter(|s| s.first_bar >= first_bar && (s.first_bar - first_bar).is_multiple_of(spec.hop))
        .enumerate()
        .map(|(index, s)| Segment { index, ..s });
    let tempo = TempoMap::new(&both);
    let target_notes = score_to_octuples(target).context("cannot encode the target")?;
    let lead_notes = score_to_octuples(lead).context("cannot encode the lead sheet")?;
    let in_bars = |notes: &[Octuple], seg: &Segment| -> Vec<Octuple> {
        notes.iter().filter(|n| (seg.first_bar..seg.end_bar).contains(&(n.bar as usize))).copied().collect()
    };
    let mut pairs = Vec::new();
    for seg in segs {
        let (mut lead, mut target) = (in_bars(&lead_notes, &seg), in_bars(&target_notes, &seg));
        let Some(offset) = lead.iter().chain(&target).map(|n| n.bar).min() else { continue };
        if lead.is_empty() || target.is_empty() {
            continue;
        }
        for notes in [&mut lead, &mut target] {
            notes.iter_mut().for_each(|n| n.bar -= offset);
            notes.sort_by_key(|n| (n.bar, n.position, n.program, Reverse(n.pitch)));
        }
        let bar = grid.bars[seg.first_bar];
        let tempo_bpm = tempo.bpm_at(f64::from(seg.start_tick), both.ticks_per_beat);
        pairs.push(SegmentPair { meter: (bar.numerator, bar.denominator), tempo_bpm, lead, target, segment: seg });
    }
    Ok(pairs)
}

/// The 8 OctupleMIDI ids of every note, without boundary notes.
pub fn octuple_ids(notes: &[Octuple]) -> Vec<u16> {
    notes.iter().flat_map(octuple::note_ids).map(|id| id as u16).collect()
}

/// MuseCoco REMI ids of the notes.
pub fn remi_ids(notes: &[Octuple]) -> Vec<u16> {
    remi::tokens(notes, false).into_iter().map(|id| id as u16).collect()
}

/// The time signature of an OctupleMIDI id, for display.
pub fn time_signature(id: u32) -> Option<(u32, u32)> {
    TIME_SIGNATURES.get(id as usize).copied()
}

/// Per-(seed, epoch, row) random draws: a counter-based generator (SplitMix64 over a hash of the
/// key), so any row's draws can be computed alone, in any order, on any thread.
#[derive(Debug, Clone)]
pub struct KeyedRng(u64);

impl KeyedRng {
    pub fn new(key: &[u64]) -> Self {
        let mut state = 0x5354_594c_4542_5244; // "STYLEBRD"
        for &k in key {
            state = splitmix(state ^ splitmix(k));
        }
        Self(state)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        splitmix(self.0)
    }

    /// Uniform integer in `lo..=hi` (tiny modulo bias: ranges here are < 2^16).
    pub fn int_in(&mut self, lo: i64, hi: i64) -> i64 {
        let span = (hi - lo + 1).max(1) as u64;
        lo + (self.next_u64() % span) as i64
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The augmentation of one row in one epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Draw {
    /// Frames the audio window moves against the segment.
    pub shift: i32,
    pub semitones: i32,
}

impl Draw {
    pub const NONE: Draw = Draw { shift: 0, semitones: 0 };

    pub fn new(seed: u64, epoch: u64, row: u64, max_shift: i32, transpose: (i32, i32)) -> Self {
        let mut rng = KeyedRng::new(&[seed, epoch, row, 0x4452_4157]);
        let shift = rng.int_in(-i64::from(max_shift), i64::from(max_shift)) as i32;
        let semitones = rng.int_in(i64::from(transpose.0), i64::from(transpose.1)) as i32;
        Self { shift, semitones }
    }
}

fn transposed_pitch(pitch: u32, semitones: i32) -> u32 {
    let mut p = pitch as i32 + semitones;
    while p > 127 {
        p -= 12;
    }
    while p < 0 {
        p += 12;
    }
    p as u32
}

/// Transpose OctupleMIDI note tokens (8 per note) in place; drum notes (program 128) stay.
pub fn transpose_octuple(ids: &mut [i64], semitones: i32) {
    if semitones == 0 {
        return;
    }
    let drum = i64::from(octuple::FIELD_OFFSETS[2] + crate::data::encodings::DRUM_PROGRAM);
    let pitch0 = i64::from(octuple::FIELD_OFFSETS[3]);
    for note in ids.chunks_exact_mut(octuple::TOKENS_PER_NOTE) {
        let pitch = note[3] - pitch0;
        if note[2] != drum && (0..128).contains(&pitch) {
            note[3] = pitch0 + i64::from(transposed_pitch(pitch as u32, semitones));
        }
    }
}

struct RemiIds {
    pitch0: i64,
    program0: i64,
    drum: i64,
    velocity: std::ops::Range<i64>,
    tempo: std::ops::Range<i64>,
}

static REMI: LazyLock<RemiIds> = LazyLock::new(|| {
    let id = |name: &str| i64::from(remi::token_id(name));
    RemiIds {
        pitch0: id("p-0"),
        program0: id("i-0"),
        drum: id("i-128"),
        velocity: id("v-0")..id("v-31") + 1,
        tempo: id("t-0")..id("t-48") + 1,
    }
});

/// Transpose REMI tokens in place: `p-*` after a non-drum `i-*`.
pub fn transpose_remi(ids: &mut [i64], semitones: i32) {
    if semitones == 0 {
        return;
    }
    let r = &*REMI;
    let mut drum = false;
    for id in ids.iter_mut() {
        if (r.program0..=r.drum).contains(id) {
            drum = *id == r.drum;
        } else if !drum && (r.pitch0..r.pitch0 + 128).contains(id) {
            *id = r.pitch0 + i64::from(transposed_pitch((*id - r.pitch0) as u32, semitones));
        }
    }
}

/// BOSSA `deperf` for OctupleMIDI notes: velocity and tempo tokens become `<unk>`.
pub fn redact_octuple(ids: &mut [i64]) {
    for note in ids.chunks_exact_mut(octuple::TOKENS_PER_NOTE) {
        note[5] = i64::from(octuple::UNK);
        note[7] = i64::from(octuple::UNK);
    }
}

/// BOSSA `deperf` for REMI: `v-*` and `t-*` become `<unk>` (`note2token(redact_performance)`).
pub fn redact_remi(ids: &mut [i64]) {
    let r = &*REMI;
    for id in ids.iter_mut().filter(|id| r.velocity.contains(id) || r.tempo.contains(id)) {
        *id = i64::from(remi::UNK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::midi::{Instrument, Note, TempoChange, TimeSignature};

    #[test]
    fn window_arithmetic_matches_bossa_at_50_hz() {
        let spec = WindowSpec::from_seconds(50.0, WINDOW_SECONDS, SHIFT_SECONDS).unwrap();
        assert_eq!((spec.window_frames, spec.margin_frames, spec.stored_frames()), (508, 50, 608));
        // BOSSA: mid = int(round((s + e) * 50 // 2)); start = mid - 254.
        assert_eq!(spec.window_start(8.0, 16.0, 50.0), 600 - 254);
        assert_eq!(spec.window_start(8.01, 16.0, 50.0), 600 - 254); // floor of 600.25
        assert_eq!(spec.window_start(1.0, 2.0, 50.0), 75 - 254);
    }

    #[test]
    fn cut_pads_outside_the_track_and_shift_moves_the_window() {
        let spec = WindowSpec { window_frames: 4, margin_frames: 2 };
        let n_q = 2;
        // Track of 6 frames: codebook q, frame f holds 10 q + f.
        let track: Vec<u16> = (0..n_q).flat_map(|q| (0..6).map(move |f| 10 * q as u16 + f)).collect();
        let (first, stored) = spec.cut(&track, n_q, -1, 99);
        assert_eq!(first, -3);
        assert_eq!(stored, [99, 99, 99, 0, 1, 2, 3, 4, 99, 99, 99, 10, 11, 12, 13, 14]);
        let (mut codes, mut mask) = (vec![0i64; n_q * 4], vec![0u8; 4]);
        spec.shifted(&stored, n_q, 0, 99, &mut codes, &mut mask);
        assert_eq!(codes, [99, 0, 1, 2, 99, 10, 11, 12]);
        assert_eq!(mask, [0, 1, 1, 1]);
        spec.shifted(&stored, n_q, 2, 99, &mut codes, &mut mask);
        assert_eq!(codes, [1, 2, 3, 4, 11, 12, 13, 14]);
        assert_eq!(mask, [1, 1, 1, 1]);
        spec.shifted(&stored, n_q, -2, 99, &mut codes, &mut mask);
        assert_eq!(mask, [0, 0, 0, 1]);
    }

    #[test]
    fn draws_are_keyed_bounded_and_cover_the_range() {
        let a: Vec<Draw> = (0..2000).map(|r| Draw::new(3, 1, r, 50, TRANSPOSE_RANGE)).collect();
        let b: Vec<Draw> = (0..2000).rev().map(|r| Draw::new(3, 1, r, 50, TRANSPOSE_RANGE)).collect();
        assert!(a.iter().eq(b.iter().rev()), "draws must not depend on the order they are made in");
        assert!(a.iter().all(|d| (-50..=50).contains(&d.shift) && (-6..=5).contains(&d.semitones)));
        for v in -6..=5 {
            assert!(a.iter().any(|d| d.semitones == v), "semitone {v} never drawn");
        }
        assert!(a.iter().any(|d| d.shift == -50) && a.iter().any(|d| d.shift == 50));
        let next_epoch: Vec<Draw> = (0..2000).map(|r| Draw::new(3, 2, r, 50, TRANSPOSE_RANGE)).collect();
        assert_ne!(a, next_epoch);
    }

    fn note(bar: u32, program: u32, pitch: u32) -> Octuple {
        Octuple { bar, position: 0, program, pitch, duration: 4, velocity: 20, time_signature: 0, tempo: 30 }
    }

    #[test]
    fn transposition_spares_drums_and_matches_reencoding() {
        let notes = [note(0, 0, 60), note(0, 128, 128 + 36), note(1, 4, 125), note(1, 4, 2)];
        let expected = [note(0, 0, 63), note(0, 128, 128 + 36), note(1, 4, 116), note(1, 4, 5)];
        let mut ids: Vec<i64> = octuple_ids(&notes).into_iter().map(i64::from).collect();
        transpose_octuple(&mut ids, 3);
        assert_eq!(ids, octuple_ids(&expected).into_iter().map(i64::from).collect::<Vec<_>>());

        let mut ids: Vec<i64> = remi_ids(&notes).into_iter().map(i64::from).collect();
        transpose_remi(&mut ids, 3);
        assert_eq!(ids, remi_ids(&expected).into_iter().map(i64::from).collect::<Vec<_>>());
    }

    #[test]
    fn redaction_hits_velocity_and_tempo_only() {
        let notes = [note(0, 0, 60), note(1, 0, 62)];
        let mut ids: Vec<i64> = octuple_ids(&notes).into_iter().map(i64::from).collect();
        redact_octuple(&mut ids);
        assert!(ids.chunks(8).all(|n| n[5] == 3 && n[7] == 3 && n[3] != 3));
        let mut ids: Vec<i64> = remi_ids(&notes).into_iter().map(i64::from).collect();
        redact_remi(&mut ids);
        let expected: Vec<i64> = remi::tokens(&notes, true).into_iter().map(i64::from).collect();
        assert_eq!(ids, expected);
    }

    fn part(name: &str, program: u8, notes: &[(u32, u8)]) -> Instrument {
        let notes = notes.iter().map(|&(start, pitch)| Note { start, end: start + 240, pitch, velocity: 80 }).collect();
        Instrument { name: name.into(), program, is_drum: false, notes, control_changes: vec![] }
    }

    #[test]
    fn segments_pair_parts_by_bar_and_offset_bars() {
        // 4/4 at 120 bpm, 480 tpb: a bar is 1920 ticks = 2 s. Piano in bars 0..8 except bar 4..6
        // where only the lead sheet plays; the lead sheet starts in bar 1.
        let bar = 1920;
        let piano_notes: Vec<(u32, u8)> = [0, 1, 2, 3, 6, 7].iter().flat_map(|&b| [(b * bar, 60), (b * bar, 64)]).collect();
        let lead_notes: Vec<(u32, u8)> = (1..8).map(|b| (b * bar + 480, 72)).collect();
        let base = Score {
            ticks_per_beat: 480,
            instruments: vec![],
            tempo_changes: vec![TempoChange { tick: 0, bpm: 120.0 }],
            time_signatures: vec![TimeSignature { tick: 0, numerator: 4, denominator: 4 }],
        };
        let piano = Score { instruments: vec![part("PIANO", 0, &piano_notes)], ..base.clone() };
        let lead = Score { instruments: vec![part("MELODY", 0, &lead_notes)], ..base };
        let pairs = segment_pairs(&piano, &lead, SegmentSpec::default(), 0).unwrap();
        // Segments start at bars 0, 2, 4 (8 bars in the grid).
        assert_eq!(pairs.iter().map(|p| p.segment.first_bar).collect::<Vec<_>>(), [0, 2, 4]);
        assert_eq!(pairs.iter().map(|p| p.segment.index).collect::<Vec<_>>(), [0, 1, 2]);
        // In phase with a first downbeat in bar 1: windows at bars 1 and 3 (bar 5 would end past 8).
        let shifted = segment_pairs(&piano, &lead, SegmentSpec::default(), 1).unwrap();
        assert_eq!(shifted.iter().map(|p| (p.segment.index, p.segment.first_bar)).collect::<Vec<_>>(), [(0, 1), (1, 3)]);
        let first = &pairs[0];
        assert_eq!((first.segment.start_seconds, first.segment.end_seconds), (0.0, 8.0));
        assert_eq!(first.meter, (4, 4));
        assert!((first.tempo_bpm - 120.0).abs() < 1e-9);
        // Piano starts in bar 0, so lead sheet bars count from 0 too: lead bars 1, 2, 3.
        assert_eq!(first.lead.iter().map(|n| n.bar).collect::<Vec<_>>(), [1, 2, 3]);
        // High pitch first within an onset.
        assert_eq!(first.target.iter().map(|n| n.pitch).take(2).collect::<Vec<_>>(), [64, 60]);
        // Segment at bar 4: lead in bars 4..8, piano only in 6, 7: offset 4.
        assert_eq!(pairs[2].target.iter().map(|n| n.bar).collect::<Vec<_>>(), [2, 2, 3, 3]);
        assert_eq!(pairs[2].lead.iter().map(|n| n.bar).collect::<Vec<_>>(), [0, 1, 2, 3]);
    }
}
