//! `stylebridge launch --nproc-per-node N -- train cfg.yaml`: start N workers of this binary on
//! one node, as `torchrun --no-python --nproc-per-node N stylebridge train cfg.yaml` would, with
//! torchrun's variables (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`,
//! `MASTER_PORT`). SIGINT/SIGTERM/SIGHUP are passed on to the workers. When a worker fails, the
//! others are stopped and the launcher exits non-zero naming that worker.
use anyhow::{bail, ensure, Context, Result};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Number of worker processes (one per GPU when training on CUDA).
    #[arg(long, default_value_t = 1)]
    nproc_per_node: usize,
    /// Rendezvous port; by default a free port of this machine.
    #[arg(long)]
    master_port: Option<u16>,
    /// Seconds the workers get to stop after SIGTERM before they are killed.
    #[arg(long, default_value_t = 30.0)]
    stop_grace_seconds: f64,
    /// The stylebridge command each worker runs, after `--` (e.g. `-- train cfg.yaml`).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// The last signal received (0: none), set by the handler and read by the wait loop.
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn remember_signal(signal: libc::c_int) {
    SIGNAL.store(signal, Ordering::SeqCst);
}

const FORWARDED: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

struct Worker {
    rank: usize,
    child: Child,
    status: Option<ExitStatus>,
}

pub fn run(args: Args) -> Result<()> {
    ensure!(args.nproc_per_node > 0, "--nproc-per-node must be at least 1");
    ensure!(args.stop_grace_seconds >= 0.0 && args.stop_grace_seconds.is_finite(), "--stop-grace-seconds must be a non-negative number");
    ensure!(args.command.first().is_none_or(|c| c != "launch"), "a worker cannot itself be `launch`");
    let exe = std::env::current_exe().context("cannot find this executable to start the workers")?;
    let port = match args.master_port {
        Some(port) => port,
        None => free_port()?,
    };
    for signal in FORWARDED {
        // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, remember_signal as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    }
    let world = args.nproc_per_node;
    let mut workers = Vec::with_capacity(world);
    for rank in 0..world {
        let spawned = Command::new(&exe)
            .args(&args.command)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("GROUP_RANK", "0")
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_WORLD_SIZE", world.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .spawn();
        match spawned {
            Ok(child) => workers.push(Worker { rank, child, status: None }),
            Err(e) => {
                stop(&mut workers, libc::SIGTERM, args.stop_grace_seconds);
                return Err(e).with_context(|| format!("cannot start worker rank {rank} ({})", exe.display()));
            }
        }
    }
    eprintln!("launch: {world} workers (pids {}), rendezvous 127.0.0.1:{port}", pids(&workers));
    supervise(&mut workers, args.stop_grace_seconds)
}

/// Wait for every worker; the first failure or signal stops the rest.
fn supervise(workers: &mut [Worker], grace: f64) -> Result<()> {
    loop {
        let signal = SIGNAL.swap(0, Ordering::SeqCst);
        if signal != 0 {
            eprintln!("launch: got signal {signal}, passing it on to the workers");
            stop(workers, signal, grace);
            bail!("interrupted by signal {signal}; workers stopped");
        }
        for w in workers.iter_mut().filter(|w| w.status.is_none()) {
            w.status = w.child.try_wait().with_context(|| format!("cannot wait for worker rank {}", w.rank))?;
        }
        if let Some(failed) = workers.iter().find(|w| w.status.is_some_and(|s| !s.success())) {
            let (rank, pid, status) = (failed.rank, failed.child.id(), describe(failed.status.expect("failed worker has a status")));
            eprintln!("launch: worker rank {rank} (pid {pid}) {status}; stopping the other workers");
            stop(workers, libc::SIGTERM, grace);
            bail!("worker rank {rank} (pid {pid}) {status}");
        }
        if workers.iter().all(|w| w.status.is_some()) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Send `signal` to the workers still running; kill those still there after `grace` seconds.
fn stop(workers: &mut [Worker], signal: libc::c_int, grace: f64) {
    for w in workers.iter_mut().filter(|w| w.status.is_none()) {
        // SAFETY: plain kill(2) on a child we started and have not reaped.
        unsafe { libc::kill(w.child.id() as libc::pid_t, signal) };
    }
    let deadline = Instant::now() + Duration::from_secs_f64(grace);
    while Instant::now() < deadline && workers.iter_mut().any(|w| w.status.is_none() && w.child.try_wait().ok().flatten().is_none()) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for w in workers.iter_mut() {
        if w.status.is_none() && w.child.try_wait().ok().flatten().is_none() {
            eprintln!("launch: worker rank {} (pid {}) did not stop within {grace} s; killing it", w.rank, w.child.id());
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => format!("ended with {status}"),
    }
}

fn pids(workers: &[Worker]) -> String {
    workers.iter().map(|w| w.child.id().to_string()).collect::<Vec<_>>().join(", ")
}

/// A port nobody listens on now (the OS picks it); rank 0 binds it moments later.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port for the rendezvous")?;
    Ok(listener.local_addr().context("cannot read the free port")?.port())
}
