//! `stylebridge leadsheet`: extract a lead sheet (melody + chords as notes) and write it as MIDI.
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::data::leadsheet::{read_chord_file, LeadSheet, Pop909Song};
use crate::data::midi;
use crate::data::segments::{BarGrid, TempoMap};

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["song_dir", "midi"]))]
pub struct Args {
    /// POP909 song folder (NNN/ with NNN.mid, beat_midi.txt, chord_midi.txt).
    song_dir: Option<PathBuf>,
    /// Any MIDI file with a melody track (use with --chords).
    #[arg(long, requires = "chords")]
    midi: Option<PathBuf>,
    /// Name of the melody track in --midi.
    #[arg(long, default_value = "MELODY", requires = "midi")]
    melody_track: String,
    /// Chord annotation for --midi: lines `start end label`, seconds, Harte labels (POP909 format).
    #[arg(long, requires = "midi")]
    chords: Option<PathBuf>,
    /// Where to write the lead sheet MIDI (tracks MELODY and CHORDS).
    #[arg(short, long)]
    output: PathBuf,
    /// POP909 only: also write the whole song re-timed onto its annotated beats (the timeline the
    /// lead sheet is on; `stylebridge segments` reads its bars).
    #[arg(long, requires = "song_dir")]
    score_out: Option<PathBuf>,
    /// Print a JSON summary.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Summary {
    output: String,
    score_out: Option<String>,
    melody_notes: usize,
    chords: usize,
    chord_notes: usize,
    bars: usize,
    seconds: f64,
    time_signatures: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    let sheet = match (&args.song_dir, &args.midi, &args.chords) {
        (Some(dir), _, _) => {
            let song = Pop909Song::load(dir).with_context(|| format!("cannot load POP909 song {}", dir.display()))?;
            if let Some(path) = &args.score_out {
                midi::write(&song.score, path)?;
            }
            song.lead_sheet
        }
        (None, Some(path), Some(chords)) => {
            let score = midi::read(path)?;
            let chords = read_chord_file(chords)?;
            LeadSheet::from_score(&score, &args.melody_track, &chords).with_context(|| format!("in {}", path.display()))?
        }
        _ => bail!("give a POP909 song folder, or --midi FILE.mid --chords CHORDS.txt"),
    };
    let notes = sheet.to_score();
    midi::write(&notes, &args.output)?;

    let grid = BarGrid::from_score(&notes).with_context(|| format!("cannot lay the lead sheet {} on a bar grid", args.output.display()))?;
    let end_tick = notes.instruments.iter().flat_map(|i| &i.notes).map(|n| n.end).max().unwrap_or(0);
    let summary = Summary {
        output: args.output.display().to_string(),
        score_out: args.score_out.as_ref().map(|p| p.display().to_string()),
        melody_notes: sheet.melody.len(),
        chords: sheet.chords.len(),
        chord_notes: sheet.chord_notes().len(),
        bars: grid.bars.len(),
        seconds: TempoMap::new(&notes).seconds_at(f64::from(end_tick)),
        time_signatures: sheet.time_signatures.iter().map(|t| format!("{}/{}@{}", t.numerator, t.denominator, t.tick)).collect(),
    };
    let text = if args.json {
        serde_json::to_string_pretty(&summary)? + "\n"
    } else {
        let mut text = format!(
            "lead sheet: {} melody notes, {} chords ({} chord notes), {} bars, {:.2} s -> {}\n",
            summary.melody_notes, summary.chords, summary.chord_notes, summary.bars, summary.seconds, summary.output
        );
        if let Some(path) = &summary.score_out {
            text += &format!("re-timed song -> {path}\n");
        }
        text
    };
    super::emit(&text)
}
