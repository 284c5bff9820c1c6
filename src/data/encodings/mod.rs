//! Symbolic encodings: OctupleMIDI (stage 1) and MuseCoco REMI (stage 2).
//!
//! Both start from the same note tuples that BOSSA's `utils/octMIDI.py::MIDI_to_encoding`
//! (MusicBERT's `preprocess.py` at 12 positions per beat) computes from a miditoolkit file;
//! [`octuple`] writes them as 8 tokens per note, [`remi`] as MuseCoco's REMI. Both decode
//! back through [`octuples_to_score`].

pub mod octuple;
pub mod remi;

use crate::data::midi::{Instrument, Note, Score, TempoChange, TimeSignature, DEFAULT_BPM};
use crate::data::warned::Warned;

/// Onset positions per quarter note.
pub const POS_RESOLUTION: u32 = 12;
/// Bars an OctupleMIDI bar token can hold (`<0-0>` .. `<0-255>`).
pub const BAR_MAX: u32 = 256;
/// Notes starting at or after this position are dropped (~1365 bars of 4/4).
pub const TRUNC_POS: u32 = 1 << 16;
/// Program id of drums; drum pitches are shifted by 128.
pub const DRUM_PROGRAM: u32 = 128;
/// Number of duration buckets (8 octaves x 12).
pub const DURATION_BUCKETS: u32 = 96;
/// Number of tempo bins: round(12 log2(bpm / 16)) for 16..=256 bpm.
pub const TEMPO_BINS: u32 = 49;
const MIN_TEMPO: f64 = 16.0;
const MAX_TEMPO: f64 = 256.0;
const TEMPO_QUANT: f64 = 12.0;
const VELOCITY_QUANT: u32 = 4;
const MAX_TS_DENOMINATOR_POWER: u32 = 6;
const MAX_NOTES_PER_BAR: u32 = 2;
const BEAT_NOTE_FACTOR: u32 = 4;

/// One note as MIDI_to_encoding sees it; the field order is the reference's tuple order,
/// so the derived `Ord` sorts exactly as Python sorts the tuples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Octuple {
    pub bar: u32,
    /// Onset within the bar, in 1/12 beat.
    pub position: u32,
    /// GM program 0..=127, or 128 for drums.
    pub program: u32,
    /// MIDI pitch, +128 for drums.
    pub pitch: u32,
    /// Duration bucket (see [`duration_to_bucket`]).
    pub duration: u32,
    /// velocity // 4.
    pub velocity: u32,
    /// Index into [`TIME_SIGNATURES`].
    pub time_signature: u32,
    /// Tempo bin (see [`tempo_to_bin`]).
    pub tempo: u32,
}

/// Why a score cannot be encoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    #[error("unsupported time signature {numerator}/{denominator} at tick {tick} (supported: denominator 1..64, at most 2 whole notes per bar)")]
    UnsupportedTimeSignature { numerator: u32, denominator: u32, tick: u32 },
    #[error("time signature {numerator}/{denominator} starting a bar at tick {tick} gives a bar shorter than one position")]
    EmptyBar { numerator: u32, denominator: u32, tick: u32 },
}

/// Why a token sequence cannot be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("token {id} at index {index} is outside the vocabulary (size {vocab})")]
    OutOfVocabulary { id: u32, index: usize, vocab: usize },
    #[error("token {token} at index {index} is out of place: {expected}")]
    Unexpected { token: String, index: usize, expected: String },
    #[error("the sequence ends inside a note ({missing})")]
    Incomplete { missing: String },
}

/// The time-signature vocabulary: (numerator, denominator) for denominators 1..64 and
/// numerators 1..=2*denominator, in the reference's order (254 entries).
pub static TIME_SIGNATURES: std::sync::LazyLock<Vec<(u32, u32)>> = std::sync::LazyLock::new(|| {
    (0..=MAX_TS_DENOMINATOR_POWER)
        .flat_map(|p| {
            let denominator = 1 << p;
            (1..=MAX_NOTES_PER_BAR * denominator).map(move |numerator| (numerator, denominator))
        })
        .collect()
});

/// Index of a time signature after the reference's reduction rule, or `None`.
pub fn time_signature_id(numerator: u32, denominator: u32) -> Option<u32> {
    let (numerator, denominator) = reduce_time_signature(numerator, denominator);
    if numerator == 0 || !denominator.is_power_of_two() {
        return None;
    }
    let power = denominator.trailing_zeros();
    if power > MAX_TS_DENOMINATOR_POWER || numerator > MAX_NOTES_PER_BAR * denominator {
        return None;
    }
    // Entries before power p: sum over q < p of 2 * 2^q = 2 * (2^p - 1).
    Some(MAX_NOTES_PER_BAR * (denominator - 1) + numerator - 1)
}

/// `time_signature_reduce`: halve both while the denominator exceeds 64 (and both are
/// even), then divide the numerator by its smallest factor while a bar exceeds 2 wholes.
pub fn reduce_time_signature(mut numerator: u32, mut denominator: u32) -> (u32, u32) {
    if denominator == 0 {
        return (numerator, 0); // would loop forever below; never a valid signature
    }
    while denominator > 1 << MAX_TS_DENOMINATOR_POWER && denominator.is_multiple_of(2) && numerator.is_multiple_of(2) {
        denominator /= 2;
        numerator /= 2;
    }
    while numerator > MAX_NOTES_PER_BAR * denominator {
        let factor = (2..=numerator).find(|&f| numerator.is_multiple_of(f)).unwrap_or(numerator);
        numerator /= factor;
    }
    (numerator, denominator)
}

/// Bar length in positions of a time-signature id (the reference's integer formula).
pub fn measure_length(time_signature: u32) -> u32 {
    let (numerator, denominator) = TIME_SIGNATURES[time_signature as usize];
    numerator * BEAT_NOTE_FACTOR * POS_RESOLUTION / denominator
}

/// Duration in positions -> bucket: exact below 12, then buckets of width 2^i per octave.
pub fn duration_to_bucket(positions: u32) -> u32 {
    // Octave i covers [12 (2^i - 1), 12 (2^(i+1) - 1)) in steps of 2^i.
    let scaled = positions / POS_RESOLUTION + 1;
    let octave = (u32::BITS - 1 - scaled.leading_zeros()).min(7);
    let octave_start = POS_RESOLUTION * ((1 << octave) - 1);
    let bucket = octave * POS_RESOLUTION + (positions - octave_start) / (1 << octave);
    bucket.min(DURATION_BUCKETS - 1)
}

/// Bucket -> the shortest duration (positions) that falls in it.
pub fn bucket_to_duration(bucket: u32) -> u32 {
    let bucket = bucket.min(DURATION_BUCKETS - 1);
    let (octave, step) = (bucket / POS_RESOLUTION, bucket % POS_RESOLUTION);
    POS_RESOLUTION * ((1 << octave) - 1) + step * (1 << octave)
}

/// `b2e`: round(12 log2(clip(bpm, 16, 256) / 16)), half to even as numpy rounds.
pub fn tempo_to_bin(bpm: f64) -> u32 {
    ((bpm.clamp(MIN_TEMPO, MAX_TEMPO) / MIN_TEMPO).log2() * TEMPO_QUANT).round_ties_even() as u32
}

/// `e2b`: the bpm at the centre of a tempo bin.
pub fn bin_to_tempo(bin: u32) -> f64 {
    2f64.powf(f64::from(bin) / TEMPO_QUANT) * MIN_TEMPO
}

pub fn velocity_to_bin(velocity: u8) -> u32 {
    u32::from(velocity) / VELOCITY_QUANT
}

pub fn bin_to_velocity(bin: u32) -> u8 {
    (bin * VELOCITY_QUANT + VELOCITY_QUANT / 2).min(127) as u8
}

/// `MIDI_to_encoding`: every note of the score as a sorted [`Octuple`] (duplicates kept).
///
/// The bar grid is built position by position from the time signature in force at each
/// bar's first position, so a signature change in mid-bar takes effect at the next bar
/// line while the notes after it already carry the new signature. Time signatures that
/// cover no position before the last onset are never checked, as in the reference.
pub fn score_to_octuples(score: &Score) -> Result<Vec<Octuple>, EncodeError> {
    let tpb = f64::from(score.ticks_per_beat);
    // Python: round(t * 12 / tpb), half to even.
    let to_pos = |tick: u32| (f64::from(tick) * f64::from(POS_RESOLUTION) / tpb).round_ties_even() as u64;
    let Some(last_onset) = score.instruments.iter().flat_map(|i| &i.notes).map(|n| to_pos(n.start)).max() else {
        return Ok(Vec::new());
    };
    let max_pos = (last_onset + 1).min(u64::from(TRUNC_POS)) as usize;

    let mut ts_at: Vec<Option<u32>> = vec![None; max_pos];
    for (i, ts) in score.time_signatures.iter().enumerate() {
        let (from, to) = span(i, &score.time_signatures, |t| to_pos(t.tick), max_pos);
        if from < to {
            let id = time_signature_id(ts.numerator, ts.denominator).ok_or(EncodeError::UnsupportedTimeSignature {
                numerator: ts.numerator,
                denominator: ts.denominator,
                tick: ts.tick,
            })?;
            ts_at[from..to].fill(Some(id));
        }
    }
    let mut tempo_at: Vec<Option<u32>> = vec![None; max_pos];
    for (i, tempo) in score.tempo_changes.iter().enumerate() {
        let (from, to) = span(i, &score.tempo_changes, |t| to_pos(t.tick), max_pos);
        if from < to {
            tempo_at[from..to].fill(Some(tempo_to_bin(tempo.bpm)));
        }
    }
    let default_ts = time_signature_id(4, 4).unwrap_or_default();
    let default_tempo = tempo_to_bin(DEFAULT_BPM);

    // (bar, position in bar, time signature, tempo) for every position.
    let mut info = Vec::with_capacity(max_pos);
    let (mut bar, mut count, mut length) = (0u32, 0u32, 0u32);
    for (pos, (ts, tempo)) in ts_at.iter().zip(&tempo_at).enumerate() {
        let ts = ts.unwrap_or(default_ts);
        if count == 0 {
            length = measure_length(ts);
            if length == 0 {
                let (numerator, denominator) = TIME_SIGNATURES[ts as usize];
                let tick = (pos as f64 * tpb / f64::from(POS_RESOLUTION)) as u32;
                return Err(EncodeError::EmptyBar { numerator, denominator, tick });
            }
        }
        info.push((bar, count, ts, tempo.unwrap_or(default_tempo)));
        count += 1;
        if count >= length {
            count -= length;
            bar += 1;
        }
    }

    let mut notes = Vec::with_capacity(score.note_count());
    for inst in &score.instruments {
        let (program, pitch_shift) = if inst.is_drum { (DRUM_PROGRAM, 128) } else { (u32::from(inst.program), 0) };
        for note in &inst.notes {
            let start = to_pos(note.start);
            if start >= u64::from(TRUNC_POS) {
                continue;
            }
            let (bar, position, time_signature, tempo) = info[start as usize];
            let length = to_pos(note.end).saturating_sub(start);
            notes.push(Octuple {
                bar,
                position,
                program,
                pitch: u32::from(note.pitch) + pitch_shift,
                duration: duration_to_bucket(u32::try_from(length).unwrap_or(u32::MAX)),
                velocity: velocity_to_bin(note.velocity),
                time_signature,
                tempo,
            });
        }
    }
    notes.sort_unstable();
    Ok(notes)
}

/// Positions [from, to) that entry `i` of a change list governs, as the reference loops:
/// up to the next entry's position (in list order), the last one up to `max_pos`.
fn span<T>(i: usize, list: &[T], pos: impl Fn(&T) -> u64, max_pos: usize) -> (usize, usize) {
    let from = pos(&list[i]).min(max_pos as u64) as usize;
    let to = list.get(i + 1).map_or(max_pos as u64, &pos).min(max_pos as u64) as usize;
    (from, to)
}

/// Decoded notes as MIDI can play them, with what that loses. Tokens from a model or a hand may
/// hold values the encoder never writes: a non-drum pitch above 127, or a drum pitch below 128,
/// is no MIDI note, so the note is dropped; a duration past the [`DURATION_BUCKETS`] buckets (the
/// dictionaries have room for 128) becomes the longest; a position past its bar's length makes
/// the note sound in a later bar. [`octuples_to_score`] would clamp the first two silently, so
/// decoders of outside tokens run this first.
pub fn playable(notes: Vec<Octuple>) -> Warned<Vec<Octuple>> {
    let (mut pitchless, mut too_long, mut late) = (0usize, 0usize, 0usize);
    let kept = notes
        .into_iter()
        .filter_map(|mut n| {
            let midi_pitch = if n.program == DRUM_PROGRAM { n.pitch.checked_sub(128) } else { Some(n.pitch) };
            if midi_pitch.is_none_or(|p| p > 127) {
                pitchless += 1;
                return None;
            }
            if n.duration >= DURATION_BUCKETS {
                too_long += 1;
                n.duration = DURATION_BUCKETS - 1;
            }
            if (n.time_signature as usize) < TIME_SIGNATURES.len() && n.position >= measure_length(n.time_signature) {
                late += 1;
            }
            Some(n)
        })
        .collect();
    let warnings = [
        (pitchless, "dropped", "whose pitch is no MIDI note (above 127, or a drum pitch below 128)".to_string()),
        (too_long, "shortened", format!("whose duration lies past the {DURATION_BUCKETS} duration buckets to the longest")),
        (late, "moved", "that start past the end of their bar (a position beyond its length) into a later bar".to_string()),
    ];
    let warnings = warnings.into_iter().filter(|w| w.0 > 0).map(|(n, done, what)| format!("{done} {n} note(s) {what}")).collect();
    Warned { value: kept, warnings }
}

/// Ticks per beat of decoded scores (miditoolkit's default).
pub const DECODE_TICKS_PER_BEAT: u32 = 480;

/// Notes back to a score, in the manner of `encoding_to_MIDI`: one instrument per program
/// (named by its program number, 128 = drums), durations at the shortest length of their
/// bucket (at least one tick), velocities at the centre of their bin, and the tempo at a
/// position the rounded mean of its notes' tempo bins.
///
/// Deviations, so that encoding the result gives the same notes back:
/// - bar lengths use the encoder's formula (`numerator * 48 / denominator`); the reference
///   decoder uses `numerator * 12`, which stretches every x/8 bar to twice its length;
/// - a bar takes the signature of its earliest note (the one REMI writes as `s-*`), and a
///   note whose signature differs from the one in force starts a change at its position,
///   instead of one signature per bar by majority vote.
pub fn octuples_to_score(notes: &[Octuple]) -> Score {
    let tpb = DECODE_TICKS_PER_BEAT;
    let mut sorted = notes.to_vec();
    sorted.sort_unstable();
    let Some(last) = sorted.last() else {
        return Score { ticks_per_beat: tpb, instruments: Vec::new(), tempo_changes: Vec::new(), time_signatures: Vec::new() };
    };
    let default_ts = time_signature_id(4, 4).unwrap_or_default();
    let valid_ts = |id: u32| if (id as usize) < TIME_SIGNATURES.len() { id } else { default_ts };

    // One pass over the bars: a bar takes its earliest note's signature (or keeps the one
    // in force when empty), later notes may change it in mid-bar, and the bar's length
    // follows the signature at its first position, as the encoder's grid does.
    let to_tick = |pos: u64| u32::try_from(pos * u64::from(tpb) / u64::from(POS_RESOLUTION)).unwrap_or(u32::MAX);
    let mut time_signatures: Vec<TimeSignature> = Vec::new();
    let mut in_force: Option<u32> = None;
    let mut set_ts = |pos: u64, id: u32, in_force: &mut Option<u32>| {
        if *in_force != Some(id) {
            let (numerator, denominator) = TIME_SIGNATURES[id as usize];
            time_signatures.push(TimeSignature { tick: to_tick(pos), numerator, denominator });
            *in_force = Some(id);
        }
    };
    let mut bar_start = Vec::with_capacity(last.bar as usize + 1);
    let (mut cursor, mut rest) = (0u64, sorted.as_slice());
    for bar in 0..=last.bar {
        let (in_bar, after) = rest.split_at(rest.iter().take_while(|n| n.bar == bar).count());
        rest = after;
        let bar_ts = in_bar.first().map(|n| valid_ts(n.time_signature)).or(in_force).unwrap_or(default_ts);
        bar_start.push(cursor);
        set_ts(cursor, bar_ts, &mut in_force);
        for n in in_bar {
            set_ts(cursor + u64::from(n.position), valid_ts(n.time_signature), &mut in_force);
        }
        cursor += u64::from(measure_length(bar_ts).max(1));
    }
    let abs_pos = |n: &Octuple| bar_start[n.bar as usize] + u64::from(n.position);

    // Tempo: rounded mean of the bins at each onset position, a change where it differs.
    let mut tempo_changes: Vec<TempoChange> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let pos = abs_pos(&sorted[i]);
        let group: Vec<u32> = sorted[i..].iter().take_while(|n| abs_pos(n) == pos).map(|n| n.tempo).collect();
        i += group.len();
        let mean = f64::from(group.iter().sum::<u32>()) / group.len() as f64;
        let bin = mean.round_ties_even() as u32;
        let bpm = bin_to_tempo(bin.min(TEMPO_BINS - 1));
        if tempo_changes.last().is_none_or(|t| t.bpm != bpm) {
            tempo_changes.push(TempoChange { tick: to_tick(pos), bpm });
        }
    }
    if tempo_changes.first().is_some_and(|t| t.tick > 0) {
        tempo_changes.insert(0, TempoChange { tick: 0, bpm: bin_to_tempo(tempo_to_bin(DEFAULT_BPM)) });
    }

    let mut instruments: Vec<Instrument> = Vec::new();
    for program in 0..=DRUM_PROGRAM {
        let notes: Vec<Note> = sorted
            .iter()
            .filter(|n| n.program == program)
            .map(|n| {
                let start = to_tick(abs_pos(n));
                let length = to_tick(u64::from(bucket_to_duration(n.duration))).max(1);
                let pitch = if program == DRUM_PROGRAM { n.pitch.saturating_sub(128) } else { n.pitch };
                Note {
                    start,
                    end: start.saturating_add(length),
                    pitch: pitch.min(127) as u8,
                    velocity: bin_to_velocity(n.velocity),
                }
            })
            .collect();
        if !notes.is_empty() {
            let is_drum = program == DRUM_PROGRAM;
            let gm_program = if is_drum { 0 } else { program as u8 };
            instruments.push(Instrument { name: program.to_string(), program: gm_program, is_drum, notes, control_changes: Vec::new() });
        }
    }
    Score { ticks_per_beat: tpb, instruments, tempo_changes, time_signatures }
}

/// Shift every non-drum pitch by `semitones`, dropping notes pushed outside 0..=127.
pub fn transpose(score: &Score, semitones: i32) -> Score {
    let mut out = score.clone();
    for inst in out.instruments.iter_mut().filter(|i| !i.is_drum) {
        inst.notes.retain_mut(|n| match u8::try_from(i32::from(n.pitch).saturating_add(semitones)) {
            Ok(p) if p <= 127 => {
                n.pitch = p;
                true
            }
            _ => false,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference builds these tables by nested loops; rebuild them that way and compare.
    #[test]
    fn duration_buckets_match_the_reference_table_construction() {
        let mut enc = Vec::new();
        let mut dec = Vec::new();
        for i in 0..8 {
            for _ in 0..12 {
                dec.push(enc.len() as u32);
                for _ in 0..(1 << i) {
                    enc.push(dec.len() as u32 - 1);
                }
            }
        }
        for (positions, &bucket) in enc.iter().enumerate() {
            assert_eq!(duration_to_bucket(positions as u32), bucket, "positions {positions}");
        }
        assert_eq!(duration_to_bucket(enc.len() as u32 + 5000), 95);
        for (bucket, &d) in dec.iter().enumerate() {
            assert_eq!(bucket_to_duration(bucket as u32), d);
        }
    }

    #[test]
    fn time_signature_table_and_reduction() {
        assert_eq!(TIME_SIGNATURES.len(), 254);
        for (id, &(n, d)) in TIME_SIGNATURES.iter().enumerate() {
            assert_eq!(time_signature_id(n, d), Some(id as u32));
        }
        assert_eq!(reduce_time_signature(128, 256), (32, 64));
        assert_eq!(reduce_time_signature(9, 4), (3, 4));
        assert_eq!(reduce_time_signature(17, 8), (1, 8));
        assert_eq!(time_signature_id(3, 128), None);
        assert_eq!(time_signature_id(5, 3), None);
        assert_eq!(time_signature_id(0, 4), None);
        assert_eq!(measure_length(time_signature_id(6, 8).unwrap()), 36);
        assert_eq!(measure_length(time_signature_id(7, 8).unwrap()), 42);
    }

    #[test]
    fn tempo_bins() {
        assert_eq!(tempo_to_bin(120.0), 35); // 12 log2(7.5) = 34.88
        assert_eq!(tempo_to_bin(1.0), 0);
        assert_eq!(tempo_to_bin(1e9), 48);
        for bin in 0..TEMPO_BINS {
            assert_eq!(tempo_to_bin(bin_to_tempo(bin)), bin);
        }
    }

    #[test]
    fn mid_bar_signature_change_moves_the_grid_at_the_next_bar() {
        // 4/4, switching to 3/4 two beats into bar 0; notes on every beat for 3 bars.
        let notes = (0..10).map(|b| Note { start: b * 480, end: b * 480 + 240, pitch: 60, velocity: 64 }).collect();
        let score = Score {
            ticks_per_beat: 480,
            instruments: vec![Instrument { name: String::new(), program: 0, is_drum: false, notes, control_changes: vec![] }],
            tempo_changes: vec![TempoChange { tick: 0, bpm: 120.0 }],
            time_signatures: vec![
                TimeSignature { tick: 0, numerator: 4, denominator: 4 },
                TimeSignature { tick: 960, numerator: 3, denominator: 4 },
            ],
        };
        let got: Vec<(u32, u32, u32)> =
            score_to_octuples(&score).unwrap().iter().map(|o| (o.bar, o.position, o.time_signature)).collect();
        let (four, three) = (time_signature_id(4, 4).unwrap(), time_signature_id(3, 4).unwrap());
        let expected = vec![
            (0, 0, four), (0, 12, four), (0, 24, three), (0, 36, three),
            (1, 0, three), (1, 12, three), (1, 24, three),
            (2, 0, three), (2, 12, three), (2, 24, three),
        ];
        assert_eq!(got, expected);
    }

    #[test]
    fn decode_then_encode_is_the_identity_on_notes() {
        let six_eight = time_signature_id(6, 8).unwrap();
        let four = time_signature_id(4, 4).unwrap();
        let notes = vec![
            Octuple { bar: 0, position: 0, program: 0, pitch: 60, duration: 12, velocity: 20, time_signature: four, tempo: 30 },
            Octuple { bar: 0, position: 0, program: 0, pitch: 60, duration: 12, velocity: 20, time_signature: four, tempo: 30 },
            Octuple { bar: 0, position: 30, program: 128, pitch: 164, duration: 0, velocity: 31, time_signature: four, tempo: 30 },
            Octuple { bar: 2, position: 5, program: 33, pitch: 40, duration: 95, velocity: 0, time_signature: six_eight, tempo: 40 },
            Octuple { bar: 3, position: 35, program: 33, pitch: 41, duration: 50, velocity: 7, time_signature: six_eight, tempo: 41 },
        ];
        let score = octuples_to_score(&notes);
        assert_eq!(score_to_octuples(&score).unwrap(), notes);
    }

    #[test]
    fn playable_drops_pitchless_notes_and_reports_every_loss() {
        let four = time_signature_id(4, 4).unwrap();
        let n = |program, pitch, duration, position| Octuple { bar: 0, position, program, pitch, duration, velocity: 20, time_signature: four, tempo: 30 };
        let fine = [n(0, 60, 12, 0), n(DRUM_PROGRAM, 164, 0, 47)];
        assert_eq!(playable(fine.to_vec()), Warned::clean(fine.to_vec()));
        let notes = vec![n(0, 200, 12, 0), n(DRUM_PROGRAM, 36, 12, 0), n(0, 60, 120, 0), n(0, 62, 12, 60), fine[0]];
        let checked = playable(notes);
        assert_eq!(checked.value, vec![n(0, 60, 95, 0), n(0, 62, 12, 60), fine[0]]);
        assert_eq!(checked.warnings.len(), 3, "{:?}", checked.warnings);
        assert!(checked.warnings[0].starts_with("dropped 2 note(s) whose pitch"), "{:?}", checked.warnings);
        assert!(checked.warnings[1].starts_with("shortened 1 note(s) whose duration lies past the 96"), "{:?}", checked.warnings);
        assert!(checked.warnings[2].starts_with("moved 1 note(s) that start past the end of their bar"), "{:?}", checked.warnings);
    }

    #[test]
    fn transpose_skips_drums_and_drops_out_of_range() {
        let inst = |is_drum, pitch| Instrument {
            name: String::new(),
            program: 0,
            is_drum,
            notes: vec![Note { start: 0, end: 1, pitch, velocity: 1 }],
            control_changes: vec![],
        };
        let score = Score {
            ticks_per_beat: 96,
            instruments: vec![inst(false, 60), inst(false, 126), inst(true, 36)],
            tempo_changes: vec![],
            time_signatures: vec![],
        };
        let up = transpose(&score, 3);
        let pitches: Vec<Vec<u8>> = up.instruments.iter().map(|i| i.notes.iter().map(|n| n.pitch).collect()).collect();
        assert_eq!(pitches, vec![vec![63], vec![], vec![36]]);
    }
}
