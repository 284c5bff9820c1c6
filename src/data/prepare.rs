//! `stylebridge prepare`: a corpus of songs -> Parquet shards of training pairs + a manifest.
//!
//! Two phases, so a killed run resumes and a rerun gives the same bytes:
//! 1. per song, in parallel: lead sheet + target -> segments -> tokens; audio (decoded, or
//!    rendered from the MIDI) -> EnCodec codes of the whole track, once (SPEC 2: codes of a cut
//!    window differ at its edges) -> one code window per segment. The song's rows go to
//!    `OUT/.work/songs/<id>.parquet`, atomically (after `<id>.warnings.json` when its audio lost
//!    something, e.g. a truncated file); a rerun skips songs whose file exists. A song that fails
//!    is skipped and reported with its reason, never silently dropped.
//! 2. all song files, in song-id order, are split by song (hash of seed and id), written as
//!    bounded shards per split (atomically), then the manifest (with the skipped songs and the
//!    warnings), then `report.txt`, then stale shards are removed.
//!
//! Settings are validated before anything is written. A run that prepares no song at all fails
//! without writing shards, a manifest or a report (so no folder looks prepared when it is not);
//! it may leave `.work/` holding the fingerprint and no song file, which is harmless: a cache
//! without song files is reset by the next run, whatever its settings.
//!
//! The target is the whole piano arrangement (SPEC 2): the tracks of `prepare.target_tracks`
//! (POP909: MELODY, BRIDGE and PIANO, as BOSSA's `arrange_pop909.py` takes every instrument)
//! merged into one part played on piano, so every target note has program 0 whatever its track
//! plays for rendering.
//!
//! `.work/fingerprint.json` records the settings the song files depend on; a rerun with other
//! settings is refused instead of mixing rows of two configurations.
use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tch::{Device, Tensor};

use crate::data::leadsheet::{find_tracks, read_chord_file, LeadSheet, Pop909Song};
use crate::data::midi::{self, Instrument, Score};
use crate::data::pairing::{octuple_ids, remi_ids, segment_pairs, WindowSpec};
use crate::data::render::{band_programs, resolve_soundfont, SoundFontSynth};
use crate::data::segments::{SegmentConfig, SegmentSpec};
use crate::data::shards::{self, AudioLayout, Manifest, PairRow, SkippedSong, SongWarning, SplitCount};
use crate::data::split::{self, Split};
use crate::data::warned::Warned;
use crate::models::encodec::Encodec;
use crate::progress::Progress;
use crate::yaml::{Problems, Validate};

const AUDIO_EXTENSIONS: [&str; 4] = ["wav", "flac", "mp3", "ogg"];
const WORK_DIR: &str = ".work";
const FINGERPRINT: &str = "fingerprint.json";
pub const REPORT_NAME: &str = "report.txt";
const MIN_RENDER_RATE: u32 = 16_000;
/// Codes one row may hold: 64 x BOSSA's (608 frames x 4 codebooks).
const MAX_ROW_CODES: usize = 64 * 608 * 4;
/// GM program of the target: the arrangement is a piano cover.
const PIANO_PROGRAM: u8 = 0;

/// Where `stylebridge prepare` reads songs from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// POP909 song folders `NNN/NNN.mid` + `beat_midi.txt` + `chord_midi.txt` (audio beside or rendered).
    Pop909,
    /// A folder of `NAME.mid` + `NAME.{wav,flac,mp3,ogg}` + `NAME.chords.txt` (`start end label`, seconds).
    Pairs,
}

/// The `prepare:` config section: songs -> Parquet shards of (codes window, segment tokens) pairs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PrepareConfig {
    pub source: SourceKind,
    /// The corpus folder (POP909: the folder holding `001/`, `002/`, ... or its parent).
    pub input: Option<PathBuf>,
    /// Audio files `NAME.{wav,flac,mp3,ogg}` kept apart from the MIDI folders.
    pub audio_dir: Option<PathBuf>,
    /// Render songs without audio from their MIDI with a GM SoundFont instead of skipping them.
    pub render_missing_audio: bool,
    pub soundfont: Option<PathBuf>,
    /// HF EnCodec checkpoint folder (config.json + safetensors); its sampling rate is used.
    pub encodec: Option<PathBuf>,
    /// `cpu` or `cuda[:N]` for EnCodec.
    pub device: String,
    /// Songs processed in parallel; 0 = one per core.
    pub jobs: usize,
    /// Audio window the model sees, and the margin stored on each side for the shift.
    pub window_seconds: f64,
    pub margin_seconds: f64,
    /// Shards are cut at about this many MiB (before compression).
    pub max_shard_mib: f64,
    /// Only the first N songs (sorted by id); for quick runs.
    pub max_songs: Option<usize>,
    /// Tracks merged into the target, the piano arrangement (all played on piano, program 0).
    pub target_tracks: Vec<String>,
    /// The lead sheet's melody (pairs layout; POP909 songs take their MELODY track).
    pub melody_track: String,
    /// Song-level split (hash of seed and song id): fractions for valid and test.
    pub split: crate::data::split::SplitRatios,
    /// Split by the part of the song id before this separator, so that songs sharing it stay
    /// together (the embedded corpus: `ls003_alberti`, `ls003_waltz` share lead sheet `ls003`).
    pub split_group_separator: Option<String>,
}

impl Default for PrepareConfig {
    fn default() -> Self {
        Self {
            source: SourceKind::Pop909,
            input: None,
            audio_dir: None,
            render_missing_audio: false,
            soundfont: None,
            encodec: None,
            device: "cpu".into(),
            jobs: 0,
            window_seconds: 10.16,
            margin_seconds: 1.0,
            max_shard_mib: 256.0,
            max_songs: None,
            target_tracks: ["MELODY", "BRIDGE", "PIANO"].map(String::from).to_vec(),
            melody_track: "MELODY".into(),
            split: Default::default(),
            split_group_separator: None,
        }
    }
}

impl Validate for PrepareConfig {
    fn validate(&self, at: &str, p: &mut Problems) {
        let (w, m) = (self.window_seconds, self.margin_seconds);
        p.check(w.is_finite() && w > 0.0 && w <= 600.0, at, "window_seconds", || format!("is {w}; must be in (0, 600]"));
        p.check(m.is_finite() && (0.0..=60.0).contains(&m), at, "margin_seconds", || format!("is {m}; must be in [0, 60]"));
        let mib = self.max_shard_mib;
        p.check(mib.is_finite() && mib > 0.0, at, "max_shard_mib", || format!("is {mib}; must be positive"));
        p.check(self.jobs <= 1024, at, "jobs", || format!("is {}; must be 0 (one per core) ..= 1024", self.jobs));
        if let Err(e) = self.split.validate() {
            p.check(false, at, "split", || format!("is off: {e}"));
        }
        let tracks = &self.target_tracks;
        p.check(!tracks.is_empty(), at, "target_tracks", || "is empty; list the tracks that make the piano arrangement (POP909: [MELODY, BRIDGE, PIANO])".into());
        for (i, name) in tracks.iter().enumerate() {
            p.check(!name.trim().is_empty(), at, &format!("target_tracks[{i}]"), || "is an empty name".into());
            p.check(!tracks[..i].contains(name), at, &format!("target_tracks[{i}]"), || format!("'{name}' is listed twice (its notes would be doubled)"));
        }
    }
}

/// One song to prepare.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SongSource {
    pub id: String,
    pub midi: PathBuf,
    /// None: render from the MIDI (when allowed).
    pub audio: Option<PathBuf>,
    /// POP909: the song folder; pairs: the chord file.
    pub lead_sheet: PathBuf,
}

/// Everything `prepare` needs besides the song list.
pub struct Settings {
    pub config: PrepareConfig,
    pub segments: SegmentConfig,
    pub seed: u64,
}

fn find_audio(dirs: &[&Path], stem: &str) -> Option<PathBuf> {
    dirs.iter().flat_map(|d| AUDIO_EXTENSIONS.iter().map(move |ext| d.join(format!("{stem}.{ext}")))).find(|p| p.is_file())
}

/// The songs of the corpus, sorted by id (then cut to `max_songs`).
pub fn discover(config: &PrepareConfig) -> Result<Vec<SongSource>> {
    let input = config.input.as_deref().context("no input corpus: set prepare.input or pass --input DIR")?;
    ensure!(input.is_dir(), "input {} is not a folder", input.display());
    let list = |dir: &Path| -> Result<Vec<PathBuf>> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        Ok(entries)
    };
    let mut songs = Vec::new();
    match config.source {
        SourceKind::Pop909 => {
            // Accept the dataset root (holding POP909/) as well as the POP909 folder itself.
            let root = if input.join("POP909").is_dir() { input.join("POP909") } else { input.to_path_buf() };
            for dir in list(&root)?.into_iter().filter(|d| d.is_dir()) {
                let Some(name) = dir.file_name().map(|n| n.to_string_lossy().into_owned()) else { continue };
                let midi = dir.join(format!("{name}.mid"));
                if !midi.is_file() {
                    continue;
                }
                let mut audio_dirs: Vec<&Path> = config.audio_dir.iter().map(|p| p.as_path()).collect();
                audio_dirs.push(&dir);
                let audio = find_audio(&audio_dirs, &name);
                songs.push(SongSource { id: format!("pop909-{name}"), midi, audio, lead_sheet: dir.clone() });
            }
            ensure!(!songs.is_empty(), "{} holds no POP909 song folders (NNN/NNN.mid)", root.display());
        }
        SourceKind::Pairs => {
            for midi in list(input)?.into_iter().filter(|p| p.extension().is_some_and(|e| e == "mid" || e == "midi")) {
                let Some(stem) = midi.file_stem().map(|s| s.to_string_lossy().into_owned()) else { continue };
                let mut audio_dirs: Vec<&Path> = config.audio_dir.iter().map(|p| p.as_path()).collect();
                audio_dirs.push(input);
                let audio = find_audio(&audio_dirs, &stem);
                let lead_sheet = input.join(format!("{stem}.chords.txt"));
                songs.push(SongSource { id: stem, midi, audio, lead_sheet });
            }
            ensure!(!songs.is_empty(), "{} holds no MIDI files (NAME.mid + NAME.wav + NAME.chords.txt)", input.display());
        }
    }
    songs.sort();
    if let Some(n) = config.max_songs {
        songs.truncate(n);
    }
    Ok(songs)
}

/// The target of a song: the notes of every track in `names` (each found as [`find_tracks`]
/// finds the melody) merged into one part played on piano, with the score's maps.
fn target_part(score: &Score, names: &[String], file: &Path) -> Result<Score> {
    let mut notes = Vec::new();
    for name in names {
        let tracks = find_tracks(score, name)
            .with_context(|| format!("{}: cannot build the target from prepare.target_tracks {names:?}", file.display()))?;
        if let Some(drums) = tracks.iter().find(|t| t.is_drum) {
            bail!("{}: target track '{}' is a drum track; a piano arrangement cannot hold it (prepare.target_tracks)", file.display(), drums.name);
        }
        notes.extend(tracks.iter().flat_map(|t| t.notes.iter().copied()));
    }
    let piano = Instrument { name: "target".into(), program: PIANO_PROGRAM, is_drum: false, notes, control_changes: vec![] };
    Ok(Score {
        ticks_per_beat: score.ticks_per_beat,
        instruments: vec![piano],
        tempo_changes: score.tempo_changes.clone(),
        time_signatures: score.time_signatures.clone(),
    })
}

/// EnCodec models shared by the worker threads: one per thread that needs one (tch tensors
/// cannot be shared between threads), loaded on first use.
pub struct EncoderPool {
    dir: PathBuf,
    device: Device,
    idle: Mutex<Vec<Encodec>>,
    pub layout: AudioLayout,
}

impl EncoderPool {
    pub fn new(dir: &Path, device: Device, window: (f64, f64)) -> Result<Self> {
        let first = Encodec::load(dir, device).with_context(|| format!("cannot load the EnCodec checkpoint {}", dir.display()))?;
        let config = first.config();
        crate::data::audio::check_sample_rate(u64::from(config.sampling_rate), &format!("the EnCodec checkpoint {}", dir.display()))?;
        let frame_rate = config.sampling_rate as f64 / config.hop_length() as f64;
        let spec = WindowSpec::from_seconds(frame_rate, window.0, window.1)?;
        let row_codes = spec.stored_frames().saturating_mul(config.num_quantizers_used() as usize);
        ensure!(
            row_codes <= MAX_ROW_CODES,
            "the EnCodec checkpoint {} gives {frame_rate} frames/s x {} codebooks: a {} s window with {} s margins is {row_codes} codes a row, more than the {MAX_ROW_CODES} a row may hold",
            dir.display(),
            config.num_quantizers_used(),
            window.0,
            window.1
        );
        let pad_code = u16::try_from(config.codebook_size).context("codebooks larger than 65535 entries are not supported")?;
        let layout = AudioLayout {
            sample_rate: config.sampling_rate,
            frame_rate,
            n_q: config.num_quantizers_used() as usize,
            pad_code,
            window_frames: spec.window_frames,
            margin_frames: spec.margin_frames,
            encodec: dir.display().to_string(),
        };
        Ok(Self { dir: dir.to_path_buf(), device, idle: Mutex::new(vec![first]), layout })
    }

    /// Codes `[n_q, frames]` (row-major) of mono audio at the model's rate.
    pub fn encode(&self, samples: &[f32]) -> Result<Vec<u16>> {
        ensure!(!samples.is_empty(), "the audio is empty");
        let model = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let model = match model {
            Some(m) => m,
            None => Encodec::load(&self.dir, self.device)?,
        };
        let codes = model.encode(&Tensor::from_slice(samples).view([1, 1, -1]));
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(model);
        }
        let codes = Vec::<i64>::try_from(codes?.to_device(Device::Cpu).reshape([-1]))?;
        Ok(codes.into_iter().map(|c| c as u16).collect())
    }
}

/// A song's parts on one timeline.
pub struct SongParts {
    pub lead_sheet: Score,
    /// The piano arrangement: `prepare.target_tracks` merged, program 0.
    pub target: Score,
    /// Every track, for rendering.
    pub full: Score,
    /// Bar where segments start (BOSSA's bar 0).
    pub first_bar: usize,
}

/// Lead sheet and target of a song.
pub fn symbolic(song: &SongSource, config: &PrepareConfig) -> Result<SongParts> {
    match config.source {
        SourceKind::Pop909 => {
            let loaded = Pop909Song::load(&song.lead_sheet)?;
            let target = target_part(&loaded.score, &config.target_tracks, &song.midi)?;
            // BOSSA's windows start at the first annotated downbeat; the pickup before it is left out.
            let first_bar = loaded.first_downbeat_bar;
            Ok(SongParts { lead_sheet: loaded.lead_sheet.to_score(), target, full: loaded.score, first_bar })
        }
        SourceKind::Pairs => {
            let score = midi::read(&song.midi)?;
            ensure!(song.lead_sheet.is_file(), "no chord file {} beside {}", song.lead_sheet.display(), song.midi.display());
            let chords = read_chord_file(&song.lead_sheet)?;
            let lead = LeadSheet::from_score(&score, &config.melody_track, &chords).with_context(|| format!("in {}", song.midi.display()))?;
            let target = target_part(&score, &config.target_tracks, &song.midi)?;
            Ok(SongParts { lead_sheet: lead.to_score(), target, full: score, first_bar: 0 })
        }
    }
}

/// The song's mono audio at `sample_rate`: its file (with what decoding it lost), or a
/// rendering of `score`.
pub fn audio(song: &SongSource, score: &Score, sample_rate: u32, synth: Option<&SoundFontSynth>) -> Result<Warned<Vec<f32>>> {
    match (&song.audio, synth) {
        (Some(path), _) => crate::data::audio::load(path, sample_rate),
        (None, Some(synth)) => {
            // The synthesiser runs at 16 kHz or more; tiny test codecs may want less.
            let rate = sample_rate.max(MIN_RENDER_RATE);
            let rendered = synth.render(&band_programs(score), rate)?;
            let audio = if rate == sample_rate { rendered } else { crate::data::audio::resample(&rendered, rate, sample_rate)? };
            Ok(Warned::clean(audio))
        }
        (None, None) => bail!(
            "no audio file for {} (looked for {}.{{{}}}); set prepare.render_missing_audio to render it",
            song.midi.display(),
            song.midi.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
            AUDIO_EXTENSIONS.join(",")
        ),
    }
}

/// All rows of one song (split left as train; phase 2 assigns it), with what its audio lost.
pub fn song_rows(song: &SongSource, settings: &Settings, encoder: &EncoderPool, synth: Option<&SoundFontSynth>) -> Result<Warned<Vec<PairRow>>> {
    let config = &settings.config;
    let parts = symbolic(song, config)?;
    let spec = SegmentSpec { bars: settings.segments.bars as usize, hop: settings.segments.hop_bars as usize };
    let pairs = segment_pairs(&parts.target, &parts.lead_sheet, spec, parts.first_bar)?;
    ensure!(!pairs.is_empty(), "no {}-bar segment has both lead-sheet and target notes", spec.bars);
    let Warned { value: samples, warnings } = audio(song, &parts.full, encoder.layout.sample_rate, synth)?;
    let codes = encoder.encode(&samples)?;
    let layout = &encoder.layout;
    let frames = codes.len() / layout.n_q;
    let window = WindowSpec { window_frames: layout.window_frames, margin_frames: layout.margin_frames };
    let rows: Vec<PairRow> = pairs
        .iter()
        // BOSSA stops where a segment ends past the audio (MIDI longer than the recording).
        .take_while(|p| (p.segment.end_seconds * layout.frame_rate) as usize <= frames)
        .map(|p| {
            let start = window.window_start(p.segment.start_seconds, p.segment.end_seconds, layout.frame_rate);
            let (codes_start_frame, window_codes) = window.cut(&codes, layout.n_q, start, layout.pad_code);
            PairRow {
                song_id: song.id.clone(),
                split: Split::Train,
                segment_index: p.segment.index as u32,
                first_bar: p.segment.first_bar as u32,
                end_bar: p.segment.end_bar as u32,
                start_seconds: p.segment.start_seconds,
                end_seconds: p.segment.end_seconds,
                meter_numerator: p.meter.0,
                meter_denominator: p.meter.1,
                tempo_bpm: p.tempo_bpm,
                codes_start_frame,
                codes: window_codes,
                lead_octuple: octuple_ids(&p.lead),
                piano_octuple: octuple_ids(&p.target),
                lead_remi: remi_ids(&p.lead),
                piano_remi: remi_ids(&p.target),
                audio_path: song.audio.as_ref().map_or_else(|| "(rendered from the MIDI)".into(), |p| p.display().to_string()),
                midi_path: song.midi.display().to_string(),
                lead_sheet_path: song.lead_sheet.display().to_string(),
            }
        })
        .collect();
    ensure!(
        !rows.is_empty(),
        "the audio ({:.1} s) ends before the first segment does ({:.1} s)",
        frames as f64 / layout.frame_rate,
        pairs[0].segment.end_seconds
    );
    Ok(Warned { value: rows, warnings })
}

/// What the per-song files depend on.
#[derive(Serialize)]
struct Fingerprint<'a> {
    schema_version: u32,
    source: SourceKind,
    segments: &'a SegmentConfig,
    layout: &'a AudioLayout,
    render_missing_audio: bool,
    soundfont: Option<String>,
    target_tracks: &'a [String],
    melody_track: &'a str,
}

fn song_file(work: &Path, id: &str) -> PathBuf {
    let safe: String = id.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    work.join("songs").join(format!("{safe}.parquet"))
}

/// The warnings of a song's rows, beside its song file (only when there are any).
fn warnings_file(work: &Path, id: &str) -> PathBuf {
    song_file(work, id).with_extension("warnings.json")
}

/// Write a song's file, after its warnings (so a song file never lacks them).
fn write_song(work: &Path, id: &str, rows: &Warned<Vec<PairRow>>) -> Result<()> {
    let warnings = warnings_file(work, id);
    if rows.warnings.is_empty() {
        if warnings.exists() {
            std::fs::remove_file(&warnings).with_context(|| format!("cannot remove {}", warnings.display()))?;
        }
    } else {
        crate::atomic::write(&warnings, serde_json::to_string_pretty(&rows.warnings)?.as_bytes())?;
    }
    crate::atomic::write(&song_file(work, id), &shards::encode_rows(&rows.value)?)
}

/// A song file's rows and warnings.
fn read_song(work: &Path, id: &str) -> Result<Warned<Vec<PairRow>>> {
    let path = song_file(work, id);
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let rows = shards::decode_rows(bytes, &path.display().to_string())?;
    let warnings_path = warnings_file(work, id);
    let warnings = match std::fs::read_to_string(&warnings_path) {
        Ok(text) => serde_json::from_str(&text).with_context(|| format!("{} is not a list of warnings", warnings_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", warnings_path.display())),
    };
    Ok(Warned { value: rows, warnings })
}

/// Whether the song cache holds any song file.
fn has_song_files(work: &Path) -> bool {
    let songs = std::fs::read_dir(work.join("songs"));
    songs.is_ok_and(|mut entries| entries.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".parquet"))))
}

/// Remove temporary files a killed run left behind (never visible as shards: hidden names).
fn remove_temporaries(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// The outcome of a run.
#[derive(Debug)]
pub struct Summary {
    pub manifest: Manifest,
    /// Songs processed in this run (the rest were already done).
    pub processed: usize,
    pub reused: usize,
}

/// Prepare `songs` into `out`. `progress` counts songs.
pub fn run(songs: &[SongSource], settings: &Settings, out: &Path, progress: &Progress) -> Result<Summary> {
    let config = &settings.config;
    let mut problems = Problems::default();
    config.validate("prepare", &mut problems);
    settings.segments.validate("segments", &mut problems);
    problems.into_result()?;
    let encodec = config.encodec.as_deref().context(
        "no EnCodec checkpoint: set prepare.encodec (an HF EnCodec folder: config.json + safetensors) or pass --encodec DIR",
    )?;
    let encoder = EncoderPool::new(encodec, crate::device::parse(&config.device).context("prepare.device")?, (config.window_seconds, config.margin_seconds))?;
    let synth = if config.render_missing_audio && songs.iter().any(|s| s.audio.is_none()) {
        Some(SoundFontSynth::load(&resolve_soundfont(config.soundfont.as_deref())?)?)
    } else {
        None
    };

    let work = out.join(WORK_DIR);
    std::fs::create_dir_all(work.join("songs")).with_context(|| format!("cannot create {}", work.display()))?;
    remove_temporaries(out);
    remove_temporaries(&work.join("songs"));
    let fingerprint = serde_json::to_string_pretty(&Fingerprint {
        schema_version: shards::SCHEMA_VERSION,
        source: config.source,
        segments: &settings.segments,
        layout: &encoder.layout,
        render_missing_audio: config.render_missing_audio,
        soundfont: synth.as_ref().and(config.soundfont.as_ref()).map(|p| p.display().to_string()),
        target_tracks: &config.target_tracks,
        melody_track: &config.melody_track,
    })?;
    let fingerprint_path = work.join(FINGERPRINT);
    match std::fs::read_to_string(&fingerprint_path) {
        Ok(old) if old == fingerprint => {}
        // A cache without song files has nothing to mix up: it takes the new settings.
        Ok(_) if has_song_files(&work) => bail!(
            "{} was prepared with other settings ({}); delete {} to start over, or choose another output folder",
            out.display(),
            fingerprint_path.display(),
            work.display()
        ),
        _ => crate::atomic::write(&fingerprint_path, fingerprint.as_bytes())?,
    }

    // Phase 1: one file per song.
    let todo: Vec<&SongSource> = songs.iter().filter(|s| !song_file(&work, &s.id).is_file()).collect();
    progress.inc((songs.len() - todo.len()) as u64);
    let jobs = if config.jobs == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { config.jobs };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(jobs).build()?;
    if jobs > 1 {
        // Parallelism comes from songs: one libtorch thread each, so cores are not oversubscribed
        // (and codes do not depend on the core count).
        tch::set_num_threads(1);
    }
    let failures: Vec<SkippedSong> = pool.install(|| {
        todo.par_iter()
            .filter_map(|song| {
                let result = song_rows(song, settings, &encoder, synth.as_ref()).and_then(|rows| write_song(&work, &song.id, &rows));
                progress.inc(1);
                result.err().map(|e| SkippedSong { song: song.id.clone(), reason: format!("{e:#}") })
            })
            .collect()
    });
    progress.finish();

    // Phase 2: split, shard, manifest; only when there is something to put in them.
    let failed: std::collections::BTreeSet<&str> = failures.iter().map(|f| f.song.as_str()).collect();
    if songs.iter().all(|s| failed.contains(s.id.as_str())) {
        bail!("{}", nothing_prepared(songs.len(), &failures, out));
    }
    let mut by_split: BTreeMap<Split, Vec<PairRow>> = BTreeMap::new();
    let mut song_lists: BTreeMap<Split, Vec<String>> = Split::ALL.iter().map(|&s| (s, Vec::new())).collect();
    let mut warnings = Vec::new();
    for song in songs.iter().filter(|s| !failed.contains(s.id.as_str())) {
        let Warned { value: rows, warnings: song_warnings } = read_song(&work, &song.id)?;
        warnings.extend(song_warnings.into_iter().map(|warning| SongWarning { song: song.id.clone(), warning }));
        let group = match config.split_group_separator.as_deref() {
            Some(sep) if !sep.is_empty() => song.id.split(sep).next().unwrap_or(&song.id),
            _ => song.id.as_str(),
        };
        let split = split::assign(settings.seed, group, config.split);
        song_lists.entry(split).or_default().push(song.id.clone());
        by_split.entry(split).or_default().extend(rows.into_iter().map(|r| PairRow { split, ..r }));
    }
    let max_bytes = (config.max_shard_mib * 1024.0 * 1024.0) as usize;
    let mut infos = Vec::new();
    for (&split, rows) in &by_split {
        infos.extend(shards::write_split(out, split, rows, max_bytes)?);
    }
    let counts = Split::ALL
        .iter()
        .map(|&s| (s, SplitCount { songs: song_lists[&s].len(), rows: by_split.get(&s).map_or(0, |r| r.len()) }))
        .collect();
    let mut skipped = failures;
    skipped.sort_by(|a, b| a.song.cmp(&b.song));
    let manifest = Manifest {
        schema_version: shards::SCHEMA_VERSION,
        audio: encoder.layout.clone(),
        counts,
        songs: song_lists,
        shards: infos,
        skipped,
        warnings,
        config: serde_json::json!({ "seed": settings.seed, "segments": settings.segments, "prepare": config }),
    };
    manifest.write(out)?;
    shards::remove_unlisted(out, &manifest.shards)?;
    crate::atomic::write(&out.join(REPORT_NAME), report(&manifest, songs.len()).as_bytes())?;
    Ok(Summary { processed: todo.len(), reused: songs.len() - todo.len(), manifest })
}

/// Human-readable summary: counts per split, every skipped song with its reason, and every
/// warning (what a song's audio lost).
pub fn report(manifest: &Manifest, songs: usize) -> String {
    let warned: std::collections::BTreeSet<&str> = manifest.warnings.iter().map(|w| w.song.as_str()).collect();
    let mut text = format!(
        "songs: {songs}, prepared: {} ({} with warnings), skipped: {}\n",
        songs - manifest.skipped.len(),
        warned.len(),
        manifest.skipped.len()
    );
    for (split, count) in &manifest.counts {
        text += &format!("{split:>5}: {} songs, {} pairs\n", count.songs, count.rows);
    }
    for s in &manifest.skipped {
        text += &format!("skipped {}: {}\n", s.song, s.reason);
    }
    for w in &manifest.warnings {
        text += &format!("warning {}: {}\n", w.song, w.warning);
    }
    text
}

/// Why a run prepared nothing: the songs and their reasons (the first 20).
fn nothing_prepared(songs: usize, failures: &[SkippedSong], out: &Path) -> String {
    const LISTED: usize = 20;
    let mut sorted: Vec<&SkippedSong> = failures.iter().collect();
    sorted.sort_by(|a, b| a.song.cmp(&b.song));
    let mut text = format!("no song could be prepared ({songs} tried), so nothing was written to {} (no shards, manifest or report):", out.display());
    for s in sorted.iter().take(LISTED) {
        text += &format!("\n  skipped {}: {}", s.song, s.reason);
    }
    if sorted.len() > LISTED {
        text += &format!("\n  ... and {} more", sorted.len() - LISTED);
    }
    text
}
