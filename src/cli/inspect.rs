//! `stylebridge inspect shards DIR`: a prepared folder's manifest, counts per split, and one row
//! decoded to text.
use anyhow::{bail, Context, Result};
use std::fmt::Write;
use std::path::{Path, PathBuf};

use crate::data::encodings::{octuple, remi};
use crate::data::pairing::time_signature;
use crate::data::shards::{read_shard, Manifest, PairRow};
use crate::data::split::Split;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Prepared Parquet shards (the output of `stylebridge prepare`).
    Shards {
        dir: PathBuf,
        /// Split to sample the row from (train, valid or test).
        #[arg(long, default_value = "train")]
        split: String,
        /// Index of the row within the split.
        #[arg(long, default_value_t = 0)]
        row: usize,
        /// Notes of each part to print.
        #[arg(long, default_value_t = 8)]
        notes: usize,
    },
}

pub fn run(args: Args) -> Result<()> {
    match args.what {
        What::Shards { dir, split, row, notes } => {
            let split = Split::parse(&split).with_context(|| format!("unknown split '{split}' (expected train, valid or test)"))?;
            print!("{}", shards(&dir, split, row, notes)?);
            Ok(())
        }
    }
}

/// The text `inspect shards` prints.
pub fn shards(dir: &Path, split: Split, index: usize, notes: usize) -> Result<String> {
    let m = Manifest::read(dir)?;
    let a = &m.audio;
    let mut out = String::new();
    writeln!(out, "manifest: {} (schema v{})", dir.join(crate::data::shards::MANIFEST_NAME).display(), m.schema_version)?;
    writeln!(
        out,
        "audio: {} Hz, {} frames/s, {} codebooks, pad code {}, window {} frames ({:.2} s) + {} margin frames each side; EnCodec {}",
        a.sample_rate,
        a.frame_rate,
        a.n_q,
        a.pad_code,
        a.window_frames,
        a.window_frames as f64 / a.frame_rate,
        a.margin_frames,
        a.encodec
    )?;
    writeln!(out, "{:<6} {:>6} {:>8} {:>7}", "split", "songs", "pairs", "shards")?;
    for (split, count) in &m.counts {
        writeln!(out, "{:<6} {:>6} {:>8} {:>7}", split.name(), count.songs, count.rows, m.shards_of(*split).count())?;
    }
    writeln!(out, "skipped songs: {}", m.skipped.len())?;
    for s in &m.skipped {
        writeln!(out, "  {}: {}", s.song, s.reason)?;
    }
    writeln!(out, "warnings: {}", m.warnings.len())?;
    for w in &m.warnings {
        writeln!(out, "  {}: {}", w.song, w.warning)?;
    }
    writeln!(out, "config:\n{}", indent(&serde_yaml_ng::to_string(&m.config)?))?;

    let mut seen = 0;
    let mut found: Option<PairRow> = None;
    for info in m.shards_of(split) {
        if index < seen + info.rows {
            found = read_shard(dir, info)?.into_iter().nth(index - seen);
            break;
        }
        seen += info.rows;
    }
    let Some(row) = found else { bail!("split {split} has {seen} rows; there is no row {index}") };
    sample(&mut out, &row, &m, split, index, notes)?;
    Ok(out)
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

fn sample(out: &mut String, row: &PairRow, m: &Manifest, split: Split, index: usize, notes: usize) -> Result<()> {
    let a = &m.audio;
    let stored = a.stored_frames();
    let window_start = row.codes_start_frame + a.margin_frames as i64;
    writeln!(out, "row {index} of {split}: song {} segment {}", row.song_id, row.segment_index)?;
    writeln!(
        out,
        "  bars {}..{}, {:.2}-{:.2} s, meter {}/{}, tempo {:.1} bpm",
        row.first_bar, row.end_bar, row.start_seconds, row.end_seconds, row.meter_numerator, row.meter_denominator, row.tempo_bpm
    )?;
    let pads = row.codes[..stored].iter().filter(|&&c| c == a.pad_code).count();
    writeln!(
        out,
        "  audio window: song frames {}..{} ({:.2}-{:.2} s), stored {}..{} with the margins, {pads} pad frames",
        window_start,
        window_start + a.window_frames as i64,
        window_start as f64 / a.frame_rate,
        (window_start + a.window_frames as i64) as f64 / a.frame_rate,
        row.codes_start_frame,
        row.codes_start_frame + stored as i64
    )?;
    for q in 0..a.n_q {
        let first: Vec<String> = row.codes[q * stored + a.margin_frames..][..8.min(a.window_frames)].iter().map(|c| c.to_string()).collect();
        writeln!(out, "  codebook {q}: {} ...", first.join(" "))?;
    }
    for (part, ids) in [("lead sheet", &row.lead_octuple), ("piano", &row.piano_octuple)] {
        let ids: Vec<u32> = ids.iter().map(|&t| u32::from(t)).collect();
        let decoded = octuple::decode(&ids).with_context(|| format!("the {part} tokens do not decode"))?;
        for warning in &decoded.warnings {
            writeln!(out, "  warning: the {part} tokens: {warning}")?;
        }
        let decoded = decoded.value;
        writeln!(out, "  {part} (OctupleMIDI, {} notes): bar pos program pitch dur vel ts tempo", decoded.len())?;
        for n in decoded.iter().take(notes) {
            let (num, den) = time_signature(n.time_signature).unwrap_or((0, 0));
            writeln!(
                out,
                "    {:>3} {:>3} {:>3} {:>3} {:>3} {:>3} {num}/{den} {:>3}   {}",
                n.bar,
                n.position,
                n.program,
                n.pitch,
                n.duration,
                n.velocity,
                n.tempo,
                octuple::note_ids(n).map(octuple::token_name).join(" ")
            )?;
        }
    }
    for (part, ids) in [("lead sheet", &row.lead_remi), ("piano", &row.piano_remi)] {
        let names: Vec<String> = ids.iter().take(notes.saturating_mul(6)).map(|&t| remi::token_name(u32::from(t))).collect();
        let more = if ids.len() > names.len() { " ..." } else { "" };
        writeln!(out, "  {part} (REMI, {} tokens): {}{more}", ids.len(), names.join(" "))?;
    }
    writeln!(out, "  sources: audio {}, MIDI {}, lead sheet {}", row.audio_path, row.midi_path, row.lead_sheet_path)?;
    Ok(())
}
