//! The Q-Former against BOSSA's reference (model_Qformer.py + Blip2Qformer heads) on a tiny
//! config: the query pass (cross-attention, padded audio), the unimodal notes pass (lead-sheet and
//! padding mask), the matching pass (queries + notes, bidirectional) and the generation pass
//! (`<DEC>` notes, causal, reusing the query pass's keys/values). Golden data in
//! tests/data/golden/qformer (see the README there).
use std::collections::HashMap;
use std::path::PathBuf;
use stylebridge::models::qformer::{QFormer, QFormerConfig};
use stylebridge::models::weights::Checkpoint;
use tch::{nn::VarStore, Device, Kind, Tensor};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden/qformer")
}

fn io() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(golden_dir().join("io.safetensors")).unwrap().into_iter().collect()
}

fn model() -> (VarStore, QFormer) {
    let cfg = QFormerConfig::from_json_file(&golden_dir().join("config.json")).unwrap();
    let ckpt = Checkpoint::open(&golden_dir().join("model.safetensors")).unwrap();
    let mut vs = VarStore::new(Device::Cpu);
    let model = QFormer::new(vs.root(), &cfg);
    QFormer::load(&mut vs, &ckpt, "").unwrap();
    (vs, model)
}

fn assert_close(name: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.size(), want.size(), "{name}: shape");
    let diff = (got.to_kind(Kind::Float) - want.to_kind(Kind::Float)).abs().max().double_value(&[]);
    assert!(diff < tol, "{name}: max |diff| {diff}");
}

#[test]
fn query_pass_matches_reference() {
    let io = io();
    let (_vs, model) = model();
    let audio = model.audio_embeds(&io["musicgen_hidden"]);
    assert_close("audio_embeds", &audio, &io["audio_embeds"], 1e-5);
    let out = model.query_output(&audio, &io["audio_mask"], false).unwrap();
    assert_close("query_hidden", &out.hidden, &io["query_hidden"], 1e-4);
    assert_close("audio_feats", &model.audio_features(&out.hidden).unwrap(), &io["audio_feats"], 1e-5);
}

#[test]
fn unimodal_notes_pass_matches_reference() {
    let io = io();
    let (_vs, model) = model();
    let keep = &io["leadsheet_mask"] * &io["pad_mask"];
    let out = model.notes_output(&io["notes"], &keep, false).unwrap();
    assert_close("notes_hidden", &out.hidden, &io["notes_hidden"], 1e-4);
    let feats = model.symbolic_features(&out.hidden, &io["sos"]).unwrap();
    assert_close("symbo_feats", &feats, &io["symbo_feats"], 1e-5);
    assert!((model.temp().unwrap().double_value(&[]) - 0.07).abs() < 1e-7);
}

#[test]
fn matching_pass_matches_reference() {
    let io = io();
    let (_vs, model) = model();
    let audio = model.audio_embeds(&io["musicgen_hidden"]);
    let keep = &io["leadsheet_mask"] * &io["pad_mask"];
    let logits = model.matching_logits(&io["notes"], &keep, &audio, &io["audio_mask"], false).unwrap();
    assert_close("matching_logits", &logits, &io["matching_logits"], 1e-4);
}

#[test]
fn generation_pass_matches_reference() {
    let io = io();
    let (_vs, model) = model();
    let audio = model.audio_embeds(&io["musicgen_hidden"]);
    let queries = model.query_output(&audio, &io["audio_mask"], false).unwrap();
    let logits = model.lm_logits(&io["dec_notes"], &io["pad_mask"], &queries.cache, false).unwrap();
    assert_close("lm_logits", &logits, &io["lm_logits"], 1e-4);
}

#[test]
fn stage_2_layout_loads_the_query_path_only() {
    // BOSSA's stage 2 keeps the query path under `blip2qformer.`: rename the golden tensors so,
    // drop what stage 2 deletes, and the query pass must still match.
    let io = io();
    let ckpt = Checkpoint::open(&golden_dir().join("model.safetensors")).unwrap();
    let dropped = [
        "word_embeddings",
        "position_embeddings.",
        "downsampling",
        ".intermediate.",
        ".output.dense",
        ".output.LayerNorm",
        "cls.",
        "upsampling",
        "proj",
        "binary_head",
        "temp",
    ];
    let kept = ckpt
        .names()
        .filter(|n| !dropped.iter().any(|d| n.contains(d)) || n.contains("attention.output"))
        .map(|n| (format!("blip2qformer.{n}"), ckpt.get(n).unwrap().shallow_clone()))
        .collect::<Vec<_>>();
    let stage2 = Checkpoint::from_tensors("stage2", kept);
    let mut cfg = QFormerConfig::from_json_file(&golden_dir().join("config.json")).unwrap();
    cfg.symbolic = false;
    let mut vs = VarStore::new(Device::Cpu);
    let model = QFormer::new(vs.root(), &cfg);
    QFormer::load(&mut vs, &stage2, "blip2qformer.").unwrap();
    let out = model.query_output(&model.audio_embeds(&io["musicgen_hidden"]), &io["audio_mask"], false).unwrap();
    assert_close("query_hidden", &out.hidden, &io["query_hidden"], 1e-4);
}
