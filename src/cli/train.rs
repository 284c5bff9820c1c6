//! `stylebridge train experiments/NAME.yaml [--set key=value ...] [--resume]`: stage-1 training.
use anyhow::{ensure, Context, Result};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{self, ExperimentConfig, ModelConfig};
use crate::data::loader::{Loader, LoaderOptions, PairSet, Stage};
use crate::data::split::Split;
use crate::train::distributed;
use crate::train::stage1::{Stage1Model, Stage1Task};
use crate::train::trainer::Trainer;

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
    let cfg: ExperimentConfig = config::load(&args.config, &args.overrides)?;
    let ModelConfig::Stage1(model_cfg) = &cfg.model;
    if let Some(threads) = cfg.train.threads {
        tch::set_num_threads(threads as i32);
    }
    if cfg.train.deterministic {
        tch::Cuda::cudnn_set_benchmark(false);
    }
    let (collective, device) = distributed::from_env(cfg.train.device()?, Duration::from_secs(cfg.train.timeout_s))?;
    let run_dir = cfg.run_dir();
    std::fs::create_dir_all(&run_dir).with_context(|| format!("cannot create the run folder {}", run_dir.display()))?;
    if collective.is_main() {
        crate::yaml::write_resolved(&cfg, &run_dir)?;
    }
    let resolved = crate::yaml::to_string(&cfg)?;

    let shards = cfg.shards_dir();
    let readers = cfg.data.workers.max(1);
    let train_set = Arc::new(PairSet::open(&shards, Split::Train, readers).with_context(|| format!("training data {}", shards.display()))?);
    ensure!(!train_set.rows.is_empty(), "{} has no training pairs (run `stylebridge prepare` first)", shards.display());
    let valid_set = Arc::new(PairSet::open(&shards, Split::Valid, readers)?);
    // train.batch_size is the global batch of one optimizer step, so a config means the same
    // run on any number of processes.
    let parts = collective.world_size() * cfg.train.grad_accum.max(1);
    ensure!(
        cfg.train.batch_size % parts == 0 && cfg.train.batch_size >= parts,
        "train.batch_size {} (the global batch) does not split into {} processes x {} accumulated micro-batches",
        cfg.train.batch_size,
        collective.world_size(),
        cfg.train.grad_accum.max(1)
    );
    let options = LoaderOptions::from_config(
        &cfg.data,
        &train_set.layout,
        Stage::Stage1,
        cfg.train.batch_size / parts,
        cfg.seed,
        collective.rank(),
        collective.world_size(),
    );
    let model = Stage1Model::new(model_cfg, cfg.train.precision, device, cfg.seed)?;
    model.check_data(&train_set, &options, &shards.display().to_string())?;
    let valid = (!valid_set.rows.is_empty()).then(|| (valid_set, options.clone().evaluation()));
    let loader = Loader::new(train_set, options)?;
    let mut task = Stage1Task::new(model, loader, valid, cfg.eval.retrieval.clone(), collective.as_ref(), cfg.seed);
    let trainer = Trainer::new(cfg.train.clone(), cfg.seed, &run_dir, resolved, collective.as_ref());
    let outcome = trainer.fit(&mut task, args.resume)?;
    if collective.is_main() {
        let figures: Vec<String> = outcome.final_validation.iter().map(|(k, v)| format!("  {k}: {v:.4}")).collect();
        super::emit(&format!(
            "trained {} steps ({} samples, {} skipped fp16 steps)\ncheckpoint: {}\n{}",
            outcome.state.step,
            outcome.state.samples,
            outcome.state.skipped_steps,
            outcome.last_checkpoint.display(),
            if figures.is_empty() { String::new() } else { format!("final validation:\n{}\n", figures.join("\n")) }
        ))?;
    }
    Ok(())
}
