//! The embedded style corpus: lead sheets the project composes itself, each arranged for piano in
//! several clearly different accompaniment styles and rendered to audio. No file from elsewhere
//! is needed (only a GM SoundFont for the audio), and the same seed gives the same corpus.
//!
//! A lead sheet is a key (major or minor), a tempo, a meter (4/4, or 3/4 for every third one),
//! one chord per bar from common pop/classical progressions ending on V-I, and a melody (chord
//! tones on the beats, scale steps between, phrase endings every 4 bars, G4-C6). Each style is a
//! rhythm-and-register pattern realised over the chord of the moment:
//!
//! | style    | meters   | texture                                                          |
//! |----------|----------|------------------------------------------------------------------|
//! | block    | 4/4, 3/4 | sustained bass + close chord on beats 1 and 3 (3/4: 1)           |
//! | alberti  | 4/4, 3/4 | eighths low-high-mid-high over three chord tones around C3-C4    |
//! | arpeggio | 4/4, 3/4 | held bass + sixteenth broken chord rising and falling ~2 octaves |
//! | stride   | 4/4      | low bass octave on 1 and 3, staccato mid chord on 2 and 4        |
//! | bossa    | 4/4      | root-fifth bass, syncopated 2-bar comping with added ninths      |
//! | waltz    | 3/4      | bass on 1, staccato chords on 2 and 3                            |
//!
//! Each arrangement also draws its own touch, as two pianists playing one pattern differ: the
//! register of the whole part (as written or an octave lower), its dynamics (three velocity
//! levels), its articulation (legato or staccato) and its feel (straight or swung off-beats).
//! Without it every arrangement of a style would sound alike, and retrieval (SPEC 7) could tell
//! candidates of one style apart only by their lead sheet.
//!
//! Output (the "pairs" layout `stylebridge prepare` reads), flat in one folder: for each
//! arrangement `NAME.mid` (tracks MELODY and PIANO; with a band also BASS and DRUMS),
//! `NAME.wav` (mono, 16-bit) and `NAME.chords.txt` (POP909 `start end label`, seconds), where
//! NAME = `<lead sheet>_<style>`, e.g. `ls003_alberti`; and `manifest.json` listing every item
//! with its lead sheet, style, key, tempo and meter.
use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::data::audio::{check_sample_rate, write_wav};
use crate::data::leadsheet::{parse_chord, Chord, MELODY_TRACK};
use crate::data::midi::{self, Instrument, Note, Score, TempoChange, TimeSignature};
use crate::data::pairing::KeyedRng;
use crate::data::render::{SoundFontSynth, POP909_BAND, RELEASE_TAIL_S};

pub const MANIFEST_NAME: &str = "manifest.json";
/// Lead sheets one corpus may hold: every arrangement is planned (in memory) before any is
/// written, and 10k lead sheets (up to 60k arrangements) are far more than the demo's 144.
pub const MAX_LEAD_SHEETS: u64 = 10_000;
pub const PIANO_TRACK: &str = "PIANO";
const TPB: u32 = 480;
/// Ticks per 1/12 beat, the grid the patterns are written on.
const TWELFTH: u32 = TPB / 12;
const NOTE_NAMES: [&str; 12] = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Style {
    Block,
    Alberti,
    Arpeggio,
    Stride,
    Bossa,
    Waltz,
}

impl Style {
    pub const ALL: [Style; 6] = [
        Style::Block,
        Style::Alberti,
        Style::Arpeggio,
        Style::Stride,
        Style::Bossa,
        Style::Waltz,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Style::Block => "block",
            Style::Alberti => "alberti",
            Style::Arpeggio => "arpeggio",
            Style::Stride => "stride",
            Style::Bossa => "bossa",
            Style::Waltz => "waltz",
        }
    }

    /// Whether the style has a pattern for bars of `beats` quarter notes.
    pub fn fits(self, beats: u32) -> bool {
        match self {
            Style::Block | Style::Alberti | Style::Arpeggio => true,
            Style::Stride | Style::Bossa => beats == 4,
            Style::Waltz => beats == 3,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Lead sheets

/// A generated lead sheet: one chord per bar and a melody, at one tempo and meter.
#[derive(Debug, Clone)]
pub struct LeadSheetSpec {
    pub id: String,
    pub tonic: u8,
    pub minor: bool,
    pub bpm: f64,
    /// Quarter notes per bar (4 or 3).
    pub beats: u32,
    /// Chord label (Harte syntax, as in POP909) and chord of each bar.
    pub chords: Vec<(String, Chord)>,
    pub melody: Vec<Note>,
}

impl LeadSheetSpec {
    pub fn bars(&self) -> u32 {
        self.chords.len() as u32
    }

    pub fn key_label(&self) -> String {
        format!(
            "{}:{}",
            NOTE_NAMES[self.tonic as usize],
            if self.minor { "min" } else { "maj" }
        )
    }

    fn bar_ticks(&self) -> u32 {
        self.beats * TPB
    }

    fn seconds(&self, tick: u32) -> f64 {
        tick as f64 / TPB as f64 * 60.0 / self.bpm
    }
}

/// Roman-numeral progressions as (semitones above the tonic, quality).
type Progression = &'static [(u8, &'static str)];
const MAJOR_PROGRESSIONS: [Progression; 8] = [
    &[(0, "maj"), (7, "maj"), (9, "min"), (5, "maj")],
    &[(0, "maj"), (9, "min"), (5, "maj"), (7, "maj")],
    &[(0, "maj"), (5, "maj"), (7, "7"), (0, "maj")],
    &[(9, "min"), (5, "maj"), (0, "maj"), (7, "maj")],
    &[(0, "maj"), (4, "min"), (5, "maj"), (7, "maj")],
    &[(2, "min7"), (7, "7"), (0, "maj7"), (9, "min7")],
    &[(0, "maj"), (5, "maj"), (2, "min"), (7, "7")],
    &[(5, "maj"), (7, "maj"), (4, "min"), (9, "min")],
];
const MINOR_PROGRESSIONS: [Progression; 6] = [
    &[(0, "min"), (5, "min"), (7, "maj"), (0, "min")],
    &[(0, "min"), (8, "maj"), (3, "maj"), (10, "maj")],
    &[(0, "min"), (10, "maj"), (8, "maj"), (7, "maj")],
    &[(0, "min"), (5, "min"), (10, "maj"), (3, "maj")],
    &[(8, "maj"), (10, "maj"), (0, "min"), (0, "min")],
    &[(0, "min"), (3, "maj"), (5, "min"), (7, "7")],
];
const MAJOR_SCALE: [u8; 7] = [0, 2, 4, 5, 7, 9, 11];
const MINOR_SCALE: [u8; 7] = [0, 2, 3, 5, 7, 8, 10];
/// Melody rhythms per bar in 1/12 beats; the last entry of a phrase-ending bar is a rest.
const RHYTHMS_4: [&[u32]; 7] = [
    &[12, 12, 12, 12],
    &[24, 12, 12],
    &[12, 12, 24],
    &[18, 6, 12, 12],
    &[24, 24],
    &[6, 6, 12, 12, 12],
    &[12, 24, 12],
];
const RHYTHMS_3: [&[u32]; 6] = [
    &[12, 12, 12],
    &[24, 12],
    &[18, 6, 12],
    &[36],
    &[12, 24],
    &[6, 6, 12, 12],
];
const PHRASE_END_4: &[u32] = &[24, 12, 12];
const PHRASE_END_3: &[u32] = &[24, 12];
/// The last bar: one long tonic, then a rest.
const FINAL_4: &[u32] = &[36, 12];
const FINAL_3: &[u32] = PHRASE_END_3;
const MELODY_LOW: i32 = 67;
const MELODY_HIGH: i32 = 84;
/// Piano velocities over the patterns' nominal ones: the accompaniment carries the style, so it
/// must not hide under the sustained lead (TimGM6mb's sax is ~10 dB louder at equal velocity).
const PIANO_BOOST: i64 = 18;

fn pick<T: Copy>(rng: &mut KeyedRng, items: &[T]) -> T {
    items[rng.int_in(0, items.len() as i64 - 1) as usize]
}

fn chord_of(root: u8, quality: &str) -> (String, Chord) {
    let label = format!("{}:{quality}", NOTE_NAMES[root as usize % 12]);
    let chord = parse_chord(&label)
        .ok()
        .flatten()
        .expect("the corpus's chord labels are valid Harte labels");
    (label, chord)
}

fn sounds(chord: &Chord, pitch: i32) -> bool {
    chord.intervals >> (pitch - i32::from(chord.root)).rem_euclid(12) & 1 == 1
}

/// Compose lead sheet `index` of the corpus drawn with `seed`.
pub fn lead_sheet(seed: u64, index: u64, bars: u32) -> LeadSheetSpec {
    let mut rng = KeyedRng::new(&[seed, index, 0x4c45_4144]); // "LEAD"
    let beats = if index % 3 == 2 { 3 } else { 4 };
    let tonic = rng.int_in(0, 11) as u8;
    let minor = rng.int_in(0, 2) == 0;
    let bpm = if beats == 3 {
        rng.int_in(84, 112)
    } else {
        rng.int_in(88, 120)
    } as f64;

    let progressions: &[Progression] = if minor {
        &MINOR_PROGRESSIONS
    } else {
        &MAJOR_PROGRESSIONS
    };
    let mut degrees: Vec<(u8, &str)> = Vec::new();
    while degrees.len() < bars as usize {
        degrees.extend_from_slice(pick(&mut rng, progressions));
    }
    degrees.truncate(bars as usize);
    // A cadence closes the piece: V(7) - I.
    let n = degrees.len();
    degrees[n - 1] = (0, if minor { "min" } else { "maj" });
    if n >= 2 {
        degrees[n - 2] = (7, "7");
    }
    let chords: Vec<(String, Chord)> = degrees
        .iter()
        .map(|&(deg, q)| chord_of((tonic + deg) % 12, q))
        .collect();

    let scale = if minor { MINOR_SCALE } else { MAJOR_SCALE };
    let in_scale = |p: i32| scale.contains(&((p - i32::from(tonic)).rem_euclid(12) as u8));
    let mut melody = Vec::new();
    let mut previous = (MELODY_LOW..=MELODY_HIGH)
        .filter(|&p| sounds(&chords[0].1, p))
        .min_by_key(|p| (p - 74).abs())
        .expect("every chord has a tone in the melody range");
    for (bar, (_, chord)) in chords.iter().enumerate() {
        let last_bar = bar + 1 == n;
        let phrase_end = (bar + 1) % 4 == 0 && !last_bar;
        let rhythm: &[u32] = match (beats, phrase_end, last_bar) {
            (4, _, true) => FINAL_4,
            (_, _, true) => FINAL_3,
            (4, true, _) => PHRASE_END_4,
            (_, true, _) => PHRASE_END_3,
            (4, false, _) => pick(&mut rng, &RHYTHMS_4),
            _ => pick(&mut rng, &RHYTHMS_3),
        };
        let mut pos = 0;
        for (k, &length) in rhythm.iter().enumerate() {
            let start = bar as u32 * beats * TPB + pos * TWELFTH;
            pos += length;
            let rest = (phrase_end || last_bar) && k + 1 == rhythm.len();
            if rest {
                continue;
            }
            let on_beat = (pos - length) % 12 == 0;
            let pitch = if last_bar && k == 0 {
                // End on the tonic nearest the previous note.
                (MELODY_LOW..=MELODY_HIGH)
                    .filter(|&p| (p - i32::from(tonic)) % 12 == 0)
                    .min_by_key(|p| (p - previous).abs())
            } else {
                let step = pick(&mut rng, &[-4, -3, -2, -2, -1, -1, 1, 1, 2, 2, 3, 4]);
                let target = (previous + step).clamp(MELODY_LOW, MELODY_HIGH);
                (MELODY_LOW..=MELODY_HIGH)
                    .filter(|&p| {
                        if on_beat {
                            sounds(chord, p)
                        } else {
                            in_scale(p) && p != previous
                        }
                    })
                    .min_by_key(|p| ((p - target).abs(), *p))
            }
            .expect("the melody range holds every pitch class");
            let velocity = (if on_beat { 62 } else { 56 }) + rng.int_in(-4, 4) as i32;
            melody.push(Note {
                start,
                end: start + length * TWELFTH - TWELFTH / 2,
                pitch: pitch as u8,
                velocity: velocity as u8,
            });
            previous = pitch;
        }
    }
    LeadSheetSpec {
        id: format!("ls{index:03}"),
        tonic,
        minor,
        bpm,
        beats,
        chords,
        melody,
    }
}

// ---------------------------------------------------------------------------------------------
// Accompaniment patterns

/// What a pattern hit plays, realised over the chord sounding at the hit.
#[derive(Clone, Copy)]
enum Role {
    /// The chord's bass note (or its fifth) in C2-B2, optionally doubled an octave up.
    Bass { fifth: bool, octave: bool },
    /// Close-position chord tones from `low` upward (`ninth`: add the ninth, bossa colour).
    Chord { low: i32, ninth: bool },
    /// The `index`-th chord tone counting up from `low` (broken-chord figures).
    Ladder { low: i32, index: usize },
}

/// One hit of a pattern: onset and length in 1/12 beats from the start of the pattern, velocity.
#[derive(Clone, Copy)]
struct Hit {
    at: u32,
    len: u32,
    role: Role,
    velocity: u8,
}

const fn hit(at: u32, len: u32, role: Role, velocity: u8) -> Hit {
    Hit {
        at,
        len,
        role,
        velocity,
    }
}

const fn bass(fifth: bool, octave: bool) -> Role {
    Role::Bass { fifth, octave }
}

const fn chord(low: i32) -> Role {
    Role::Chord { low, ninth: false }
}

const fn ladder(low: i32, index: usize) -> Role {
    Role::Ladder { low, index }
}

/// A style's pattern for a meter: the hits of `bars` bars, repeated.
#[rustfmt::skip]
fn pattern(style: Style, beats: u32) -> (u32, Vec<Hit>) {
    let eighths = |indices: &[usize], low: i32, velocity: u8| -> Vec<Hit> {
        indices.iter().enumerate().map(|(k, &i)| hit(6 * k as u32, 6, ladder(low, i), velocity)).collect()
    };
    match (style, beats) {
        (Style::Block, 4) => (1, vec![
            hit(0, 23, bass(false, false), 70), hit(0, 23, chord(55), 66),
            hit(24, 23, bass(false, false), 64), hit(24, 23, chord(55), 60),
        ]),
        (Style::Block, _) => (1, vec![hit(0, 35, bass(false, false), 70), hit(0, 35, chord(55), 66)]),
        (Style::Alberti, 4) => (1, eighths(&[0, 2, 1, 2, 0, 2, 1, 2], 48, 64)),
        (Style::Alberti, _) => (1, eighths(&[0, 2, 1, 2, 1, 2], 48, 64)),
        (Style::Arpeggio, _) => {
            let steps = 4 * beats as usize;
            let up_down = (0..steps).map(|k| if k < steps / 2 { k } else { steps - k });
            let mut hits: Vec<Hit> = up_down.enumerate().map(|(k, i)| hit(3 * k as u32, 8, ladder(43, i), 62)).collect();
            hits.push(hit(0, 12 * beats - 1, bass(false, false), 66));
            (1, hits)
        }
        (Style::Stride, _) => (1, vec![
            hit(0, 10, bass(false, true), 86), hit(12, 7, chord(55), 72),
            hit(24, 10, bass(true, true), 80), hit(36, 7, chord(55), 70),
        ]),
        (Style::Bossa, _) => {
            let comp = Role::Chord { low: 57, ninth: true };
            (2, vec![
                hit(0, 16, bass(false, false), 72), hit(18, 5, bass(true, false), 64),
                hit(24, 16, bass(true, false), 68), hit(42, 5, bass(false, false), 62),
                hit(48, 16, bass(false, false), 72), hit(66, 5, bass(true, false), 64),
                hit(72, 16, bass(true, false), 68), hit(90, 5, bass(false, false), 62),
                hit(0, 5, comp, 66), hit(18, 5, comp, 62), hit(36, 5, comp, 64),
                hit(60, 5, comp, 64), hit(78, 5, comp, 62),
            ])
        }
        (Style::Waltz, _) => (1, vec![hit(0, 11, bass(false, false), 80), hit(12, 7, chord(55), 64), hit(24, 7, chord(55), 62)]),
    }
}

/// The pitches a role plays over `chord`.
fn realise(role: Role, chord: &Chord) -> Vec<u8> {
    let tones_from = |low: i32, extra: u16| -> Vec<i32> {
        let intervals = chord.intervals | extra;
        (low..low + 36)
            .filter(|&p| intervals >> (p - i32::from(chord.root)).rem_euclid(12) & 1 == 1)
            .collect()
    };
    let pitches: Vec<i32> = match role {
        Role::Bass { fifth, octave } => {
            let pc = if fifth { (chord.root + 7) % 12 } else { chord.bass };
            let low = 36 + i32::from(pc);
            if octave {
                vec![low, low + 12]
            } else {
                vec![low]
            }
        }
        Role::Chord { low, ninth } => {
            let tones = tones_from(low, if ninth { 1 << 2 } else { 0 });
            let per_octave = (chord.intervals | if ninth { 1 << 2 } else { 0 }).count_ones() as usize;
            tones.into_iter().take(per_octave).collect()
        }
        Role::Ladder { low, index } => tones_from(low, 0).get(index).copied().into_iter().collect(),
    };
    pitches.into_iter().map(|p| p as u8).collect()
}

/// How one arrangement plays its style's pattern (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Touch {
    /// Semitones added to every piano note: 0 or -12.
    pub register: i32,
    /// Added to every piano velocity: -24 (soft), -12 or 0 (as written).
    pub dynamics: i32,
    pub staccato: bool,
    /// Off-beat eighths (and sixteenths) pushed late onto the triplet grid.
    pub swing: bool,
}

impl Touch {
    pub const AS_WRITTEN: Touch = Touch { register: 0, dynamics: 0, staccato: false, swing: false };

    pub fn draw(rng: &mut KeyedRng) -> Self {
        Touch {
            register: pick(rng, &[0, -12]),
            dynamics: pick(rng, &[-24, -12, 0]),
            staccato: rng.int_in(0, 1) == 1,
            swing: rng.int_in(0, 1) == 1,
        }
    }

    /// A pattern hit's onset and length in 1/12 beats under this touch.
    fn timing(self, at: u32, len: u32) -> (u32, u32) {
        let at = match (self.swing, at % 12) {
            (true, 6) => at + 2,
            (true, 3 | 9) => at + 1,
            _ => at,
        };
        (at, if self.staccato { (len / 2).max(2) } else { len })
    }
}

/// The piano part of `sheet` in `style`, played with `touch`.
pub fn piano_part(sheet: &LeadSheetSpec, style: Style, touch: Touch, rng: &mut KeyedRng) -> Vec<Note> {
    let (pattern_bars, hits) = pattern(style, sheet.beats);
    let bar_ticks = sheet.bar_ticks();
    let mut notes = Vec::new();
    for first_bar in (0..sheet.bars()).step_by(pattern_bars as usize) {
        let origin = first_bar * bar_ticks;
        for h in &hits {
            let (at, len) = touch.timing(h.at, h.len);
            let start = origin + at * TWELFTH;
            let bar = (start / bar_ticks) as usize;
            let Some((_, chord)) = sheet.chords.get(bar) else {
                continue;
            };
            let end = (start + len * TWELFTH).min((bar as u32 + 1) * bar_ticks);
            for pitch in realise(h.role, chord) {
                let pitch = (i32::from(pitch) + touch.register) as u8;
                let nominal = i64::from(h.velocity) + PIANO_BOOST + i64::from(touch.dynamics);
                let velocity = (nominal + rng.int_in(-5, 5)).clamp(1, 127) as u8;
                notes.push(Note {
                    start,
                    end,
                    pitch,
                    velocity,
                });
            }
        }
    }
    notes.sort();
    notes
}

/// A plain band under the piano, the same for every style: bass roots on the strong beats,
/// kick, snare/rim and hi-hat.
fn band_parts(sheet: &LeadSheetSpec) -> [Instrument; 2] {
    let bar_ticks = sheet.bar_ticks();
    let mut bass = Vec::new();
    let mut drums = Vec::new();
    let strong: &[u32] = if sheet.beats == 4 { &[0, 2] } else { &[0] };
    let beat_len = if sheet.beats == 4 { 2 } else { 3 };
    for (bar, (_, chord)) in sheet.chords.iter().enumerate() {
        let origin = bar as u32 * bar_ticks;
        for &beat in strong {
            let start = origin + beat * TPB;
            bass.push(Note {
                start,
                end: start + beat_len * TPB - TWELFTH,
                pitch: 28 + (chord.bass + 8) % 12,
                velocity: 80,
            });
        }
        for beat in 0..sheet.beats {
            let at = origin + beat * TPB;
            let (drum, velocity) = match (sheet.beats, beat) {
                (_, 0) => (36, 90), // kick
                (4, 2) => (36, 80), // kick
                (4, _) => (37, 70), // side stick on 2 and 4
                _ => (42, 60),      // closed hi-hat on 2 and 3 of a waltz
            };
            drums.push(Note {
                start: at,
                end: at + TPB / 4,
                pitch: drum,
                velocity,
            });
            drums.push(Note {
                start: at + TPB / 2,
                end: at + TPB * 3 / 4,
                pitch: 42,
                velocity: 50,
            });
        }
    }
    bass.sort();
    drums.sort();
    [
        Instrument {
            name: "BASS".into(),
            program: 33,
            is_drum: false,
            notes: bass,
            control_changes: vec![],
        },
        Instrument {
            name: "DRUMS".into(),
            program: 0,
            is_drum: true,
            notes: drums,
            control_changes: vec![],
        },
    ]
}

/// The touch drawn for arrangement (`seed`, `index`, `style`) unless the corpus is `as_written`.
pub fn drawn_touch(seed: u64, index: u64, style: Style) -> Touch {
    Touch::draw(&mut KeyedRng::new(&[seed, index, style as u64, 0x544f_5543])) // "TOUC"
}

/// The arrangement as a score: MELODY (the lead sheet's, POP909's band lead program), PIANO
/// played with `touch`, and optionally the band.
pub fn arrangement(sheet: &LeadSheetSpec, style: Style, touch: Touch, band: bool, seed: u64, index: u64) -> Score {
    let mut rng = KeyedRng::new(&[seed, index, style as u64, 0x5049_414e]); // "PIAN"
    let melody_program = POP909_BAND
        .iter()
        .find(|(t, _)| *t == MELODY_TRACK)
        .map_or(0, |&(_, p)| p);
    let mut instruments = vec![
        Instrument {
            name: MELODY_TRACK.into(),
            program: melody_program,
            is_drum: false,
            notes: sheet.melody.clone(),
            control_changes: vec![],
        },
        Instrument {
            name: PIANO_TRACK.into(),
            program: 0,
            is_drum: false,
            notes: piano_part(sheet, style, touch, &mut rng),
            control_changes: vec![],
        },
    ];
    if band {
        instruments.extend(band_parts(sheet));
    }
    Score {
        ticks_per_beat: TPB,
        instruments,
        tempo_changes: vec![TempoChange {
            tick: 0,
            bpm: sheet.bpm,
        }],
        time_signatures: vec![TimeSignature {
            tick: 0,
            numerator: sheet.beats,
            denominator: 4,
        }],
    }
}

// ---------------------------------------------------------------------------------------------
// Writing the corpus

/// One arrangement in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub name: String,
    pub lead_sheet: String,
    pub style: Style,
    pub touch: Touch,
    pub key: String,
    pub tempo_bpm: f64,
    pub meter: String,
    pub bars: u32,
    pub chords: Vec<String>,
    pub seconds: f64,
    pub midi: String,
    pub audio: String,
    pub chord_file: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub generator: String,
    pub seed: u64,
    pub songs: u64,
    pub bars: u32,
    pub band: bool,
    pub sample_rate: u32,
    pub soundfont: String,
    pub items: Vec<Item>,
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_NAME);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read corpus manifest {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a corpus manifest", path.display()))
    }
}

pub struct SynthOptions {
    pub out: PathBuf,
    pub songs: u64,
    pub seed: u64,
    pub bars: u32,
    pub styles: Vec<Style>,
    pub band: bool,
    /// Play every pattern as written (no drawn touch): arrangements of one style differ only
    /// by their lead sheet.
    pub as_written: bool,
    pub sample_rate: u32,
}

/// Compose, arrange, render and write the corpus; returns its manifest (also written last, so
/// a folder with a manifest is complete).
pub fn synthesize(options: &SynthOptions, synth: &SoundFontSynth, soundfont: &Path) -> Result<Manifest> {
    ensure!((1..=MAX_LEAD_SHEETS).contains(&options.songs), "--songs must be 1 ..= {MAX_LEAD_SHEETS}, got {}", options.songs);
    check_sample_rate(u64::from(options.sample_rate), "--sample-rate")?;
    ensure!(
        (2..=64).contains(&options.bars),
        "--bars must be between 2 and 64, got {}",
        options.bars
    );
    ensure!(!options.styles.is_empty(), "no style selected");
    let jobs: Vec<(LeadSheetSpec, Style, u64)> = (0..options.songs)
        .flat_map(|index| {
            let sheet = lead_sheet(options.seed, index, options.bars);
            options
                .styles
                .iter()
                .filter(|s| s.fits(sheet.beats))
                .map(|&s| (sheet.clone(), s, index))
                .collect::<Vec<_>>()
        })
        .collect();
    if jobs.is_empty() {
        bail!("none of the selected styles fits the lead sheets' meters (4/4, and 3/4 for every third song)");
    }
    std::fs::create_dir_all(&options.out).with_context(|| format!("cannot create {}", options.out.display()))?;
    let items = jobs
        .par_iter()
        .map(|(sheet, style, index)| write_item(options, synth, sheet, *style, *index))
        .collect::<Result<Vec<Item>>>()?;
    let manifest = Manifest {
        generator: format!("stylebridge {} corpus synth", env!("CARGO_PKG_VERSION")),
        seed: options.seed,
        songs: options.songs,
        bars: options.bars,
        band: options.band,
        sample_rate: options.sample_rate,
        soundfont: soundfont
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        items,
    };
    let json = serde_json::to_vec_pretty(&manifest)?;
    crate::atomic::write(&options.out.join(MANIFEST_NAME), &json)?;
    Ok(manifest)
}

fn write_item(
    options: &SynthOptions,
    synth: &SoundFontSynth,
    sheet: &LeadSheetSpec,
    style: Style,
    index: u64,
) -> Result<Item> {
    let name = format!("{}_{}", sheet.id, style.name());
    let touch = if options.as_written { Touch::AS_WRITTEN } else { drawn_touch(options.seed, index, style) };
    let score = arrangement(sheet, style, touch, options.band, options.seed, index);
    let (midi_name, audio_name, chord_name) = (
        format!("{name}.mid"),
        format!("{name}.wav"),
        format!("{name}.chords.txt"),
    );
    midi::write(&score, &options.out.join(&midi_name))?;
    let mut audio = synth
        .render(&score, options.sample_rate)
        .with_context(|| format!("cannot render {name}"))?;
    // Every file of a lead sheet lasts its bars plus the release tail, whatever the last note.
    let song_end = sheet.seconds(sheet.bars() * sheet.bar_ticks()) + RELEASE_TAIL_S;
    audio.resize(
        audio
            .len()
            .max((song_end * f64::from(options.sample_rate)).round() as usize),
        0.0,
    );
    write_wav(&options.out.join(&audio_name), &audio, options.sample_rate)?;
    let bar_ticks = sheet.bar_ticks();
    let chord_lines: String = sheet
        .chords
        .iter()
        .enumerate()
        .map(|(bar, (label, _))| {
            let start = sheet.seconds(bar as u32 * bar_ticks);
            let end = sheet.seconds((bar as u32 + 1) * bar_ticks);
            format!("{start:.6}\t{end:.6}\t{label}\n")
        })
        .collect();
    crate::atomic::write(&options.out.join(&chord_name), chord_lines.as_bytes())?;
    Ok(Item {
        name,
        lead_sheet: sheet.id.clone(),
        style,
        touch,
        key: sheet.key_label(),
        tempo_bpm: sheet.bpm,
        meter: format!("{}/4", sheet.beats),
        bars: sheet.bars(),
        chords: sheet.chords.iter().map(|(label, _)| label.clone()).collect(),
        seconds: audio.len() as f64 / f64::from(options.sample_rate),
        midi: midi_name,
        audio: audio_name,
        chord_file: chord_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lead_sheets_are_seeded_and_end_with_a_cadence() {
        for index in 0..6 {
            let a = lead_sheet(7, index, 8);
            let b = lead_sheet(7, index, 8);
            assert_eq!(a.melody, b.melody);
            assert_eq!(a.beats, if index % 3 == 2 { 3 } else { 4 });
            assert_eq!(a.chords.len(), 8);
            assert_eq!(a.chords[6].1.root, (a.tonic + 7) % 12, "V before the end");
            assert_eq!(a.chords[7].1.root, a.tonic, "ends on I");
            // The last bar holds one note, the tonic, from its downbeat.
            let last_bar: Vec<&Note> = a.melody.iter().filter(|n| n.start >= 7 * a.beats * TPB).collect();
            assert_eq!(last_bar.len(), 1);
            assert_eq!(last_bar[0].start, 7 * a.beats * TPB);
            assert_eq!(
                (last_bar[0].pitch as i32 - a.tonic as i32).rem_euclid(12),
                0,
                "melody ends on the tonic"
            );
            assert!(a
                .melody
                .iter()
                .all(|n| (MELODY_LOW..=MELODY_HIGH).contains(&(n.pitch as i32)) && n.end > n.start));
            assert!(a.melody.iter().all(|n| n.end <= 8 * a.beats * TPB));
        }
        assert_ne!(lead_sheet(7, 0, 8).melody, lead_sheet(8, 0, 8).melody);
    }

    #[test]
    fn piano_parts_use_chord_tones_inside_their_bar() {
        for index in 0..3 {
            let sheet = lead_sheet(1, index, 8);
            let low_swung_staccato = Touch { register: -12, dynamics: -24, staccato: true, swing: true };
            let styles = Style::ALL.into_iter().filter(|s| s.fits(sheet.beats));
            for (style, touch) in styles.flat_map(|s| [(s, Touch::AS_WRITTEN), (s, low_swung_staccato)]) {
                let notes = piano_part(&sheet, style, touch, &mut KeyedRng::new(&[0]));
                assert!(!notes.is_empty());
                for n in &notes {
                    let bar = (n.start / sheet.bar_ticks()) as usize;
                    let chord = &sheet.chords[bar].1;
                    let ninth = style == Style::Bossa && (n.pitch as i32 - chord.root as i32).rem_euclid(12) == 2;
                    let fifth = (n.pitch as i32 - chord.root as i32).rem_euclid(12) == 7;
                    assert!(
                        sounds(chord, n.pitch as i32) || ninth || fifth,
                        "{style:?}: {n:?} over {}",
                        sheet.chords[bar].0
                    );
                    assert!(n.end <= (bar as u32 + 1) * sheet.bar_ticks() && n.end > n.start);
                    assert!((36 + touch.register..=84).contains(&i32::from(n.pitch)));
                }
            }
        }
    }

    #[test]
    fn touch_moves_register_dynamics_length_and_off_beats() {
        let sheet = lead_sheet(2, 0, 8);
        let plain = piano_part(&sheet, Style::Alberti, Touch::AS_WRITTEN, &mut KeyedRng::new(&[0]));
        let touch = Touch { register: -12, dynamics: -12, staccato: true, swing: true };
        let played = piano_part(&sheet, Style::Alberti, touch, &mut KeyedRng::new(&[0]));
        assert_eq!(plain.len(), played.len());
        for (a, b) in plain.iter().zip(&played) {
            assert_eq!(i32::from(b.pitch), i32::from(a.pitch) - 12);
            assert_eq!(i32::from(b.velocity), (i32::from(a.velocity) - 12).clamp(1, 127));
            // Alberti eighths: on-beat ones stay, off-beat ones move a triplet eighth late.
            let offset = if (a.start / TWELFTH) % 12 == 6 { 2 * TWELFTH } else { 0 };
            assert_eq!(b.start, a.start + offset);
            assert_eq!(b.end - b.start, (a.end - a.start) / 2);
        }
        // Every option is drawn somewhere in a corpus-sized sample.
        let touches: Vec<Touch> = (0..40).map(|i| drawn_touch(0, i, Style::Block)).collect();
        for register in [0, -12] {
            assert!(touches.iter().any(|t| t.register == register));
        }
        for dynamics in [-24, -12, 0] {
            assert!(touches.iter().any(|t| t.dynamics == dynamics));
        }
        assert!(touches.iter().any(|t| t.staccato) && touches.iter().any(|t| !t.staccato));
        assert!(touches.iter().any(|t| t.swing) && touches.iter().any(|t| !t.swing));
    }
}
