//! `stylebridge train experiments/NAME.yaml [--set key=value ...] [--resume]`: one match arm per
//! training task (`model.kind`), all through the same trainer.
//!
//! Everything that can refuse a run (config ranges, data, model, a checkpoint or config that does
//! not fit a resume) is checked before the run folder is created or changed.
use anyhow::{bail, ensure, Context, Result};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{self, ExperimentConfig, ModelConfig, RESUME_MAY_CHANGE};
use crate::data::loader::{Loader, LoaderOptions, PairSet, Stage, ValidationSet};
use crate::data::split::Split;
use crate::train::distributed::{self, Collective};
use crate::train::musecoco_lm::MusecocoLmTask;
use crate::train::stage1::{Stage1Model, Stage1Task};
use crate::train::stage2::{self, Stage2Model, Stage2Task};
use crate::train::trainer::{Outcome, Trainer};

/// Where `kind: musecoco_lm` writes its model (config.json + model.safetensors) in the run folder.
pub const MUSECOCO_EXPORT: &str = "musecoco";

#[derive(clap::Args)]
pub struct Args {
    /// Experiment file, e.g. experiments/demo.yaml.
    config: PathBuf,
    /// Override a config key, e.g. `--set train.batch_size=16` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Continue from the latest checkpoint in the run folder (exactly where it stopped).
    #[arg(long)]
    resume: bool,
}

pub fn run(args: Args) -> Result<()> {
    let mut cfg: ExperimentConfig = config::load(&args.config, &args.overrides)?;
    if let ModelConfig::Stage2(m) = &cfg.model {
        stage2::check_precision(cfg.train.precision)?;
        cfg.model = ModelConfig::Stage2(m.resolve()?);
    }
    if let Some(threads) = cfg.train.threads {
        crate::device::set_threads(threads)?;
    }
    if cfg.train.deterministic {
        tch::Cuda::cudnn_set_benchmark(false);
    }
    let (collective, device) = distributed::from_env(cfg.train.device()?, Duration::from_secs(cfg.train.timeout_s))?;
    let trainer = Trainer::new(cfg.train.clone(), cfg.seed, &cfg.run_dir(), crate::yaml::to_string(&cfg)?, collective.as_ref());
    if args.resume {
        check_resumed_config(&trainer, &cfg)?;
    }
    let outcome = match &cfg.model {
        ModelConfig::Stage1(model_cfg) => {
            let (train, valid) = loaders(&cfg, Stage::Stage1, collective.as_ref())?;
            let model = Stage1Model::new(model_cfg, cfg.train.precision, device, cfg.seed)?;
            model.check_data(train.set(), train.options(), &cfg.shards_dir().display().to_string())?;
            let mut task = Stage1Task::new(model, train, valid, cfg.eval.retrieval.clone(), collective.as_ref(), cfg.seed, &model_cfg.musicgen)?;
            trainer.fit(&mut task, args.resume)?
        }
        ModelConfig::Stage2(model_cfg) => {
            let (train, valid) = loaders(&cfg, Stage::Stage2, collective.as_ref())?;
            let model = Stage2Model::for_training(model_cfg, device, cfg.seed)?;
            model.check_data(train.set(), &cfg.shards_dir().display().to_string())?;
            let mut task = Stage2Task::new(model, model_cfg, train, valid, cfg.seed)?;
            trainer.fit(&mut task, args.resume)?
        }
        ModelConfig::MusecocoLm(model_cfg) => {
            let (train, valid) = loaders(&cfg, Stage::Stage2, collective.as_ref())?;
            let mut task = MusecocoLmTask::new(model_cfg, train, valid, device, cfg.seed);
            let outcome = trainer.fit(&mut task, args.resume)?;
            if collective.is_main() {
                let export = cfg.run_dir().join(MUSECOCO_EXPORT);
                task.export(&export)?;
                eprintln!("[train] MuseCoco in the HF port's format: {}", export.display());
            }
            outcome
        }
    };
    if collective.is_main() {
        super::emit(&summary(&outcome))?;
    }
    Ok(())
}

/// The training loader of this rank and the validation set (when the split has rows).
fn loaders(cfg: &ExperimentConfig, stage: Stage, collective: &dyn Collective) -> Result<(Loader, Option<ValidationSet>)> {
    let shards = cfg.shards_dir();
    let readers = cfg.data.workers.max(1);
    let train_set = Arc::new(PairSet::open(&shards, Split::Train, readers).with_context(|| format!("training data {}", shards.display()))?);
    ensure!(!train_set.rows.is_empty(), "{} has no training pairs (run `stylebridge prepare` first)", shards.display());
    let valid_set = Arc::new(PairSet::open(&shards, Split::Valid, readers)?);
    // train.batch_size is the global batch of one optimizer step, so a config means the same
    // run on any number of processes.
    let parts = collective.world_size() * cfg.train.grad_accum.max(1);
    ensure!(
        cfg.train.batch_size.is_multiple_of(parts) && cfg.train.batch_size >= parts,
        "train.batch_size {} (the global batch) does not split into {} processes x {} accumulated micro-batches",
        cfg.train.batch_size,
        collective.world_size(),
        cfg.train.grad_accum.max(1)
    );
    let options = LoaderOptions::from_config(&cfg.data, &train_set.layout, stage, cfg.train.batch_size / parts, cfg.seed, collective.rank(), collective.world_size());
    let valid = (!valid_set.rows.is_empty()).then(|| (valid_set, options.clone().evaluation()));
    Ok((Loader::new(train_set, options)?, valid))
}

/// A resumed run must mean the same training: the keys that shape it must equal the saved
/// resolved config's (`RESUME_MAY_CHANGE` lists the operational ones that may differ).
fn check_resumed_config(trainer: &Trainer, cfg: &ExperimentConfig) -> Result<()> {
    let Some(latest) = trainer.latest()? else { return Ok(()) };
    let saved_path = latest.join(crate::yaml::RESOLVED_NAME);
    let saved = crate::yaml::read_value(&saved_path, &[])?;
    let now = serde_yaml_ng::to_value(cfg).context("cannot serialize the config")?;
    let may_change = |key: &str| RESUME_MAY_CHANGE.iter().any(|p| key == *p || key.starts_with(&format!("{p}.")));
    let differing: Vec<String> = crate::yaml::differing_keys(&saved, &now)
        .into_iter()
        .filter(|k| !may_change(k))
        .map(|k| format!("{k}: checkpoint {}, now {}", show(&saved, &k), show(&now, &k)))
        .collect();
    if !differing.is_empty() {
        bail!(
            "cannot resume {}: the config differs from the one it was trained with ({}) in:\n  {}\n\
             Resume with the same settings, or start a new run under another `name`",
            cfg.run_dir().display(),
            saved_path.display(),
            differing.join("\n  ")
        );
    }
    Ok(())
}

/// The YAML of the value at key path `key` (`-` where absent).
fn show(root: &serde_yaml_ng::Value, key: &str) -> String {
    let node = key.split('.').try_fold(root, |node, part| node.get(part));
    node.map_or("-".into(), |v| serde_yaml_ng::to_string(v).unwrap_or_default().trim().replace('\n', " "))
}

fn summary(outcome: &Outcome) -> String {
    let figures: Vec<String> = outcome.final_validation.iter().map(|(k, v)| format!("  {k}: {v:.4}")).collect();
    format!(
        "trained {} steps ({} samples, {} skipped fp16 steps)\ncheckpoint: {}\n{}",
        outcome.state.step,
        outcome.state.samples,
        outcome.state.skipped_steps,
        outcome.last_checkpoint.display(),
        if figures.is_empty() { String::new() } else { format!("final validation:\n{}\n", figures.join("\n")) }
    )
}
