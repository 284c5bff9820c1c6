//! `stylebridge eval retrieval --checkpoint CKPT --data SHARDS`: the paper's retrieval protocol;
//! `stylebridge eval style-transfer`: the demo's style-transfer table.
use anyhow::{bail, ensure, Context, Result};
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{self, ExperimentConfig, ModelConfig, RESOLVED_NAME};
use crate::data::loader::{LoaderOptions, PairSet, Stage};
use crate::eval::retrieval::{self, Source};
use crate::train::checkpoint;
use crate::train::stage1::Stage1Model;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    protocol: Protocol,
}

#[derive(clap::Subcommand)]
enum Protocol {
    /// Audio-to-MIDI retrieval (Tables 2 and 3): Acc@1, Acc@5, mean rank over resampled runs.
    Retrieval(RetrievalArgs),
    /// Style transfer on the embedded corpus, named by an independent style judge (the demo).
    StyleTransfer(super::style_transfer::Args),
}

#[derive(clap::Args)]
struct RetrievalArgs {
    /// A checkpoint folder (step-*), or a run / checkpoints folder (its `best`, else `latest`).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Prepared shard folder(s); each is one source, named after the folder (default: the
    /// run's `data.shards`).
    #[arg(long)]
    data: Vec<PathBuf>,
    /// Override a key of the checkpoint's config, e.g. `--set eval.retrieval.runs=3`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Where to write retrieval.md and retrieval.json (default: the checkpoint folder).
    #[arg(long)]
    out: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto (default: the run's train.device).
    #[arg(long)]
    device: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    match args.protocol {
        Protocol::Retrieval(a) => run_retrieval(a),
        Protocol::StyleTransfer(a) => super::style_transfer::run(a),
    }
}

fn run_retrieval(args: RetrievalArgs) -> Result<()> {
    let dir = checkpoint::resolve(&args.checkpoint)?;
    let cfg: ExperimentConfig = config::load(&dir.join(RESOLVED_NAME), &args.overrides)?;
    if let Some(threads) = cfg.train.threads {
        crate::device::set_threads(threads)?;
    }
    let device = crate::device::parse(args.device.as_deref().unwrap_or(&cfg.train.device))?;
    // The run's model as trained, with any `--set model.*` the user gives.
    let ModelConfig::Stage1(model_cfg) = &cfg.model else { bail!("{} is not a stage-1 run: retrieval evaluates stage 1", dir.display()) };
    let mut model = Stage1Model::load(model_cfg, cfg.seed, cfg.train.precision, device, &dir)?;

    let folders = if args.data.is_empty() { vec![cfg.shards_dir()] } else { args.data.clone() };
    let rc = &cfg.eval.retrieval;
    let mut sources: Vec<Source> = Vec::new();
    for folder in &folders {
        let name = folder.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| folder.display().to_string());
        ensure!(!sources.iter().any(|s| s.name == name), "two --data folders are both named `{name}`; sources are named by folder");
        let set = PairSet::open(folder, rc.split, cfg.data.workers.max(1)).with_context(|| format!("test data {}", folder.display()))?;
        ensure!(!set.rows.is_empty(), "{} has no {} pairs", folder.display(), rc.split);
        let options = LoaderOptions::from_config(&cfg.data, &set.layout, Stage::Stage1, rc.batch_size, rc.seed, 0, 1);
        model.check_data(&set, &options, &folder.display().to_string())?;
        sources.push(Source { name, set: Arc::new(set) });
    }
    let options = LoaderOptions::from_config(&cfg.data, &sources[0].set.layout, Stage::Stage1, rc.batch_size, rc.seed, 0, 1);
    let report = retrieval::evaluate(&mut model, &sources, rc, &options, &dir.display().to_string())?;
    let out = args.out.unwrap_or_else(|| dir.clone());
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let markdown = report.to_markdown();
    crate::atomic::write(&out.join("retrieval.md"), markdown.as_bytes())?;
    crate::atomic::write(&out.join("retrieval.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
    super::emit(&format!("{markdown}\nwritten: {} and retrieval.json\n", out.join("retrieval.md").display()))
}
