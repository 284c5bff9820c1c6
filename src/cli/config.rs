use crate::config::{load, ExperimentConfig};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Experiment file, e.g. experiments/demo.yaml.
    config: PathBuf,
    /// Override a key, e.g. `--set segments.bars=8` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    let cfg: ExperimentConfig = load(&args.config, &args.overrides)?;
    super::emit(&crate::yaml::to_string(&cfg)?)
}
