//! Arrangement speed: an 8-bar lead sheet (3 windows) arranged by a random MuseCoco, K = 1 and
//! K = 4 samples stepping as one batch, with the prefill timed apart from the recurrent steps.
//!
//! Random weights seldom close a bar of their own accord, and often write `</s>` at a bar start,
//! so the figures use a fixed cap on new tokens per window with `</s>` disallowed: every window
//! then runs until the grammar's budget closes it, and each run samples about the same number of
//! tokens. Sampling settings are the paper's (top-k 15, temperature 1).
//!
//! The bound: a memory-bound decoder reads every layer weight and the LM head once per step (fp32;
//! one embedding row is negligible), so steps/s <= bandwidth / weight bytes, tokens/s <= K x that.
//! The bandwidth is measured here as the best of 5 sums over a 512 MiB fp32 tensor.
//!
//! `cargo bench --bench arrange_sampling` (via `make bench`). Shapes: demo (n_embd 128, 4 heads,
//! 4 layers, ffn 512; cap ARRANGE_BENCH_DEMO_CAP new tokens per window, default 128) and
//! MuseCoco-1B (24 x 2048, random weights, ~5 GB of fp32; ARRANGE_BENCH_XLARGE = `skip` or the
//! cap per window, default 16). ARRANGE_BENCH_THREADS sets torch threads (default: libtorch's).
//! One step is some 150 small libtorch ops at the demo shape, so with 2 threads on a busy 2-core
//! machine each op waits for a descheduled worker and steps slow down tenfold; 1 thread does not.
use std::time::Instant;

use anyhow::Result;
use stylebridge::data::midi::{Instrument, Note, Score, TempoChange, TimeSignature};
use stylebridge::generate::{arrange, ArrangeConfig, Passage};
use stylebridge::models::musecoco::{MuseCoco, MuseCocoConfig};
use tch::{nn::VarStore, Device, Kind, Tensor};

/// BOSSA's Q-Former queries: the soft prompt's length.
const QUERIES: i64 = 32;
const BARS: u32 = 8;

/// 8 bars of 4/4 at 120 bpm: a melody note per beat, a triad per bar.
fn lead_sheet() -> Score {
    let tpb = 480;
    let melody = (0..BARS * 4).map(|beat| Note { start: beat * tpb, end: (beat + 1) * tpb, pitch: 64 + (beat % 7) as u8, velocity: 90 }).collect();
    let chords = (0..BARS).flat_map(|b| [48u8, 52, 55].map(|pitch| Note { start: b * 4 * tpb, end: (b + 1) * 4 * tpb, pitch, velocity: 80 })).collect();
    Score {
        ticks_per_beat: tpb,
        instruments: vec![
            Instrument { name: "MELODY".into(), program: 0, is_drum: false, notes: melody, control_changes: Vec::new() },
            Instrument { name: "CHORDS".into(), program: 4, is_drum: false, notes: chords, control_changes: Vec::new() },
        ],
        tempo_changes: vec![TempoChange { tick: 0, bpm: 120.0 }],
        time_signatures: vec![TimeSignature { tick: 0, numerator: 4, denominator: 4 }],
    }
}

/// Read bandwidth in bytes/s: the best of 5 sums over 512 MiB of fp32.
fn bandwidth(device: Device) -> f64 {
    let x = Tensor::ones([128 << 20], (Kind::Float, device));
    let bytes = (x.numel() * 4) as f64;
    let _ = x.sum(Kind::Float).double_value(&[]);
    (0..5)
        .map(|_| {
            let start = Instant::now();
            let _ = x.sum(Kind::Float).double_value(&[]);
            bytes / start.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

fn bench(name: &str, cfg: &MuseCocoConfig, cap: usize, passage: &Passage, bandwidth: f64, device: Device) -> Result<()> {
    tch::manual_seed(0);
    let vs = VarStore::new(device);
    let model = MuseCoco::new(vs.root(), cfg);
    let weights: i64 = vs.variables().iter().filter(|(n, _)| !n.contains("embed_tokens")).map(|(_, t)| t.numel() as i64).sum();
    let bytes = (weights * 4) as f64;
    let bound_steps = bandwidth / bytes;
    println!(
        "  {name}: {} layers x {}, {} heads, ffn {}; {:.1} M weights read per step ({:.1} MB), cap {cap} new tokens per window",
        cfg.n_layer,
        cfg.n_embd,
        cfg.n_head,
        cfg.ffn_dim,
        weights as f64 / 1e6,
        bytes / 1e6
    );
    let config = ArrangeConfig { max_new_tokens: Some(cap), end_token: false, ..ArrangeConfig::default() };
    let soft = Tensor::randn([1, QUERIES, cfg.n_embd], (Kind::Float, device));
    for k in [1u64, 4] {
        let start = Instant::now();
        let out = arrange(&model, passage, 0..k, &config, |_| Ok(soft.shallow_clone()))?;
        let total = start.elapsed().as_secs_f64();
        let prefill: f64 = out.timings.iter().map(|t| t.prefill_seconds).sum();
        let sampling: f64 = out.timings.iter().map(|t| t.sampling_seconds).sum();
        let steps: usize = out.timings.iter().map(|t| t.steps).sum();
        let tokens: usize = out.samples.iter().flat_map(|s| &s.windows).map(|w| w.new_tokens).sum();
        let tokens_per_s = tokens as f64 / sampling;
        let bound = bound_steps * k as f64;
        println!(
            "    K={k}: {total:7.2} s per arrangement ({} windows): prefill {prefill:6.2} s, sampling {sampling:7.2} s for {tokens} tokens in {steps} steps \
             -> {tokens_per_s:8.1} tokens/s ({:.1} steps/s); weight-read bound {bound:9.1} tokens/s, measured / bound {:.3}",
            out.timings.len(),
            steps as f64 / sampling,
            tokens_per_s / bound
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    if let Some(threads) = std::env::var("ARRANGE_BENCH_THREADS").ok().and_then(|v| v.parse().ok()) {
        tch::set_num_threads(threads);
    }
    let device = Device::cuda_if_available();
    let passage = Passage::new(&lead_sheet(), 0, None)?;
    let env_cap = |var: &str, default: usize| std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let bandwidth = bandwidth(device);
    println!(
        "arrange_sampling: {BARS} bars (3 windows), soft prompt {QUERIES} x n_embd, top-k 15, fp32, {device:?}, {} threads; read bandwidth {:.2} GB/s",
        tch::get_num_threads(),
        bandwidth / 1e9
    );
    let demo = MuseCocoConfig { n_embd: 128, n_head: 4, n_layer: 4, ffn_dim: 512, ..MuseCocoConfig::xlarge() };
    tch::no_grad(|| bench("demo", &demo, env_cap("ARRANGE_BENCH_DEMO_CAP", 128), &passage, bandwidth, device))?;
    match std::env::var("ARRANGE_BENCH_XLARGE").as_deref() {
        Ok("skip") => println!("  xlarge: skipped (ARRANGE_BENCH_XLARGE=skip)"),
        _ => tch::no_grad(|| bench("xlarge (MuseCoco-1B)", &MuseCocoConfig::xlarge(), env_cap("ARRANGE_BENCH_XLARGE", 16), &passage, bandwidth, device))?,
    }
    Ok(())
}
