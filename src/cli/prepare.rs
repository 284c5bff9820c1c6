//! `stylebridge prepare`: turn a corpus into Parquet shards of training pairs (see `data::prepare`).
use anyhow::{ensure, Result};
use std::path::PathBuf;

use crate::config::{self, ExperimentConfig};
use crate::data::prepare::{self, Settings, SourceKind, REPORT_NAME};
use crate::data::shards::MANIFEST_NAME;
use crate::progress::Progress;

#[derive(clap::Args)]
pub struct Args {
    /// Experiment file with `prepare:` and `data:` sections (e.g. experiments/prepare_pop909.yaml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config key, e.g. `--set prepare.jobs=4` (repeatable; needs --config).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Corpus layout (overrides prepare.source).
    #[arg(long, value_enum)]
    source: Option<Source>,
    /// Corpus folder (overrides prepare.input).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Folder of audio files NAME.{wav,flac,mp3,ogg} (overrides prepare.audio_dir).
    #[arg(long)]
    audio_dir: Option<PathBuf>,
    /// HF EnCodec checkpoint folder (overrides prepare.encodec).
    #[arg(long)]
    encodec: Option<PathBuf>,
    /// Render songs that have no audio with a GM SoundFont.
    #[arg(long)]
    render_missing_audio: bool,
    #[arg(long)]
    soundfont: Option<PathBuf>,
    /// Output folder (overrides data.shards; default <output_dir>/<name>/shards).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Songs in parallel (0 = one per core).
    #[arg(long)]
    jobs: Option<usize>,
    /// Only the first N songs.
    #[arg(long)]
    max_songs: Option<usize>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Source {
    Pop909,
    Pairs,
}

pub fn run(args: Args) -> Result<()> {
    let mut cfg: ExperimentConfig = match &args.config {
        Some(path) => config::load(path, &args.overrides)?,
        None => {
            ensure!(args.overrides.is_empty(), "--set needs --config");
            crate::yaml::from_value(serde_yaml_ng::from_str("name: prepare")?)?
        }
    };
    let p = &mut cfg.prepare;
    if let Some(source) = args.source {
        p.source = match source {
            Source::Pop909 => SourceKind::Pop909,
            Source::Pairs => SourceKind::Pairs,
        };
    }
    p.input = args.input.or(p.input.take());
    p.audio_dir = args.audio_dir.or(p.audio_dir.take());
    p.encodec = args.encodec.or(p.encodec.take());
    p.soundfont = args.soundfont.or(p.soundfont.take());
    p.render_missing_audio |= args.render_missing_audio;
    p.jobs = args.jobs.unwrap_or(p.jobs);
    p.max_songs = args.max_songs.or(p.max_songs);
    let out = args.out.unwrap_or_else(|| cfg.shards_dir());

    let songs = prepare::discover(&cfg.prepare)?;
    let settings = Settings { config: cfg.prepare.clone(), segments: cfg.segments.clone(), seed: cfg.seed };
    let progress = Progress::new("prepare", songs.len() as u64);
    let summary = prepare::run(&songs, &settings, &out, &progress)?;
    let text = prepare::report(&summary.manifest, songs.len());
    eprint!("{text}");
    eprintln!(
        "{} songs processed, {} reused from an earlier run; manifest {}, report {}",
        summary.processed,
        summary.reused,
        out.join(MANIFEST_NAME).display(),
        out.join(REPORT_NAME).display()
    );
    Ok(())
}
