//! Experiment configuration: YAML files under `experiments/`, `--set a.b.c=value` overrides,
//! unknown keys rejected with the nearest valid key suggested, and the resolved config
//! written next to every run's outputs.
use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_yaml_ng::{Mapping, Value};
use std::path::{Path, PathBuf};

/// File name of the resolved config inside a run folder.
pub const RESOLVED_NAME: &str = "config.resolved.yaml";

/// The settings shared by every step. Later steps add their own sections here.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Run name; outputs go to `output_dir/name`.
    pub name: String,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_output_dir")]
    pub output_dir: PathBuf,
    #[serde(default)]
    pub segments: SegmentConfig,
    #[serde(default)]
    pub data: DataConfig,
    #[serde(default)]
    pub prepare: PrepareConfig,
    /// Stage-1 model: backbones, Q-Former shape, objectives.
    #[serde(default)]
    pub model: crate::train::stage1::ModelConfig,
    /// Training loop: optimizer, schedule, precision, checkpoints, logging.
    #[serde(default)]
    pub train: crate::train::trainer::TrainConfig,
    #[serde(default)]
    pub eval: crate::eval::EvalConfig,
}

fn default_output_dir() -> PathBuf {
    PathBuf::from("runs")
}

/// How songs are cut into training pairs (SPEC 2).
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

/// Prepared pairs and how the loader draws batches from them (SPEC 2, BOSSA `dataset.py`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Folder of Parquet shards + manifest.json; default `<output_dir>/<name>/shards`.
    pub shards: Option<PathBuf>,
    /// Largest random shift of the audio window against its segment (at most `prepare.margin_seconds`).
    pub shift_seconds: f64,
    /// Random transposition range in semitones, both ends included (BOSSA randint(-6, 6)).
    pub transpose: [i32; 2],
    /// BOSSA `deperf`: lead-sheet velocity and tempo tokens become `<unk>`.
    pub redact_lead_performance: bool,
    /// Stage-1 notes per sequence (BOSSA 224 + the `<s>`/`</s>` notes).
    pub max_notes: usize,
    /// Stage-2 tokens per sequence.
    pub max_tokens: usize,
    /// Batch-building threads and batches each may prepare ahead.
    pub workers: usize,
    pub prefetch: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            shards: None,
            shift_seconds: 1.0,
            transpose: [-6, 5],
            redact_lead_performance: true,
            max_notes: 226,
            max_tokens: 1000,
            workers: 2,
            prefetch: 4,
        }
    }
}

/// Where `stylebridge prepare` reads songs from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// POP909 song folders `NNN/NNN.mid` + `beat_midi.txt` + `chord_midi.txt` (audio beside or rendered).
    Pop909,
    /// A folder of `NAME.mid` + `NAME.{wav,flac,mp3,ogg}` + `NAME.chords.txt` (`start end label`, seconds).
    Pairs,
}

/// `stylebridge prepare`: songs -> Parquet shards of (codes window, segment tokens) pairs.
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
    pub piano_track: String,
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
            piano_track: "PIANO".into(),
            melody_track: "MELODY".into(),
            split: Default::default(),
            split_group_separator: None,
        }
    }
}

impl ExperimentConfig {
    pub fn run_dir(&self) -> PathBuf {
        self.output_dir.join(&self.name)
    }

    /// The prepared shard folder (`data.shards`, else `<run dir>/shards`).
    pub fn shards_dir(&self) -> PathBuf {
        self.data.shards.clone().unwrap_or_else(|| self.run_dir().join("shards"))
    }
}

/// Read `path`, apply `overrides` (`a.b.c=value`, value parsed as YAML) and deserialize.
pub fn load<T: DeserializeOwned>(path: &Path, overrides: &[String]) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
    let mut value: Value =
        serde_yaml_ng::from_str(&text).with_context(|| format!("config {} is not valid YAML", path.display()))?;
    if value.is_null() {
        value = Value::Mapping(Mapping::new());
    }
    for item in overrides {
        apply_override(&mut value, item).with_context(|| format!("bad override `--set {item}`"))?;
    }
    from_value(value).with_context(|| format!("config {}", path.display()))
}

/// Deserialize a YAML value, turning serde's unknown-field errors into a message that names
/// the full key path and suggests the nearest valid key.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner().to_string();
        match suggest_for_unknown_field(&inner) {
            Some(hint) => anyhow::anyhow!("at `{path}`: {inner}{hint}"),
            None => anyhow::anyhow!("at `{path}`: {inner}"),
        }
    })
}

/// serde words unknown fields as "unknown field `x`, expected one of `a`, `b`" (or
/// "expected `a`"); pick the closest candidate.
fn suggest_for_unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, expected) = rest.split_once('`')?;
    let best = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|candidate| (strsim::damerau_levenshtein(unknown, candidate), candidate))
        .min()?;
    let close_enough = best.0 <= unknown.len().max(best.1.len()) / 2 + 1;
    close_enough.then(|| format!("; did you mean `{}`?", best.1))
}

fn apply_override(root: &mut Value, item: &str) -> Result<()> {
    let (key, raw) = item.split_once('=').context("expected KEY=VALUE, e.g. train.lr=3e-4")?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("empty key segment in `{key}`");
    }
    let parsed: Value = serde_yaml_ng::from_str(raw).with_context(|| format!("value `{raw}` is not valid YAML"))?;
    let mut node = root;
    for (i, part) in parts.iter().enumerate() {
        let map = match node {
            Value::Mapping(m) => m,
            other => bail!("`{}` is a {}, not a section", parts[..i].join("."), kind_name(other)),
        };
        let entry = map.entry(Value::String(part.to_string())).or_insert(Value::Null);
        if i + 1 == parts.len() {
            *entry = parsed;
            return Ok(());
        }
        if entry.is_null() {
            *entry = Value::Mapping(Mapping::new());
        }
        node = entry;
    }
    unreachable!("loop returns at the last key segment")
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Sequence(_) => "list",
        Value::Mapping(_) => "section",
        Value::Tagged(_) => "tagged value",
    }
}

/// Write the resolved config into `dir` (atomically), so every run records what it ran.
pub fn write_resolved<T: Serialize>(config: &T, dir: &Path) -> Result<PathBuf> {
    let path = dir.join(RESOLVED_NAME);
    let text = serde_yaml_ng::to_string(config).context("cannot serialize the resolved config")?;
    crate::atomic::write(&path, text.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("exp.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn loads_defaults_and_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "name: demo\nsegments:\n  bars: 8\n");
        let cfg: ExperimentConfig =
            load(&path, &["seed=7".into(), "segments.hop_bars=4".into(), "output_dir=out".into()]).unwrap();
        assert_eq!(cfg.name, "demo");
        assert_eq!(cfg.seed, 7);
        assert_eq!(cfg.segments, SegmentConfig { bars: 8, hop_bars: 4 });
        assert_eq!(cfg.run_dir(), PathBuf::from("out/demo"));
    }

    #[test]
    fn unknown_key_names_path_and_suggests_nearest() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "name: demo\nsegments:\n  hop_bar: 2\n");
        let err = format!("{:#}", load::<ExperimentConfig>(&path, &[]).unwrap_err());
        assert!(err.contains("exp.yaml"), "{err}");
        assert!(err.contains("segments.hop_bar"), "{err}");
        assert!(err.contains("did you mean `hop_bars`?"), "{err}");

        let path = write(dir.path(), "name: demo\n");
        let err = format!("{:#}", load::<ExperimentConfig>(&path, &["sed=1".into()]).unwrap_err());
        assert!(err.contains("did you mean `seed`?"), "{err}");
    }

    #[test]
    fn far_off_key_gets_no_suggestion() {
        assert_eq!(suggest_for_unknown_field("unknown field `zzzzzzzz`, expected `name` or `seed`"), None);
        assert_eq!(
            suggest_for_unknown_field("unknown field `nme`, expected one of `name`, `seed`"),
            Some("; did you mean `name`?".into())
        );
    }

    #[test]
    fn override_errors_are_clear() {
        let mut v: Value = serde_yaml_ng::from_str("name: demo\n").unwrap();
        assert!(apply_override(&mut v, "seed").unwrap_err().to_string().contains("KEY=VALUE"));
        assert!(apply_override(&mut v, "name.x=1").unwrap_err().to_string().contains("`name` is a string"));
        assert!(apply_override(&mut v, "a..b=1").unwrap_err().to_string().contains("empty key"));
    }

    #[test]
    fn resolved_config_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ExperimentConfig {
            name: "x".into(),
            seed: 3,
            output_dir: dir.path().to_path_buf(),
            segments: SegmentConfig::default(),
            data: DataConfig::default(),
            prepare: PrepareConfig::default(),
            model: Default::default(),
            train: Default::default(),
            eval: Default::default(),
        };
        let path = write_resolved(&cfg, &cfg.run_dir()).unwrap();
        let back: ExperimentConfig = load(&path, &[]).unwrap();
        assert_eq!(back, cfg);
    }
}
