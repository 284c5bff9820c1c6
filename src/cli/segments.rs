//! `stylebridge segments FILE.mid`: the bar grid and the 4-bar / 2-bar-hop segments of a MIDI file
//! (or of a POP909 song folder, re-timed onto its annotated beats).
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::data::leadsheet::Pop909Song;
use crate::data::midi;
use crate::data::segments::{segments, Bar, Segment, SegmentSpec};

#[derive(clap::Args)]
pub struct Args {
    /// MIDI file to cut (bar lines from its time signatures, seconds from its tempo map), or a
    /// POP909 song folder (bar lines from its beat annotation, see `stylebridge leadsheet`).
    file: PathBuf,
    /// Bars per segment.
    #[arg(long, default_value_t = 4)]
    bars: usize,
    /// Bars between segment starts.
    #[arg(long, default_value_t = 2)]
    hop: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report<'a> {
    file: String,
    ticks_per_beat: u32,
    bars_per_segment: usize,
    hop_bars: usize,
    bars: &'a [Bar],
    segments: &'a [Segment],
}

pub fn run(args: Args) -> Result<()> {
    let score = if args.file.is_dir() {
        Pop909Song::load(&args.file).with_context(|| format!("cannot load POP909 song {}", args.file.display()))?.score
    } else {
        midi::read(&args.file)?
    };
    let spec = SegmentSpec { bars: args.bars, hop: args.hop };
    let (grid, segments) = segments(&score, spec).with_context(|| format!("cannot cut {} into segments", args.file.display()))?;
    let text = if args.json {
        let report = Report {
            file: args.file.display().to_string(),
            ticks_per_beat: score.ticks_per_beat,
            bars_per_segment: spec.bars,
            hop_bars: spec.hop,
            bars: &grid.bars,
            segments: &segments,
        };
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        let mut text = format!(
            "{}: {} bars, {} segments of {} bars (hop {})\n",
            args.file.display(),
            grid.bars.len(),
            segments.len(),
            spec.bars,
            spec.hop
        );
        text += &format!("{:>4}  {:>9}  {:>15}  {:>17}  {:>10}  {:>5}\n", "#", "bars", "ticks", "seconds", "meter", "notes");
        for s in &segments {
            let first = &grid.bars[s.first_bar];
            text += &format!(
                "{:>4}  {:>9}  {:>15}  {:>17}  {:>10}  {:>5}\n",
                s.index,
                format!("{}-{}", s.first_bar, s.end_bar - 1),
                format!("{}-{}", s.start_tick, s.end_tick),
                format!("{:.3}-{:.3}", s.start_seconds, s.end_seconds),
                format!("{}/{}", first.numerator, first.denominator),
                s.notes
            );
        }
        text
    };
    super::emit(&text)
}
