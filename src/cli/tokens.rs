//! `stylebridge tokens`: print a MIDI file as OctupleMIDI or MuseCoco REMI token ids, or
//! decode token ids back to MIDI.
//!
//! ```text
//! stylebridge tokens octuple song.mid --json          # [0,0,...] as BOSSA's octMIDI.py
//! stylebridge tokens remi song.mid --transpose -2     # one bar per line, token names
//! stylebridge tokens decode --encoding remi ids.json -o song.mid
//! ```

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Subcommand, ValueEnum};

use crate::data::encodings::{self, octuple, octuples_to_score, remi, score_to_octuples};
use crate::data::midi::{self, Score, TempoOrder};
use crate::data::warned::Warned;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Tokens,
}

#[derive(Subcommand)]
enum Tokens {
    /// OctupleMIDI ids (MusicBERT dictionary, 1237 entries + <DEC>): <s> x8, 8 per note, </s> x8.
    Octuple(EncodeArgs),
    /// MuseCoco REMI ids (1253-token vocabulary), as BOSSA feeds them to MuseCoco.
    Remi(EncodeArgs),
    /// Write token ids (a JSON array, as printed with --json) back to a MIDI file.
    Decode(DecodeArgs),
}

#[derive(clap::Args)]
struct EncodeArgs {
    /// MIDI file to encode.
    file: PathBuf,
    /// Print a JSON array of ids instead of token names.
    #[arg(long)]
    json: bool,
    /// Shift every non-drum pitch by N semitones, -127..=127 (notes leaving 0..=127 are dropped).
    #[arg(long, value_name = "N", default_value_t = 0, allow_hyphen_values = true, value_parser = clap::value_parser!(i32).range(-127..=127))]
    transpose: i32,
    /// Keep tempo changes in track order as miditoolkit 1.0.1 does, even when unsorted
    /// (bit-exact with the reference encoders; by default they are sorted by tick).
    #[arg(long)]
    reference_tempo_order: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Encoding {
    Octuple,
    Remi,
}

#[derive(clap::Args)]
struct DecodeArgs {
    /// Encoding of the ids.
    #[arg(long, value_enum)]
    encoding: Encoding,
    /// JSON file holding an array of token ids.
    input: PathBuf,
    /// MIDI file to write.
    #[arg(short, long)]
    output: PathBuf,
    /// Shift every non-drum pitch by N semitones (-127..=127) before writing.
    #[arg(long, value_name = "N", default_value_t = 0, allow_hyphen_values = true, value_parser = clap::value_parser!(i32).range(-127..=127))]
    transpose: i32,
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        Tokens::Octuple(a) => print_tokens(&a, Encoding::Octuple),
        Tokens::Remi(a) => print_tokens(&a, Encoding::Remi),
        Tokens::Decode(a) => decode(&a),
    }
}

fn print_tokens(args: &EncodeArgs, encoding: Encoding) -> Result<()> {
    let file = args.file.display();
    let order = if args.reference_tempo_order { TempoOrder::File } else { TempoOrder::Sorted };
    let score = midi::read_with(&args.file, order)?;
    if score.note_count() == 0 {
        bail!("{file}: the MIDI file contains no notes (nothing to encode)");
    }
    let score = transposed(score, args.transpose, &args.file);
    let notes = score_to_octuples(&score).map_err(|e| anyhow!("{file}: {e}"))?;
    let ids = match encoding {
        Encoding::Octuple => octuple::tokens(&notes),
        Encoding::Remi => remi::tokens(&notes, false),
    };
    let text = if args.json {
        serde_json::to_string(&ids)? + "\n"
    } else {
        readable(&ids, encoding)
    };
    super::emit(&text)
}

/// Token names, one note per line (OctupleMIDI) or one bar per line (REMI).
fn readable(ids: &[u32], encoding: Encoding) -> String {
    let mut text = String::new();
    match encoding {
        Encoding::Octuple => {
            for note in ids.chunks(octuple::TOKENS_PER_NOTE) {
                let names: Vec<String> = note.iter().map(|&id| octuple::token_name(id)).collect();
                text += &(names.join(" ") + "\n");
            }
        }
        Encoding::Remi => {
            for (i, &id) in ids.iter().enumerate() {
                text += &remi::token_name(id);
                text.push(if id == remi::BAR_END || i + 1 == ids.len() { '\n' } else { ' ' });
            }
        }
    }
    text
}

fn decode(args: &DecodeArgs) -> Result<()> {
    let file = args.input.display();
    let text = std::fs::read_to_string(&args.input).with_context(|| format!("{file}: cannot read the token file"))?;
    let ids: Vec<u32> = serde_json::from_str(&text)
        .with_context(|| format!("{file}: expected a JSON array of non-negative token ids"))?;
    let decoded = match args.encoding {
        Encoding::Octuple => octuple::decode(&ids),
        Encoding::Remi => remi::decode(&ids).map(Warned::clean),
    }
    .map_err(|e| anyhow!("{file}: {e}"))?;
    let playable = encodings::playable(decoded.value);
    for warning in decoded.warnings.iter().chain(&playable.warnings) {
        eprintln!("warning: {file}: {warning}");
    }
    let notes = playable.value;
    if notes.is_empty() {
        bail!("{file}: the tokens hold no notes (nothing to write)");
    }
    let score = transposed(octuples_to_score(&notes), args.transpose, &args.input);
    midi::write(&score, &args.output)?;
    eprintln!("wrote {} notes to {}", score.note_count(), args.output.display());
    Ok(())
}

/// Transpose, telling the user how many notes fell out of the MIDI range.
fn transposed(score: Score, semitones: i32, file: &Path) -> Score {
    if semitones == 0 {
        return score;
    }
    let out = encodings::transpose(&score, semitones);
    let dropped = score.note_count() - out.note_count();
    if dropped > 0 {
        eprintln!("warning: {}: transposing by {semitones} dropped {dropped} notes outside pitch 0..=127", file.display());
    }
    out
}
