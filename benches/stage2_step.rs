//! Stage-2 training step on CPU: frozen MusicGen features -> the Q-Former's audio stream ->
//! `musecoco_proj` -> soft prompt + tokens through MuseCoco (frozen, LoRA), backward, clipping,
//! AdamW; and the step of the demo's MuseCoco language-model pretraining. Prints the median
//! step time, the parameter counts and the peak resident memory.
//! `python_interop/bench_bossa_stage2.py` times the same step in BOSSA's PyTorch code.
//!
//! `make cargo ARGS="bench --bench stage2_step"`; STAGE2_BENCH_THREADS (default 2),
//! STAGE2_BENCH_STEPS (default 5), STAGE2_BENCH_SIZES (default `demo,medium`).
use std::time::Instant;

use stylebridge::models::frozen_audio::{MusicgenSource, TinyMusicgen};
use stylebridge::models::qformer::QFormerConfig;
use stylebridge::train::optimizer::{AdamW, AdamWConfig};
use stylebridge::train::stage2::{ModelConfig, MuseCocoSource, Stage2Model, TinyMuseCoco};
use tch::{Device, Kind, Tensor};

struct Size {
    name: &'static str,
    musicgen: TinyMusicgen,
    layers: usize,
    qformer: QFormerConfig,
    musecoco: TinyMuseCoco,
    batch: i64,
    tokens: i64,
}

fn sizes() -> Vec<Size> {
    let demo_q = QFormerConfig { hidden_size: 64, num_hidden_layers: 4, num_attention_heads: 4, intermediate_size: 128, num_query_tokens: 8, embed_dim: 32, max_position_embeddings: 256, ..Default::default() };
    vec![
        Size {
            name: "demo",
            musicgen: TinyMusicgen::default(),
            layers: 2,
            qformer: demo_q.clone(),
            musecoco: TinyMuseCoco { n_embd: 128, n_head: 4, n_layer: 4, ffn_dim: 512 },
            batch: 16,
            tokens: 600,
        },
        Size {
            name: "medium",
            musicgen: TinyMusicgen { hidden_size: 256, num_hidden_layers: 8, num_attention_heads: 8, ffn_dim: 1024, ..TinyMusicgen::default() },
            layers: 5,
            qformer: QFormerConfig { hidden_size: 256, num_hidden_layers: 6, num_attention_heads: 8, intermediate_size: 1024, num_query_tokens: 32, embed_dim: 128, ..demo_q },
            musecoco: TinyMuseCoco { n_embd: 512, n_head: 8, n_layer: 6, ffn_dim: 2048 },
            batch: 8,
            tokens: 1000,
        },
    ]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn bench(size: &Size, steps: usize) {
    let cfg = ModelConfig {
        musicgen: Some(MusicgenSource { tiny: Some(size.musicgen.clone()), layers: Some(size.layers), checkpoint: None }),
        qformer: Some(size.qformer.clone()),
        musecoco: MuseCocoSource { tiny: Some(size.musecoco.clone()), checkpoint: None },
        ..Default::default()
    };
    let mut model = Stage2Model::for_training(&cfg, Device::Cpu, 0).expect("model");
    let (b, l) = (size.batch, size.tokens);
    let codes = Tensor::randint(2048, [b, 4, 508], (Kind::Int64, Device::Cpu));
    let frames = Tensor::ones([b, 508], (Kind::Float, Device::Cpu));
    // `</s>`, attributes, `<sep>`, a lead sheet of a fifth of the tokens, `<sep>`, the arrangement, `</s>`.
    let tokens = Tensor::randint_low(6, 984, [b, l], (Kind::Int64, Device::Cpu));
    let is_real = Tensor::ones([b, l], (Kind::Float, Device::Cpu));
    let target_from = 62 + l / 5;
    let is_target = Tensor::arange(l, (Kind::Int64, Device::Cpu)).ge(target_from).to_kind(Kind::Float).unsqueeze(0).expand([b, l], false);
    let trainable: i64 = model.net.parameters().iter().map(|(_, t)| t.numel() as i64).sum();
    let frozen: i64 = model.net.musecoco_vs.variables().values().filter(|t| !t.requires_grad()).map(|t| t.numel() as i64).sum();
    println!("\n{}: batch {b} x {l} tokens, 508 frames; {trainable} trainable parameters (Q-Former, proj, LoRA), {frozen} frozen in MuseCoco", size.name);
    let mut opt = AdamW::new(model.net.parameters(), AdamWConfig::default());
    let mut times = Vec::new();
    for step in 0..steps + 1 {
        let t = Instant::now();
        tch::manual_seed(step as i64);
        opt.zero_grad();
        let soft = model.soft_prompt(&codes, &frames, true).expect("soft prompt");
        let loss = model.net.loss(&soft, &tokens, &is_target, &is_real, true).expect("loss");
        loss.backward();
        opt.clip_grad_norm(1.0);
        opt.step(1e-4);
        if step > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    println!("  stage-2 step: {:.3} s median of {steps} ({:.1} samples/s)", median(times.clone()), b as f64 / median(times));
    let mut times = Vec::new();
    for _ in 0..steps {
        let t = Instant::now();
        let _ = tch::no_grad(|| model.soft_prompt(&codes, &frames, false)).expect("soft prompt");
        times.push(t.elapsed().as_secs_f64());
    }
    println!("  of which the soft prompt alone (frozen MusicGen + Q-Former, no grad): {:.3} s", median(times));
    println!("  peak resident memory so far: {:.0} MiB", stylebridge::train::metrics::peak_memory_mib());
}

fn main() {
    let threads = std::env::var("STAGE2_BENCH_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let steps = std::env::var("STAGE2_BENCH_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let wanted = std::env::var("STAGE2_BENCH_SIZES").unwrap_or_else(|_| "demo,medium".into());
    tch::set_num_threads(threads);
    println!("stage-2 training step on CPU, {threads} torch threads, fp32");
    for size in sizes().iter().filter(|s| wanted.split(',').any(|w| w == s.name)) {
        bench(size, steps);
    }
}
