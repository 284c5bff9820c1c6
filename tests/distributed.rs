//! Two-process tests of the c10d layer on Gloo (CPU). Each test starts this same test binary
//! twice with torchrun's variables and `STYLEBRIDGE_TEST_WORKER` set; in those processes the test
//! body plays one rank and exits non-zero on any mismatch.
mod data_parallel_support;
mod shards_support;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use stylebridge::train::distributed::{self, Collective};
use stylebridge::train::losses;
use tch::{Device, Kind, Tensor};

const WORKER: &str = "STYLEBRIDGE_TEST_WORKER";

/// The collective of this worker process, or None in the parent test process.
fn worker_collective(timeout: Duration) -> Option<Box<dyn Collective>> {
    std::env::var_os(WORKER)?;
    tch::set_num_threads(1);
    let (collective, device) = distributed::from_env(Device::Cpu, timeout).unwrap_or_else(|e| fail(&e));
    assert_eq!(device, Device::Cpu);
    Some(collective)
}

fn fail(error: &anyhow::Error) -> ! {
    eprintln!("error: {error:#}");
    std::process::exit(3)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Start `world` workers that run the test `name` of this binary.
fn spawn(name: &str, world: usize) -> Vec<Child> {
    let port = free_port().to_string();
    (0..world)
        .map(|rank| {
            Command::new(std::env::current_exe().unwrap())
                .args([name, "--exact", "--nocapture", "--test-threads=1"])
                .env(WORKER, "1")
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect()
}

/// Wait for `child` at most `limit`, killing it past that; returns (exit code, stderr, seconds).
fn finish(child: &mut Child, limit: Duration) -> (Option<i32>, String, f64) {
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            child.kill().unwrap();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        stderr.read_to_string(&mut err).unwrap();
    }
    (status.code(), err, start.elapsed().as_secs_f64())
}

fn run_workers(name: &str, world: usize) {
    let mut children = spawn(name, world);
    for (rank, child) in children.iter_mut().enumerate() {
        let (code, err, _) = finish(child, Duration::from_secs(120));
        assert_eq!(code, Some(0), "rank {rank} failed:\n{err}");
    }
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).reshape([-1])).unwrap()
}

fn assert_close(a: &Tensor, b: &Tensor, tol: f64, what: &str) {
    let (a, b) = (to_vec(a), to_vec(b));
    assert_eq!(a.len(), b.len(), "{what}: sizes differ");
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what}[{i}]: {x} vs {y}");
    }
}

#[test]
fn all_reduce_broadcast_and_gather_with_gradient() {
    let Some(c) = worker_collective(Duration::from_secs(60)) else {
        return run_workers("all_reduce_broadcast_and_gather_with_gradient", 2);
    };
    let (rank, world) = (c.rank() as f64, c.world_size() as f64);
    // Sum, in several buckets of two kinds; a non-contiguous tensor keeps its layout.
    let a = Tensor::full([3, 2], rank + 1.0, (Kind::Float, Device::Cpu));
    let b = Tensor::full([4], 10.0 * (rank + 1.0), (Kind::Double, Device::Cpu));
    let t = Tensor::arange(6, (Kind::Float, Device::Cpu)).reshape([2, 3]).transpose(0, 1) * (rank + 1.0);
    c.all_reduce_sum(&[a.shallow_clone(), b.shallow_clone(), t.shallow_clone()]).unwrap_or_else(|e| fail(&e));
    assert_eq!(to_vec(&a), vec![3.0; 6]);
    assert_eq!(to_vec(&b), vec![30.0; 4]);
    assert_eq!(to_vec(&t), vec![0.0, 9.0, 3.0, 12.0, 6.0, 15.0]);
    // Broadcast into a parameter that requires grad: rank 0's values everywhere.
    let p = Tensor::full([5], rank, (Kind::Float, Device::Cpu)).set_requires_grad(true);
    c.broadcast(&[p.shallow_clone()]).unwrap_or_else(|e| fail(&e));
    assert_eq!(to_vec(&p), vec![0.0; 5]);
    // Gather with gradient: every rank's loss sum(w * gathered) sends w's rows back to their
    // owner, summed over ranks.
    let x = Tensor::full([2, 3], rank, (Kind::Double, Device::Cpu)).set_requires_grad(true);
    let all = c.all_gather(&x).unwrap_or_else(|e| fail(&e));
    assert_eq!(to_vec(&all), [vec![0.0; 6], vec![1.0; 6]].concat());
    let w = Tensor::arange(12, (Kind::Double, Device::Cpu)).reshape([4, 3]);
    (&all * &w).sum(Kind::Double).backward();
    assert_close(&x.grad(), &(w.narrow(0, 2 * rank as i64, 2) * world), 0.0, "gather gradient");
    c.barrier().unwrap_or_else(|e| fail(&e));
}

/// Rank `rank`'s rows of a global batch made the same way in every process.
fn global_batch(batch: i64, queries: i64, dim: i64) -> (Tensor, Tensor) {
    tch::manual_seed(7);
    let normalized = |x: Tensor| &x / x.norm_scalaropt_dim(2.0, [-1i64].as_slice(), true);
    (normalized(Tensor::randn([batch, queries, dim], (Kind::Double, Device::Cpu))), normalized(Tensor::randn([batch, dim], (Kind::Double, Device::Cpu))))
}

#[test]
fn global_batch_contrastive_loss_and_gradient_equal_one_process() {
    let Some(c) = worker_collective(Duration::from_secs(60)) else {
        return run_workers("global_batch_contrastive_loss_and_gradient_equal_one_process", 2);
    };
    let (rank, world) = (c.rank() as i64, c.world_size() as i64);
    let (local, dim) = (3, 8);
    let (audio, symbolic) = global_batch(local * world, 4, dim);
    tch::manual_seed(11);
    let projection = Tensor::randn([dim, dim], (Kind::Double, Device::Cpu)).set_requires_grad(true);
    let temp = Tensor::from(0.07f64);
    let loss = |audio: &Tensor, symbolic: &Tensor, gather: &dyn Fn(&Tensor) -> Tensor, offset: i64| {
        let (a, s) = (audio.matmul(&projection), symbolic.matmul(&projection));
        let (a2s, s2a) = losses::similarities(&a, &s, &gather(&a), &gather(&s), &temp);
        losses::contrastive(&a2s, &s2a, offset)
    };
    // One process over the concatenated batch.
    let single = loss(&audio, &symbolic, &|t| t.shallow_clone(), 0);
    single.backward();
    let single_grad = projection.grad().copy();
    let _ = projection.grad().zero_();
    // This rank's rows, features gathered with gradient, losses and gradients averaged over ranks.
    let rows = |t: &Tensor| t.narrow(0, rank * local, local);
    let mine = loss(&rows(&audio), &rows(&symbolic), &|t| c.all_gather(t).unwrap_or_else(|e| fail(&e)), rank * local);
    mine.backward();
    let (mean_loss, grad) = (mine.detach().reshape([1]), projection.grad());
    c.all_reduce_sum(&[mean_loss.shallow_clone(), grad.shallow_clone()]).unwrap_or_else(|e| fail(&e));
    assert_close(&(mean_loss / world as f64), &single.reshape([1]), 1e-12, "global-batch loss");
    assert_close(&(grad / world as f64), &single_grad, 1e-10, "global-batch gradient");
}

/// Worker side of the failure tests: one collective, then rank 1 waits to be killed or frozen
/// and rank 0 keeps calling collectives, which must fail naming rank 1.
fn doomed_pair(timeout: Duration) -> Option<()> {
    let c = worker_collective(timeout)?;
    let x = Tensor::ones([4], (Kind::Float, Device::Cpu));
    c.all_reduce_sum(&[x.shallow_clone()]).unwrap_or_else(|e| fail(&e));
    println!("ready");
    if c.rank() == 1 {
        std::thread::sleep(Duration::from_secs(600));
    }
    loop {
        c.all_reduce_sum(&[x.shallow_clone()]).unwrap_or_else(|e| fail(&e));
    }
}

/// Start the pair, wait for rank 1's "ready", do `to_rank_1` to it; rank 0 must exit non-zero
/// within the timeout plus a margin, naming rank 1.
fn check_lost_rank(name: &str, timeout_s: u64, signal: libc::c_int) {
    let mut children = spawn(name, 2);
    let mut out = children[1].stdout.take().unwrap();
    let mut seen = String::new();
    let mut byte = [0u8; 1];
    while !seen.contains("ready") && out.read(&mut byte).unwrap() == 1 {
        seen.push(byte[0] as char);
    }
    assert!(seen.contains("ready"), "rank 1 never got ready: {}", finish(&mut children[1], Duration::ZERO).1);
    unsafe { libc::kill(children[1].id() as libc::pid_t, signal) };
    let limit = Duration::from_secs(timeout_s + 30);
    let (code, err, seconds) = finish(&mut children[0], limit);
    unsafe { libc::kill(children[1].id() as libc::pid_t, libc::SIGKILL) };
    let _ = children[1].wait();
    assert!(code.is_some() && code != Some(0), "rank 0 did not fail cleanly (code {code:?}):\n{err}");
    assert!(err.contains("lost rank 1"), "rank 0's error does not name rank 1:\n{err}");
    assert!(seconds <= timeout_s as f64 + 10.0, "rank 0 took {seconds:.1} s for a {timeout_s} s timeout:\n{err}");
}

#[test]
fn killed_rank_is_named_by_the_survivor_within_the_timeout() {
    if doomed_pair(Duration::from_secs(20)).is_none() {
        check_lost_rank("killed_rank_is_named_by_the_survivor_within_the_timeout", 20, libc::SIGKILL);
    }
}

#[test]
fn frozen_rank_is_named_by_the_survivor_within_the_timeout() {
    if doomed_pair(Duration::from_secs(5)).is_none() {
        check_lost_rank("frozen_rank_is_named_by_the_survivor_within_the_timeout", 5, libc::SIGSTOP);
    }
}

fn stylebridge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stylebridge"))
}

#[test]
fn launch_gives_each_worker_its_rank() {
    let out = stylebridge().args(["launch", "--nproc-per-node", "2", "--", "info", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("\"version\"").count(), 2, "expected one report per worker:\n{stdout}");
}

#[test]
fn launch_names_the_failed_worker_and_exits_non_zero() {
    let out = stylebridge().args(["launch", "--nproc-per-node", "2", "--", "config", "/nonexistent/cfg.yaml"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("/nonexistent/cfg.yaml"), "the worker's own error is shown:\n{stderr}");
    assert!(stderr.contains("error: worker rank ") && stderr.contains("exited with status 1"), "{stderr}");
}

mod data_parallel_training {
    //! `stylebridge train` on 1 process vs `stylebridge launch --nproc-per-node 2 -- train` with
    //! the same config (global batch), on synthetic shards: the final weights must agree. The
    //! contrastive objective only, without dropout: the matching objective draws hard negatives
    //! from each rank's own generator, so its draws depend on the world size by design. Adam's eps
    //! is raised to 1e-3: with 1e-8 its first steps move every weight by about lr x sign(gradient),
    //! so weights whose gradient is a cancelling sum (pure rounding, which differs between one
    //! batch of 8 and two gathered batches of 4) jump by +-lr either way.
    use super::*;
    use data_parallel_support::{write_shards, CONFIG};
    use std::collections::BTreeMap;
    use std::path::Path;

    type Weights = BTreeMap<String, Tensor>;

    /// `stylebridge train` of the test config into `dir/out` (under `launch` when `processes` > 1).
    fn train_command(dir: &Path, out: &str, processes: usize, extra: &[&str]) -> Command {
        let mut command = stylebridge();
        if processes > 1 {
            command.args(["launch", "--nproc-per-node", &processes.to_string(), "--stop-grace-seconds", "5", "--"]);
        }
        command
            .args(["train", dir.join("cfg.yaml").to_str().unwrap(), "--set"])
            .arg(format!("output_dir={}", dir.join(out).display()))
            .arg("--set")
            .arg(format!("data.shards={}", dir.join("shards").display()))
            .args(extra);
        command
    }

    fn train(dir: &Path, out: &str, processes: usize, extra: &[&str]) {
        let result = train_command(dir, out, processes, extra).output().unwrap();
        assert!(result.status.success(), "{processes}-process training failed:\n{}", String::from_utf8_lossy(&result.stderr));
    }

    /// As [`train`], in an environment without the Makefile's variables (no venv on PATH, no
    /// STYLEBRIDGE_VENV), as a user's shell or a cluster job would start it: the embedded Python
    /// must still find its standard library and torch.
    fn train_outside_make(dir: &Path, out: &str, processes: usize) {
        let result = train_command(dir, out, processes, &[]).env_clear().env("PATH", "/usr/bin:/bin").output().unwrap();
        assert!(result.status.success(), "{processes}-process training failed:\n{}", String::from_utf8_lossy(&result.stderr));
    }

    /// The model's tensors by name at steps 3 and 6 of the run in `dir/out`.
    fn weights(dir: &Path, out: &str) -> [Weights; 2] {
        let checkpoints = dir.join(out).join("dp/checkpoints");
        ["step-00000003", "step-00000006"]
            .map(|step| Tensor::read_safetensors(checkpoints.join(step).join("model.safetensors")).unwrap().into_iter().collect())
    }

    /// (step, loss) of every line of the run's metrics.jsonl that has a loss.
    fn logged_losses(dir: &Path, out: &str) -> Vec<(u64, f64)> {
        let text = std::fs::read_to_string(dir.join(out).join("dp/metrics.jsonl")).unwrap();
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter_map(|v| Some((v["step"].as_u64()?, v["loss"].as_f64()?)))
            .collect()
    }

    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write_shards(&dir.path().join("shards"), 32);
        std::fs::write(dir.path().join("cfg.yaml"), CONFIG).unwrap();
        dir
    }

    /// Largest absolute difference between two sets of the same tensors, and where.
    fn max_difference(a: &Weights, b: &Weights) -> (f64, String) {
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        a.iter()
            .map(|(name, t)| ((t.to_kind(Kind::Double) - b[name].to_kind(Kind::Double)).abs().max().double_value(&[]), name.clone()))
            .fold((0.0, String::new()), |worst, d| if d.0 > worst.0 { d } else { worst })
    }

    #[test]
    fn two_processes_train_the_same_weights_as_one() {
        let dir = fixture();
        train(dir.path(), "one", 1, &[]);
        train_outside_make(dir.path(), "two", 2);
        let (one, two) = (weights(dir.path(), "one"), weights(dir.path(), "two"));
        for (k, step) in [3, 6].into_iter().enumerate() {
            let (diff, name) = max_difference(&one[k], &two[k]);
            eprintln!("step {step}: max difference {diff:e} at {name}");
            assert!(diff <= 1e-5, "step {step}: weights differ by {diff} at {name}");
        }
        // Logged losses are reduced over ranks, so both runs log the same global-batch figures.
        let (one_log, two_log) = (logged_losses(dir.path(), "one"), logged_losses(dir.path(), "two"));
        assert!(!one_log.is_empty());
        assert_eq!(one_log.iter().map(|l| l.0).collect::<Vec<_>>(), two_log.iter().map(|l| l.0).collect::<Vec<_>>());
        for ((step, a), (_, b)) in one_log.iter().zip(&two_log) {
            assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "step {step}: logged loss {a} on 1 process, {b} on 2");
        }
        // Training moved the weights, so the agreement is not that of two untouched models.
        let (moved, _) = max_difference(&one[0], &one[1]);
        eprintln!("largest change from step 3 to 6: {moved:e}");
        assert!(moved > 1e-4, "steps 3 to 6 changed no weight by more than {moved}");
        // Stopped after 3 steps on 2 processes, resumed on 1: the same run.
        train(dir.path(), "mixed", 2, &["--set", "train.max_steps=3"]);
        train(dir.path(), "mixed", 1, &["--resume"]);
        let mixed = weights(dir.path(), "mixed");
        let (diff, name) = max_difference(&one[1], &mixed[1]);
        assert!(diff <= 1e-5, "resumed on another world size: weights differ by {diff} at {name}");
    }

    /// Start a long 2-process training under `launch`; returns it once rank 0 has logged a step,
    /// with the worker pids and the launcher's stderr so far (more arrives on the channel).
    fn long_training(dir: &Path) -> (Child, Vec<u32>, std::sync::mpsc::Receiver<String>) {
        use std::io::BufRead;
        let mut launcher = train_command(dir, "long", 2, &["--set", "train.max_steps=100000", "--set", "train.epochs=100000", "--set", "train.timeout_s=20"])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let (send, lines) = std::sync::mpsc::channel();
        let stderr = std::io::BufReader::new(launcher.stderr.take().unwrap());
        std::thread::spawn(move || stderr.lines().map_while(Result::ok).try_for_each(|l| send.send(l)));
        let started = Instant::now();
        let mut pids = Vec::new();
        while pids.is_empty() || !dir.join("long/dp/metrics.jsonl").exists() {
            assert!(started.elapsed() < Duration::from_secs(90), "training did not start");
            if let Ok(line) = lines.recv_timeout(Duration::from_millis(100)) {
                if let Some(list) = line.strip_prefix("launch: 2 workers (pids ") {
                    pids = list.split(')').next().unwrap().split(", ").map(|p| p.parse().unwrap()).collect();
                }
            }
        }
        (launcher, pids, lines)
    }

    fn gone(pid: u32) -> bool {
        // Reaped children no longer exist (signal 0 only checks).
        unsafe { libc::kill(pid as libc::pid_t, 0) != 0 }
    }

    #[test]
    fn launch_stops_training_when_a_worker_is_killed() {
        let dir = fixture();
        let (mut launcher, pids, lines) = long_training(dir.path());
        unsafe { libc::kill(pids[1] as libc::pid_t, libc::SIGKILL) };
        let (code, _, seconds) = finish(&mut launcher, Duration::from_secs(60));
        let stderr: Vec<String> = lines.try_iter().collect();
        let stderr = stderr.join("\n");
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains(&format!("error: worker rank 1 (pid {}) was killed by signal 9", pids[1])), "{stderr}");
        assert!(seconds < 20.0, "took {seconds:.1} s:\n{stderr}");
        assert!(gone(pids[0]), "rank 0 still runs");
    }

    #[test]
    fn launch_passes_sigterm_on_and_fails() {
        let dir = fixture();
        let (mut launcher, pids, lines) = long_training(dir.path());
        unsafe { libc::kill(launcher.id() as libc::pid_t, libc::SIGTERM) };
        let (code, _, seconds) = finish(&mut launcher, Duration::from_secs(60));
        let stderr = lines.try_iter().collect::<Vec<_>>().join("\n");
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("interrupted by signal 15"), "{stderr}");
        assert!(seconds < 10.0, "took {seconds:.1} s:\n{stderr}");
        assert!(pids.iter().all(|&p| gone(p)), "a worker still runs");
    }
}
