//! Data-parallel cost on CPU (Gloo), 1 vs 2 processes:
//! - the collectives of one stage-1 step: the gradient all-reduce (bucketed, sizes of a small
//!   Q-Former and of BOSSA's BERT-base Q-Former) and the contrastive feature gather (batch 32 x
//!   32 queries x 256 and 32 x 256 per rank, with gradient), time per call;
//! - end to end: seconds per optimizer step of stage-1 training (synthetic shards, a small
//!   Q-Former), 1 process vs `stylebridge launch --nproc-per-node 2` with the same global batch.
//!
//! ```text
//! make cargo ARGS="bench --bench distributed"
//! ```
//! Each figure is the median of several calls after a warm-up; the machine is shared, so expect
//! noise of 10-20 %.
#[path = "../tests/data_parallel_support/mod.rs"]
mod data_parallel_support;
#[path = "../tests/shards_support/mod.rs"]
mod shards_support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use stylebridge::train::distributed;
use tch::{Device, Kind, Tensor};

const WORKER: &str = "STYLEBRIDGE_BENCH_WORKER";

/// Gradient sizes (parameters): a small Q-Former and BOSSA's (BERT-base, 12 layers, with
/// cross-attention every other layer).
const GRADIENTS: [(&str, i64); 2] = [("small Q-Former", 2_000_000), ("BOSSA Q-Former", 107_000_000)];

fn median(mut seconds: Vec<f64>) -> f64 {
    seconds.sort_by(f64::total_cmp);
    seconds[seconds.len() / 2]
}

fn time(repeats: usize, mut f: impl FnMut()) -> f64 {
    f();
    median((0..repeats).map(|_| {
        let start = Instant::now();
        f();
        start.elapsed().as_secs_f64()
    }).collect())
}

/// One rank: time the collectives, rank 0 prints.
fn worker() {
    tch::set_num_threads(1);
    let (c, _) = distributed::from_env(Device::Cpu, Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e:#}"));
    let say = |line: String| {
        if c.is_main() {
            println!("{line}");
        }
    };
    for (name, params) in GRADIENTS {
        // Parameter-shaped pieces (768 x 768 matrices and a remainder), as the optimizer holds them.
        let piece = 768 * 768;
        let mut grads: Vec<Tensor> = (0..params / piece).map(|_| Tensor::ones([768, 768], (Kind::Float, Device::Cpu))).collect();
        grads.push(Tensor::ones([params % piece], (Kind::Float, Device::Cpu)));
        let s = time(5, || c.all_reduce_sum(&grads).unwrap());
        say(format!(
            "  all-reduce of {name} gradients ({:.0} M fp32, {} MB): {:.3} s ({:.2} GB/s algorithm bandwidth)",
            params as f64 / 1e6,
            params * 4 / 1_000_000,
            s,
            params as f64 * 4.0 / s / 1e9
        ));
    }
    let (batch, queries, dim) = (32, 32, 256);
    let audio = Tensor::randn([batch, queries, dim], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let notes = Tensor::randn([batch, dim], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let s = time(20, || {
        let all = Tensor::cat(&[c.all_gather(&audio).unwrap().reshape([-1]), c.all_gather(&notes).unwrap().reshape([-1])], 0);
        all.sum(Kind::Float).backward();
    });
    say(format!("  contrastive gather with gradient (forward + backward, {batch} x {queries} x {dim} + {batch} x {dim} per rank): {:.2} ms", s * 1e3));
}

fn collectives_on_two_processes() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let exe = std::env::current_exe().unwrap();
    let mut children: Vec<_> = (0..2)
        .map(|rank| {
            Command::new(&exe)
                .env(WORKER, "1")
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .spawn()
                .unwrap()
        })
        .collect();
    for child in &mut children {
        assert!(child.wait().unwrap().success(), "a bench worker failed");
    }
}

/// Median seconds between consecutive logged steps of a run (the first steps, warming up, left out).
fn step_seconds(metrics: &Path) -> f64 {
    let times: Vec<f64> = std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["time"].as_f64().unwrap())
        .collect();
    median(times.windows(2).skip(2).map(|w| w[1] - w[0]).collect())
}

/// `stylebridge train` of the synthetic stage-1 config with `processes` x `threads`.
fn train_step_seconds(dir: &Path, processes: usize, threads: usize, settings: &[String]) -> f64 {
    let out = dir.join(format!("p{processes}t{threads}"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_stylebridge"));
    if processes > 1 {
        command.args(["launch", "--nproc-per-node", &processes.to_string(), "--"]);
    }
    command.args(["train", dir.join("cfg.yaml").to_str().unwrap()]);
    for setting in settings.iter().cloned().chain([
        format!("output_dir={}", out.display()),
        format!("data.shards={}", dir.join("shards").display()),
        format!("train.threads={threads}"),
    ]) {
        command.args(["--set", &setting]);
    }
    let result = command.output().unwrap();
    assert!(result.status.success(), "training failed: {}", String::from_utf8_lossy(&result.stderr));
    step_seconds(&out.join("dp/metrics.jsonl"))
}

fn main() {
    if std::env::var_os(WORKER).is_some() {
        return worker();
    }
    println!("Gloo collectives, 2 processes on this CPU (1 thread each):");
    collectives_on_two_processes();
    // A Q-Former of 2 layers x 128 over a 1-layer MusicGen of 128, global batch 16, C+M+G.
    let dir = tempfile::tempdir().unwrap();
    data_parallel_support::write_shards(&dir.path().join("shards"), 64);
    std::fs::write(dir.path().join("cfg.yaml"), data_parallel_support::CONFIG).unwrap();
    let settings: Vec<String> = [
        "model.musicgen.tiny={hidden_size: 128, num_hidden_layers: 1, num_attention_heads: 4, ffn_dim: 512, codebook_size: 2048, num_codebooks: 4}",
        "model.qformer.hidden_size=128",
        "model.qformer.num_hidden_layers=2",
        "model.qformer.num_attention_heads=4",
        "model.qformer.intermediate_size=512",
        "model.qformer.num_query_tokens=8",
        "model.qformer.embed_dim=64",
        "model.objectives=CMG",
        "train.batch_size=16",
        "train.max_steps=8",
        "train.checkpoint_every=1000",
    ]
    .map(String::from)
    .to_vec();
    println!("stage-1 training, synthetic shards, global batch 16 (Q-Former 2 x 128, MusicGen 1 x 128, C+M+G), seconds per step:");
    let one = train_step_seconds(dir.path(), 1, 1, &settings);
    let one_two_threads = train_step_seconds(dir.path(), 1, 2, &settings);
    let two = train_step_seconds(dir.path(), 2, 1, &settings);
    println!("  1 process x 1 thread:  {one:.3} s");
    println!("  1 process x 2 threads: {one_two_threads:.3} s");
    println!("  2 processes x 1 thread (launch, Gloo): {two:.3} s  (speed-up {:.2}x over 1 x 1, {:.2}x over 1 x 2)", one / two, one_two_threads / two);
}
