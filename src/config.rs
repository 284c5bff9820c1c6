//! The experiment file: the composition root of every component's config section.
//!
//! Each section's type lives with the component it configures (`segments` with the segmenter,
//! `data` with the loader, `prepare` with prepare, `model` with its training stage, `train`
//! with the trainer, `eval` with the protocols); this file only puts them together, so nothing
//! below `cli` depends on it. Reading, overrides and range checks are `crate::yaml`'s.
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::data::loader::DataConfig;
use crate::data::prepare::PrepareConfig;
use crate::data::segments::SegmentConfig;
use crate::eval::EvalConfig;
use crate::train::trainer::TrainConfig;
use crate::train::{musecoco_lm, stage1, stage2};
use crate::yaml::{Problems, Validate};

pub use crate::yaml::RESOLVED_NAME;

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
    /// What trains: `kind: stage1` (Q-Former on frozen MusicGen) or `kind: stage2`.
    #[serde(default)]
    pub model: ModelConfig,
    /// Training loop: optimizer, schedule, precision, checkpoints, logging.
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub eval: EvalConfig,
}

/// The `model:` section, tagged by `kind`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ModelConfig {
    Stage1(stage1::ModelConfig),
    Stage2(stage2::ModelConfig),
    /// The demo's stand-in for MuseCoco's pretraining (SPEC 9): a tiny MuseCoco as a language model.
    #[serde(rename = "musecoco_lm")]
    MusecocoLm(musecoco_lm::ModelConfig),
}

impl<'de> Deserialize<'de> for ModelConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::yaml::tagged(deserializer, "kind", |kind, rest| match kind {
            "stage1" => Ok(ModelConfig::Stage1(crate::yaml::from_value(rest)?)),
            "stage2" => Ok(ModelConfig::Stage2(crate::yaml::from_value(rest)?)),
            "musecoco_lm" => Ok(ModelConfig::MusecocoLm(crate::yaml::from_value(rest)?)),
            other => anyhow::bail!("unknown variant `{other}`, expected one of `stage1`, `stage2`, `musecoco_lm`"),
        })
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig::Stage1(Default::default())
    }
}

/// Keys that may change when a run is resumed: how long and how often it logs, validates and
/// saves, where it runs, how data are fed, evaluation settings. Every other key must equal the
/// checkpoint's resolved config (a different model or data would silently mix two runs).
pub const RESUME_MAY_CHANGE: &[&str] = &[
    "train.max_steps",
    "train.log_every",
    "train.eval_every",
    "train.eval_batches",
    "train.checkpoint_every",
    "train.keep_last",
    "train.device",
    "train.threads",
    "train.timeout_s",
    "data.workers",
    "data.prefetch",
    "data.shards",
    "output_dir",
    "prepare",
    "eval",
];

fn default_output_dir() -> PathBuf {
    PathBuf::from("runs")
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

impl Validate for ExperimentConfig {
    fn validate(&self, _: &str, p: &mut Problems) {
        p.check(!self.name.trim().is_empty() && !self.name.contains('/'), "", "name", || {
            format!("is {:?}; it names the run folder, so it must be non-empty and hold no '/'", self.name)
        });
        self.segments.validate("segments", p);
        self.data.validate("data", p);
        self.prepare.validate("prepare", p);
        match &self.model {
            ModelConfig::Stage1(m) => m.validate("model", p),
            ModelConfig::Stage2(m) => m.validate("model", p),
            ModelConfig::MusecocoLm(m) => m.validate("model", p),
        }
        self.train.validate("train", p);
        self.eval.validate("eval", p);
    }
}

/// Read an experiment file with `--set` overrides, checked.
pub fn load(path: &Path, overrides: &[String]) -> Result<ExperimentConfig> {
    crate::yaml::load(path, overrides)
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
        let cfg = load(&path, &["seed=7".into(), "segments.hop_bars=4".into(), "output_dir=out".into()]).unwrap();
        assert_eq!(cfg.name, "demo");
        assert_eq!(cfg.seed, 7);
        assert_eq!(cfg.segments, SegmentConfig { bars: 8, hop_bars: 4 });
        assert_eq!(cfg.run_dir(), PathBuf::from("out/demo"));
    }

    #[test]
    fn unknown_key_names_path_and_suggests_nearest() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "name: demo\nsegments:\n  hop_bar: 2\n");
        let err = format!("{:#}", load(&path, &[]).unwrap_err());
        assert!(err.contains("exp.yaml"), "{err}");
        assert!(err.contains("segments.hop_bar"), "{err}");
        assert!(err.contains("did you mean `hop_bars`?"), "{err}");

        let path = write(dir.path(), "name: demo\nmodel:\n  kind: stage1\n");
        let err = format!("{:#}", load(&path, &["sed=1".into()]).unwrap_err());
        assert!(err.contains("did you mean `seed`?"), "{err}");
        let err = format!("{:#}", load(&path, &["model.kind=stage3".into()]).unwrap_err());
        assert!(err.contains("stage3") && err.contains("did you mean `stage1`?"), "{err}");
        let err = format!("{:#}", load(&path, &["model.objectivs=C".into()]).unwrap_err());
        assert!(err.contains("model.objectivs") && err.contains("did you mean `objectives`?"), "{err}");
        let err = format!("{:#}", load(&path, &["train.epochs=0".into(), "train.schedule.peak_lr=-1".into()]).unwrap_err());
        assert!(err.contains("`train.epochs` is 0") && err.contains("`train.schedule.peak_lr` is -1"), "{err}");
    }

    #[test]
    fn every_shipped_experiment_file_reads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
        let mut read = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                read += 1;
            }
        }
        assert!(read >= 8, "only {read} experiment files");
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
        let path = crate::yaml::write_resolved(&cfg, &cfg.run_dir()).unwrap();
        let back = load(&path, &[]).unwrap();
        assert_eq!(back, cfg);
    }
}
