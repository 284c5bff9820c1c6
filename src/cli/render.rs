//! `stylebridge render IN.mid -o OUT.wav [--soundfont F.sf2]`: MIDI to audio with a GM SoundFont.
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::time::Instant;

use crate::data::audio::{check_sample_rate, write_wav};
use crate::data::midi;
use crate::data::render::{band_programs, resolve_soundfont, SoundFontSynth};

#[derive(clap::Args)]
pub struct Args {
    /// MIDI file to render.
    input: PathBuf,
    /// WAV file to write (mono, 16-bit).
    #[arg(short, long)]
    output: PathBuf,
    /// SoundFont (.sf2). Default: $STYLEBRIDGE_SOUNDFONT, else TimGM6mb.sf2 from the PyPI package
    /// pretty-midi in the project's virtualenv ($STYLEBRIDGE_VENV, set by `make`).
    #[arg(long)]
    soundfont: Option<PathBuf>,
    /// Sample rate of the output in Hz (EnCodec-32k's rate by default; 1000 ..= 768000).
    #[arg(long, default_value_t = 32_000)]
    sample_rate: u32,
    /// Play the programs written in the file; by default POP909's MELODY, BRIDGE and PIANO
    /// tracks get band programs (sax-like lead, strings, grand piano).
    #[arg(long)]
    keep_programs: bool,
}

pub fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    check_sample_rate(u64::from(args.sample_rate), "--sample-rate")?;
    let score = midi::read(&args.input)?;
    let score = if args.keep_programs { score } else { band_programs(&score) };
    let font_path = resolve_soundfont(args.soundfont.as_deref())?;
    let synth = SoundFontSynth::load(&font_path)?;
    let audio = synth
        .render(&score, args.sample_rate)
        .with_context(|| format!("cannot render {}", args.input.display()))?;
    write_wav(&args.output, &audio, args.sample_rate)?;
    super::emit(&format!(
        "wrote {} ({:.2} s of audio at {} Hz, {} notes, SoundFont {}) in {:.2} s\n",
        args.output.display(),
        audio.len() as f64 / f64::from(args.sample_rate),
        args.sample_rate,
        score.note_count(),
        font_path.display(),
        started.elapsed().as_secs_f64()
    ))
}
