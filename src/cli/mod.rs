//! The `stylebridge` command line: one subcommand per pipeline step.
use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod config;

#[derive(Parser)]
#[command(name = "stylebridge", version, about = "Learn music style from audio and arrange piano in it (BOSSA on libtorch)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print an experiment's resolved configuration (YAML + `--set` overrides).
    Config(config::Args),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Config(args) => config::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
