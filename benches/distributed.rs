//! Data-parallel cost on CPU (Gloo), 1 vs 2 processes:
//! - the collectives of one stage-1 step: the gradient all-reduce (bucketed, sizes of the demo
//!   Q-Former and of BOSSA's BERT-base Q-Former) and the contrastive feature gather (batch 32 x
//!   32 queries x 256 and 32 x 256 per rank, with gradient), time per call;
//! - end to end, when `stylebridge train` is built: seconds per optimizer step of the demo config,
//!   1 process vs `stylebridge launch --nproc-per-node 2` with the same global batch.
//!
//! ```text
//! make cargo ARGS="bench --bench distributed"
//! ```
//! Each figure is the median of several calls after a warm-up; the machine is shared, so expect
//! noise of 10-20 %.
use std::process::Command;
use std::time::{Duration, Instant};
use stylebridge::train::distributed::{self, Collective};
use tch::{Device, Kind, Tensor};

const WORKER: &str = "STYLEBRIDGE_BENCH_WORKER";

/// Gradient sizes (parameters): the demo Q-Former and BOSSA's (BERT-base, 12 layers, with
/// cross-attention every other layer).
const GRADIENTS: [(&str, i64); 2] = [("demo Q-Former", 2_000_000), ("BOSSA Q-Former", 107_000_000)];

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

/// Seconds per step of `stylebridge train` on the demo config, read from the run's metrics.
fn demo_step_seconds(processes: usize, steps: u64) -> Option<f64> {
    let bin = env!("CARGO_BIN_EXE_stylebridge");
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(bin);
    if processes > 1 {
        command.args(["launch", "--nproc-per-node", &processes.to_string(), "--"]);
    }
    let out_dir = dir.path().display().to_string();
    command.args(["train", "experiments/demo.yaml", "--set", &format!("output_dir={out_dir}"), "--set", &format!("train.max_steps={steps}")]);
    let start = Instant::now();
    let out = command.output().unwrap();
    if !out.status.success() {
        println!("  demo training with {processes} process(es) failed: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""));
        return None;
    }
    Some(start.elapsed().as_secs_f64() / steps as f64)
}

fn main() {
    if std::env::var_os(WORKER).is_some() {
        return worker();
    }
    println!("Gloo collectives, 2 processes on this CPU (1 thread each):");
    collectives_on_two_processes();
    let train_built = Command::new(env!("CARGO_BIN_EXE_stylebridge")).args(["train", "--help"]).output().is_ok_and(|o| o.status.success());
    if !train_built {
        println!("demo-config scaling: skipped (`stylebridge train` is not part of this build)");
        return;
    }
    let steps = 20;
    println!("demo config, {steps} optimizer steps, same global batch (wall time per step incl. start-up):");
    let one = demo_step_seconds(1, steps);
    let two = demo_step_seconds(2, steps);
    if let (Some(one), Some(two)) = (one, two) {
        println!("  1 process: {one:.3} s/step; 2 processes: {two:.3} s/step; speed-up {:.2}x", one / two);
    }
}
