//! Loader throughput: pairs/s building stage-1 and stage-2 batches of 128 from in-memory rows of
//! the real layout (4 codebooks x 608 stored frames, ~70 notes per part), with 1 worker thread
//! (= per core) and with 2; and what a 4-GPU stage-1 step needs.
//!
//! ```text
//! make cargo ARGS="bench --bench loader"
//! ```
//! Need: stage 1 trains on 128 pairs per step (4 GPUs x 32). The loader must deliver 128 pairs
//! faster than a step takes; the fastest plausible step (a MusicGen-large 25-layer forward on
//! 32 x 512 steps + Q-Former per GPU) is taken as 0.25 s, so 512 pairs/s per job (128 per rank).
use std::sync::Arc;
use std::time::Instant;

use stylebridge::data::encodings::Octuple;
use stylebridge::data::loader::{Loader, LoaderOptions, PairSet, Stage};
use stylebridge::data::pairing::{octuple_ids, remi_ids, KeyedRng};
use stylebridge::data::shards::{AudioLayout, PairRow};
use stylebridge::data::split::Split;

const BATCH: usize = 128;
const FASTEST_STEP_SECONDS: f64 = 0.25;
const GPUS: usize = 4;

fn layout() -> AudioLayout {
    AudioLayout { sample_rate: 32000, frame_rate: 50.0, n_q: 4, pad_code: 2048, window_frames: 508, margin_frames: 50, encodec: "bench".into() }
}

fn notes(rng: &mut KeyedRng, count: usize, program: u32) -> Vec<Octuple> {
    let mut notes: Vec<Octuple> = (0..count)
        .map(|_| Octuple {
            bar: rng.int_in(0, 3) as u32,
            position: rng.int_in(0, 47) as u32,
            program,
            pitch: rng.int_in(36, 96) as u32,
            duration: rng.int_in(1, 30) as u32,
            velocity: rng.int_in(10, 30) as u32,
            time_signature: 9,
            tempo: 30,
        })
        .collect();
    notes.sort();
    notes
}

fn rows(n: usize) -> Vec<PairRow> {
    let mut rng = KeyedRng::new(&[1]);
    let stored = layout().n_q * layout().stored_frames();
    (0..n)
        .map(|i| {
            let lead = notes(&mut rng, 40, 0);
            let piano = notes(&mut rng, 100, 0);
            let codes = (0..stored).map(|_| rng.int_in(0, 2047) as u16).collect();
            PairRow {
                lead_remi: remi_ids(&lead),
                piano_remi: remi_ids(&piano),
                ..PairRow::synthetic(&format!("song{}", i / 40), Split::Train, (i % 40) as u32, codes, octuple_ids(&lead), octuple_ids(&piano))
            }
        })
        .collect()
}

/// Shards on disk -> rows in memory (sha256 check + Parquet decode), with `threads` readers.
fn open_rate(rows: &[PairRow], threads: usize) -> f64 {
    use std::collections::BTreeMap;
    use stylebridge::data::shards::{self, Manifest, SplitCount};
    let dir = tempfile::tempdir().unwrap();
    let infos = shards::write_split(dir.path(), Split::Train, rows, 8 << 20).unwrap();
    let manifest = Manifest {
        schema_version: shards::SCHEMA_VERSION,
        audio: layout(),
        counts: BTreeMap::from([(Split::Train, SplitCount { songs: 1, rows: rows.len() })]),
        songs: BTreeMap::new(),
        shards: infos,
        skipped: vec![],
        warnings: vec![],
        config: serde_json::json!({}),
    };
    manifest.write(dir.path()).unwrap();
    let start = Instant::now();
    let set = PairSet::open(dir.path(), Split::Train, threads).unwrap();
    assert_eq!(set.rows.len(), rows.len());
    rows.len() as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let set = Arc::new(PairSet { split: Split::Train, layout: layout(), rows: rows(4096) });
    for threads in [1, 2] {
        println!("reading shards ({threads} thread(s)): {:.0} pairs/s", open_rate(&set.rows, threads));
    }
    let need = (BATCH as f64 / FASTEST_STEP_SECONDS) as usize;
    println!(
        "need: {BATCH} pairs per stage-1 step over {GPUS} GPUs; at {FASTEST_STEP_SECONDS} s per step that is {need} pairs/s per job, {} per rank",
        need / GPUS
    );
    for stage in [Stage::Stage1, Stage::Stage2] {
        for workers in [1, 2] {
            let options = LoaderOptions { workers, prefetch: 4, ..LoaderOptions::training(stage, BATCH, 0) };
            let loader = Loader::new(Arc::clone(&set), options).unwrap();
            let _warm: usize = loader.batches(0, 0).take(2).map(|b| b.len()).sum();
            let start = Instant::now();
            let mut pairs = 0;
            for epoch in 1..=2 {
                pairs += loader.batches(epoch, 0).map(|b| b.len()).sum::<usize>();
            }
            let seconds = start.elapsed().as_secs_f64();
            let rate = pairs as f64 / seconds;
            println!(
                "{stage:?} batch {BATCH}, {workers} worker(s): {pairs} pairs in {seconds:.2} s = {rate:.0} pairs/s ({:.0} per worker), {:.1}x the need",
                rate / workers as f64,
                rate / need as f64
            );
        }
    }
}
