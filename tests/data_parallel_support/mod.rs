//! Shared by tests/distributed.rs and benches/distributed.rs: synthetic stage-1 shards (rows
//! distinguishable by their codes and notes) and a tiny training config.
#![allow(dead_code)]
use std::collections::BTreeMap;
use std::path::Path;
use stylebridge::data::encodings::Octuple;
use stylebridge::data::pairing::{octuple_ids, remi_ids};
use stylebridge::data::shards::{self, AudioLayout, Manifest, PairRow, SplitCount};
use stylebridge::data::split::Split;

pub fn layout() -> AudioLayout {
    AudioLayout { sample_rate: 32000, frame_rate: 50.0, n_q: 4, pad_code: 2048, window_frames: 40, margin_frames: 10, encodec: "synthetic".into() }
}

/// Row `i`: codes and notes that differ per row, so every pair is distinguishable.
pub fn row(i: usize) -> PairRow {
    let stored = layout().stored_frames();
    let codes = (0..4).flat_map(|q| (0..stored).map(move |j| ((i * 61 + q * 7 + j * 13) % 2048) as u16)).collect();
    let note = |bar: u32, pitch: u32| Octuple { bar, position: 0, program: 0, pitch, duration: 12, velocity: 20, time_signature: 9, tempo: 30 };
    let lead = [note(0, 72 + (i % 5) as u32), note(1, 74)];
    let piano: Vec<Octuple> = (0..(i % 5 + 2) as u32).map(|k| note(k % 4, 40 + (i as u32 + k * 3) % 40)).collect();
    PairRow {
        lead_remi: remi_ids(&lead),
        piano_remi: remi_ids(&piano),
        ..PairRow::synthetic(&format!("song{:03}", i / 4), Split::Train, (i % 4) as u32, codes, octuple_ids(&lead), octuple_ids(&piano))
    }
}

/// `count` rows of [`row`] as train-split shards, with their manifest.
pub fn write_shards(dir: &Path, count: usize) {
    let rows: Vec<PairRow> = (0..count).map(row).collect();
    let infos = shards::write_split(dir, Split::Train, &rows, 8 * rows[0].approx_bytes()).unwrap();
    let songs: Vec<String> = rows.iter().map(|r| r.song_id.clone()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    Manifest {
        schema_version: shards::SCHEMA_VERSION,
        audio: layout(),
        counts: BTreeMap::from([(Split::Train, SplitCount { songs: songs.len(), rows: count })]),
        songs: BTreeMap::from([(Split::Train, songs)]),
        shards: infos,
        skipped: vec![],
        warnings: vec![],
        config: serde_json::json!({}),
    }
    .write(dir)
    .unwrap();
}

/// A tiny stage-1 run: contrastive only, no dropout, fp32, 6 steps of global batch 8; Adam eps
/// 1e-3 (see tests/distributed.rs for why).
pub const CONFIG: &str = "name: dp
seed: 3
data: {workers: 1, prefetch: 2}
model:
  kind: stage1
  musicgen: {tiny: {hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, ffn_dim: 64, codebook_size: 2048, num_codebooks: 4}}
  qformer: {hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64, num_query_tokens: 4,
        embed_dim: 16, hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}
  objectives: C
train: {batch_size: 8, max_steps: 6, precision: fp32, device: cpu, threads: 1, log_every: 1, eval_every: 0,
    checkpoint_every: 3, timeout_s: 60, schedule: {peak_lr: 0.001, warmup_steps: 2},
    optimizer: {eps: 0.001}}
";
