//! A tiny stage-2 fixture shared by tests/train_stage2.rs and tests/arrange.rs: shards whose audio
//! codes and arrangements both follow a per-song style, and the three runs stage 2 stands on (a
//! stage-1 run, a MuseCoco pretrained as a language model, stage 2 itself), each a few steps.
#![allow(dead_code)]
use std::path::{Path, PathBuf};

use stylebridge::data::encodings::Octuple;
use stylebridge::data::pairing::{octuple_ids, remi_ids};
use stylebridge::data::shards::{AudioLayout, PairRow};
use stylebridge::data::split::Split;

// Each test binary uses its own subset of the fixture.
#[allow(unused_imports)]
pub use crate::run_support::{ok, run};
pub const CODEBOOK: u16 = 32;
/// 4/4 in the OctupleMIDI time-signature table.
pub const FOUR_FOUR: u32 = 9;

pub fn layout() -> AudioLayout {
    AudioLayout { sample_rate: 32000, frame_rate: 50.0, n_q: 4, pad_code: CODEBOOK, window_frames: 16, margin_frames: 2, encodec: "synthetic".into() }
}

/// One pair: the song's style sets both its codes and its arrangement's rhythm and register.
pub fn pair(song: usize, segment: u32, split: Split) -> PairRow {
    let style = (song % 3) as u32;
    let stored = layout().stored_frames();
    let codes = (0..4 * stored).map(|i| ((style as usize * 9 + i % 5 + segment as usize) % CODEBOOK as usize) as u16).collect();
    let note = |bar: u32, position: u32, pitch: u32| Octuple { bar, position, program: 0, pitch, duration: 11, velocity: 20, time_signature: FOUR_FOUR, tempo: 30 };
    let lead: Vec<Octuple> = (0..4).map(|bar| note(bar, 0, 72 + (song as u32 + bar) % 5)).collect();
    let piano: Vec<Octuple> = (0..4).flat_map(|bar| (0..2 + style).map(move |k| note(bar, 12 * k * (style + 1) % 48, 40 + 7 * style + k))).collect();
    PairRow {
        lead_remi: remi_ids(&lead),
        piano_remi: remi_ids(&piano),
        ..PairRow::synthetic(&format!("song{song:02}"), split, segment, codes, octuple_ids(&lead), octuple_ids(&piano))
    }
}

pub fn write_shards(dir: &Path, train: usize, valid: usize) {
    let rows = |split, n: usize, first: usize| (0..n).map(|i| pair(first + i / 2, (i % 2) as u32, split)).collect();
    crate::shards_support::write(dir, layout(), &[(Split::Train, rows(Split::Train, train, 0)), (Split::Valid, rows(Split::Valid, valid, 50)), (Split::Test, rows(Split::Test, valid, 80))]);
}

const TINY_MUSICGEN: &str = "{hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 2, ffn_dim: 32, codebook_size: 32}";
const TINY_QFORMER: &str = "{hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 32, num_query_tokens: 4, embed_dim: 8, max_position_embeddings: 64}";

fn train_section(epochs: u64) -> String {
    format!(
        "train:\n  epochs: {epochs}\n  batch_size: 4\n  precision: fp32\n  device: cpu\n  threads: 1\n  log_every: 1\n  eval_every: 4\n  checkpoint_every: 2\n  keep_last: 2\n  schedule: {{peak_lr: 0.002, floor_lr: 0.0002, warmup_steps: 2}}\n"
    )
}

fn write_config(dir: &Path, name: &str, model: &str, epochs: u64) -> PathBuf {
    let text = format!(
        "name: {name}\nseed: 5\noutput_dir: {out}\ndata:\n  shards: {shards}\n  max_notes: 16\n  max_tokens: 200\n  shift_seconds: 0.04\n  workers: 1\n  prefetch: 2\nmodel:\n{model}{train}",
        out = dir.display(),
        shards = dir.join("shards").display(),
        train = train_section(epochs)
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

pub fn stage1_config(dir: &Path) -> PathBuf {
    write_config(dir, "stage1", &format!("  kind: stage1\n  musicgen: {{tiny: {TINY_MUSICGEN}}}\n  qformer: {TINY_QFORMER}\n  objectives: C\n"), 1)
}

pub fn musecoco_lm_config(dir: &Path) -> PathBuf {
    write_config(dir, "lm", "  kind: musecoco_lm\n  musecoco: {n_embd: 16, n_head: 2, n_layer: 2, ffn_dim: 32}\n", 1)
}

/// Stage 2 from the stage-1 run and the pretrained MuseCoco (`name` picks the run folder).
pub fn stage2_config(dir: &Path, name: &str, epochs: u64) -> PathBuf {
    let model = format!(
        "  kind: stage2\n  stage1: {}\n  musecoco: {{checkpoint: {}}}\n",
        dir.join("stage1").display(),
        dir.join("lm").join("musecoco").display()
    );
    write_config(dir, name, &model, epochs)
}

/// The "w/o PT" ablation: no stage 1, the Q-Former from scratch.
pub fn stage2_wo_pt_config(dir: &Path, name: &str) -> PathBuf {
    let model = format!(
        "  kind: stage2\n  musicgen: {{tiny: {TINY_MUSICGEN}}}\n  qformer: {TINY_QFORMER}\n  musecoco: {{checkpoint: {}}}\n",
        dir.join("lm").join("musecoco").display()
    );
    write_config(dir, name, &model, 1)
}


/// Shards, a stage-1 run and a MuseCoco LM under `dir` (train 16 pairs, valid 4).
pub fn backbones(dir: &Path) {
    write_shards(&dir.join("shards"), 16, 4);
    ok(&["train", stage1_config(dir).to_str().unwrap()]);
    ok(&["train", musecoco_lm_config(dir).to_str().unwrap()]);
}
