//! Encode every POP909 song to OctupleMIDI and REMI (read + parse + both encodings, one
//! thread) and print songs/s and notes/s; with a BOSSA checkout, time the reference Python
//! encoders on the same files and print the speed ratio.
//!
//! ```text
//! make cargo ARGS="bench --bench tokens"
//! STYLEBRIDGE_BOSSA=~/bossa STYLEBRIDGE_REFERENCE_PYTHON=~/venv/bin/python make cargo ARGS="bench --bench tokens"
//! ```
//! POP909 is read from `STYLEBRIDGE_POP909` (default `../shared/data/pop909/POP909`). The
//! reference run needs a Python with miditoolkit 1.0.1, numpy and transformers 4.48.0
//! (see python_interop/bench_reference_tokens.py).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use stylebridge::data::encodings::{octuple, remi, score_to_octuples};
use stylebridge::data::midi;

struct Run {
    songs: usize,
    notes: usize,
    seconds: f64,
}

impl Run {
    fn report(&self, what: &str) {
        println!(
            "{what:<44} {:>4} songs {:>8} notes {:>8.3} s  {:>9.1} songs/s {:>11.0} notes/s",
            self.songs,
            self.notes,
            self.seconds,
            self.songs as f64 / self.seconds,
            self.notes as f64 / self.seconds
        );
    }
}

fn songs(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|dir| dir.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.is_dir());
    files.sort();
    files
        .into_iter()
        .filter_map(|dir| {
            let stem = dir.file_name()?.to_string_lossy().into_owned();
            let file = dir.join(format!("{stem}.mid"));
            file.is_file().then_some(file)
        })
        .collect()
}

/// Best of `repeats` runs of `work` over all files; `work` returns the notes it saw.
fn time(files: &[PathBuf], repeats: usize, work: impl Fn(&Path) -> usize) -> Run {
    let mut best = Run { songs: files.len(), notes: 0, seconds: f64::INFINITY };
    for _ in 0..repeats {
        let start = Instant::now();
        let notes: usize = files.iter().map(|f| work(f)).sum();
        let seconds = start.elapsed().as_secs_f64();
        if seconds < best.seconds {
            best = Run { songs: files.len(), notes, seconds };
        }
    }
    best
}

fn reference(files_root: &Path) -> Option<Run> {
    let Ok(bossa) = std::env::var("STYLEBRIDGE_BOSSA") else {
        println!("reference: set STYLEBRIDGE_BOSSA (and STYLEBRIDGE_REFERENCE_PYTHON) to time BOSSA's Python encoders");
        return None;
    };
    let python = std::env::var("STYLEBRIDGE_REFERENCE_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python_interop/bench_reference_tokens.py");
    let output = Command::new(&python)
        .arg(&script)
        .args(["--bossa", &bossa, "--json"])
        .arg(files_root)
        .output();
    let output = match output {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            println!("reference: {} failed: {}", script.display(), String::from_utf8_lossy(&o.stderr).trim());
            return None;
        }
        Err(e) => {
            println!("reference: cannot run {python}: {e}");
            return None;
        }
    };
    let line = String::from_utf8_lossy(&output.stdout);
    let value: serde_json::Value = match serde_json::from_str(line.trim()) {
        Ok(v) => v,
        Err(e) => {
            println!("reference: unexpected output ({e}): {line}");
            return None;
        }
    };
    Some(Run {
        songs: value["songs"].as_u64().unwrap_or(0) as usize,
        notes: value["notes"].as_u64().unwrap_or(0) as usize,
        seconds: value["seconds"].as_f64().unwrap_or(f64::NAN),
    })
}

fn main() {
    let root = std::env::var("STYLEBRIDGE_POP909")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/pop909/POP909"));
    let files = songs(&root);
    if files.is_empty() {
        println!("tokens bench: no POP909 songs under {} (set STYLEBRIDGE_POP909); nothing to time", root.display());
        return;
    }
    let read = |f: &Path| midi::read(f).unwrap_or_else(|e| panic!("{e:#}"));

    time(&files, 1, |f| read(f).note_count()); // warm the page cache
    time(&files, 3, |f| read(f).note_count()).report("read + parse");
    time(&files, 3, |f| {
        let score = read(f);
        std::hint::black_box(octuple::encode(&score).expect("encodable"));
        score.note_count()
    })
    .report("read + parse + OctupleMIDI");
    time(&files, 3, |f| {
        let score = read(f);
        std::hint::black_box(remi::encode(&score).expect("encodable"));
        score.note_count()
    })
    .report("read + parse + REMI");
    let ours = time(&files, 3, |f| {
        let score = read(f);
        let notes = score_to_octuples(&score).expect("encodable");
        std::hint::black_box((octuple::tokens(&notes), remi::tokens(&notes, false)));
        score.note_count()
    });
    ours.report("ours: read + parse + both encodings");

    if let Some(reference) = reference(&root) {
        reference.report("reference (Python): the same work");
        if reference.notes != ours.notes {
            println!("note counts differ: reference {} vs ours {}", reference.notes, ours.notes);
        }
        println!("speed-up: {:.1}x (songs/s ratio, single thread each)", reference.seconds / ours.seconds);
    }
}
