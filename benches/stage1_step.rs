//! Stage-1 training step on CPU: forward (frozen MusicGen features, then the Q-Former with the
//! selected objectives), backward and AdamW update, for the demo config (experiments/demo.yaml)
//! and a medium config. Prints the median step time per objective set, the share of the frozen
//! MusicGen, the parameter counts, and the process's peak resident memory after each config.
//! `python_interop/bench_bossa_step.py` times the same demo step in BOSSA's PyTorch code.
//!
//! `make cargo ARGS="bench --bench stage1_step"`; STAGE1_BENCH_THREADS sets torch threads (default 2),
//! STAGE1_BENCH_STEPS the timed steps (default 5), STAGE1_BENCH_SIZES the configs (default
//! `demo,medium`), STAGE1_BENCH_OBJECTIVES the objective sets (default `C,CM,CMG`; e.g. `CMG`
//! alone to profile the step BOSSA's bench times).
use std::path::Path;
use std::time::Instant;

use stylebridge::config::{self, ExperimentConfig};
use stylebridge::models::musicgen::MusicgenDecoder;
use stylebridge::train::optimizer::{AdamW, AdamWConfig};
use stylebridge::models::frozen_audio::{MusicgenSource, TinyMusicgen};
use stylebridge::train::stage1::{Inputs, ModelConfig, Objectives, Stage1Model};
use stylebridge::train::trainer::{Precision, SingleProcess};
use tch::{nn::VarStore, Device, Kind, Tensor};

/// A batch shaped like the demo's: 508 frames, 20 lead-sheet notes, `<s>`, `piano` notes, `</s>`, padding.
fn inputs(batch: i64, max_notes: i64, piano: i64, codebook: i64) -> Inputs {
    let lead = 20;
    let note = |slot: i64| -> i64 { [4, 260, 388, 517 + 60, 780, 920, 940, 1200][slot as usize] };
    let mut tokens = vec![1i64; (batch * max_notes * 8) as usize];
    let (mut is_lead, mut is_real) = (vec![0u8; (batch * max_notes) as usize], vec![0u8; (batch * max_notes) as usize]);
    for b in 0..batch {
        for n in 0..(lead + piano + 2).min(max_notes) {
            let at = ((b * max_notes + n) * 8) as usize;
            for slot in 0..8 {
                tokens[at + slot as usize] = if n == lead { 0 } else if n == lead + piano + 1 { 2 } else { note(slot) + (n + b) % 4 };
            }
            is_real[(b * max_notes + n) as usize] = 1;
            is_lead[(b * max_notes + n) as usize] = u8::from(n < lead);
        }
    }
    let mask = |v: &[u8]| Tensor::from_slice(v).view([batch, max_notes]).to_kind(Kind::Float);
    Inputs {
        codes: Tensor::randint(codebook, [batch, 4, 508], (Kind::Int64, Device::Cpu)),
        audio_mask: Tensor::ones([batch, 508], (Kind::Float, Device::Cpu)),
        tokens: Tensor::from_slice(&tokens).view([batch, max_notes * 8]),
        is_lead_sheet: mask(&is_lead),
        is_real: mask(&is_real),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Trainable parameters (what AdamW updates) and those of the frozen MusicGen layers that run.
fn parameter_counts(model: &Stage1Model, model_cfg: &ModelConfig) -> (i64, i64) {
    let numel = |vs: &VarStore| vs.variables().values().map(Tensor::numel).sum::<usize>() as i64;
    let config = model.musicgen_config().clone();
    let layers = model_cfg.musicgen.layers.unwrap_or_else(|| config.bossa_layers());
    let musicgen = MusicgenDecoder::new(VarStore::new(Device::Cpu), config, layers).expect("MusicGen decoder");
    (numel(&model.vs), numel(musicgen.var_store()))
}

fn bench(label: &str, model_cfg: &ModelConfig, batch: i64, max_notes: i64, steps: usize) {
    let codebook = model_cfg.musicgen.tiny.as_ref().map_or(2048, |t| t.codebook_size);
    let x = inputs(batch, max_notes, 100.min(max_notes - 22), codebook);
    println!("\n{label}: batch {batch}, {max_notes} notes/sequence, 508 frames");
    // Built before the timed models; used for the retrieval-features line at the end.
    let mut features_model =
        Stage1Model::new(&ModelConfig { objectives: Objectives::C, ..model_cfg.clone() }, Precision::Fp32, Device::Cpu, 0).expect("model");
    let (trainable, frozen) = parameter_counts(&features_model, model_cfg);
    println!("  parameters: {trainable} trainable (Q-Former, heads, audio LayerNorm), frozen MusicGen layers {frozen}");
    let wanted = std::env::var("STAGE1_BENCH_OBJECTIVES").unwrap_or_else(|_| "C,CM,CMG".into());
    for objectives in [Objectives::C, Objectives::CM, Objectives::CMG].into_iter().filter(|o| wanted.split(',').any(|w| w == format!("{o:?}"))) {
        let cfg = ModelConfig { objectives, cache_features: false, ..model_cfg.clone() };
        let mut model = Stage1Model::new(&cfg, Precision::Fp32, Device::Cpu, 0).expect("model");
        let mut opt = AdamW::new(stylebridge::models::weights::trainable(&model.vs), AdamWConfig::default());
        let mut times = Vec::new();
        for step in 0..steps + 1 {
            let t = Instant::now();
            tch::manual_seed(step as i64);
            opt.zero_grad();
            let losses = model.losses(&x, &SingleProcess, true).expect("forward");
            losses.total.backward();
            opt.clip_grad_norm(1.0);
            opt.step(1e-4);
            if step > 0 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        println!("  {:?}: {:.3} s/step median of {steps} ({:.1} samples/s)", objectives, median(times.clone()), batch as f64 / median(times));
    }
    // The frozen part alone (what `cache_features` saves when windows repeat).
    let mut times = Vec::new();
    for _ in 0..steps {
        let t = Instant::now();
        let _ = tch::no_grad(|| features_model.features(&x)).expect("features");
        times.push(t.elapsed().as_secs_f64());
    }
    println!("  retrieval features only (frozen MusicGen + query and note passes, no grad): {:.3} s/batch", median(times));
    println!("  peak resident memory so far: {:.0} MiB", stylebridge::train::metrics::peak_memory_mib());
}

fn main() {
    let threads = std::env::var("STAGE1_BENCH_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let steps = std::env::var("STAGE1_BENCH_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    tch::set_num_threads(threads);
    println!("stage-1 training step on CPU, {threads} torch threads, fp32");
    println!("peak resident memory at start (libtorch loaded): {:.0} MiB", stylebridge::train::metrics::peak_memory_mib());
    let demo_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/demo.yaml");
    let demo: ExperimentConfig = config::load(&demo_path, &[]).expect("experiments/demo.yaml");
    // `make demo` pretrains its MusicGen (python_interop/demo_musicgen.py) at the default tiny shape;
    // the step time does not depend on the weights, so a random decoder of that shape stands in.
    let config::ModelConfig::Stage1(mut demo_model) = demo.model.clone() else { panic!("experiments/demo.yaml trains stage 1") };
    demo_model.musicgen = MusicgenSource {
        tiny: Some(TinyMusicgen::default()),
        ..MusicgenSource::default()
    };
    let sizes = std::env::var("STAGE1_BENCH_SIZES").unwrap_or_else(|_| "demo,medium".into());
    let sizes: Vec<&str> = sizes.split(',').collect();
    if sizes.contains(&"demo") {
        bench("demo (experiments/demo.yaml)", &demo_model, demo.train.batch_size as i64, demo.data.max_notes as i64, steps);
    }
    if !sizes.contains(&"medium") {
        return;
    }

    let mut medium = demo_model.clone();
    medium.musicgen.tiny = Some(TinyMusicgen { hidden_size: 256, num_hidden_layers: 8, num_attention_heads: 8, ffn_dim: 1024, ..TinyMusicgen::default() });
    medium.musicgen.layers = None;
    medium.qformer.hidden_size = 256;
    medium.qformer.num_hidden_layers = 6;
    medium.qformer.num_attention_heads = 8;
    medium.qformer.intermediate_size = 1024;
    medium.qformer.num_query_tokens = 32;
    medium.qformer.embed_dim = 128;
    bench("medium (MusicGen 256 x 5 of 8 layers, Q-Former 256 x 6, 32 queries)", &medium, 8, 226, steps.min(3));
}
