//! The `stylebridge` command line: one subcommand per pipeline step.
use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod audio;
mod config;
mod leadsheet;
mod segments;

#[derive(Parser)]
#[command(name = "stylebridge", version, about = "Learn music style from audio and arrange piano in it (BOSSA on libtorch)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// EnCodec codes and MusicGen stage-1 features of an audio file (HF checkpoint folders).
    Audio(audio::Args),
    /// Print an experiment's resolved configuration (YAML + `--set` overrides).
    Config(config::Args),
    /// List the 4-bar segments (2-bar hop) of a MIDI file with their ticks and seconds.
    Segments(segments::Args),
    /// Extract a lead sheet (melody + chords as notes) from a POP909 song or a MIDI + chord file.
    Leadsheet(leadsheet::Args),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Audio(args) => audio::run(args),
        Command::Config(args) => config::run(args),
        Command::Segments(args) => segments::run(args),
        Command::Leadsheet(args) => leadsheet::run(args),
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
