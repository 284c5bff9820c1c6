//! MusicGen stage-1 features: this crate vs transformers, same config, same CPU threads.
//!
//! For a tiny and a medium decoder config, times `MusicgenDecoder::features` on delayed codes
//! (batch x 512 steps, BOSSA's 508-frame window) stopping at BOSSA's layer (half + 1) and at
//! the last layer (best of n runs), and runs python_interop/bench_musicgen_features.py (transformers, built with
//! `num_hidden_layers = N` as BOSSA does) on the same shapes. Prints the times, their ratio
//! and the saving of stopping at layer N. `make bench` (or `make cargo ARGS="bench --bench
//! musicgen_features"`); BENCH_THREADS (default 1) and BENCH_ITERS (default 5: runs
//! of the medium config; the tiny one runs 10 times as many) override.
use std::process::Command;
use std::time::Instant;

use stylebridge::models::musicgen::{MusicgenDecoder, MusicgenDecoderConfig};
use tch::{nn::VarStore, Device, Kind, Tensor};

struct Shape {
    name: &'static str,
    /// Timed runs per measurement, times BENCH_ITERS / 5: tiny runs need many to rise above noise.
    iters: usize,
    layers: usize,
    hidden: i64,
    heads: i64,
    ffn: i64,
    vocab: i64,
}

const SHAPES: [Shape; 2] = [
    Shape { name: "tiny", iters: 50, layers: 3, hidden: 16, heads: 4, ffn: 32, vocab: 32 },
    Shape { name: "medium", iters: 5, layers: 12, hidden: 512, heads: 8, ffn: 2048, vocab: 2048 },
];
const BATCH: i64 = 2;
const STEPS: i64 = 512;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Best of the runs: on a shared machine the fastest run is the least disturbed one.
fn best(xs: impl Iterator<Item = f64>) -> f64 {
    xs.fold(f64::INFINITY, f64::min)
}

fn time_rust(shape: &Shape, run_layers: usize, iters: usize) -> f64 {
    let config = MusicgenDecoderConfig {
        vocab_size: shape.vocab,
        pad_token_id: Some(shape.vocab),
        hidden_size: shape.hidden,
        num_attention_heads: shape.heads,
        ffn_dim: shape.ffn,
        num_hidden_layers: shape.layers,
        ..Default::default()
    };
    // Random weights: only the time matters. `no_grad` below, as for the frozen stage-1 backbone.
    let decoder = MusicgenDecoder::new(VarStore::new(Device::Cpu), config, run_layers).expect("valid shape");
    let input_ids = Tensor::randint(shape.vocab + 1, [BATCH, 4, STEPS], (Kind::Int64, Device::Cpu));
    let run = || tch::no_grad(|| decoder.features(&input_ids).expect("features"));
    let _ = run(); // warm-up
    best((0..iters).map(|_| {
        let start = Instant::now();
        let _ = run();
        start.elapsed().as_secs_f64()
    }))
}

fn time_transformers(shape: &Shape, run_layers: usize, threads: usize, iters: usize) -> Result<f64, String> {
    let python = std::env::var("PYTHON_SYS_EXECUTABLE").map_err(|_| "PYTHON_SYS_EXECUTABLE unset (run through make)".to_string())?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python_interop/bench_musicgen_features.py");
    let numbers = [
        ("layers", shape.layers as i64),
        ("hidden", shape.hidden),
        ("heads", shape.heads),
        ("ffn", shape.ffn),
        ("vocab", shape.vocab),
        ("run-layers", run_layers as i64),
        ("batch", BATCH),
        ("steps", STEPS),
        ("threads", threads as i64),
        ("iters", iters as i64),
    ];
    let mut cmd = Command::new(python);
    cmd.arg(script);
    for (name, value) in numbers {
        cmd.arg(format!("--{name}")).arg(value.to_string());
    }
    let out = cmd.output().map_err(|e| format!("cannot run {script}: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let parsed: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("bad output {line:?}: {e}"))?;
    parsed["best_s"].as_f64().ok_or_else(|| format!("no best_s in {line:?}"))
}

fn main() {
    // One thread by default: on a small shared machine, intra-op threads mostly measure the neighbours.
    let threads = env_or("BENCH_THREADS", 1);
    let scale = env_or("BENCH_ITERS", 5);
    tch::set_num_threads(threads as i32);
    println!("musicgen_features: batch {BATCH} x {STEPS} steps, CPU, {threads} threads, best of n runs");
    println!("{:<7} {:>6} {:>12} {:>16} {:>8}", "config", "layers", "rust (ms)", "transformers (ms)", "ratio");
    for shape in &SHAPES {
        let bossa = shape.layers / 2 + 1;
        let iters = (shape.iters * scale / 5).max(1);
        let mut rust_times = Vec::new();
        for run_layers in [bossa, shape.layers] {
            let rust = time_rust(shape, run_layers, iters);
            rust_times.push(rust);
            let (hf, ratio) = match time_transformers(shape, run_layers, threads, iters) {
                Ok(hf) => (format!("{:.2}", hf * 1e3), format!("{:.2}x", hf / rust)),
                Err(e) => {
                    eprintln!("transformers timing skipped: {e}");
                    ("-".into(), "-".into())
                }
            };
            let label = format!("{run_layers}/{}", shape.layers);
            println!("{:<7} {:>6} {:>12.2} {:>16} {:>8}", shape.name, label, rust * 1e3, hf, ratio);
        }
        println!(
            "{:<7} stopping at layer {bossa} of {}: {:.0}% of the full decoder's time",
            shape.name,
            shape.layers,
            100.0 * rust_times[0] / rust_times[1]
        );
    }
}
