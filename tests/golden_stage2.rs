//! Stage 2 against BOSSA's reference `Blip2Musecoco` on a tiny random model: a converted
//! `bossa_stage2.pt` loads through the path `arrange` uses, and the frozen MusicGen states, Z, the
//! soft prompt, the token embeddings, the logits, the loss and the gradients of what trains match
//! the reference; only the Q-Former, `musecoco_proj` and the adapters receive gradients; the
//! loader assembles BOSSA's `collate_fn_musecoco2` sequence from the same notes. The golden data in
//! tests/data/golden/stage2 come from the reference code (see the README there).
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use stylebridge::data::encodings::{remi, Octuple};
use stylebridge::data::loader::{Loader, LoaderOptions, PairSet, Stage, Symbolic};
use stylebridge::data::pairing::{octuple_ids, remi_ids};
use stylebridge::data::shards::{AudioLayout, PairRow};
use stylebridge::data::split::Split;
use stylebridge::models::blip2_musecoco::POS_START;
use stylebridge::models::frozen_audio::step_mask;
use stylebridge::train::stage2::Stage2Model;
use tch::{Device, Kind, Tensor};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden/stage2")
}

fn io() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(golden_dir().join("io.safetensors")).unwrap().into_iter().collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

fn model() -> Stage2Model {
    Stage2Model::from_run(&golden_dir(), Device::Cpu).unwrap().0
}

#[test]
fn forward_and_loss_match_bossa() {
    let io = io();
    let mut model = model();
    let states = model.audio.states(&io["codes"]).unwrap();
    assert!(max_diff(&states, &io["audio_repr"]) < 1e-5, "MusicGen states: {}", max_diff(&states, &io["audio_repr"]));
    let steps = io["codec_pad_mask"].to_kind(Kind::Float);
    let z = model.net.query_output(&states, &steps, false).unwrap();
    assert!(max_diff(&z, &io["query_output"]) < 1e-5, "Z: {}", max_diff(&z, &io["query_output"]));
    let soft = model.net.project(&z);
    assert!(max_diff(&soft, &io["inputs_musecoco"]) < 1e-5);
    // The frame mask the loader gives BOSSA's step mask back.
    let frames = steps.narrow(1, 0, 508);
    assert!(step_mask(&frames, 4).equal(&steps));

    let tokens = &io["tokens"];
    let embeds = model.net.musecoco.embed(tokens, POS_START, false).unwrap();
    let real = io["pad_mask"].eq(0);
    // Pads carry no position here (BOSSA gives them the positions of earlier tokens); compare the
    // real tokens, the only ones any output depends on.
    let real_rows = real.unsqueeze(-1).expand_as(&embeds);
    assert!(max_diff(&embeds.masked_select(&real_rows), &io["token_embeds"].masked_select(&real_rows)) < 1e-5);

    let x = Tensor::cat(&[&soft, &embeds], 1);
    let pad = Tensor::cat(&[Tensor::zeros([2, 4], (Kind::Bool, Device::Cpu)), io["pad_mask"].ne(0)], 1);
    let logits = model.net.musecoco.logits(&model.net.musecoco.forward_embeds(&x, Some(&pad), false).unwrap()).unwrap();
    let positions = &io["logit_positions"];
    for row in 0..2i64 {
        for j in 0..positions.size()[1] {
            let p = positions.int64_value(&[row, j]);
            let is_pad = p >= 4 && io["pad_mask"].int64_value(&[row, p - 4]) == 1;
            if is_pad {
                continue;
            }
            let diff = max_diff(&logits.get(row).get(p), &io["logits"].get(row).get(j));
            assert!(diff < 1e-4, "row {row} position {p}: {diff}");
        }
    }

    let is_target = io["leadsheet_mask"].eq(0).logical_and(&real).to_kind(Kind::Float);
    let loss = model.net.loss(&soft, tokens, &is_target, &real.to_kind(Kind::Float), false).unwrap();
    let want = io["loss"].double_value(&[]);
    assert!((loss.double_value(&[]) - want).abs() < 1e-5 * want.abs().max(1.0), "loss {} vs BOSSA {want}", loss.double_value(&[]));
}

#[test]
fn gradients_match_bossa_and_reach_only_what_trains() {
    let io = io();
    let mut model = model();
    let steps = io["codec_pad_mask"].to_kind(Kind::Float);
    let soft = model.soft_prompt(&io["codes"], &steps.narrow(1, 0, 508), false).unwrap();
    let real = io["pad_mask"].eq(0);
    let is_target = io["leadsheet_mask"].eq(0).logical_and(&real).to_kind(Kind::Float);
    model.net.loss(&soft, &io["tokens"], &is_target, &real.to_kind(Kind::Float), false).unwrap().backward();

    let params: HashMap<String, Tensor> = model.net.parameters().into_iter().collect();
    for name in ["musecoco_proj.weight", "musecoco_proj.bias", "blip2qformer.query_tokens", "musecoco.decoder.layers.0.self_attn.lora_q.lora_A", "musecoco.decoder.layers.0.self_attn.lora_q.lora_B"] {
        let want = &io[&format!("grad.{name}")];
        let diff = max_diff(&params[name].grad(), want);
        let scale = want.abs().max().double_value(&[]).max(1e-8);
        assert!(diff < 1e-4 * scale.max(1.0), "{name}: max |diff| {diff} (scale {scale})");
    }
    let squares = |prefix: &str, lora: bool| -> f64 {
        params
            .iter()
            .filter(|(n, _)| n.starts_with(prefix) && (!lora || n.contains(".lora_")))
            .map(|(_, t)| t.grad().to_kind(Kind::Double).square().sum(Kind::Double).double_value(&[]))
            .sum()
    };
    for (group, got) in [("qformer", squares("blip2qformer.", false)), ("lora", squares("musecoco.", true)), ("proj", squares("musecoco_proj.", false))] {
        let want = io[&format!("grad_sq_sum.{group}")].double_value(&[]);
        assert!((got - want).abs() <= 1e-4 * want, "{group}: sum of squared gradients {got} vs BOSSA {want}");
    }
    // Every parameter of those groups trains; nothing else does.
    assert_eq!(params.len(), model.net.vs.variables().len() + model.net.musecoco_vs.trainable_variables().len());
    for (name, var) in model.net.musecoco_vs.variables() {
        assert_eq!(var.requires_grad(), name.contains(".lora_"), "{name}");
        assert_eq!(var.grad().defined(), name.contains(".lora_"), "{name} gradient");
    }
    assert!(model.audio.decoder().var_store().variables().values().all(|t| !t.requires_grad() && !t.grad().defined()));
}

/// BOSSA's octMIDI rows ([N, 8]: bar, position, program, pitch, duration, velocity, signature, tempo).
fn notes(t: &Tensor) -> Vec<Octuple> {
    let v: Vec<i64> = Vec::try_from(t.reshape([-1])).unwrap();
    let mut notes: Vec<Octuple> = v
        .chunks(8)
        .map(|f| Octuple {
            bar: f[0] as u32,
            position: f[1] as u32,
            program: f[2] as u32,
            pitch: f[3] as u32,
            duration: f[4] as u32,
            velocity: f[5] as u32,
            time_signature: f[6] as u32,
            tempo: f[7] as u32,
        })
        .collect();
    // The collate drops leading empty bars (bars counted from the rows' first note).
    let first = notes.iter().map(|n| n.bar).min().unwrap_or(0);
    notes.iter_mut().for_each(|n| n.bar -= first);
    notes
}

#[test]
fn the_loader_assembles_bossas_stage2_sequence() {
    let io = io();
    let layout = AudioLayout { sample_rate: 32000, frame_rate: 50.0, n_q: 4, pad_code: 2048, window_frames: 508, margin_frames: 0, encodec: String::new() };
    let rows = (0..2)
        .map(|r| {
            let (mut lead, mut piano) = (notes(&io[&format!("leadsheet_{r}")]), notes(&io[&format!("track_{r}")]));
            let first = lead.iter().chain(&piano).map(|n| n.bar).min().unwrap();
            for n in lead.iter_mut().chain(piano.iter_mut()) {
                n.bar -= first;
            }
            PairRow { lead_remi: remi_ids(&lead), piano_remi: remi_ids(&piano), ..PairRow::synthetic("golden", Split::Train, r, vec![2048; 4 * 508], octuple_ids(&lead), octuple_ids(&piano)) }
        })
        .collect();
    let set = Arc::new(PairSet { split: Split::Train, layout, rows });
    let options = LoaderOptions { max_tokens: 160, augment: false, shuffle: false, batch_size: 2, workers: 1, ..LoaderOptions::training(Stage::Stage2, 2, 0) };
    let batch = Loader::new(set, options).unwrap().batch(0, 0).unwrap();
    let Symbolic::Stage2 { len, tokens, is_target, is_real } = batch.symbolic else { panic!("stage 2") };
    let want: Vec<i64> = Vec::try_from(io["tokens"].reshape([-1])).unwrap();
    let pads: Vec<i64> = Vec::try_from(io["pad_mask"].reshape([-1])).unwrap();
    let not_target: Vec<i64> = Vec::try_from(io["leadsheet_mask"].reshape([-1])).unwrap();
    assert_eq!(len, 160);
    for i in 0..2 * len {
        if pads[i] == 1 {
            assert_eq!((tokens[i], is_real[i]), (i64::from(remi::PAD), 0), "position {i}");
            continue;
        }
        assert_eq!(tokens[i], want[i], "token {i}: {} vs BOSSA {}", remi::token_name(tokens[i] as u32), remi::token_name(want[i] as u32));
        assert_eq!(is_target[i] == 1, not_target[i] == 0, "target flag at {i}");
    }
}
