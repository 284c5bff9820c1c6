//! `stylebridge arrange`: a piano arrangement of a lead sheet in the style of a reference audio.
//!
//! ```text
//! stylebridge arrange --checkpoint RUN --leadsheet LS.mid --reference REF.wav -o OUT.mid
//! stylebridge arrange --checkpoint RUN --batch LIST.csv     # columns leadsheet,reference,out[,start_bar,bars,seed]
//! ```
//! Each arrangement writes OUT.mid and OUT.json (the command, seed, sampling settings, the
//! checkpoint and its backbones with their sha256, per window and candidate the token counts and
//! scores); `--keep all` also writes every candidate as OUT.sample-K.mid. A batch skips a bad row,
//! reports it, and finishes the others.
use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

use crate::data::midi;
use crate::data::render::{resolve_soundfont, SoundFontSynth};
use crate::generate::arranger::{Arranger, Job, Keep, Outcome};
use crate::generate::{ArrangeConfig, ClipMode, SamplingConfig, WindowTiming};
use crate::progress::Progress;

#[derive(clap::Args)]
pub struct Args {
    /// A stage-2 run or checkpoint folder (its `best`, else `latest`), or a converted BOSSA stage-2 folder.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Lead sheet: a MIDI file with melody and chords (as `stylebridge leadsheet` writes it) or a POP909-style song folder.
    #[arg(long, required_unless_present = "batch")]
    leadsheet: Option<PathBuf>,
    /// Reference audio (WAV, FLAC, MP3, Ogg); repeat it with --mix to blend styles.
    #[arg(long = "reference", required_unless_present = "batch")]
    references: Vec<PathBuf>,
    /// Output MIDI file.
    #[arg(short, long, required_unless_present = "batch")]
    output: Option<PathBuf>,
    /// A CSV of jobs: columns leadsheet, reference, out, and optionally start_bar, bars, seed.
    #[arg(long, conflicts_with_all = ["leadsheet", "references", "output"])]
    batch: Option<PathBuf>,
    /// Weights of the references' styles, e.g. 0.7,0.3 (normalised to sum 1).
    #[arg(long, value_delimiter = ',')]
    mix: Vec<f64>,
    /// First bar of the passage to arrange.
    #[arg(long, default_value_t = 0)]
    start_bar: usize,
    /// Bars to arrange [default: to the end of the lead sheet].
    #[arg(long)]
    bars: Option<usize>,
    /// `follow`: each window hears the 10 s of the reference centred on its bars (a cover: the
    /// reference is the song itself); `fixed`: one clip from --reference-offset for every window.
    #[arg(long, value_enum, default_value_t = Mode::Fixed)]
    reference_mode: Mode,
    /// Seconds into the reference: the fixed clip's start, or where the lead sheet's time 0 falls.
    #[arg(long, default_value_t = 0.0)]
    reference_offset: f64,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Candidates drawn as one batch.
    #[arg(long, default_value_t = 1)]
    num_samples: usize,
    /// Keep the candidate most similar to the reference (stage-1 similarity), or all of them.
    #[arg(long, value_enum, default_value_t = Keep::Best)]
    keep: Keep,
    /// Add sustain pedal at chord changes and bar lines (BOSSA's add_pedal).
    #[arg(long)]
    pedal: bool,
    /// Also render the arrangement to this WAV file with a GM SoundFont.
    #[arg(long)]
    render: Option<PathBuf>,
    #[arg(long)]
    soundfont: Option<PathBuf>,
    /// Also write the REMI token ids of every candidate to this JSON file.
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// The EnCodec that reads the references [default: the one the run's training codes came from].
    #[arg(long)]
    encodec: Option<PathBuf>,
    /// The stage-1 run that ranks candidates [default: the one the stage-2 run started from].
    #[arg(long)]
    stage1: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Torch intra-op threads.
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Mode {
    Follow,
    Fixed,
}

/// One job's paths and per-row settings.
struct Row {
    leadsheet: PathBuf,
    references: Vec<PathBuf>,
    output: PathBuf,
    start_bar: usize,
    bars: Option<usize>,
    seed: u64,
}

/// The sampling settings `arrange` and `eval style-transfer` share.
#[derive(clap::Args)]
pub struct SamplingArgs {
    /// Keep the k likeliest tokens (0: no top-k).
    #[arg(long, default_value_t = 15)]
    top_k: usize,
    #[arg(long)]
    top_p: Option<f64>,
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Same seed, same output (on one machine and thread count).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Most new tokens one window may take (the grammar closes its bars within it).
    #[arg(long)]
    max_new_tokens: Option<usize>,
}

impl SamplingArgs {
    /// Validated settings of one arrangement, with `--seed`.
    pub fn settings(&self) -> Result<ArrangeConfig> {
        self.settings_seeded(self.seed)
    }

    /// Validated settings of one arrangement drawn from `seed` (a batch row's own).
    fn settings_seeded(&self, seed: u64) -> Result<ArrangeConfig> {
        let sampling = SamplingConfig { temperature: self.temperature, top_k: Some(self.top_k).filter(|&k| k > 0), top_p: self.top_p, seed };
        let config = ArrangeConfig { sampling, max_new_tokens: self.max_new_tokens, ..ArrangeConfig::default() };
        crate::yaml::validate(&config).context("sampling settings")?;
        Ok(config)
    }
}

pub fn run(args: Args) -> Result<()> {
    if let Some(threads) = args.threads {
        crate::device::set_threads(threads)?;
    }
    let device = crate::device::parse(&args.device)?;
    let rows = match &args.batch {
        Some(list) => read_batch(list, &args)?,
        None => vec![Row {
            leadsheet: args.leadsheet.clone().context("--leadsheet is required")?,
            references: args.references.clone(),
            output: args.output.clone().context("--output is required")?,
            start_bar: args.start_bar,
            bars: args.bars,
            seed: args.sampling.seed,
        }],
    };
    let mix = mix_weights(&args.mix, rows.iter().map(|r| r.references.len()).max().unwrap_or(1))?;
    args.sampling.settings()?;
    let mut arranger = Arranger::open(&args.checkpoint, args.encodec.as_deref(), args.stage1.as_deref(), device)?;
    if args.keep == Keep::Best && args.num_samples > 1 && !arranger.can_rank() {
        bail!("--keep best ranks candidates with a stage-1 model and {} names none; pass --stage1 RUN or --keep all", arranger.checkpoint.display());
    }
    let synth = match &args.render {
        Some(_) => Some(SoundFontSynth::load(&resolve_soundfont(args.soundfont.as_deref())?)?),
        None => None,
    };
    let progress = if rows.len() > 1 { Progress::new("arrange", rows.len() as u64) } else { Progress::hidden("arrange", 1) };
    let mut failures = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        let job = Job {
            lead_sheet: row.leadsheet.clone(),
            references: row.references.iter().cloned().zip(mix.iter().copied()).collect(),
            mode: match args.reference_mode {
                Mode::Follow => ClipMode::Follow { offset_seconds: args.reference_offset },
                Mode::Fixed => ClipMode::Fixed { offset_seconds: args.reference_offset },
            },
            start_bar: row.start_bar,
            bars: row.bars,
            num_samples: args.num_samples,
            keep: args.keep,
            pedal: args.pedal,
            settings: args.sampling.settings_seeded(row.seed)?,
        };
        let result = distinct_paths(&args, row)
            .and_then(|()| arranger.arrange(&job))
            .and_then(|outcome| write_outputs(&args, row, &job, &arranger, &outcome, synth.as_ref()));
        progress.inc(1);
        match result {
            Ok(summary) => super::emit(&summary)?,
            Err(e) if args.batch.is_some() => {
                eprintln!("skipped row {} ({}): {e:#}", index + 2, row.leadsheet.display());
                failures.push((index + 2, format!("{e:#}")));
            }
            Err(e) => return Err(e),
        }
    }
    progress.finish();
    if let Some(list) = &args.batch {
        let report = list.with_extension("report.json");
        let json = serde_json::json!({
            "rows": rows.len(),
            "arranged": rows.len() - failures.len(),
            "skipped": failures.iter().map(|(line, reason)| serde_json::json!({"line": line, "reason": reason})).collect::<Vec<_>>(),
        });
        crate::atomic::write(&report, serde_json::to_string_pretty(&json)?.as_bytes())?;
        eprintln!("{} of {} rows arranged, {} skipped; report {}", rows.len() - failures.len(), rows.len(), failures.len(), report.display());
        ensure!(failures.len() < rows.len(), "no row of {} could be arranged", list.display());
    }
    Ok(())
}

/// Weights for `references` references: as given (normalised) or equal.
fn mix_weights(mix: &[f64], references: usize) -> Result<Vec<f64>> {
    if mix.is_empty() {
        return Ok(vec![1.0 / references.max(1) as f64; references.max(1)]);
    }
    ensure!(mix.len() == references, "--mix gives {} weights for {references} references", mix.len());
    ensure!(mix.iter().all(|w| w.is_finite() && *w >= 0.0), "--mix weights must be 0 or more, got {mix:?}");
    let total: f64 = mix.iter().sum();
    ensure!(total > 0.0, "--mix weights sum to 0");
    Ok(mix.iter().map(|w| w / total).collect())
}

fn read_batch(list: &Path, args: &Args) -> Result<Vec<Row>> {
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_path(list).with_context(|| format!("cannot read {}", list.display()))?;
    let headers = reader.headers().with_context(|| format!("{}: no header line", list.display()))?.clone();
    let column = |name: &str| headers.iter().position(|h| h == name);
    let (Some(lead), Some(reference), Some(out)) = (column("leadsheet"), column("reference"), column("out")) else {
        bail!("{}: the header must name the columns leadsheet, reference and out (and optionally start_bar, bars, seed); found {:?}", list.display(), headers.iter().collect::<Vec<_>>());
    };
    let known = ["leadsheet", "reference", "out", "start_bar", "bars", "seed"];
    if let Some(unknown) = headers.iter().find(|h| !known.contains(h)) {
        bail!("{}: unknown column `{unknown}` (columns: {})", list.display(), known.join(", "));
    }
    let base = list.parent().unwrap_or(Path::new("."));
    let resolve = |p: &str| if Path::new(p).is_absolute() { PathBuf::from(p) } else { base.join(p) };
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let line = i + 2;
        let record = record.with_context(|| format!("{}: line {line} is not valid CSV", list.display()))?;
        let field = |c: Option<usize>| c.and_then(|c| record.get(c)).filter(|v| !v.is_empty());
        let number = |name: &str| -> Result<Option<u64>> {
            field(column(name)).map(|v| v.parse::<u64>().with_context(|| format!("{}: line {line}: {name} `{v}` is not a whole number", list.display()))).transpose()
        };
        let (Some(l), Some(r), Some(o)) = (field(Some(lead)), field(Some(reference)), field(Some(out))) else {
            bail!("{}: line {line} lacks a leadsheet, reference or out", list.display());
        };
        rows.push(Row {
            leadsheet: resolve(l),
            references: vec![resolve(r)],
            output: resolve(o),
            start_bar: number("start_bar")?.map_or(args.start_bar, |v| v as usize),
            bars: number("bars")?.map(|v| v as usize).or(args.bars),
            seed: number("seed")?.unwrap_or(args.sampling.seed),
        });
    }
    ensure!(!rows.is_empty(), "{} lists no job", list.display());
    Ok(rows)
}

#[derive(Serialize)]
struct Record<'a> {
    command: Vec<String>,
    seed: u64,
    sampling: &'a SamplingConfig,
    max_new_tokens: Option<usize>,
    lead_sheet: &'a Path,
    start_bar: usize,
    bars: usize,
    references: Vec<serde_json::Value>,
    reference_mode: String,
    checkpoint: &'a Path,
    backbones: &'a [crate::train::checkpoint::Backbone],
    ranked_by: Option<String>,
    candidates: Vec<serde_json::Value>,
    windows: &'a [WindowTiming],
    clip_start_frames: &'a [Vec<i64>],
}

/// Where `--tokens` goes for the row writing `out`: beside it in a batch, as given otherwise.
fn tokens_path(args: &Args, out: &Path) -> Option<PathBuf> {
    args.tokens.as_ref().map(|given| if args.batch.is_some() { out.with_extension("tokens.json") } else { given.clone() })
}

/// Where `--render` goes for the row writing `out`, as [`tokens_path`].
fn wav_path(args: &Args, out: &Path) -> Option<PathBuf> {
    args.render.as_ref().map(|given| if args.batch.is_some() { out.with_extension("wav") } else { given.clone() })
}

/// The files a row writes ([`write_outputs`]) and reads, each named once: an output on top of
/// another, or of an input (`-o song.mid --leadsheet song.mid`), would lose it.
fn distinct_paths(args: &Args, row: &Row) -> Result<()> {
    let out = &row.output;
    let mut files: Vec<(&str, PathBuf)> = vec![("the lead sheet", row.leadsheet.clone())];
    files.extend(row.references.iter().map(|r| ("a reference", r.clone())));
    files.push(("the output MIDI", out.clone()));
    files.push(("the record", out.with_extension("json")));
    if let Some(tokens) = tokens_path(args, out) {
        files.push(("--tokens", tokens));
    }
    if let Some(wav) = wav_path(args, out) {
        files.push(("--render", wav));
    }
    let absolute: Vec<PathBuf> = files.iter().map(|(_, p)| std::path::absolute(p).unwrap_or_else(|_| p.clone())).collect();
    for (i, a) in absolute.iter().enumerate() {
        for (j, b) in absolute.iter().enumerate().take(i) {
            // Inputs may repeat (a reference mixed with itself): they are only read.
            let both_inputs = i <= row.references.len();
            ensure!(a != b || both_inputs, "{} and {} are the same file {}: choose another output name", files[j].0, files[i].0, files[i].1.display());
        }
    }
    Ok(())
}

/// Write the MIDI files, the record, and the optional token list and rendering; a line to print.
fn write_outputs(args: &Args, row: &Row, job: &Job, arranger: &Arranger, outcome: &Outcome, synth: Option<&SoundFontSynth>) -> Result<String> {
    let out = &row.output;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let sample_path = |k: u64| out.with_extension(format!("sample-{k}.mid"));
    let best = &outcome.candidates[0];
    midi::write(&best.score, out)?;
    if job.keep == Keep::All && outcome.candidates.len() > 1 {
        for c in &outcome.candidates {
            midi::write(&c.score, &sample_path(c.sample))?;
        }
    }
    if let (Some(wav), Some(synth)) = (wav_path(args, out), synth) {
        let rate = 32_000;
        let audio = synth.render(&best.score, rate).with_context(|| format!("cannot render {}", out.display()))?;
        crate::data::audio::write_wav(&wav, &audio, rate)?;
    }
    if let Some(tokens) = tokens_path(args, out) {
        let json: Vec<serde_json::Value> = outcome.candidates.iter().map(|c| serde_json::json!({"sample": c.sample, "bars": c.bars})).collect();
        crate::atomic::write(&tokens, serde_json::to_string(&json)?.as_bytes())?;
    }
    let candidates = outcome
        .candidates
        .iter()
        .enumerate()
        .map(|(rank, c)| {
            let file = if rank == 0 { out.clone() } else { sample_path(c.sample) };
            serde_json::json!({
                "sample": c.sample,
                "file": if rank == 0 || job.keep == Keep::All { Some(file) } else { None },
                "similarity": c.similarity().is_finite().then(|| c.similarity()),
                "windows": c.windows.iter().enumerate().map(|(w, r)| serde_json::json!({
                    "window": r.window, "new_tokens": r.new_tokens, "end": r.end,
                    "similarity": c.window_scores.get(w),
                })).collect::<Vec<_>>(),
                "notes": c.score.note_count(),
            })
        })
        .collect();
    let record = Record {
        command: std::env::args().collect(),
        seed: job.settings.sampling.seed,
        sampling: &job.settings.sampling,
        max_new_tokens: job.settings.max_new_tokens,
        lead_sheet: &row.leadsheet,
        start_bar: outcome.passage.first_bar(),
        bars: outcome.passage.len(),
        references: job.references.iter().map(|(p, w)| serde_json::json!({"path": p, "weight": w})).collect(),
        reference_mode: format!("{:?}", job.mode),
        checkpoint: &arranger.checkpoint,
        backbones: &arranger.backbones,
        ranked_by: outcome.ranked.then(|| "stage-1 audio-to-MIDI similarity (mean over windows)".to_string()),
        candidates,
        windows: &outcome.timings,
        clip_start_frames: &outcome.clip_starts,
    };
    crate::atomic::write(&out.with_extension("json"), serde_json::to_string_pretty(&record)?.as_bytes())?;
    let seconds: f64 = outcome.timings.iter().map(|t| t.prefill_seconds + t.sampling_seconds).sum();
    Ok(format!(
        "{}: {} bars, {} notes, {} candidate(s){} in {seconds:.1} s\n",
        out.display(),
        outcome.passage.len(),
        best.score.note_count(),
        outcome.candidates.len(),
        if outcome.ranked { format!(", best similarity {:.3}", best.similarity()) } else { String::new() }
    ))
}
