//! MuseCoco against BOSSA's reference implementation on a tiny config (3 heads of width 5, so
//! q/k/v map 16 -> 15 as the 1B model maps 2048 -> 2040; LoRA adapters nonzero). The golden data in
//! tests/data/golden/musecoco come from the reference code (see the README there).
use std::collections::HashMap;
use std::path::PathBuf;
use stylebridge::models::musecoco::{MuseCoco, MuseCocoConfig, RecurrentState};
use stylebridge::models::weights::Checkpoint;
use tch::{nn::VarStore, Device, Kind, Tensor};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden/musecoco")
}

fn io() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(golden_dir().join("io.safetensors")).unwrap().into_iter().collect()
}

/// The golden model, with the checkpoint's tensors cast to `weights_kind` before loading.
fn model(weights_kind: Kind) -> (VarStore, MuseCoco) {
    let cfg = MuseCocoConfig::from_json_file(&golden_dir().join("config.json")).unwrap();
    let ckpt = Checkpoint::open(&golden_dir().join("model.safetensors")).unwrap();
    let cast = ckpt.names().map(|n| (n.to_string(), ckpt.get(n).unwrap().to_kind(weights_kind))).collect::<Vec<_>>();
    let ckpt = Checkpoint::from_tensors(ckpt.origin(), cast);
    let mut vs = VarStore::new(Device::Cpu);
    let model = MuseCoco::new(vs.root(), &cfg);
    MuseCoco::load(&mut vs, &ckpt, "").unwrap();
    (vs, model)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Float) - b.to_kind(Kind::Float)).abs().max().double_value(&[])
}

/// BOSSA's stage-2 input: soft prompt (no positions) then tokens with positions from `pos_start`.
fn prompt_input(model: &MuseCoco, io: &HashMap<String, Tensor>) -> (Tensor, Tensor) {
    let pos_start = io["pos_start"].int64_value(&[]);
    let tokens = model.embed(&io["ids"], pos_start, false).unwrap();
    let soft = &io["soft_prompt"];
    let (b, p) = (soft.size()[0], soft.size()[1]);
    let pad = Tensor::cat(&[Tensor::zeros([b, p], (Kind::Bool, Device::Cpu)), io["ids"].eq(1)], 1);
    (Tensor::cat(&[soft, &tokens], 1), pad)
}

#[test]
fn embeddings_and_prompted_logits_match_reference() {
    let io = io();
    let (_vs, model) = model(Kind::Float);
    let pos_start = io["pos_start"].int64_value(&[]);
    let tokens = model.embed(&io["ids"], pos_start, false).unwrap();
    assert!(max_diff(&tokens, &io["token_embeds"]) < 1e-5);
    let (x, pad) = prompt_input(&model, &io);
    let logits = model.logits(&model.forward_embeds(&x, Some(&pad), false).unwrap()).unwrap();
    let diff = max_diff(&logits, &io["prompt_logits"]);
    assert!(diff < 1e-4, "max |diff| {diff}");
}

#[test]
fn token_logits_match_reference() {
    let io = io();
    let (_vs, model) = model(Kind::Float);
    let ids = &io["ids"];
    let hidden = model.forward_embeds(&model.embed(ids, 0, false).unwrap(), Some(&ids.eq(1)), false).unwrap();
    let diff = max_diff(&model.logits(&hidden).unwrap(), &io["token_logits"]);
    assert!(diff < 1e-4, "max |diff| {diff}");
}

#[test]
fn recurrent_path_matches_reference_token_by_token() {
    let io = io();
    let (_vs, model) = model(Kind::Float);
    let pos_start = io["pos_start"].int64_value(&[]);
    // Row 0 has no padding: prefill the soft prompt, then feed the tokens one at a time.
    let soft = io["soft_prompt"].narrow(0, 0, 1);
    let ids = io["ids"].narrow(0, 0, 1);
    let expected = io["prompt_logits"].narrow(0, 0, 1);
    let p = soft.size()[1];
    let mut state = RecurrentState::new(model.config(), 1, Device::Cpu);
    let prefix = model.logits(&model.prefill(&soft, None, &mut state, false).unwrap()).unwrap();
    assert!(max_diff(&prefix, &expected.narrow(1, 0, p)) < 1e-4);
    for i in 0..ids.size()[1] {
        let x = model.embed_next(&ids.narrow(1, i, 1), &[i], pos_start).unwrap();
        let logits = model.logits(&model.step(&x, &mut state).unwrap()).unwrap();
        let diff = max_diff(&logits, &expected.narrow(1, p + i, 1));
        assert!(diff < 1e-4, "token {i}: max |diff| {diff}");
    }
}

#[test]
fn half_and_bfloat16_weights_load_and_run() {
    let io = io();
    let expected = &io["prompt_logits"];
    let scale = expected.abs().max().double_value(&[]);
    for kind in [Kind::Half, Kind::BFloat16] {
        // Half-precision checkpoint into the fp32 model: only the weights' rounding differs.
        let (_vs, model) = model(kind);
        let (x, pad) = prompt_input(&model, &io);
        let diff = max_diff(&model.logits(&model.forward_embeds(&x, Some(&pad), false).unwrap()).unwrap(), expected);
        assert!(diff < 0.02 * scale, "{kind:?} weights: max |diff| {diff} (scale {scale})");
        // The model itself in that precision (attention products still in fp32).
        let (mut vs, model) = self::model(Kind::Float);
        vs.set_kind(kind);
        let (x, pad) = prompt_input(&model, &io);
        let logits = model.logits(&model.forward_embeds(&x.to_kind(kind), Some(&pad), false).unwrap()).unwrap();
        assert_eq!(logits.kind(), kind);
        let diff = max_diff(&logits, expected);
        assert!(diff < 0.1 * scale, "{kind:?} model: max |diff| {diff} (scale {scale})");
    }
}

#[test]
fn frozen_base_holds_no_gradients() {
    let io = io();
    let (vs, model) = model(Kind::Float);
    let (x, pad) = prompt_input(&model, &io);
    model.logits(&model.forward_embeds(&x, Some(&pad), true).unwrap()).unwrap().square().mean(Kind::Float).backward();
    for (name, var) in vs.variables() {
        let has_grad = var.grad().defined();
        assert_eq!(has_grad, name.contains(".lora_"), "{name}: gradient {has_grad}");
    }
}

#[test]
fn base_checkpoint_without_adapters_keeps_fresh_ones() {
    // The HF port's model.safetensors before stage 2 holds no lora_* tensors.
    let cfg = MuseCocoConfig::from_json_file(&golden_dir().join("config.json")).unwrap();
    let ckpt = Checkpoint::open(&golden_dir().join("model.safetensors")).unwrap();
    let base =
        ckpt.names().filter(|n| !n.contains(".lora_")).map(|n| (n.to_string(), ckpt.get(n).unwrap().shallow_clone()));
    let base = Checkpoint::from_tensors(ckpt.origin(), base.collect::<Vec<_>>());
    let mut vs = VarStore::new(Device::Cpu);
    let _model = MuseCoco::new(vs.root(), &cfg);
    let fresh_a = vs.variables()["decoder.layers.1.self_attn.lora_k.lora_A"].detach().copy();
    MuseCoco::load(&mut vs, &base, "").unwrap();
    let vars = vs.variables();
    assert!(max_diff(&vars["decoder.layers.1.self_attn.lora_k.lora_A"], &fresh_a) == 0.0);
    assert!(vars["decoder.layers.1.self_attn.lora_k.lora_B"].abs().max().double_value(&[]) == 0.0);
    assert!(max_diff(&vars["decoder.layers.1.fc2.weight"], &ckpt.get("decoder.layers.1.fc2.weight").unwrap()) == 0.0);
}
