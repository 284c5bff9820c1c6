//! A MIDI file as the reference encoders see it (miditoolkit 1.0.1 semantics).
//!
//! Times are in ticks of `ticks_per_beat`. Parsing and writing live here; the
//! encodings in `data::encodings` only read this structure.
//!
//! Parsing follows miditoolkit 1.0.1 `MidiFile`, which the BOSSA encoders use:
//! - note-ons pair with note-offs first-in-first-out per (channel, pitch); zero-length notes
//!   are kept, notes never closed are dropped, stray note-offs are ignored;
//! - a note takes the program current on its channel at its note-off, and lands in the
//!   instrument keyed by (program, channel, track), created in order of first closed note;
//!   channel 9 is drums; the name is the track name seen so far in that track;
//! - tempo changes are read track after track; one at tick 0 (in any track) replaces the
//!   whole list, a later one is appended only if its bpm differs from the last appended;
//! - time signatures from all tracks, stably sorted by tick; a zero numerator is an error;
//! - control changes (the sustain pedal, CC 64, and the others) go to the instrument of the
//!   program current on their channel, as miditoolkit files them; those of a (program, channel,
//!   track) that closes no note are dropped, where miditoolkit would create an instrument without
//!   notes, so the instrument list is the one the reference encoders see. The encodings read notes
//!   only: control changes are carried for writing and rendering (a pedal is heard).
//!
//! One deviation: miditoolkit leaves the tempo list in track order, so a tempo event in a
//! later track that precedes one of an earlier track yields an unsorted list, and the
//! encoders then silently lose tempo spans. [`read`]/[`parse`] sort it stably by tick;
//! [`parse_with`] and [`TempoOrder::File`] reproduce the reference order exactly.

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use anyhow::Context;
use midly::num::{u15, u24, u28, u4, u7};
use midly::{Format, Header, MetaMessage, MidiMessage, Smf, Timing, TrackEvent, TrackEventKind};

/// One note, in ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Note {
    pub start: u32,
    pub end: u32,
    pub pitch: u8,
    pub velocity: u8,
}

/// MIDI controller number of the sustain (damper) pedal: a value of 64 or more holds the notes.
pub const SUSTAIN_PEDAL: u8 = 64;

/// A control change in ticks: `controller` (e.g. [`SUSTAIN_PEDAL`]) set to `value`, both 0..=127.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ControlChange {
    pub tick: u32,
    pub controller: u8,
    pub value: u8,
}

/// One track/channel's notes with its General MIDI program.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Instrument {
    pub name: String,
    pub program: u8,
    pub is_drum: bool,
    pub notes: Vec<Note>,
    /// Pedal and other controllers, in tick order (for writing and rendering; encoders ignore them).
    pub control_changes: Vec<ControlChange>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TempoChange {
    pub tick: u32,
    pub bpm: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeSignature {
    pub tick: u32,
    pub numerator: u32,
    pub denominator: u32,
}

/// A parsed MIDI file.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub ticks_per_beat: u32,
    pub instruments: Vec<Instrument>,
    pub tempo_changes: Vec<TempoChange>,
    pub time_signatures: Vec<TimeSignature>,
}

impl Score {
    /// Total number of notes over all instruments.
    pub fn note_count(&self) -> usize {
        self.instruments.iter().map(|i| i.notes.len()).sum()
    }
}

/// miditoolkit's default tempo when a file has none.
pub const DEFAULT_BPM: f64 = 120.0;

/// Why a MIDI file could not be read or written. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum MidiError {
    #[error("{file}: cannot read the file: {source}")]
    Io { file: String, source: std::io::Error },
    #[error("{file}: not a MIDI file (expected the 'MThd' header, found {found})")]
    BadHeader { file: String, found: String },
    #[error("{file}: truncated MIDI file: {detail}")]
    Truncated { file: String, detail: String },
    #[error("{file}: malformed MIDI file: {detail}")]
    Malformed { file: String, detail: String },
    #[error("{file}: the MIDI file has no tracks")]
    NoTracks { file: String },
    #[error("{file}: ticks per beat (PPQ) is 0, so no time position can be computed")]
    ZeroTicksPerBeat { file: String },
    #[error("{file}: SMPTE time division ({fps} fps x {subframes}) is not supported, only ticks per beat")]
    Smpte { file: String, fps: u8, subframes: u8 },
    #[error("{file}: absurd tempo: 0 microseconds per beat (track {track}, tick {tick})")]
    ZeroTempo { file: String, track: usize, tick: u64 },
    #[error("{file}: unsupported time signature {numerator}/{denominator} at tick {tick}")]
    BadTimeSignature { file: String, numerator: u8, denominator: String, tick: u64 },
    #[error("{file}: track {track} reaches tick {tick}, beyond the supported 2^32-1")]
    TickOverflow { file: String, track: usize, tick: u64 },
    #[error("{file}: cannot write: {detail}")]
    Unwritable { file: String, detail: String },
}

/// How to order tempo changes gathered from several tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TempoOrder {
    /// Stable sort by tick (the default; correct).
    Sorted,
    /// Track order, exactly as miditoolkit 1.0.1 leaves it (may be unsorted).
    File,
}

/// Read and parse a MIDI file (tempo changes sorted by tick).
pub fn read(path: &Path) -> anyhow::Result<Score> {
    read_with(path, TempoOrder::Sorted)
}

/// [`read`] with a chosen tempo order.
pub fn read_with(path: &Path, order: TempoOrder) -> anyhow::Result<Score> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| MidiError::Io { file: file.clone(), source })?;
    Ok(parse_with(&bytes, &file, order)?)
}

/// Parse MIDI bytes; `name` is used in error messages.
pub fn parse(bytes: &[u8], name: &str) -> Result<Score, MidiError> {
    parse_with(bytes, name, TempoOrder::Sorted)
}

/// Parse MIDI bytes with a chosen tempo order.
pub fn parse_with(bytes: &[u8], name: &str, order: TempoOrder) -> Result<Score, MidiError> {
    let file = || name.to_string();
    check_chunks(bytes, name)?;
    let (header, track_iter) =
        midly::parse(bytes).map_err(|e| MidiError::Malformed { file: file(), detail: e.to_string() })?;
    let ticks_per_beat = match header.timing {
        Timing::Metrical(t) => u32::from(t.as_int()),
        Timing::Timecode(fps, subframes) => {
            return Err(MidiError::Smpte { file: file(), fps: fps.as_int(), subframes })
        }
    };
    if ticks_per_beat == 0 {
        return Err(MidiError::ZeroTicksPerBeat { file: file() });
    }
    let tracks = track_iter
        .enumerate()
        .map(|(idx, track)| read_track(track, idx, name))
        .collect::<Result<Vec<_>, _>>()?;
    if tracks.is_empty() {
        return Err(MidiError::NoTracks { file: file() });
    }
    let tracks = absolute_ticks(&tracks, name)?;

    let mut tempo_changes = vec![TempoChange { tick: 0, bpm: DEFAULT_BPM }];
    let mut time_signatures = Vec::new();
    for (track_idx, track) in tracks.iter().enumerate() {
        for &(tick, kind) in track {
            match kind {
                TrackEventKind::Meta(MetaMessage::Tempo(us)) => {
                    if us.as_int() == 0 {
                        return Err(MidiError::ZeroTempo { file: file(), track: track_idx, tick: u64::from(tick) });
                    }
                    // mido.tempo2bpm: 60e6 / tempo (its "* 4 / 4" is exact in floating point).
                    let bpm = 60e6 / f64::from(us.as_int());
                    if tick == 0 {
                        tempo_changes = vec![TempoChange { tick: 0, bpm }];
                    } else if tempo_changes.last().is_some_and(|last| last.bpm != bpm) {
                        tempo_changes.push(TempoChange { tick, bpm });
                    }
                }
                TrackEventKind::Meta(MetaMessage::TimeSignature(numerator, exponent, _, _)) => {
                    // miditoolkit refuses a zero numerator while parsing; a denominator
                    // beyond 2^31 cannot be stored (nor encoded: the largest is 64).
                    if numerator == 0 || exponent > 31 {
                        let denominator =
                            if exponent > 31 { format!("2^{exponent}") } else { (1u32 << exponent).to_string() };
                        return Err(MidiError::BadTimeSignature {
                            file: file(),
                            numerator,
                            denominator,
                            tick: u64::from(tick),
                        });
                    }
                    time_signatures.push(TimeSignature {
                        tick,
                        numerator: u32::from(numerator),
                        denominator: 1 << exponent,
                    });
                }
                _ => {}
            }
        }
    }
    if order == TempoOrder::Sorted {
        tempo_changes.sort_by_key(|t| t.tick);
    }
    time_signatures.sort_by_key(|t| t.tick);

    Ok(Score { ticks_per_beat, instruments: collect_instruments(&tracks), tempo_changes, time_signatures })
}

/// All events of one track. midly's lenient mode ends a track silently at a malformed
/// event; an iterator that stops while bytes remain tells us, and we refuse the file as
/// mido (which miditoolkit uses) does.
fn read_track<'a>(
    track: midly::Result<midly::EventIter<'a>>,
    idx: usize,
    name: &str,
) -> Result<Vec<TrackEvent<'a>>, MidiError> {
    let malformed = |detail: String| MidiError::Malformed { file: name.to_string(), detail };
    let mut events = track.map_err(|e| malformed(format!("track {}: {e}", idx + 1)))?;
    let mut out = Vec::new();
    loop {
        let had_bytes = !events.unread().is_empty();
        match events.next() {
            Some(Ok(event)) => out.push(event),
            Some(Err(e)) => return Err(malformed(format!("track {}: {e}", idx + 1))),
            None if had_bytes => {
                return Err(malformed(format!("track {}: unreadable event after {} events", idx + 1, out.len())))
            }
            None => return Ok(out),
        }
    }
}

/// Events of every track with absolute ticks.
fn absolute_ticks<'a>(
    tracks: &[Vec<TrackEvent<'a>>],
    name: &str,
) -> Result<Vec<Vec<(u32, TrackEventKind<'a>)>>, MidiError> {
    tracks
        .iter()
        .enumerate()
        .map(|(track_idx, track)| {
            let mut tick = 0u64;
            track
                .iter()
                .map(|event| {
                    tick += u64::from(event.delta.as_int());
                    let t = u32::try_from(tick).map_err(|_| MidiError::TickOverflow {
                        file: name.to_string(),
                        track: track_idx,
                        tick,
                    })?;
                    Ok((t, event.kind))
                })
                .collect()
        })
        .collect()
}

/// miditoolkit `_load_instruments`: FIFO note pairing, program at note-off; control changes
/// filed under the program current at them, kept for instruments that have notes.
fn collect_instruments(tracks: &[Vec<(u32, TrackEventKind)>]) -> Vec<Instrument> {
    let mut instruments: Vec<Instrument> = Vec::new();
    let mut index: HashMap<(u8, u8, usize), usize> = HashMap::new();
    let mut controls: Vec<((u8, u8, usize), ControlChange)> = Vec::new();
    for (track_idx, track) in tracks.iter().enumerate() {
        let mut track_name = String::new();
        let mut program = [0u8; 16];
        let mut open: HashMap<(u8, u8), VecDeque<(u32, u8)>> = HashMap::new();
        for &(tick, kind) in track {
            match kind {
                // miditoolkit decodes names as latin1: one char per byte.
                TrackEventKind::Meta(MetaMessage::TrackName(raw)) => {
                    track_name = raw.iter().map(|&b| char::from(b)).collect()
                }
                TrackEventKind::Midi { channel, message } => {
                    let channel = channel.as_int();
                    match message {
                        MidiMessage::ProgramChange { program: p } => program[usize::from(channel)] = p.as_int(),
                        MidiMessage::Controller { controller, value } => {
                            let key = (program[usize::from(channel)], channel, track_idx);
                            controls.push((key, ControlChange { tick, controller: controller.as_int(), value: value.as_int() }));
                        }
                        MidiMessage::NoteOn { key, vel } if vel.as_int() > 0 => {
                            open.entry((channel, key.as_int())).or_default().push_back((tick, vel.as_int()))
                        }
                        MidiMessage::NoteOn { key, .. } | MidiMessage::NoteOff { key, .. } => {
                            let Some(queue) = open.get_mut(&(channel, key.as_int())) else { continue };
                            let Some((start, velocity)) = queue.pop_front() else { continue };
                            let prog = program[usize::from(channel)];
                            let slot = *index.entry((prog, channel, track_idx)).or_insert_with(|| {
                                instruments.push(Instrument {
                                    name: track_name.clone(),
                                    program: prog,
                                    is_drum: channel == 9,
                                    notes: Vec::new(),
                                    control_changes: Vec::new(),
                                });
                                instruments.len() - 1
                            });
                            instruments[slot].notes.push(Note { start, end: tick, pitch: key.as_int(), velocity });
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
    }
    // A track's events come in tick order, and an instrument lives in one track: lists are sorted.
    for (key, change) in controls {
        if let Some(&slot) = index.get(&key) {
            instruments[slot].control_changes.push(change);
        }
    }
    instruments
}

/// Check the chunk structure before parsing, so that truncation and a wrong header get a
/// precise message (midly's lenient mode would silently drop a truncated track), and the time
/// division, which must count ticks per beat.
fn check_chunks(bytes: &[u8], name: &str) -> Result<(), MidiError> {
    let file = || name.to_string();
    let Some(magic) = bytes.get(..4) else {
        return Err(MidiError::BadHeader { file: file(), found: format!("only {} bytes", bytes.len()) });
    };
    if magic != b"MThd" {
        return Err(MidiError::BadHeader { file: file(), found: format!("{:?}", String::from_utf8_lossy(magic)) });
    }
    let header_len = be_u32(bytes, 4).ok_or_else(|| MidiError::Truncated {
        file: file(),
        detail: "the file ends inside the header".into(),
    })? as usize;
    if header_len < 6 || bytes.len() < 8 + header_len {
        return Err(MidiError::Truncated {
            file: file(),
            detail: format!("header chunk of {header_len} bytes, {} available", bytes.len().saturating_sub(8)),
        });
    }
    let declared = usize::from(u16::from_be_bytes([bytes[10], bytes[11]]));
    if declared == 0 {
        return Err(MidiError::NoTracks { file: file() });
    }
    // An SMPTE division is refused here: midly negates its frame rate unchecked, which
    // overflows for -128 (found by tests/fuzz_readers.rs).
    if bytes[12] & 0x80 != 0 {
        return Err(MidiError::Smpte { file: file(), fps: (bytes[12] as i8).unsigned_abs(), subframes: bytes[13] });
    }
    let mut offset = 8 + header_len;
    let mut tracks = 0;
    while tracks < declared && offset < bytes.len() {
        let (Some(id), Some(len)) = (bytes.get(offset..offset + 4), be_u32(bytes, offset + 4)) else {
            return Err(MidiError::Truncated {
                file: file(),
                detail: format!("the file ends inside the header of chunk {}", tracks + 1),
            });
        };
        let available = bytes.len() - offset - 8;
        if len as usize > available {
            return Err(MidiError::Truncated {
                file: file(),
                detail: format!(
                    "track {} declares {len} bytes but only {available} remain",
                    tracks + 1
                ),
            });
        }
        if id == b"MTrk" {
            tracks += 1;
        }
        offset += 8 + len as usize;
    }
    if tracks < declared {
        return Err(MidiError::Truncated {
            file: file(),
            detail: format!("the header declares {declared} tracks but the file holds {tracks}"),
        });
    }
    Ok(())
}

fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Write a score as a type-1 MIDI file (atomically), laid out as miditoolkit's `dump`:
/// a conductor track (time signatures, tempos; 4/4 and 120 bpm at tick 0 when absent),
/// then one track per instrument with its program at tick 0 (drums on channel 9) and its
/// control changes in tick order with the notes (at one tick: controllers, note-offs, note-ons).
///
/// Unlike `dump`, same-pitch notes that overlap go to extra tracks of the same program,
/// and a zero-length note's on/off stay adjacent: MIDI pairs note-ons and note-offs first
/// in first out, so without this a reread would swap ends or drop notes. Reading the file
/// back therefore gives the same notes, maybe spread over more instruments; each such track
/// carries the instrument's control changes, so its pedal holds all its notes.
pub fn write(score: &Score, path: &Path) -> anyhow::Result<()> {
    let file = path.display().to_string();
    let smf = to_smf(score, &file)?;
    crate::atomic::write_with(path, |w| {
        smf.write_std(w).with_context(|| format!("cannot encode MIDI for {file}"))
    })
}

/// Encode a score to standard MIDI file bytes (see [`write`]).
pub fn to_bytes(score: &Score, name: &str) -> Result<Vec<u8>, MidiError> {
    let smf = to_smf(score, name)?;
    let mut out = Vec::new();
    smf.write_std(&mut out).map_err(|e| MidiError::Unwritable { file: name.to_string(), detail: e.to_string() })?;
    Ok(out)
}

fn to_smf<'a>(score: &'a Score, name: &str) -> Result<Smf<'a>, MidiError> {
    let unwritable = |detail: String| MidiError::Unwritable { file: name.to_string(), detail };
    let tpb = u16::try_from(score.ticks_per_beat)
        .ok()
        .and_then(u15::try_from)
        .filter(|t| t.as_int() > 0)
        .ok_or_else(|| unwritable(format!("ticks per beat {} outside 1..=32767", score.ticks_per_beat)))?;

    // Conductor track: (tick, rank, event); tempo before time signature at equal ticks.
    let mut meta: Vec<(u32, u8, TrackEventKind)> = Vec::new();
    if score.time_signatures.iter().map(|t| t.tick).min().is_none_or(|t| t > 0) {
        meta.push((0, 1, TrackEventKind::Meta(MetaMessage::TimeSignature(4, 2, 24, 8))));
    }
    for ts in &score.time_signatures {
        let numerator = u8::try_from(ts.numerator).ok().filter(|&n| n > 0);
        let (Some(numerator), true) = (numerator, ts.denominator.is_power_of_two()) else {
            return Err(unwritable(format!("time signature {}/{} cannot be stored in MIDI", ts.numerator, ts.denominator)));
        };
        let exponent = ts.denominator.trailing_zeros() as u8;
        meta.push((ts.tick, 1, TrackEventKind::Meta(MetaMessage::TimeSignature(numerator, exponent, 24, 8))));
    }
    if score.tempo_changes.iter().map(|t| t.tick).min().is_none_or(|t| t > 0) {
        meta.push((0, 0, TrackEventKind::Meta(MetaMessage::Tempo(bpm_to_micros(DEFAULT_BPM)))));
    }
    for tempo in &score.tempo_changes {
        if !(tempo.bpm.is_finite() && tempo.bpm > 0.0) {
            return Err(unwritable(format!("tempo {} bpm at tick {}", tempo.bpm, tempo.tick)));
        }
        meta.push((tempo.tick, 0, TrackEventKind::Meta(MetaMessage::Tempo(bpm_to_micros(tempo.bpm)))));
    }
    meta.sort_by_key(|&(tick, rank, _)| (tick, rank));
    let mut tracks = vec![to_track(meta.into_iter().map(|(tick, _, kind)| (tick, kind)).collect())];

    // Channels as miditoolkit assigns them: drums on 9, others cycle over the other 15.
    let channels: Vec<u8> = (0..16).filter(|&c| c != 9).collect();
    for inst in &score.instruments {
        let controls = inst
            .control_changes
            .iter()
            .map(|c| match (u7::try_from(c.controller), u7::try_from(c.value)) {
                (Some(controller), Some(value)) => Ok((c.tick, MidiMessage::Controller { controller, value })),
                _ => Err(unwritable(format!("control change {} = {} of '{}' above 127", c.controller, c.value, inst.name))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut voices = split_overlapping(&inst.notes);
        if voices.is_empty() && !controls.is_empty() {
            voices.push(Vec::new()); // a pedal track without notes is still written
        }
        for voice in voices {
            let channel = if inst.is_drum { 9 } else { channels[(tracks.len() - 1) % channels.len()] };
            let channel = u4::from(channel);
            let program = u7::try_from(inst.program)
                .ok_or_else(|| unwritable(format!("program {} of '{}' above 127", inst.program, inst.name)))?;
            let mut events: Vec<(u32, (u8, usize, u8), TrackEventKind)> = Vec::new();
            if !inst.name.is_empty() {
                events.push((0, (0, 0, 0), TrackEventKind::Meta(MetaMessage::TrackName(inst.name.as_bytes()))));
            }
            events.push((0, (1, 0, 0), TrackEventKind::Midi { channel, message: MidiMessage::ProgramChange { program } }));
            // Controllers after the program change and before the notes of their tick.
            for (i, &(tick, message)) in controls.iter().enumerate() {
                events.push((tick, (1, i + 1, 0), TrackEventKind::Midi { channel, message }));
            }
            for (i, note) in voice.iter().enumerate() {
                let key = u7::try_from(note.pitch)
                    .ok_or_else(|| unwritable(format!("pitch {} of '{}' above 127", note.pitch, inst.name)))?;
                if note.end < note.start {
                    return Err(unwritable(format!("note ending (tick {}) before it starts (tick {})", note.end, note.start)));
                }
                // A velocity-0 note-on would be read as a note-off.
                let vel = u7::from(note.velocity.clamp(1, 127));
                let on = MidiMessage::NoteOn { key, vel };
                let off = MidiMessage::NoteOff { key, vel };
                // Rank at equal ticks: note-offs (2) before note-ons (4); a zero-length
                // note's on+off pair (3) sits between, so FIFO pairing stays exact.
                let (on_rank, off_rank) = if note.start == note.end { (3, 3) } else { (4, 2) };
                events.push((note.start, (on_rank, i, 0), TrackEventKind::Midi { channel, message: on }));
                events.push((note.end, (off_rank, i, 1), TrackEventKind::Midi { channel, message: off }));
            }
            events.sort_by_key(|&(tick, rank, _)| (tick, rank));
            tracks.push(to_track(events.into_iter().map(|(tick, _, kind)| (tick, kind)).collect()));
        }
    }
    if tracks.len() > usize::from(u16::MAX) {
        return Err(unwritable(format!("{} tracks, more than MIDI allows", tracks.len())));
    }
    Ok(Smf { header: Header::new(Format::Parallel, Timing::Metrical(tpb)), tracks })
}

/// mido.bpm2tempo: round(60e6 / bpm) (half to even), kept in the 24-bit range.
fn bpm_to_micros(bpm: f64) -> u24 {
    u24::from((60e6 / bpm).round_ties_even().clamp(1.0, f64::from(u24::max_value().as_int())) as u32)
}

/// Absolute-tick events to a delta-time track ending one tick after its last event.
fn to_track(mut events: Vec<(u32, TrackEventKind)>) -> Vec<TrackEvent> {
    let end = events.last().map_or(0, |&(tick, _)| tick).saturating_add(1);
    events.push((end, TrackEventKind::Meta(MetaMessage::EndOfTrack)));
    let mut last = 0u32;
    let mut track = Vec::with_capacity(events.len());
    for (tick, kind) in events {
        let mut delta = tick - last;
        // Deltas above 2^28-1 need padding events (never in practice, but stay correct).
        while delta > u28::max_value().as_int() {
            track.push(TrackEvent { delta: u28::max_value(), kind: TrackEventKind::Meta(MetaMessage::Marker(b"")) });
            delta -= u28::max_value().as_int();
        }
        track.push(TrackEvent { delta: u28::from(delta), kind });
        last = tick;
    }
    track
}

/// Split notes into voices in which same-pitch notes never overlap (each starts at or
/// after the previous one's end); the first voice takes every note it can.
fn split_overlapping(notes: &[Note]) -> Vec<Vec<Note>> {
    let mut sorted = notes.to_vec();
    sorted.sort_by_key(|n| (n.start, n.end, n.pitch, n.velocity));
    let mut voices: Vec<(Vec<Note>, [Option<u32>; 128])> = Vec::new();
    for note in sorted {
        let pitch = usize::from(note.pitch.min(127));
        let free = voices.iter().position(|(_, ends)| ends[pitch].is_none_or(|end| end <= note.start));
        let slot = match free {
            Some(slot) => slot,
            None => {
                voices.push((Vec::new(), [None; 128]));
                voices.len() - 1
            }
        };
        voices[slot].0.push(note);
        voices[slot].1[pitch] = Some(note.end);
    }
    voices.into_iter().map(|(v, _)| v).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(notes: Vec<Note>) -> Score {
        Score {
            ticks_per_beat: 480,
            instruments: vec![Instrument { name: "PIANO".into(), program: 0, is_drum: false, notes, control_changes: vec![] }],
            tempo_changes: vec![TempoChange { tick: 0, bpm: 100.0 }],
            time_signatures: vec![TimeSignature { tick: 0, numerator: 3, denominator: 4 }],
        }
    }

    fn sorted_notes(s: &Score) -> Vec<Note> {
        let mut all: Vec<Note> = s.instruments.iter().flat_map(|i| i.notes.iter().copied()).collect();
        all.sort();
        all
    }

    #[test]
    fn write_then_parse_keeps_notes_tempo_and_meter() {
        let notes = vec![
            Note { start: 0, end: 480, pitch: 60, velocity: 80 },
            Note { start: 240, end: 240, pitch: 64, velocity: 70 },
            Note { start: 480, end: 960, pitch: 60, velocity: 90 },
        ];
        let s = score(notes.clone());
        let back = parse(&to_bytes(&s, "x.mid").unwrap(), "x.mid").unwrap();
        assert_eq!(back.ticks_per_beat, 480);
        assert_eq!(back.time_signatures, s.time_signatures);
        assert_eq!(back.tempo_changes.len(), 1);
        assert!((back.tempo_changes[0].bpm - 100.0).abs() < 1e-3);
        assert_eq!(back.instruments.len(), 1);
        assert_eq!(back.instruments[0].name, "PIANO");
        let mut expected = notes;
        expected.sort();
        assert_eq!(sorted_notes(&back), expected);
    }

    #[test]
    fn overlapping_and_zero_length_same_pitch_notes_survive_a_round_trip() {
        let notes = vec![
            Note { start: 0, end: 1000, pitch: 60, velocity: 80 },
            Note { start: 100, end: 200, pitch: 60, velocity: 81 },
            Note { start: 100, end: 200, pitch: 60, velocity: 82 },
            Note { start: 1000, end: 1000, pitch: 60, velocity: 83 },
            Note { start: 1000, end: 1200, pitch: 60, velocity: 84 },
            Note { start: 1200, end: 1200, pitch: 60, velocity: 85 },
        ];
        let back = parse(&to_bytes(&score(notes.clone()), "x.mid").unwrap(), "x.mid").unwrap();
        let mut expected = notes;
        expected.sort();
        assert_eq!(sorted_notes(&back), expected);
        assert!(back.instruments.iter().all(|i| i.program == 0 && !i.is_drum));
    }

    /// A hand-assembled file exercising miditoolkit's pairing rules.
    #[test]
    fn fifo_pairing_program_at_note_off_and_tempo_rules() {
        let mut t0: Vec<u8> = Vec::new();
        // delta, event bytes
        t0.extend([0x00, 0xFF, 0x51, 0x03, 0x07, 0xA1, 0x20]); // 120 bpm at 0
        t0.extend([0x00, 0xFF, 0x58, 0x04, 0x03, 0x02, 0x18, 0x08]); // 3/4
        t0.extend([0x00, 0x90, 60, 100]); // on A at 0
        t0.extend([0x10, 0x90, 60, 90]); // on B at 16
        t0.extend([0x10, 0xC0, 5]); // program 5 at 32
        t0.extend([0x10, 0x80, 60, 0]); // off at 48 closes A (FIFO), program 5
        t0.extend([0x00, 0x90, 62, 0]); // stray off (velocity-0 on): ignored
        t0.extend([0x10, 0x90, 64, 70]); // on, never closed: dropped
        t0.extend([0x00, 0xFF, 0x2F, 0x00]);
        let mut t1: Vec<u8> = Vec::new();
        t1.extend([0x81, 0x00, 0xFF, 0x51, 0x03, 0x09, 0x27, 0xC0]); // 100 bpm at 128
        t1.extend([0x00, 0x80, 60, 0]); // off at 128 in another track: no open note here
        t1.extend([0x00, 0xFF, 0x2F, 0x00]);
        let mut bytes = b"MThd\0\0\0\x06\0\x01\0\x02\0\x60".to_vec();
        for t in [&t0, &t1] {
            bytes.extend(b"MTrk");
            bytes.extend((t.len() as u32).to_be_bytes());
            bytes.extend(t.iter());
        }
        let s = parse(&bytes, "hand.mid").unwrap();
        assert_eq!(s.ticks_per_beat, 96);
        assert_eq!(s.instruments.len(), 1);
        assert_eq!(s.instruments[0].program, 5);
        assert_eq!(s.instruments[0].notes, vec![Note { start: 0, end: 48, pitch: 60, velocity: 100 }]);
        assert_eq!(s.time_signatures, vec![TimeSignature { tick: 0, numerator: 3, denominator: 4 }]);
        assert_eq!(s.tempo_changes.len(), 2);
        assert_eq!(s.tempo_changes[1].tick, 128);
        assert!((s.tempo_changes[1].bpm - 100.0).abs() < 1e-9);
    }

    #[test]
    fn tempo_list_sorted_by_default_and_in_track_order_on_request() {
        // One tempo event then end-of-track, as a track body.
        let track = |delta: u8, us: [u8; 3]| vec![delta, 0xFF, 0x51, 0x03, us[0], us[1], us[2], 0x00, 0xFF, 0x2F, 0x00];
        let file = |tracks: [&Vec<u8>; 2]| {
            let mut bytes = b"MThd\0\0\0\x06\0\x01\0\x02\0\x60".to_vec();
            for t in tracks {
                bytes.extend(b"MTrk");
                bytes.extend((t.len() as u32).to_be_bytes());
                bytes.extend(t.iter());
            }
            bytes
        };
        let tick_list = |bytes: &[u8], o| parse_with(bytes, "t.mid", o).unwrap().tempo_changes.iter().map(|t| t.tick).collect::<Vec<_>>();
        let bpm100_at_48 = track(0x30, [0x09, 0x27, 0xC0]);
        // Default 120 at 0; a 120 at 96 equals the last one so is skipped; 100 at 48.
        let bytes = file([&track(0x60, [0x07, 0xA1, 0x20]), &bpm100_at_48]);
        assert_eq!(tick_list(&bytes, TempoOrder::File), vec![0, 48]);
        // 150 at 96 in the first track, 100 at 48 in the second: track order vs sorted.
        let bytes2 = file([&track(0x60, [0x06, 0x1A, 0x80]), &bpm100_at_48]);
        let ticks2 = |o| tick_list(&bytes2, o);
        assert_eq!(ticks2(TempoOrder::File), vec![0, 96, 48]);
        assert_eq!(ticks2(TempoOrder::Sorted), vec![0, 48, 96]);
    }

    #[test]
    fn bad_inputs_name_the_file() {
        let cases: Vec<(&[u8], &str)> = vec![
            (b"RIFX0000", "not a MIDI file"),
            (b"MThd\0\0\0\x06\0\x01\0\x01\0\x60MTrk\0\0\0\x10\0\x90", "truncated"),
            (b"MThd\0\0\0\x06\0\x01\0\0\0\x60", "no tracks"),
            (b"MThd\0\0\0\x06\0\x00\0\x01\0\0MTrk\0\0\0\x04\0\xFF\x2F\0", "PPQ) is 0"),
            // -128 frames per second: midly would overflow negating it.
            (b"MThd\0\0\0\x06\0\x00\0\x01\x80\x04MTrk\0\0\0\x04\0\xFF\x2F\0", "SMPTE time division (128 fps x 4)"),
            (b"MThd\0\0\0\x06\0\x00\0\x01\0\x60MTrk\0\0\0\x0b\0\xFF\x51\x03\0\0\0\0\xFF\x2F\0", "absurd tempo"),
        ];
        for (bytes, needle) in cases {
            let msg = parse(bytes, "bad.mid").unwrap_err().to_string();
            assert!(msg.starts_with("bad.mid: ") && msg.contains(needle), "{msg}");
        }
    }

    #[test]
    fn a_written_pedal_is_in_the_bytes_in_tick_order_and_reads_back() {
        let pedal = |tick, value| ControlChange { tick, controller: SUSTAIN_PEDAL, value };
        let mut s = score(vec![Note { start: 0, end: 240, pitch: 60, velocity: 80 }, Note { start: 480, end: 720, pitch: 62, velocity: 80 }]);
        s.instruments[0].control_changes = vec![pedal(0, 127), pedal(480, 0), pedal(480, 127), pedal(960, 0)];
        let bytes = to_bytes(&s, "pedal.mid").unwrap();

        // The instrument's track as midly reads it: (tick, event) in file order.
        let smf = Smf::parse(&bytes).unwrap();
        let mut tick = 0;
        let events: Vec<(u32, String)> = smf.tracks[1]
            .iter()
            .filter_map(|e| {
                tick += e.delta.as_int();
                match e.kind {
                    TrackEventKind::Midi { message: MidiMessage::Controller { controller, value }, .. } => {
                        Some((tick, format!("cc{}={}", controller.as_int(), value.as_int())))
                    }
                    TrackEventKind::Midi { message: MidiMessage::NoteOn { key, .. }, .. } => Some((tick, format!("on{}", key.as_int()))),
                    TrackEventKind::Midi { message: MidiMessage::NoteOff { key, .. }, .. } => Some((tick, format!("off{}", key.as_int()))),
                    _ => None,
                }
            })
            .collect();
        let expected = [(0, "cc64=127"), (0, "on60"), (240, "off60"), (480, "cc64=0"), (480, "cc64=127"), (480, "on62"), (720, "off62"), (960, "cc64=0")];
        assert_eq!(events, expected.map(|(t, e)| (t, e.to_string())));

        // Read back: the same pedal on the same instrument, the notes untouched.
        let back = parse(&bytes, "pedal.mid").unwrap();
        assert_eq!(back.instruments.len(), 1);
        assert_eq!(back.instruments[0].control_changes, s.instruments[0].control_changes);
        assert_eq!(sorted_notes(&back), sorted_notes(&s));

        // Overlapping same-pitch notes go to two tracks (channels): each carries the pedal.
        let mut two = score(vec![Note { start: 0, end: 480, pitch: 60, velocity: 80 }, Note { start: 240, end: 720, pitch: 60, velocity: 80 }]);
        two.instruments[0].control_changes = vec![pedal(0, 127)];
        let back = parse(&to_bytes(&two, "two.mid").unwrap(), "two.mid").unwrap();
        assert_eq!(back.instruments.len(), 2);
        assert!(back.instruments.iter().all(|i| i.control_changes == [pedal(0, 127)]));

        let mut bad = score(vec![]);
        bad.instruments[0].control_changes = vec![ControlChange { tick: 0, controller: 200, value: 0 }];
        assert!(to_bytes(&bad, "bad.mid").unwrap_err().to_string().contains("control change 200"));
    }

    /// Control changes are filed under the program current at them; those of a channel that
    /// closes no note create no instrument, so the instruments (and the encodings) stay as they were.
    #[test]
    fn control_changes_follow_the_program_and_never_add_instruments() {
        let mut t: Vec<u8> = Vec::new();
        t.extend([0x00, 0xB0, 64, 127]); // pedal down, program 0
        t.extend([0x00, 0x90, 60, 100]);
        t.extend([0x10, 0x80, 60, 0]); // note closes at 16 under program 0
        t.extend([0x00, 0xC0, 5]); // program 5
        t.extend([0x10, 0xB0, 64, 0]); // pedal up at 32 under program 5: no program-5 note
        t.extend([0x00, 0xB1, 7, 90]); // volume on channel 1: no notes there
        t.extend([0x00, 0xFF, 0x2F, 0x00]);
        let mut bytes = b"MThd\0\0\0\x06\0\x00\0\x01\0\x60MTrk".to_vec();
        bytes.extend((t.len() as u32).to_be_bytes());
        bytes.extend(t);
        let s = parse(&bytes, "cc.mid").unwrap();
        assert_eq!(s.instruments.len(), 1);
        assert_eq!(s.instruments[0].program, 0);
        assert_eq!(s.instruments[0].control_changes, [ControlChange { tick: 0, controller: 64, value: 127 }]);
    }
}
