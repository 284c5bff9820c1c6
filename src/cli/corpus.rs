//! `stylebridge corpus synth --out DIR --songs N --seed S`: write the embedded style corpus.
use anyhow::Result;
use std::path::PathBuf;
use std::time::Instant;

use crate::data::corpus::{synthesize, Style, SynthOptions};
use crate::data::render::{resolve_soundfont, SoundFontSynth};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Compose lead sheets, arrange each in several piano styles, render them, write a manifest.
    Synth(SynthArgs),
}

#[derive(clap::Args)]
struct SynthArgs {
    /// Output folder (NAME.mid, NAME.wav, NAME.chords.txt per arrangement, manifest.json).
    #[arg(long)]
    out: PathBuf,
    /// Number of lead sheets; each is arranged in every selected style that fits its meter.
    #[arg(long, default_value_t = 8)]
    songs: u64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Bars per lead sheet.
    #[arg(long, default_value_t = 8)]
    bars: u32,
    /// Styles to arrange in (comma-separated); default all.
    #[arg(long, value_enum, value_delimiter = ',')]
    styles: Vec<Style>,
    /// Add a plain bass and drum part under the piano (the same for every style).
    #[arg(long)]
    band: bool,
    /// Play every pattern as written: no per-arrangement register, dynamics, articulation or
    /// swing, so arrangements of one style differ only by their lead sheet.
    #[arg(long)]
    as_written: bool,
    /// SoundFont (.sf2); default as for `stylebridge render`.
    #[arg(long)]
    soundfont: Option<PathBuf>,
    #[arg(long, default_value_t = 32_000)]
    sample_rate: u32,
    /// Arrangements rendered in parallel (0 = one per core).
    #[arg(long, default_value_t = 0)]
    jobs: usize,
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        Command::Synth(a) => synth(a),
    }
}

fn synth(a: SynthArgs) -> Result<()> {
    let started = Instant::now();
    let font_path = resolve_soundfont(a.soundfont.as_deref())?;
    let synth = SoundFontSynth::load(&font_path)?;
    let options = SynthOptions {
        out: a.out,
        songs: a.songs,
        seed: a.seed,
        bars: a.bars,
        styles: if a.styles.is_empty() {
            Style::ALL.to_vec()
        } else {
            a.styles
        },
        band: a.band,
        as_written: a.as_written,
        sample_rate: a.sample_rate,
    };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(a.jobs).build()?;
    let manifest = pool.install(|| synthesize(&options, &synth, &font_path))?;
    let elapsed = started.elapsed().as_secs_f64();
    let audio_s: f64 = manifest.items.iter().map(|i| i.seconds).sum();
    super::emit(&format!(
        "wrote {} arrangements of {} lead sheets to {} ({:.0} s of audio) in {:.1} s: {:.2} arrangements/s\n",
        manifest.items.len(),
        manifest.songs,
        options.out.display(),
        audio_s,
        elapsed,
        manifest.items.len() as f64 / elapsed
    ))
}
