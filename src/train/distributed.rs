//! Data-parallel training across processes on PyTorch's own c10d engine: NCCL between GPUs
//! (one process per GPU, device = local rank), Gloo on CPU.
//!
//! The wheel's libtorch holds c10d but not Gloo's headers, so instead of a C++ shim the
//! collectives go through `torch.distributed` in an embedded Python, with tensors handed over
//! without copies (`pyo3-tch`). This file is the only place that touches Python, and Python is
//! started only when the world has more than one process: a single-process run gets
//! [`SingleProcess`], whose collectives are identities.
//!
//! Who is who comes from the launcher: torchrun's `RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
//! `MASTER_ADDR`, `MASTER_PORT` (also set by `stylebridge launch`), or SLURM's `SLURM_PROCID`,
//! `SLURM_NTASKS`, `SLURM_LOCALID` with the first host of `SLURM_JOB_NODELIST`.
//!
//! Failures: every collective has the process group's timeout, and a watchdog thread beats
//! through the rendezvous store. A peer whose beats stop (killed, or frozen) is named in the
//! error of the collective that failed because of it, or, if this rank is not in a collective,
//! the watchdog ends the process with that message once the timeout has passed. Never a silent
//! hang.
use anyhow::{anyhow, bail, ensure, Context, Result};
use pyo3::prelude::*;
use pyo3::types::PyModule;
use pyo3_tch::PyTensor;
use std::ffi::CString;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tch::{Device, Tensor};

/// The collectives training needs. Rank 0 is the main rank: it alone writes checkpoints and logs.
pub trait Collective {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    fn is_main(&self) -> bool {
        self.rank() == 0
    }
    /// Sum `tensors` in place across processes (gradients after backward), in buckets.
    fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<()>;
    /// Concatenate `t` along dim 0 across processes in rank order. The gradient of every rank's
    /// loss flows back into each rank's own slice (summed over ranks, as LAVIS'
    /// `all_gather_with_grad`), so that a loss over the gathered batch, with gradients averaged
    /// over ranks, is the loss of the global batch.
    fn all_gather(&self, t: &Tensor) -> Result<Tensor>;
    /// Overwrite `tensors` in place with rank 0's values (parameters at start).
    fn broadcast(&self, tensors: &[Tensor]) -> Result<()>;
    fn barrier(&self) -> Result<()>;
}

/// A world of one process: every collective is the identity and Python is never started.
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _: &[Tensor]) -> Result<()> {
        Ok(())
    }
    fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.shallow_clone())
    }
    fn broadcast(&self, _: &[Tensor]) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}

/// This process's place in the job, as the launcher described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldInfo {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
}

/// torchrun's default rendezvous port, used under SLURM when `MASTER_PORT` is not set.
pub const DEFAULT_MASTER_PORT: u16 = 29500;

impl WorldInfo {
    pub fn single() -> Self {
        Self { rank: 0, world_size: 1, local_rank: 0, master_addr: "127.0.0.1".into(), master_port: DEFAULT_MASTER_PORT }
    }

    pub fn from_env() -> Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// torchrun's variables first, then SLURM's (`srun` sets those for every task); neither
    /// means one process.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let number = |name: &str| -> Result<Option<usize>> {
            var(name)
                .map(|v| v.trim().parse::<usize>().with_context(|| format!("environment variable {name}={v:?} is not a non-negative integer")))
                .transpose()
        };
        let (rank, world_size, local_rank, from) = if let Some(world_size) = number("WORLD_SIZE")? {
            let rank = number("RANK")?.context("WORLD_SIZE is set but RANK is not (launch with torchrun or `stylebridge launch`)")?;
            (rank, world_size, number("LOCAL_RANK")?.unwrap_or(rank), "WORLD_SIZE")
        } else if let (Some(world_size), Some(rank)) = (number("SLURM_NTASKS")?, number("SLURM_PROCID")?) {
            (rank, world_size, number("SLURM_LOCALID")?.unwrap_or(0), "SLURM_NTASKS")
        } else {
            return Ok(Self::single());
        };
        ensure!(world_size > 0, "{from} is 0");
        ensure!(rank < world_size, "rank {rank} is not below the world size {world_size} ({from})");
        let master_addr = match var("MASTER_ADDR") {
            Some(addr) if !addr.trim().is_empty() => addr.trim().to_string(),
            _ if world_size == 1 => "127.0.0.1".into(),
            _ => match var("SLURM_JOB_NODELIST").or_else(|| var("SLURM_NODELIST")) {
                Some(list) => first_host(&list)?,
                None => bail!("MASTER_ADDR is not set (nor SLURM_JOB_NODELIST): rank 0's host is unknown"),
            },
        };
        let master_port = match var("MASTER_PORT") {
            Some(port) => port.trim().parse::<u16>().with_context(|| format!("MASTER_PORT={port:?} is not a port number"))?,
            None if from == "WORLD_SIZE" && world_size > 1 => bail!("MASTER_PORT is not set: the rendezvous port is unknown"),
            None => DEFAULT_MASTER_PORT,
        };
        Ok(Self { rank, world_size, local_rank, master_addr, master_port })
    }
}

/// First host of a SLURM host list: `node[01-04,07],gpu7` -> `node01`, `r[1-2]-n[3-4]` -> `r1-n3`.
pub fn first_host(list: &str) -> Result<String> {
    let list = list.trim();
    // The first entry ends at the first comma outside brackets.
    let mut depth = 0i32;
    let end = list
        .char_indices()
        .find(|&(_, c)| {
            depth += match c {
                '[' => 1,
                ']' => -1,
                _ => 0,
            };
            c == ',' && depth == 0
        })
        .map_or(list.len(), |(i, _)| i);
    let entry = &list[..end];
    let mut host = String::new();
    let mut rest = entry;
    while let Some(open) = rest.find('[') {
        host.push_str(&rest[..open]);
        let close = rest[open..].find(']').with_context(|| format!("unclosed '[' in SLURM host list {list:?}"))? + open;
        // The first value of a bracket is the start of its first range, zero-padding kept.
        let first = rest[open + 1..close].split([',', '-']).next().unwrap_or("").trim();
        ensure!(!first.is_empty() && first.chars().all(|c| c.is_ascii_digit()), "bad range {:?} in SLURM host list {list:?}", &rest[open..=close]);
        host.push_str(first);
        rest = &rest[close + 1..];
    }
    ensure!(!rest.contains(']'), "unmatched ']' in SLURM host list {list:?}");
    host.push_str(rest);
    ensure!(!host.is_empty(), "empty SLURM host list {list:?}");
    Ok(host)
}

/// The collective layer for this process, and the device it trains on. One process: the
/// identity and `device` as given. More: c10d, NCCL with device `cuda:LOCAL_RANK` when `device`
/// is CUDA, Gloo on the CPU otherwise; `timeout` bounds every collective and peer silence.
pub fn from_env(device: Device, timeout: Duration) -> Result<(Box<dyn Collective>, Device)> {
    let world = WorldInfo::from_env()?;
    if world.world_size == 1 {
        return Ok((Box::new(SingleProcess), device));
    }
    let (backend, device) = if device.is_cuda() {
        let visible = tch::Cuda::device_count() as usize;
        ensure!(
            world.local_rank < visible,
            "local rank {} needs GPU {} but this node shows {visible} (one process per GPU: launch at most {visible} per node)",
            world.local_rank,
            world.local_rank
        );
        (Backend::Nccl, Device::Cuda(world.local_rank))
    } else {
        (Backend::Gloo, Device::Cpu)
    };
    Ok((Box::new(C10d::init(&world, backend, timeout)?), device))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nccl,
    Gloo,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Nccl => "nccl",
            Backend::Gloo => "gloo",
        }
    }
}

/// Gradients go over the wire in flat buckets of at most this size (DDP's default).
const BUCKET_BYTES: usize = 25 << 20;

/// The Python side: rendezvous, the collectives, and the heartbeat store.
const BRIDGE_PY: &str = r#"
import datetime, site, sys
site.addsitedir(SITE_PACKAGES)
import torch
import torch.distributed as dist

def init(backend, rank, world, addr, port, timeout_s, local_rank):
    timeout = datetime.timedelta(seconds=timeout_s)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    store = dist.TCPStore(addr, port, world, rank == 0, timeout=timeout)
    # Publish the first beat before the group forms, so every rank's key exists afterwards.
    store.set(f"stylebridge/beat/{rank}", "0")
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    # Beats use a connection of their own, so they never queue behind c10d's store traffic.
    return dist.TCPStore(addr, port, None, False, timeout=timeout, wait_for_workers=False)

def beat(store, rank, world, word):
    store.set(f"stylebridge/beat/{rank}", word)
    return [v.decode() for v in store.multi_get([f"stylebridge/beat/{r}" for r in range(world)])]

def all_reduce_sum(flat):
    dist.all_reduce(flat)

def broadcast(flat):
    dist.broadcast(flat, 0)

class GatherWithGrad(torch.autograd.Function):
    """LAVIS' GatherLayer (BOSSA utils/lavis.py): the gathered batch's gradients of every rank
    are summed, and each rank keeps the slice of its own rows."""
    @staticmethod
    def forward(ctx, t):
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t)
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad.chunk(dist.get_world_size(), 0)[dist.get_rank()]

def all_gather(t):
    return GatherWithGrad.apply(t.contiguous())

def barrier():
    dist.barrier()

def shutdown():
    if dist.is_initialized():
        dist.destroy_process_group()
"#;

/// Where the embedded interpreter finds torch: `$STYLEBRIDGE_VENV`'s site-packages, else the
/// virtualenv the binary was built against.
fn site_packages(py: Python<'_>) -> PyResult<String> {
    match std::env::var("STYLEBRIDGE_VENV") {
        Ok(venv) if !venv.is_empty() => {
            let version = py.version_info();
            Ok(format!("{venv}/lib/python{}.{}/site-packages", version.major, version.minor))
        }
        _ => Ok(env!("STYLEBRIDGE_BUILD_SITE_PACKAGES").to_string()),
    }
}

/// Point the embedded interpreter at its standard library before it starts (it cannot find it
/// from the path of a binary that is not `python`): `PYTHONHOME` if the user set it, else the base
/// installation of `$STYLEBRIDGE_VENV` (the `home` of its pyvenv.cfg), else the one the binary was
/// built against.
fn set_python_home() {
    if python_started() || std::env::var_os("PYTHONHOME").is_some() {
        return;
    }
    let from_venv = std::env::var("STYLEBRIDGE_VENV")
        .ok()
        .filter(|venv| !venv.is_empty())
        .and_then(|venv| std::fs::read_to_string(std::path::Path::new(&venv).join("pyvenv.cfg")).ok())
        .and_then(|cfg| base_prefix(&cfg));
    let home = from_venv.unwrap_or_else(|| env!("STYLEBRIDGE_BUILD_PYTHON_HOME").into());
    std::env::set_var("PYTHONHOME", home);
}

/// The base installation of a virtualenv from its pyvenv.cfg: `home = PREFIX/bin` -> PREFIX.
fn base_prefix(pyvenv_cfg: &str) -> Option<String> {
    let line = pyvenv_cfg.lines().find(|l| l.split('=').next().is_some_and(|k| k.trim() == "home"))?;
    let bin = std::path::Path::new(line.split_once('=')?.1.trim());
    Some(bin.parent()?.display().to_string())
}

/// This rank's state, as its beats tell the others.
const RUNNING: u8 = 0;
const DONE: u8 = 1;
const FAILED: u8 = 2;

/// What the watchdog has seen of every rank: the last beat word and when it changed.
struct Liveness {
    words: Vec<String>,
    changed: Vec<Instant>,
    /// The store itself became unreachable (it lives in rank 0).
    store_lost: Option<String>,
}

impl Liveness {
    fn new(world: usize) -> Self {
        Self { words: vec!["0".into(); world], changed: vec![Instant::now(); world], store_lost: None }
    }

    fn observe(&mut self, words: Vec<String>, now: Instant) {
        for (rank, word) in words.into_iter().enumerate() {
            if self.words[rank] != word {
                self.words[rank] = word;
                self.changed[rank] = now;
            }
        }
    }

    /// Ranks other than `me` that are still meant to run but have not beaten for `silence`.
    fn silent(&self, me: usize, now: Instant, silence: Duration) -> Vec<usize> {
        (0..self.words.len())
            .filter(|&r| r != me && self.words[r] != "done" && self.words[r] != "failed" && now - self.changed[r] >= silence)
            .collect()
    }

    fn failed(&self, me: usize) -> Vec<usize> {
        (0..self.words.len()).filter(|&r| r != me && self.words[r] == "failed").collect()
    }
}

fn ranks(list: &[usize]) -> String {
    list.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ")
}

/// c10d process group plus the watchdog.
pub struct C10d {
    rank: usize,
    world_size: usize,
    device: Device,
    bridge: Py<PyModule>,
    state: Arc<AtomicU8>,
    liveness: Arc<Mutex<Liveness>>,
    beat_interval: Duration,
    watchdog: Option<JoinHandle<()>>,
}

impl C10d {
    /// Join the process group (blocks until every rank has arrived, or `timeout`).
    pub fn init(world: &WorldInfo, backend: Backend, timeout: Duration) -> Result<Self> {
        set_python_home();
        let (bridge, beats) = Python::with_gil(|py| -> PyResult<(Py<PyModule>, PyObject)> {
            let code = format!("SITE_PACKAGES = {:?}\n{BRIDGE_PY}", site_packages(py)?);
            let code = CString::new(code).expect("bridge code has no NUL");
            let bridge = PyModule::from_code(py, &code, c"stylebridge_distributed.py", c"stylebridge_distributed")?;
            let beats = bridge.getattr("init")?.call1((
                backend.name(),
                world.rank,
                world.world_size,
                world.master_addr.as_str(),
                world.master_port,
                timeout.as_secs_f64(),
                world.local_rank,
            ))?;
            Ok((bridge.unbind(), beats.unbind()))
        })
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| {
            format!(
                "rank {} of {} cannot join the {} process group at {}:{} (torch comes from {}; set STYLEBRIDGE_VENV to the virtualenv holding torch if that is wrong)",
                world.rank,
                world.world_size,
                backend.name(),
                world.master_addr,
                world.master_port,
                Python::with_gil(|py| site_packages(py).unwrap_or_default())
            )
        })?;
        let device = match backend {
            Backend::Nccl => Device::Cuda(world.local_rank),
            Backend::Gloo => Device::Cpu,
        };
        let beat_interval = (timeout / 20).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let mut group = Self {
            rank: world.rank,
            world_size: world.world_size,
            device,
            bridge,
            state: Arc::new(AtomicU8::new(RUNNING)),
            liveness: Arc::new(Mutex::new(Liveness::new(world.world_size))),
            beat_interval,
            watchdog: None,
        };
        group.watchdog = Some(group.spawn_watchdog(beats, timeout)?);
        Ok(group)
    }

    /// Beat every `beat_interval`; end the process, naming the rank, when a peer is silent for
    /// `timeout` or the store (rank 0) is gone. On DONE/FAILED it publishes that word and stops.
    fn spawn_watchdog(&self, beats: PyObject, timeout: Duration) -> Result<JoinHandle<()>> {
        let (rank, world, interval) = (self.rank, self.world_size, self.beat_interval);
        let (state, liveness) = (Arc::clone(&self.state), Arc::clone(&self.liveness));
        let beat = Python::with_gil(|py| self.bridge.getattr(py, "beat")).map_err(|e| anyhow!("{e}"))?;
        let fatal = move |message: String| -> ! {
            eprintln!("error: rank {rank} of {world}: {message}; exiting");
            // Other threads may sit inside a collective that would never return: leave now,
            // without running exit handlers. Checkpoints are folders renamed into place when
            // complete, so none is left half-written.
            unsafe { libc::_exit(1) }
        };
        std::thread::Builder::new()
            .name(format!("c10d-watchdog-{rank}"))
            .spawn(move || {
                let mut count: u64 = 0;
                loop {
                    let word = match state.load(Ordering::SeqCst) {
                        DONE => "done".to_string(),
                        FAILED => "failed".to_string(),
                        _ => {
                            count += 1;
                            count.to_string()
                        }
                    };
                    let answer = Python::with_gil(|py| beat.call1(py, (&beats, rank, world, &word))?.extract::<Vec<String>>(py));
                    let now = Instant::now();
                    let mut seen = liveness.lock().unwrap_or_else(|p| p.into_inner());
                    match answer {
                        Ok(words) => seen.observe(words, now),
                        // Rank 0 finished and took the store with it: nothing left to watch.
                        Err(_) if seen.words[0] == "done" || state.load(Ordering::SeqCst) != RUNNING => return,
                        Err(e) => {
                            seen.store_lost = Some(e.to_string());
                            if rank != 0 {
                                fatal(format!("lost rank 0, which hosts the rendezvous store ({e})"));
                            }
                        }
                    }
                    if state.load(Ordering::SeqCst) != RUNNING {
                        return;
                    }
                    let silent = seen.silent(rank, now, timeout);
                    if !silent.is_empty() {
                        fatal(format!("lost rank {} (no heartbeat for {:.0} s, the timeout)", ranks(&silent), timeout.as_secs_f64()));
                    }
                    drop(seen);
                    std::thread::sleep(interval);
                }
            })
            .context("cannot start the watchdog thread")
    }

    /// Turn a failed collective into an error naming the rank to blame: wait a few beats, then
    /// report the peers that fell silent (killed or frozen) or that announced their own failure.
    fn diagnose(&self, what: &str, error: PyErr) -> anyhow::Error {
        let silence = self.beat_interval * 4;
        std::thread::sleep(silence + self.beat_interval);
        self.state.store(FAILED, Ordering::SeqCst);
        let seen = self.liveness.lock().unwrap_or_else(|p| p.into_inner());
        let silent = seen.silent(self.rank, Instant::now(), silence);
        let failed = seen.failed(self.rank);
        let cause = if let Some(store) = &seen.store_lost {
            format!("lost rank 0, which hosts the rendezvous store ({store})")
        } else if !silent.is_empty() {
            format!("lost rank {} (its heartbeat stopped)", ranks(&silent))
        } else if !failed.is_empty() {
            format!("rank {} failed (see its own error)", ranks(&failed))
        } else {
            "every peer is still alive".to_string()
        };
        anyhow!("rank {} of {}: {what} failed: {cause}: {error}", self.rank, self.world_size, error = one_line(&error))
    }

    /// Call a bridge function; a failure is diagnosed.
    fn call<T>(&self, what: &str, f: impl for<'py> FnOnce(Python<'py>, &Bound<'py, PyModule>) -> PyResult<T>) -> Result<T> {
        Python::with_gil(|py| f(py, self.bridge.bind(py))).map_err(|e| self.diagnose(what, e))
    }

    /// Run `op` on flat buckets of `tensors` (same kind and device, at most [`BUCKET_BYTES`]),
    /// then copy each bucket back into its tensors.
    fn bucketed(&self, what: &str, tensors: &[Tensor], op: &str) -> Result<()> {
        tch::no_grad(|| {
            for bucket in buckets(tensors, BUCKET_BYTES) {
                let parts: Vec<&Tensor> = bucket.iter().map(|&i| &tensors[i]).collect();
                for t in &parts {
                    ensure!(t.defined(), "{what}: a tensor is undefined (zero gradients instead of leaving them unset)");
                    ensure!(t.device() == self.device, "{what}: a tensor is on {:?}, the process group on {:?}", t.device(), self.device);
                }
                let flat = Tensor::cat(&parts.iter().map(|t| t.reshape([-1])).collect::<Vec<_>>(), 0);
                self.call(what, |_, bridge| bridge.getattr(op)?.call1((PyTensor(flat.shallow_clone()),)).map(drop))?;
                let mut offset = 0;
                for t in parts {
                    let n = t.numel() as i64;
                    t.shallow_clone().copy_(&flat.narrow(0, offset, n).view(t.size().as_slice()));
                    offset += n;
                }
            }
            Ok(())
        })
    }
}

/// A Python error on one line, for error chains.
fn one_line(error: &PyErr) -> String {
    error.to_string().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

/// Indices of `tensors` grouped into consecutive buckets of one kind and device, each at most
/// `max_bytes` (a larger tensor gets a bucket of its own).
fn buckets(tensors: &[Tensor], max_bytes: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut bytes = 0;
    let mut key = None;
    for (i, t) in tensors.iter().enumerate() {
        let size = t.numel() * t.kind().elt_size_in_bytes();
        let this_key = Some((t.kind(), t.device()));
        if out.is_empty() || key != this_key || bytes + size > max_bytes {
            out.push(Vec::new());
            bytes = 0;
            key = this_key;
        }
        out.last_mut().expect("a bucket was just pushed").push(i);
        bytes += size;
    }
    out
}

impl Collective for C10d {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world_size
    }
    fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<()> {
        self.bucketed("all-reduce", tensors, "all_reduce_sum")
    }
    fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        ensure!(t.device() == self.device, "all-gather: the tensor is on {:?}, the process group on {:?}", t.device(), self.device);
        self.call("all-gather", |_, bridge| Ok(bridge.getattr("all_gather")?.call1((PyTensor(t.shallow_clone()),))?.extract::<PyTensor>()?.0))
    }
    fn broadcast(&self, tensors: &[Tensor]) -> Result<()> {
        self.bucketed("broadcast", tensors, "broadcast")
    }
    fn barrier(&self) -> Result<()> {
        self.call("barrier", |_, bridge| bridge.getattr("barrier")?.call0().map(drop))
    }
}

impl Drop for C10d {
    /// Announce "done" (peers stop watching this rank), then leave the group.
    fn drop(&mut self) {
        let _ = self.state.compare_exchange(RUNNING, DONE, Ordering::SeqCst, Ordering::SeqCst);
        if let Some(watchdog) = self.watchdog.take() {
            let _ = watchdog.join();
        }
        let _ = Python::with_gil(|py| self.bridge.bind(py).getattr("shutdown")?.call0().map(drop));
    }
}

/// Whether this process has started its embedded Python (only multi-process runs do).
pub fn python_started() -> bool {
    unsafe { pyo3::ffi::Py_IsInitialized() != 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tch::Kind;

    fn world(vars: &[(&str, &str)]) -> Result<WorldInfo> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        WorldInfo::from_vars(|k| vars.get(k).cloned())
    }

    #[test]
    fn torchrun_variables() {
        let w = world(&[("RANK", "3"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "1"), ("MASTER_ADDR", "n1"), ("MASTER_PORT", "1234")]).unwrap();
        assert_eq!(w, WorldInfo { rank: 3, world_size: 8, local_rank: 1, master_addr: "n1".into(), master_port: 1234 });
    }

    #[test]
    fn slurm_variables_take_the_first_host() {
        let w = world(&[("SLURM_PROCID", "5"), ("SLURM_NTASKS", "8"), ("SLURM_LOCALID", "1"), ("SLURM_JOB_NODELIST", "gpu[07-08]")]).unwrap();
        assert_eq!(w, WorldInfo { rank: 5, world_size: 8, local_rank: 1, master_addr: "gpu07".into(), master_port: DEFAULT_MASTER_PORT });
        let w = world(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2"), ("SLURM_JOB_NODELIST", "a"), ("MASTER_PORT", "4000")]).unwrap();
        assert_eq!((w.master_addr.as_str(), w.master_port), ("a", 4000));
    }

    #[test]
    fn torchrun_wins_over_slurm_and_nothing_means_one_process() {
        let w = world(&[("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "x"), ("MASTER_PORT", "1"), ("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1")]).unwrap();
        assert_eq!((w.rank, w.world_size, w.local_rank), (1, 2, 1));
        assert_eq!(world(&[]).unwrap(), WorldInfo::single());
        assert_eq!(world(&[("SLURM_NTASKS", "4")]).unwrap(), WorldInfo::single(), "salloc shell without srun");
    }

    #[test]
    fn bad_variables_are_named() {
        let err = |vars: &[(&str, &str)]| format!("{:#}", world(vars).unwrap_err());
        assert!(err(&[("RANK", "x"), ("WORLD_SIZE", "2")]).contains("RANK=\"x\""));
        assert!(err(&[("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "a"), ("MASTER_PORT", "1")]).contains("rank 2 is not below"));
        assert!(err(&[("WORLD_SIZE", "2")]).contains("RANK is not"));
        assert!(err(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "1")]).contains("MASTER_ADDR"));
        assert!(err(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "a")]).contains("MASTER_PORT"));
        assert!(err(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "a"), ("MASTER_PORT", "70000")]).contains("MASTER_PORT=\"70000\""));
    }

    #[test]
    fn slurm_host_lists() {
        for (list, first) in [
            ("node[01-04],gpu7", "node01"),
            ("gpu7,node[01-04]", "gpu7"),
            ("node[07,09-12]", "node07"),
            ("rack[2-3]-node[010-012]", "rack2-node010"),
            ("n[1-2]-ib", "n1-ib"),
            (" single ", "single"),
        ] {
            assert_eq!(first_host(list).unwrap(), first, "{list}");
        }
        for bad in ["node[01-04", "node[]", "node[a-b]", "", "x]"] {
            assert!(first_host(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn buckets_split_by_size_kind_and_device() {
        let f = |n: i64| Tensor::zeros([n], (Kind::Float, Device::Cpu));
        let tensors = [f(10), f(10), f(30), Tensor::zeros([2], (Kind::Double, Device::Cpu)), f(1)];
        assert_eq!(buckets(&tensors, 80), vec![vec![0, 1], vec![2], vec![3], vec![4]]);
        assert_eq!(buckets(&tensors, 1 << 20), vec![vec![0, 1, 2], vec![3], vec![4]]);
    }

    #[test]
    fn liveness_names_silent_ranks_but_not_finished_ones() {
        let t0 = Instant::now();
        let mut seen = Liveness::new(3);
        seen.observe(vec!["1".into(), "1".into(), "1".into()], t0);
        let later = t0 + Duration::from_secs(5);
        seen.observe(vec!["2".into(), "1".into(), "done".into()], later);
        assert_eq!(seen.silent(0, later, Duration::from_secs(3)), vec![1]);
        assert!(seen.silent(0, later, Duration::from_secs(6)).is_empty());
        seen.observe(vec!["2".into(), "failed".into(), "done".into()], later);
        assert_eq!(seen.failed(0), vec![1]);
        assert!(seen.silent(0, later + Duration::from_secs(9), Duration::from_secs(3)).is_empty(), "failed and done ranks are not silent");
    }

    #[test]
    fn venv_base_installation() {
        let cfg = "home = /opt/py/3.11.7/bin\ninclude-system-site-packages = false\nversion = 3.11.7\n";
        assert_eq!(base_prefix(cfg).as_deref(), Some("/opt/py/3.11.7"));
        assert_eq!(base_prefix("version = 3.11.7\n"), None);
    }

    #[test]
    fn one_process_never_starts_python() {
        let single = SingleProcess;
        let x = Tensor::ones([2, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let gathered = single.all_gather(&x).unwrap();
        gathered.sum(Kind::Float).backward();
        assert_eq!(x.grad().sum(Kind::Float).double_value(&[]), 6.0);
        let y = Tensor::from_slice(&[1.5, 2.0]);
        single.all_reduce_sum(&[y.shallow_clone()]).unwrap();
        single.broadcast(&[y.shallow_clone()]).unwrap();
        assert_eq!(Vec::<f64>::try_from(&y).unwrap(), [1.5, 2.0]);
        assert!(!python_started(), "the single-process path started Python");
    }
}
