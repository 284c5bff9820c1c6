//! MusicGen decoder hidden states match HF `MusicgenForConditionalGeneration` for checkpoints
//! written by `save_pretrained` (tiny random configs, fp32/fp16/bf16, single and sharded files):
//! the delay pattern, every layer's output (within 1e-4), and BOSSA's features at each depth.
mod parity_support;

use parity_support::{max_abs_diff, reference, run_script};
use stylebridge::models::musicgen::{apply_delay_pattern, MusicgenDecoder};
use tch::{Device, Kind};

const TOLERANCE: f64 = 1e-4;

fn check_decoder(variant: &str, extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--variant", variant];
    args.extend_from_slice(extra);
    run_script("make_musicgen.py", dir.path(), &args);
    let refs = reference(dir.path());
    let model_dir = dir.path().join("model");

    let full = MusicgenDecoder::load(&model_dir, None, Device::Cpu, Kind::Float).unwrap();
    let layers = full.config().num_hidden_layers;
    let input_ids = apply_delay_pattern(&refs["codes"], full.config().pad_token()).unwrap();
    assert!(input_ids.equal(&refs["input_ids"]), "delay pattern differs from the audiocraft layout");

    // The unconditional cross-attention adds exactly nothing in transformers either.
    for n in 1..=layers {
        let (with, without) = (&refs[&format!("features.{n}")], &refs[&format!("features_without_cross_attention.{n}")]);
        assert_eq!(max_abs_diff(with, without), 0.0, "cross-attention changed layer {n}");
    }

    // All layers: HF's output_hidden_states (embeddings, each layer, the last after layer_norm).
    let deep = MusicgenDecoder::load(&model_dir, Some(layers), Device::Cpu, Kind::Float).unwrap();
    let states = deep.hidden_states(&input_ids).unwrap();
    assert_eq!(states.len(), layers + 1);
    for (i, state) in states.iter().enumerate() {
        let diff = max_abs_diff(state, &refs[&format!("hidden_states.{i}")]);
        assert!(diff < TOLERANCE, "hidden state {i}: max |diff| {diff}");
    }

    let err = MusicgenDecoder::load(&model_dir, Some(layers + 1), Device::Cpu, Kind::Float).err().unwrap();
    assert!(err.to_string().contains(&format!("cannot stop at layer {}", layers + 1)), "{err}");

    // BOSSA's features at every depth, the default one (half + 1) included.
    assert_eq!(full.num_layers(), layers / 2 + 1);
    for n in 1..=layers {
        let model = if n == full.num_layers() { None } else { Some(MusicgenDecoder::load(&model_dir, Some(n), Device::Cpu, Kind::Float).unwrap()) };
        let model = model.as_ref().unwrap_or(&full);
        assert!(model.var_store().variables().values().all(|t| !t.requires_grad()), "the decoder must be frozen");
        let features = model.features(&input_ids).unwrap();
        let diff = max_abs_diff(&features, &refs[&format!("features.{n}")]);
        assert!(diff < TOLERANCE, "features at layer {n}: max |diff| {diff}");
    }
}

#[test]
fn small_fp32_matches_transformers() {
    check_decoder("small", &[]);
}

#[test]
fn odd_width_three_codebooks_sharded_matches_transformers() {
    check_decoder("odd", &["--max-shard-size", "20KB", "--seed", "1"]);
}

#[test]
fn fp16_checkpoint_matches_transformers() {
    check_decoder("small", &["--dtype", "float16", "--seed", "2"]);
}

#[test]
fn bf16_checkpoint_matches_transformers() {
    check_decoder("odd", &["--dtype", "bfloat16", "--seed", "3"]);
}
