//! The `stylebridge` command line: one subcommand per pipeline step.
use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod arrange;
mod audio;
mod config;
mod convert;
mod eval;
mod corpus;
mod info;
mod inspect;
mod launch;
mod leadsheet;
mod prepare;
mod render;
mod segments;
mod style_transfer;
mod tokens;
mod train;

#[derive(Parser)]
#[command(name = "stylebridge", version, about = "Learn music style from audio and arrange piano in it (BOSSA on libtorch)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Arrange a lead sheet for piano in the style of a reference audio (a stage-2 run).
    Arrange(arrange::Args),
    /// EnCodec codes and MusicGen stage-1 features of an audio file (HF checkpoint folders).
    Audio(audio::Args),
    /// Print an experiment's resolved configuration (YAML + `--set` overrides).
    Config(config::Args),
    /// Convert a pickled checkpoint (MusicBERT, BOSSA stage 1/2, HF .bin) to safetensors + config.json.
    Convert(convert::Args),
    /// Show the libtorch in use, whether CUDA is linked and visible, and the thread count.
    Info(info::Args),
    /// Write the embedded style corpus (lead sheets x piano styles, MIDI + audio + manifest).
    Corpus(corpus::Args),
    /// Render a MIDI file to audio (WAV) with a General MIDI SoundFont.
    Render(render::Args),
    /// List the 4-bar segments (2-bar hop) of a MIDI file with their ticks and seconds.
    Segments(segments::Args),
    /// Extract a lead sheet (melody + chords as notes) from a POP909 song or a MIDI + chord file.
    Leadsheet(leadsheet::Args),
    /// Turn a corpus (POP909, or audio + MIDI + chord files) into Parquet shards of training pairs.
    Prepare(prepare::Args),
    /// Start N training workers on this node (like `torchrun --no-python`): `launch --nproc-per-node 2 -- train cfg.yaml`.
    Launch(launch::Args),
    /// Show what is inside prepared data (`inspect shards DIR`).
    Inspect(inspect::Args),
    /// Print a MIDI file as OctupleMIDI or MuseCoco REMI token ids, or decode ids back to MIDI.
    Tokens(tokens::Args),
    /// Training: stage 1 (Q-Former on frozen MusicGen), stage 2 (MuseCoco + LoRA), or the demo's MuseCoco LM (`model.kind`).
    Train(train::Args),
    /// Evaluation protocols of the paper (retrieval: Tables 2 and 3).
    Eval(eval::Args),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Arrange(args) => arrange::run(args),
        Command::Audio(args) => audio::run(args),
        Command::Config(args) => config::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Info(args) => info::run(args),
        Command::Corpus(args) => corpus::run(args),
        Command::Render(args) => render::run(args),
        Command::Segments(args) => segments::run(args),
        Command::Leadsheet(args) => leadsheet::run(args),
        Command::Tokens(args) => tokens::run(args),
        Command::Prepare(args) => prepare::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Launch(args) => launch::run(args),
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Print a command's report to stdout; a reader that went away (`| head`) is not an error.
pub(crate) fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(anyhow::Error::new(e).context("cannot write to stdout")),
        _ => Ok(()),
    }
}
