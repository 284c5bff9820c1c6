//! Lead sheets: a melody plus chords, the condition BOSSA arranges a piano part from.
//!
//! BOSSA (`data_processing/arrange_pop909.py`, `utils/inference.py::read_leadsheet`) never keeps
//! chord symbols past loading: chords become notes and the lead sheet is a two-part note list
//! that goes through the same encoders as the piano part. So a [`LeadSheet`] keeps the melody
//! notes and the chord spans, and [`LeadSheet::to_score`] renders it the way BOSSA does:
//! - melody: program 0, its own velocities, ticks as in the source;
//! - chords (`read_chord`): one note per chord tone, program 4, velocity 80, lasting the chord's
//!   span; the voicing is the chord's pitch classes stacked upward from the bass pitch class,
//!   lowest tone in MIDI 48..59 (see [`Chord::pitches`]); `N`/`X` give no notes;
//! - onsets and ends on the 1/12-beat grid (BOSSA quantises everything to it).
//!
//! The written MIDI has track MELODY then track CHORDS, the order `read_leadsheet` expects, plus
//! the tempo and time-signature maps, so it plays and re-reads as the same lead sheet.
//! How later stages lay it out (BOSSA `dataset.py`, `train_stage{1,2}.py`): the segment's notes of
//! `to_score()` are encoded like the target (the piano arrangement); bars count from the segment's
//! first bar (the earlier of lead sheet and target); notes sort by (bar, position, program, pitch descending)
//! (`pitch_order='high_to_low'`); training passes `deperf=True`, so the lead sheet's velocity and
//! tempo tokens become `<unk>`. Stage 1: lead-sheet notes without the `<s>`/`</s>` boundary notes,
//! then the piano's `<s>` x8 ... `</s>` x8. Stage 2 (REMI): `</s>`, attributes, `<sep>`, lead
//! sheet, `<sep>`, piano, `</s>`.
//!
//! Two sources:
//! - any MIDI file with a melody track plus a chord file ([`LeadSheet::from_score`]); the bar grid
//!   is the file's own time-signature map;
//! - a POP909 song folder ([`Pop909Song::load`]). POP909's MIDI files carry no usable meter (most
//!   say 1/4) and their beats sit off the tick grid, so, like BOSSA, the song is re-timed onto the
//!   annotated beats of `beat_midi.txt` ([`retime_to_beats`]) and the lead sheet taken from that.
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use crate::data::midi::{ControlChange, Instrument, Note, Score, TempoChange, TimeSignature};
use crate::data::segments::{TempoMap, POSITIONS_PER_BEAT};

pub const MELODY_PROGRAM: u8 = 0;
/// BOSSA's chord part is General MIDI program 4 (Electric Piano 1).
pub const CHORD_PROGRAM: u8 = 4;
pub const CHORD_VELOCITY: u8 = 80;
pub const MELODY_TRACK: &str = "MELODY";
pub const CHORD_TRACK: &str = "CHORDS";

// ---------------------------------------------------------------------------------------------
// Chord labels (Harte syntax as POP909 and mir_eval use it)

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChordError {
    #[error("chord label '{label}': {problem}")]
    Invalid { label: String, problem: String },
}

/// A chord: root and bass pitch classes and its tones as intervals above the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chord {
    pub root: u8,
    pub bass: u8,
    /// Bit i set: the pitch class `root + i` sounds.
    pub intervals: u16,
}

/// mir_eval `QUALITIES`: the bitmap of each quality shorthand, intervals above the root. As with
/// mir_eval's `split` without reduction (what BOSSA calls), extended qualities keep only their
/// seventh-chord core.
const QUALITIES: &[(&str, &[u8])] = &[
    ("maj", &[0, 4, 7]),
    ("min", &[0, 3, 7]),
    ("aug", &[0, 4, 8]),
    ("dim", &[0, 3, 6]),
    ("sus4", &[0, 5, 7]),
    ("sus2", &[0, 2, 7]),
    ("7", &[0, 4, 7, 10]),
    ("maj7", &[0, 4, 7, 11]),
    ("min7", &[0, 3, 7, 10]),
    ("minmaj7", &[0, 3, 7, 11]),
    ("maj6", &[0, 4, 7, 9]),
    ("min6", &[0, 3, 7, 9]),
    ("dim7", &[0, 3, 6, 9]),
    ("hdim7", &[0, 3, 6, 10]),
    ("maj9", &[0, 4, 7, 11]),
    ("min9", &[0, 3, 7, 10]),
    ("9", &[0, 4, 7, 10]),
    ("b9", &[0, 4, 7, 10]),
    ("#9", &[0, 4, 7, 10]),
    ("min11", &[0, 3, 7, 10]),
    ("11", &[0, 4, 7, 10]),
    ("#11", &[0, 4, 7, 10]),
    ("maj13", &[0, 4, 7, 11]),
    ("min13", &[0, 3, 7, 10]),
    ("13", &[0, 4, 7, 10]),
    ("b13", &[0, 4, 7, 10]),
    ("1", &[0]),
    ("5", &[0, 7]),
];

fn bits(intervals: &[u8]) -> u16 {
    intervals.iter().fold(0, |acc, &i| acc | 1 << (i % 12))
}

/// Semitones of a scale degree like `b3`, `#5`, `9` (mir_eval `scale_degree_to_semitone`).
fn scale_degree_semitones(degree: &str) -> Option<i32> {
    let flats = degree.bytes().take_while(|&b| b == b'b').count();
    let sharps = degree.bytes().take_while(|&b| b == b'#').count();
    let number: usize = degree[flats + sharps..].parse().ok()?;
    const SEMITONES: [i32; 13] = [0, 2, 4, 5, 7, 9, 11, 12, 14, 16, 17, 19, 21];
    let base = *SEMITONES.get(number.checked_sub(1)?)?;
    Some(base + sharps as i32 - flats as i32)
}

/// Pitch class of a root like `C`, `Eb`, `F#`.
fn pitch_class(root: &str) -> Option<u8> {
    let mut chars = root.chars();
    let base: i32 = match chars.next()? {
        'C' => 0,
        'D' => 2,
        'E' => 4,
        'F' => 5,
        'G' => 7,
        'A' => 9,
        'B' => 11,
        _ => return None,
    };
    let rest = chars.as_str();
    let shift = if rest.bytes().all(|b| b == b'#') {
        rest.len() as i32
    } else if rest.bytes().all(|b| b == b'b') {
        -(rest.len() as i32)
    } else {
        return None;
    };
    Some((base + shift).rem_euclid(12) as u8)
}

/// Parse a chord label: `N`/`X` (no chord: `Ok(None)`), `C`, `A:min7`, `Bb:maj/3`, `G:sus4(b7)`,
/// `C:(3,5)`, `D:7(*5)`. Follows mir_eval `split`: no quality and no degrees means major;
/// degrees in parentheses add tones, and (unlike mir_eval, where it raises) `*` removes one;
/// the bass is a scale degree above the root.
pub fn parse_chord(label: &str) -> Result<Option<Chord>, ChordError> {
    let invalid = |problem: &str| ChordError::Invalid { label: label.to_string(), problem: problem.to_string() };
    let label_trimmed = label.trim();
    if label_trimmed == "N" || label_trimmed == "X" {
        return Ok(None);
    }
    let (body, bass) = match label_trimmed.split_once('/') {
        Some((body, bass)) => (body, Some(bass)),
        None => (label_trimmed, None),
    };
    let (body, degrees) = match body.split_once('(') {
        Some((body, rest)) => {
            let list = rest.strip_suffix(')').ok_or_else(|| invalid("unclosed '(' in the degree list"))?;
            (body, Some(list))
        }
        None => (body, None),
    };
    let (root, quality) = match body.split_once(':') {
        Some((root, quality)) => (root, Some(quality)),
        None => (body, None),
    };
    let root = pitch_class(root).ok_or_else(|| invalid("the root must be A-G followed by only #s or only bs"))?;
    let quality = match quality {
        Some("") if degrees.is_none() => return Err(invalid("empty quality after ':'")),
        Some(q) => q,
        None if degrees.is_some() => return Err(invalid("degrees in parentheses need a ':' before them")),
        None => "maj",
    };
    let mut intervals = if quality.is_empty() {
        0
    } else {
        let (_, tones) = QUALITIES
            .iter()
            .find(|(name, _)| *name == quality)
            .ok_or_else(|| invalid(&format!("unknown quality '{quality}'")))?;
        bits(tones)
    };
    for degree in degrees.into_iter().flat_map(|list| list.split(',')) {
        let degree = degree.trim();
        let (omit, degree) = match degree.strip_prefix('*') {
            Some(d) => (true, d),
            None => (false, degree),
        };
        let semitones = scale_degree_semitones(degree).ok_or_else(|| invalid(&format!("bad scale degree '{degree}'")))?;
        let bit = 1u16 << semitones.rem_euclid(12);
        intervals = if omit { intervals & !bit } else { intervals | bit };
    }
    let bass = match bass {
        Some(degree) => {
            let semitones = scale_degree_semitones(degree).ok_or_else(|| invalid(&format!("bad bass degree '{degree}'")))?;
            (i32::from(root) + semitones).rem_euclid(12) as u8
        }
        None => root,
    };
    Ok(Some(Chord { root, bass, intervals }))
}

impl Chord {
    /// Whether the chord sounds pitch class (or any pitch) `pitch`.
    pub fn sounds(&self, pitch: i32) -> bool {
        self.intervals >> (pitch - i32::from(self.root)).rem_euclid(12) & 1 == 1
    }

    /// BOSSA `read_chord`'s voicing: the chord's pitch classes (the bass itself only if it is a chord
    /// tone) stacked upward from the bass pitch class, in octave 4 (MIDI 48 + bass + interval) unless
    /// the lowest tone would pass B, then an octave lower. The lowest tone is always in 48..=59.
    pub fn pitches(&self) -> Vec<u8> {
        // Intervals above the bass (np.roll(bitmap, root - bass)).
        let bass = self.bass % 12;
        let above_bass: Vec<u8> = (0..12u8).filter(|&i| self.sounds(i32::from(bass + i))).collect();
        let Some(&lowest) = above_bass.first() else { return Vec::new() };
        let register = if bass + lowest > 11 { 3 } else { 4 };
        above_bass.iter().map(|&i| register * 12 + bass + i).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Chord annotation files

/// One line of a chord annotation: `start end label`, seconds (POP909 `chord_midi.txt`).
#[derive(Debug, Clone, PartialEq)]
pub struct TimedChord {
    pub start: f64,
    pub end: f64,
    pub label: String,
    pub chord: Option<Chord>,
}

/// Read a chord file of `start end label` lines (tab or space separated, times in seconds).
pub fn read_chord_file(path: &Path) -> Result<Vec<TimedChord>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read chord file {}", path.display()))?;
    parse_chord_lines(&text).with_context(|| format!("in chord file {}", path.display()))
}

fn parse_chord_lines(text: &str) -> Result<Vec<TimedChord>> {
    let mut chords = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let line_no = i + 1;
        let [start, end, label] = fields[..] else {
            bail!("line {line_no}: expected 'start end label', found {} fields: '{line}'", fields.len());
        };
        let time = |s: &str| -> Result<f64> {
            let t: f64 = s.parse().with_context(|| format!("line {line_no}: '{s}' is not a time in seconds"))?;
            ensure!(t.is_finite() && t >= 0.0, "line {line_no}: time {s} must be a finite, non-negative number of seconds");
            Ok(t)
        };
        let (start, end) = (time(start)?, time(end)?);
        ensure!(end >= start, "line {line_no}: chord ends ({end}) before it starts ({start})");
        let chord = parse_chord(label).with_context(|| format!("line {line_no}"))?;
        chords.push(TimedChord { start, end, label: label.to_string(), chord });
    }
    chords.sort_by(|a, b| a.start.total_cmp(&b.start));
    Ok(chords)
}

// ---------------------------------------------------------------------------------------------
// Lead sheets

/// A chord sounding over ticks `start..end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChordSpan {
    pub start: u32,
    pub end: u32,
    pub label: String,
    pub chord: Chord,
}

/// Melody and chords on one tick timeline, with the tempo and time-signature maps that give them
/// bars and seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct LeadSheet {
    pub ticks_per_beat: u32,
    pub tempo_changes: Vec<TempoChange>,
    pub time_signatures: Vec<TimeSignature>,
    pub melody: Vec<Note>,
    pub chords: Vec<ChordSpan>,
}

impl LeadSheet {
    /// Take the melody from the track(s) named `melody_track` (exact name, else the unique
    /// case-insensitive match) and place the chords (times in seconds) through the score's tempo
    /// map, each onset and end snapped to the nearest 1/12 beat. Chords that vanish at that
    /// resolution and `N` spans give nothing.
    pub fn from_score(score: &Score, melody_track: &str, chords: &[TimedChord]) -> Result<Self> {
        let tracks = find_tracks(score, melody_track)?;
        let mut melody: Vec<Note> = tracks.iter().flat_map(|i| i.notes.iter().copied()).collect();
        melody.sort();
        let tempo = TempoMap::new(score);
        let tpb = score.ticks_per_beat;
        let snap = |seconds: f64| -> u32 {
            let positions = (tempo.tick_at(seconds) * f64::from(POSITIONS_PER_BEAT) / f64::from(tpb)).round().max(0.0);
            (positions * f64::from(tpb) / f64::from(POSITIONS_PER_BEAT)).round().min(f64::from(u32::MAX)) as u32
        };
        let chords = chords
            .iter()
            .filter_map(|c| {
                let chord = c.chord?;
                let (start, end) = (snap(c.start), snap(c.end));
                (end > start).then(|| ChordSpan { start, end, label: c.label.clone(), chord })
            })
            .collect();
        Ok(Self {
            ticks_per_beat: tpb,
            tempo_changes: score.tempo_changes.clone(),
            time_signatures: score.time_signatures.clone(),
            melody,
            chords,
        })
    }

    /// The chords as BOSSA plays them: every tone of every span, velocity 80.
    pub fn chord_notes(&self) -> Vec<Note> {
        let mut notes: Vec<Note> = self
            .chords
            .iter()
            .flat_map(|span| {
                span.chord.pitches().into_iter().map(|pitch| Note { start: span.start, end: span.end, pitch, velocity: CHORD_VELOCITY })
            })
            .collect();
        notes.sort();
        notes
    }

    /// The lead sheet as notes: track MELODY (program 0) then CHORDS (program 4); an empty part is
    /// left out.
    pub fn to_score(&self) -> Score {
        let part = |name: &str, program: u8, notes: Vec<Note>| Instrument { name: name.to_string(), program, is_drum: false, notes, control_changes: vec![] };
        let instruments = [part(MELODY_TRACK, MELODY_PROGRAM, self.melody.clone()), part(CHORD_TRACK, CHORD_PROGRAM, self.chord_notes())]
            .into_iter()
            .filter(|i| !i.notes.is_empty())
            .collect();
        Score {
            ticks_per_beat: self.ticks_per_beat,
            instruments,
            tempo_changes: self.tempo_changes.clone(),
            time_signatures: self.time_signatures.clone(),
        }
    }
}

/// All instruments named `name` (the MIDI writer may split one part over several tracks): the
/// exact name, else the unique case-insensitive match; an error lists the tracks there are.
pub fn find_tracks<'a>(score: &'a Score, name: &str) -> Result<Vec<&'a Instrument>> {
    let exact: Vec<&Instrument> = score.instruments.iter().filter(|i| i.name == name).collect();
    if !exact.is_empty() {
        return Ok(exact);
    }
    let folded: Vec<&Instrument> = score.instruments.iter().filter(|i| i.name.eq_ignore_ascii_case(name)).collect();
    let distinct_names: std::collections::BTreeSet<&str> = folded.iter().map(|i| i.name.as_str()).collect();
    if distinct_names.len() == 1 {
        return Ok(folded);
    }
    let mut names: Vec<String> = score.instruments.iter().map(|i| format!("'{}'", i.name)).collect();
    names.dedup();
    bail!(
        "no track named '{name}' (tracks with notes: {})",
        if names.is_empty() { "none".to_string() } else { names.join(", ") }
    )
}

// ---------------------------------------------------------------------------------------------
// Beat annotations and POP909

/// Beats of a song in seconds, with the downbeats marked.
#[derive(Debug, Clone, PartialEq)]
pub struct BeatAnnotation {
    times: Vec<f64>,
    downbeat: Vec<bool>,
}

/// BOSSA's `beats_table` caps bars at 8 beats (the longest bar OctupleMIDI takes at x/4).
const MAX_BEATS_PER_BAR: usize = 8;
/// Resolution of re-timed scores: 480 ticks per beat, 40 per 1/12-beat position.
pub const RETIMED_TICKS_PER_BEAT: u32 = 480;
/// A first beat later than this gets a lead-in beat from time 0 (so MIDI time stays audio time).
const LEAD_IN_MIN_SECONDS: f64 = 1e-3;

impl BeatAnnotation {
    pub fn new(times: Vec<f64>, downbeat: Vec<bool>) -> Result<Self> {
        ensure!(times.len() == downbeat.len(), "{} beat times but {} downbeat flags", times.len(), downbeat.len());
        ensure!(times.len() >= 2, "at least 2 beats are needed, found {}", times.len());
        ensure!(times[0].is_finite() && times[0] >= 0.0, "the first beat time {} is not a non-negative number", times[0]);
        if let Some(i) = times.windows(2).position(|w| !(w[1] > w[0] && w[1].is_finite())) {
            bail!("beat {} at {} s does not come after beat {} at {} s", i + 2, times[i + 1], i + 1, times[i]);
        }
        ensure!(downbeat.contains(&true), "no beat is marked as a downbeat");
        Ok(Self { times, downbeat })
    }

    /// Read POP909's `beat_midi.txt`: `time simple compound` per beat, where column 2 marks every 2
    /// beats in duple songs and every 3 in triple ones, column 3 every 4 and every 6. As BOSSA does,
    /// triple songs take their downbeats from column 2, the others from column 3. BOSSA names its 29
    /// triple songs in a list; "column 2 is mostly 3 beats apart" picks out exactly those.
    pub fn read_pop909(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read beat file {}", path.display()))?;
        Self::parse_pop909(&text).with_context(|| format!("in beat file {}", path.display()))
    }

    fn parse_pop909(text: &str) -> Result<Self> {
        let mut times = Vec::new();
        let (mut simple, mut compound) = (Vec::new(), Vec::new());
        for (i, line) in text.lines().enumerate() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.is_empty() {
                continue;
            }
            let values: Vec<f64> = fields
                .iter()
                .map(|f| f.parse::<f64>())
                .collect::<Result<_, _>>()
                .with_context(|| format!("line {}: expected 3 numbers, found '{line}'", i + 1))?;
            let [time, s, c] = values[..] else { bail!("line {}: expected 3 numbers, found {}", i + 1, values.len()) };
            times.push(time);
            simple.push(s == 1.0);
            compound.push(c == 1.0);
        }
        let marks: Vec<usize> = simple.iter().enumerate().filter(|(_, &m)| m).map(|(i, _)| i).collect();
        let mut gaps = [0usize; 2]; // how often column-2 marks are 2 and 3 beats apart
        for w in marks.windows(2) {
            if let Some(count) = gaps.get_mut((w[1] - w[0]).wrapping_sub(2)) {
                *count += 1;
            }
        }
        let triple = gaps[1] > gaps[0];
        Self::new(times, if triple { simple } else { compound })
    }

    /// Beats of the re-timed grid before the first downbeat: the lead-in beat, if any, and the
    /// annotated beats before it.
    fn pickup_beats(&self) -> usize {
        usize::from(self.times[0] > LEAD_IN_MIN_SECONDS) + self.downbeat.iter().position(|&d| d).unwrap_or(0)
    }

    /// Index, in the bar grid of [`retime_to_beats`]'s score, of the bar at the first annotated
    /// downbeat (BOSSA's bar 0): the pickup before it takes bars of at most 8 beats.
    pub fn first_downbeat_bar(&self) -> usize {
        self.pickup_beats().div_ceil(MAX_BEATS_PER_BAR)
    }

    /// Bars as (first beat, beats), BOSSA's `beats_table`: a bar starts at each downbeat, and every
    /// 8 beats within an overlong bar; beats before the first downbeat are not in any bar.
    fn bars(&self) -> Vec<(usize, usize)> {
        let mut starts = Vec::new();
        let mut count = 0;
        for (i, &down) in self.downbeat.iter().enumerate() {
            if down || (count >= MAX_BEATS_PER_BAR) {
                starts.push(i);
                count = 1;
            } else if count > 0 {
                count += 1;
            }
        }
        let ends = starts.iter().skip(1).copied().chain([self.times.len()]);
        starts.iter().zip(ends).map(|(&s, e)| (s, e - s)).collect()
    }
}

/// Maps seconds onto a grid of `RETIMED_TICKS_PER_BEAT` per annotated beat.
struct BeatGrid {
    /// Start times of the grid's beats, then the end of the last one (extrapolated as BOSSA does).
    times: Vec<f64>,
}

impl BeatGrid {
    fn beats(&self) -> usize {
        self.times.len() - 1
    }

    /// BOSSA's quantiser: the nearest of the 12 points per beat (linear within a beat, ties to the
    /// earlier), clamped to the grid.
    fn position(&self, seconds: f64) -> u32 {
        let per_beat = POSITIONS_PER_BEAT as usize;
        let last = self.beats() * per_beat - 1;
        let j = self.times[..self.beats()].partition_point(|&t| t <= seconds);
        let Some(j) = j.checked_sub(1) else { return 0 };
        let frac = (seconds - self.times[j]) / (self.times[j + 1] - self.times[j]) * per_beat as f64;
        let nearest = if frac - frac.floor() > 0.5 { frac.ceil() } else { frac.floor() };
        (j * per_beat + nearest as usize).min(last) as u32
    }

    fn tick(&self, seconds: f64) -> u32 {
        self.position(seconds) * (RETIMED_TICKS_PER_BEAT / POSITIONS_PER_BEAT)
    }
}

/// Re-time a score onto annotated beats, as BOSSA prepares POP909: beat k of the grid lasts
/// `RETIMED_TICKS_PER_BEAT` ticks, every note's onset and end go to the nearest 1/12 of its beat,
/// the tempo map follows the beat times (so tick -> seconds gives the original times, to the µs),
/// and the time-signature map holds n/4 for each bar of n beats.
///
/// Deviation from BOSSA, which drops notes before the first downbeat: they stay, in a pickup bar of
/// the beats before it, and a first beat later than 1 ms gets one lead-in beat from time 0. So the
/// first annotated downbeat is bar 1 when there is a pickup, bar 0 otherwise.
pub fn retime_to_beats(score: &Score, beats: &BeatAnnotation) -> Result<Score> {
    let lead_in = beats.times[0] > LEAD_IN_MIN_SECONDS;
    let pickup = beats.pickup_beats();
    let n = beats.times.len();
    let extension = beats.times[n - 1] + (beats.times[n - 1] - beats.times[n - 2]);
    let grid = BeatGrid {
        times: lead_in.then_some(0.0).into_iter().chain(beats.times.iter().copied()).chain([extension]).collect(),
    };
    let offset = usize::from(lead_in);
    let tpb = RETIMED_TICKS_PER_BEAT;
    let beat_tick = |beat: usize| -> Result<u32> {
        u32::try_from(beat * tpb as usize).context("the song has too many beats to fit 32-bit ticks")
    };

    // Time signatures: pickup (lead-in + beats before the first downbeat) in bars of <= 8 beats,
    // then n/4 whenever the bar length changes.
    let bars = beats.bars();
    let mut bar_list: Vec<(usize, usize)> = (0..pickup)
        .step_by(MAX_BEATS_PER_BAR)
        .map(|start| (start, MAX_BEATS_PER_BAR.min(pickup - start)))
        .collect();
    bar_list.extend(bars.iter().map(|&(start, len)| (start + offset, len)));
    let mut time_signatures: Vec<TimeSignature> = Vec::new();
    for (start, len) in bar_list {
        if time_signatures.last().is_none_or(|ts| ts.numerator as usize != len) {
            time_signatures.push(TimeSignature { tick: beat_tick(start)?, numerator: len as u32, denominator: 4 });
        }
    }

    // Tempo: one per beat, in whole microseconds as MIDI stores it; only changes are kept.
    let mut tempo_changes: Vec<TempoChange> = Vec::new();
    let mut last_micros = 0.0;
    for (beat, w) in grid.times.windows(2).enumerate() {
        let micros = ((w[1] - w[0]) * 1e6).round().max(1.0);
        if micros != last_micros {
            tempo_changes.push(TempoChange { tick: beat_tick(beat)?, bpm: 60e6 / micros });
            last_micros = micros;
        }
    }

    let source_tempo = TempoMap::new(score);
    let instruments = score
        .instruments
        .iter()
        .map(|inst| {
            let mut notes: Vec<Note> = inst
                .notes
                .iter()
                .map(|n| Note {
                    start: grid.tick(source_tempo.seconds_at(f64::from(n.start))),
                    end: grid.tick(source_tempo.seconds_at(f64::from(n.end))),
                    ..*n
                })
                .collect();
            notes.sort();
            // The pedal moves with the notes it holds.
            let control_changes =
                inst.control_changes.iter().map(|c| ControlChange { tick: grid.tick(source_tempo.seconds_at(f64::from(c.tick))), ..*c }).collect();
            Instrument { notes, control_changes, ..inst.clone() }
        })
        .collect();
    Ok(Score { ticks_per_beat: tpb, instruments, tempo_changes, time_signatures })
}

/// A POP909 song: the whole score re-timed onto its annotated beats, and its lead sheet (MELODY
/// track plus `chord_midi.txt`) on the same timeline.
#[derive(Debug, Clone)]
pub struct Pop909Song {
    pub name: String,
    pub score: Score,
    pub lead_sheet: LeadSheet,
    /// The bar where BOSSA's bar 0 (the first annotated downbeat) falls; bars before it are the
    /// pickup. BOSSA starts its 2-bar-hop windows there.
    pub first_downbeat_bar: usize,
}

impl Pop909Song {
    /// Load `DIR/NAME.mid` (NAME = the folder's name), `DIR/beat_midi.txt`, `DIR/chord_midi.txt`.
    pub fn load(dir: &Path) -> Result<Self> {
        ensure!(dir.is_dir(), "{} is not a folder (expected a POP909 song folder like POP909/001)", dir.display());
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .with_context(|| format!("cannot name the song folder {}", dir.display()))?;
        let file = |f: String| -> Result<PathBuf> {
            let path = dir.join(&f);
            ensure!(path.is_file(), "{} has no {f} (a POP909 song folder holds NAME.mid, beat_midi.txt, chord_midi.txt)", dir.display());
            Ok(path)
        };
        let midi_path = file(format!("{name}.mid"))?;
        let original = crate::data::midi::read(&midi_path)?;
        let beats = BeatAnnotation::read_pop909(&file("beat_midi.txt".into())?)?;
        let chords = read_chord_file(&file("chord_midi.txt".into())?)?;
        let score = retime_to_beats(&original, &beats).with_context(|| format!("while re-timing {}", midi_path.display()))?;
        let lead_sheet = LeadSheet::from_score(&score, MELODY_TRACK, &chords).with_context(|| format!("in {}", midi_path.display()))?;
        Ok(Self { name, score, lead_sheet, first_downbeat_bar: beats.first_downbeat_bar() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::segments::BarGrid;

    fn chord(label: &str) -> Chord {
        parse_chord(label).unwrap().unwrap()
    }

    fn pcs(c: &Chord) -> Vec<u8> {
        let mut pcs: Vec<u8> = (0..12).filter(|i| c.intervals >> i & 1 == 1).map(|i| (i + c.root) % 12).collect();
        pcs.sort();
        pcs
    }

    #[test]
    fn parses_pop909_labels() {
        assert_eq!(chord("C:maj"), Chord { root: 0, bass: 0, intervals: bits(&[0, 4, 7]) });
        assert_eq!(chord("A:min7"), Chord { root: 9, bass: 9, intervals: bits(&[0, 3, 7, 10]) });
        assert_eq!(chord("Bb:7/b7").bass, 8);
        assert_eq!(chord("C#:min/b3").bass, 4);
        assert_eq!(chord("F#:maj7/5"), Chord { root: 6, bass: 1, intervals: bits(&[0, 4, 7, 11]) });
        assert_eq!(pcs(&chord("G:sus4(b7)")), [0, 2, 5, 7]);
        assert_eq!(pcs(&chord("Eb:hdim7")), [1, 3, 6, 9]);
        assert_eq!(parse_chord("N"), Ok(None));
        assert_eq!(parse_chord("X"), Ok(None));
    }

    #[test]
    fn parses_harte_extras_and_rejects_garbage() {
        assert_eq!(chord("G"), chord("G:maj"));
        assert_eq!(chord("D/3"), Chord { root: 2, bass: 6, intervals: bits(&[0, 4, 7]) });
        assert_eq!(pcs(&chord("C:(3,5)")), [4, 7]); // degrees without a quality: only those tones
        assert_eq!(pcs(&chord("C:7(*5)")), [0, 4, 10]);
        assert_eq!(chord("C:9"), chord("C:7")); // mir_eval without reduction
        assert_eq!(chord("Cbb:maj").root, 10);
        for bad in ["H:maj", "C:major", "C:maj/x", "C#b:maj", "C:maj(3", "C(3)", "C:", ""] {
            let err = parse_chord(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("'{bad}'")), "{err}");
        }
    }

    #[test]
    fn voicing_follows_bossa_read_chord() {
        // Root position: bass in octave 4 (48 + pc).
        assert_eq!(chord("C:maj").pitches(), [48, 52, 55]);
        assert_eq!(chord("A:min7").pitches(), [57, 60, 64, 67]);
        // Inversion: stacked from the bass (E, G, C).
        assert_eq!(chord("C:maj/3").pitches(), [52, 55, 60]);
        // Bass not in the chord: not played; the lowest tone wraps past B, so octave 3.
        assert_eq!(chord("C:maj/b7").pitches(), [48, 52, 55]);
        assert_eq!(chord("D:min/b7").pitches(), [50, 53, 57]);
        for label in ["B:maj", "Ab:dim7/b3", "F#:7/b7", "G:sus4(b7)"] {
            let p = chord(label).pitches();
            assert!((48..=59).contains(&p[0]) && p.windows(2).all(|w| w[0] < w[1]), "{label}: {p:?}");
        }
    }

    #[test]
    fn chord_file_parsing() {
        let chords = parse_chord_lines("0.5\t2.5\tC:maj\n\n0.0 0.5 N\n2.5\t4.5\tG:7/3\n").unwrap();
        assert_eq!(chords.iter().map(|c| c.label.as_str()).collect::<Vec<_>>(), ["N", "C:maj", "G:7/3"]);
        assert_eq!(chords[0].chord, None);
        for (bad, needle) in [("0 1", "line 1"), ("0 x C:maj", "'x'"), ("2 1 C:maj", "before"), ("0 1 C:bogus", "bogus")] {
            let err = format!("{:#}", parse_chord_lines(bad).unwrap_err());
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    fn song(tempo: &[(u32, f64)], signatures: &[(u32, u32)]) -> Score {
        let note = |start, end, pitch| Note { start, end, pitch, velocity: 100 };
        Score {
            ticks_per_beat: 480,
            instruments: vec![
                Instrument { name: "MELODY".into(), program: 0, is_drum: false, notes: vec![note(0, 480, 72), note(1440, 2400, 74)], control_changes: vec![] },
                Instrument { name: "PIANO".into(), program: 0, is_drum: false, notes: vec![note(0, 1920, 48)], control_changes: vec![] },
            ],
            tempo_changes: tempo.iter().map(|&(tick, bpm)| TempoChange { tick, bpm }).collect(),
            time_signatures: signatures.iter().map(|&(tick, numerator)| TimeSignature { tick, numerator, denominator: 4 }).collect(),
        }
    }

    #[test]
    fn lead_sheet_from_midi_and_chords() {
        // 120 bpm then 60 bpm at beat 2: chords at 0-1 s (beats 0-2) and 1-3 s (beats 2-4).
        let score = song(&[(0, 120.0), (960, 60.0)], &[(0, 4)]);
        let chords = parse_chord_lines("0 1.0 C:maj\n1.0 3.0 G:7\n3.0 3.01 F:maj\n3.01 5 N").unwrap();
        let sheet = LeadSheet::from_score(&score, "melody", &chords).unwrap();
        assert_eq!(sheet.melody, score.instruments[0].notes);
        let spans: Vec<(u32, u32, &str)> = sheet.chords.iter().map(|c| (c.start, c.end, c.label.as_str())).collect();
        assert_eq!(spans, [(0, 960, "C:maj"), (960, 1920, "G:7")]); // F:maj is 1/100 s: vanishes
        let out = sheet.to_score();
        assert_eq!(out.instruments.iter().map(|i| (i.name.as_str(), i.program)).collect::<Vec<_>>(), [("MELODY", 0), ("CHORDS", 4)]);
        let chord_notes = &out.instruments[1].notes;
        assert_eq!(chord_notes.len(), 7);
        assert!(chord_notes.iter().all(|n| n.velocity == 80));
        assert_eq!(chord_notes.iter().filter(|n| n.start == 960).map(|n| n.pitch).collect::<Vec<_>>(), [55, 59, 62, 65]);
        assert_eq!(out.tempo_changes, score.tempo_changes);

        let err = format!("{:#}", LeadSheet::from_score(&score, "VOCALS", &chords).unwrap_err());
        assert!(err.contains("'VOCALS'") && err.contains("'MELODY'") && err.contains("'PIANO'"), "{err}");
    }

    #[test]
    fn chords_snap_to_twelfth_beats() {
        let score = song(&[(0, 120.0)], &[]);
        // 0.26 s = 0.52 beat = 6.24 positions -> 6 -> tick 240.
        let chords = parse_chord_lines("0.26 2.0 A:min").unwrap();
        let sheet = LeadSheet::from_score(&score, "MELODY", &chords).unwrap();
        assert_eq!((sheet.chords[0].start, sheet.chords[0].end), (240, 1920));
    }

    fn beats(times: &[f64], downbeats: &[usize]) -> BeatAnnotation {
        let flags = (0..times.len()).map(|i| downbeats.contains(&i)).collect();
        BeatAnnotation::new(times.to_vec(), flags).unwrap()
    }

    #[test]
    fn pop909_meter_rule() {
        // Triple: column 2 every 3 beats, column 3 every 6.
        let lines: String = (0..13).map(|i| format!("{} {} {}\n", 0.5 * i as f64, u8::from(i % 3 == 1), u8::from(i % 6 == 1))).collect();
        let triple = BeatAnnotation::parse_pop909(&lines).unwrap();
        assert_eq!(triple.bars(), [(1, 3), (4, 3), (7, 3), (10, 3)]);
        // Duple: column 2 every 2 beats, column 3 every 4: downbeats from column 3.
        let lines: String = (0..12).map(|i| format!("{} {} {}\n", 0.5 * i as f64, u8::from(i % 2 == 0), u8::from(i % 4 == 0))).collect();
        let quad = BeatAnnotation::parse_pop909(&lines).unwrap();
        assert_eq!(quad.bars(), [(0, 4), (4, 4), (8, 4)]);
        assert!(BeatAnnotation::parse_pop909("0 0 0\n0.5 1 1\n0.4 0 0\n").is_err());
        assert!(BeatAnnotation::parse_pop909("0 0 0\n0.5 0 0\n").is_err());
    }

    #[test]
    fn overlong_bars_split_at_eight_beats() {
        let times: Vec<f64> = (0..20).map(|i| i as f64).collect();
        assert_eq!(beats(&times, &[2]).bars(), [(2, 8), (10, 8), (18, 2)]);
        // A pickup of 10 beats (lead-in + 9) takes two bars: 8 + 2.
        let late: Vec<f64> = (1..20).map(f64::from).collect();
        let annotation = beats(&late, &[9]);
        assert_eq!(annotation.first_downbeat_bar(), 2);
        let retimed = retime_to_beats(&Score { instruments: vec![], ..song(&[], &[]) }, &annotation).unwrap();
        let ts: Vec<(u32, u32)> = retimed.time_signatures.iter().map(|t| (t.tick, t.numerator)).collect();
        assert_eq!(ts, [(0, 8), (8 * 480, 2), (10 * 480, 8), (18 * 480, 2)]);
    }

    #[test]
    fn retiming_onto_beats() {
        // Source: 480 tpb at 120 bpm (0.5 s a beat). Annotated beats start 0.25 s in and slow down:
        // 0.25, 0.75, 1.25, 1.75 (downbeat), 2.75, 3.75, 4.75, 5.75 (downbeat), 6.75.
        let source = song(&[(0, 120.0)], &[(0, 1)]);
        let annotation = beats(&[0.25, 0.75, 1.25, 1.75, 2.75, 3.75, 4.75, 5.75, 6.75], &[3, 7]);
        let retimed = retime_to_beats(&source, &annotation).unwrap();
        // Lead-in beat (0-0.25 s) + 3 pickup beats = a 4/4 pickup bar, then 4/4, then a bar of 2.
        let ts: Vec<(u32, u32)> = retimed.time_signatures.iter().map(|t| (t.tick, t.numerator)).collect();
        assert_eq!(ts, [(0, 4), (8 * 480, 2)]);
        assert_eq!(annotation.first_downbeat_bar(), 1);
        // Tempo: 0.25 s lead-in (240 bpm), 0.5 s beats (120), 1 s beats (60).
        let tempo: Vec<(u32, f64)> = retimed.tempo_changes.iter().map(|t| (t.tick, t.bpm)).collect();
        assert_eq!(tempo, [(0, 240.0), (480, 120.0), (4 * 480, 60.0)]);
        // MELODY note 2 (source ticks 1440..2400 = 1.5 s..2.5 s): 1.5 s is halfway through grid beat 3
        // (1.25-1.75) -> position 42; 2.5 s is 3/4 into beat 4 (1.75-2.75) -> position 57.
        let melody = &retimed.instruments[0].notes;
        assert_eq!((melody[1].start, melody[1].end), (42 * 40, 57 * 40));
        // Seconds survive: tick -> seconds through the new tempo map gives the grid times back.
        let map = TempoMap::new(&retimed);
        assert!((map.seconds_at(f64::from(4 * 480)) - 1.75).abs() < 1e-9);
        assert!((map.seconds_at(f64::from(42 * 40)) - 1.5).abs() < 1e-9);
        // First note (0 s) sits on the lead-in's first position.
        assert_eq!(melody[0].start, 0);
    }

    #[test]
    fn retiming_without_lead_in_or_pickup() {
        let source = song(&[(0, 120.0)], &[]);
        let annotation = beats(&[0.0, 0.5, 1.0, 1.5], &[0, 3]);
        let retimed = retime_to_beats(&source, &annotation).unwrap();
        let ts: Vec<(u32, u32)> = retimed.time_signatures.iter().map(|t| (t.tick, t.numerator)).collect();
        assert_eq!(ts, [(0, 3), (1440, 1)]);
        assert_eq!(annotation.first_downbeat_bar(), 0);
        assert_eq!(retimed.tempo_changes, [TempoChange { tick: 0, bpm: 120.0 }]);
        // Same tempo and beat phase: notes keep their ticks, but ends past the grid (2 s, one beat
        // after the last annotated one) clamp to its last point, 47 positions.
        let (melody, piano) = (&retimed.instruments[0].notes, &retimed.instruments[1].notes);
        assert_eq!(melody[0], source.instruments[0].notes[0]);
        assert_eq!((melody[1].start, melody[1].end), (1440, 1880));
        assert_eq!(piano[0].end, 1880);
        let grid = BarGrid::from_score(&retimed).unwrap();
        assert_eq!(grid.bars.iter().map(|b| b.length_pos).collect::<Vec<_>>(), [36, 12]);
    }

    fn pop909_dir() -> Option<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/pop909/POP909");
        if dir.is_dir() {
            Some(dir)
        } else {
            eprintln!("skipping: {} is absent", dir.display());
            None
        }
    }

    #[test]
    fn pop909_triple_song() {
        let Some(root) = pop909_dir() else { return };
        // 034 is one of BOSSA's triple-meter songs.
        let song = Pop909Song::load(&root.join("034")).unwrap();
        let grid = BarGrid::from_score(&song.score).unwrap();
        let three_four = grid.bars.iter().filter(|b| (b.numerator, b.denominator) == (3, 4)).count();
        assert!(three_four as f64 > 0.9 * grid.bars.len() as f64, "{three_four} of {} bars in 3/4", grid.bars.len());
        let sheet = &song.lead_sheet;
        assert!(!sheet.melody.is_empty() && !sheet.chords.is_empty());
        // Chords are annotated on beats: after re-timing nearly all start on a beat tick.
        let on_beat = sheet.chords.iter().filter(|c| c.start % 480 == 0).count();
        assert!(on_beat as f64 > 0.95 * sheet.chords.len() as f64, "{on_beat} of {} chords on a beat", sheet.chords.len());
        // Re-timed seconds agree with the annotation to within half a position at 100+ bpm.
        let text = std::fs::read_to_string(root.join("034/beat_midi.txt")).unwrap();
        let first_downbeat: f64 = text.lines().find(|l| l.split_whitespace().nth(1) == Some("1.0")).unwrap()
            .split_whitespace().next().unwrap().parse().unwrap();
        let map = TempoMap::new(&song.score);
        let bar1 = crate::data::segments::pos_to_tick(grid.bars[1].start_pos, 480);
        assert!((map.seconds_at(f64::from(bar1)) - first_downbeat).abs() < 1e-4);
    }
}
