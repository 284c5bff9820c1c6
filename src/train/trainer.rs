//! The training loop shared by both stages.
//!
//! A [`Task`] (stage 1 now, stage 2 later) owns its model and data and computes the loss of a
//! micro-batch; the [`Trainer`] owns everything around it: AdamW, the warm-up + cosine schedule,
//! gradient accumulation and clipping, fp16 loss scaling, checkpoints, exact resume, metrics,
//! validation and the progress display. Data parallelism enters only through [`Collective`]
//! (gradient all-reduce, feature gathering): [`SingleProcess`] is the one-process case.
//!
//! Exact resume: micro-batch `k` of optimizer step `s` reseeds torch from (seed, s, k) before
//! its forward pass (dropout, hard-negative draws), the loader's draws are keyed by (seed, epoch,
//! row) and its batches by (epoch, position), and a checkpoint holds the weights, the optimizer
//! moments, the loss scaler and the loader position. So a resumed run repeats exactly what the
//! uninterrupted run would have computed.
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

use super::amp::{GradScaler, ScalerConfig};
use super::checkpoint::{self, Backbone, CheckpointDir, TensorGroups};
use super::metrics::MetricsLog;
use super::optimizer::{AdamW, AdamWConfig};
use super::schedule::{learning_rate, ScheduleConfig};
use crate::data::loader::{Batch, Loader, ValidationSet};
use crate::progress::Progress;
use crate::yaml::{Problems, Validate};

pub use super::distributed::{Collective, SingleProcess};

/// Numeric precision of the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    /// bfloat16 compute for the frozen backbone (and autocast where the device has it); no
    /// loss scaling needed.
    Bf16,
    /// float16 compute with dynamic loss scaling (GradScaler).
    Fp16,
}

impl Precision {
    /// Dtype of frozen-backbone computations.
    pub fn compute_kind(self) -> Kind {
        match self {
            Precision::Fp32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
            Precision::Fp16 => Kind::Half,
        }
    }
}

/// The `train:` config section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub epochs: u64,
    /// Stop after this many optimizer steps (the schedule still spans `epochs`, unless set).
    pub max_steps: Option<u64>,
    /// Global batch of one optimizer step (all processes, all accumulated micro-batches).
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Clip the global gradient norm to this value; 0 = no clipping.
    pub clip_grad_norm: f64,
    pub precision: Precision,
    pub optimizer: AdamWConfig,
    pub schedule: ScheduleConfig,
    pub scaler: ScalerConfig,
    /// Metrics every N optimizer steps.
    pub log_every: u64,
    /// Validation (loss and retrieval figures) every M steps and at the end; 0 = only at the end.
    pub eval_every: u64,
    /// Validation batches (all when unset).
    pub eval_batches: Option<usize>,
    pub checkpoint_every: u64,
    pub keep_last: usize,
    /// "cpu", "cuda", "cuda:N" or "auto".
    pub device: String,
    /// Torch intra-op threads (unset: libtorch's default).
    pub threads: Option<usize>,
    /// Deterministic kernels (cuDNN) where the device has them.
    pub deterministic: bool,
    /// Seconds a collective may wait for the other processes before failing.
    pub timeout_s: u64,
}

impl Default for TrainConfig {
    /// BOSSA stage 1: 10 epochs, batch 128 (4 GPUs x 32), clip 1, fp16, AdamW 1e-4 with 1k warm-up.
    fn default() -> Self {
        Self {
            epochs: 10,
            max_steps: None,
            batch_size: 128,
            grad_accum: 1,
            clip_grad_norm: 1.0,
            precision: Precision::Fp16,
            optimizer: AdamWConfig::default(),
            schedule: ScheduleConfig::default(),
            scaler: ScalerConfig::default(),
            log_every: 50,
            eval_every: 1000,
            eval_batches: None,
            checkpoint_every: 1000,
            keep_last: 3,
            device: "auto".into(),
            threads: None,
            deterministic: false,
            timeout_s: 300,
        }
    }
}

impl TrainConfig {
    pub fn device(&self) -> Result<Device> {
        crate::device::parse(&self.device).context("train.device")
    }
}

impl Validate for TrainConfig {
    fn validate(&self, at: &str, p: &mut Problems) {
        p.check(self.epochs >= 1, at, "epochs", || format!("is {}; must be at least 1", self.epochs));
        p.check(self.max_steps != Some(0), at, "max_steps", || "is 0; must be at least 1 (or unset)".into());
        p.check(self.batch_size >= 1, at, "batch_size", || "is 0; must be at least 1 (the global batch of one step)".into());
        p.check(self.grad_accum >= 1, at, "grad_accum", || "is 0; must be at least 1".into());
        p.check(self.batch_size.is_multiple_of(self.grad_accum.max(1)), at, "batch_size", || {
            format!("({}) does not split into grad_accum ({}) micro-batches", self.batch_size, self.grad_accum)
        });
        let clip = self.clip_grad_norm;
        p.check(clip.is_finite() && clip >= 0.0, at, "clip_grad_norm", || format!("is {clip}; must be 0 (off) or positive"));
        self.optimizer.validate(&format!("{at}.optimizer"), p);
        self.schedule.validate(&format!("{at}.schedule"), p);
        self.scaler.validate(&format!("{at}.scaler"), p);
        p.check(self.log_every >= 1, at, "log_every", || "is 0; must be at least 1".into());
        p.check(self.keep_last >= 1, at, "keep_last", || "is 0; must be at least 1".into());
        p.check(self.threads != Some(0), at, "threads", || "is 0; must be at least 1 (or unset)".into());
        p.check(self.timeout_s >= 1, at, "timeout_s", || "is 0; must be at least 1".into());
        let known = self.device == "auto" || self.device == "cpu" || self.device == "cuda" || self.device.strip_prefix("cuda:").is_some_and(|i| i.parse::<usize>().is_ok());
        p.check(known, at, "device", || format!("is `{}`; expected cpu, cuda, cuda:N or auto", self.device));
    }
}

/// Loss of one micro-batch: `total` is differentiated; `parts` are logged (e.g. per objective).
pub struct MicroLoss {
    pub total: Tensor,
    pub parts: Vec<(String, f64)>,
}

/// Where a task's micro-batches come from: the loader, for every stage.
pub trait BatchSource {
    type Batch;
    /// Micro-batches per epoch on this process.
    fn batches_per_epoch(&self) -> usize;
    /// Samples in a micro-batch (for throughput).
    fn batch_samples(&self, batch: &Self::Batch) -> usize;
    /// The micro-batches of `epoch` from position `start` on (independent of the source, so the
    /// loop can run the model while the iterator prefetches).
    fn batches(&self, epoch: u64, start: usize) -> Box<dyn Iterator<Item = Self::Batch>>;
}

impl BatchSource for Loader {
    type Batch = Batch;

    fn batches_per_epoch(&self) -> usize {
        Loader::batches_per_epoch(self)
    }

    fn batch_samples(&self, batch: &Batch) -> usize {
        batch.len()
    }

    fn batches(&self, epoch: u64, start: usize) -> Box<dyn Iterator<Item = Batch>> {
        Box::new(Loader::batches(self, epoch, start))
    }
}

/// The micro-batch type of a task.
pub type BatchOf<T> = <<T as Task>::Data as BatchSource>::Batch;

/// What a training stage provides to the loop.
pub trait Task {
    type Data: BatchSource;
    /// The variables the optimizer trains, by their checkpoint names (in any order: the
    /// trainer sorts them by name, so every rank sees one order).
    fn parameters(&self) -> Vec<(String, Tensor)>;
    /// The model tensors a checkpoint keeps and a resume restores (torchtitan's `states`): by
    /// default what trains; frozen backbones are named by [`Task::backbones`] instead, so a
    /// stage-2 checkpoint never copies MuseCoco-1B's 4 GB.
    fn model_state(&self) -> Vec<(String, Tensor)> {
        self.parameters()
    }
    /// A parameter's learning rate relative to the schedule's, by its checkpoint name.
    fn lr_scale(&self, _name: &str) -> f64 {
        1.0
    }
    /// The frozen checkpoints the run depends on, recorded (with their sha256) in every checkpoint.
    fn backbones(&self) -> Vec<Backbone> {
        Vec::new()
    }
    fn device(&self) -> Device;
    /// The training micro-batches of this process.
    fn data(&self) -> &Self::Data;
    /// Forward pass of one micro-batch in training mode.
    fn loss(&mut self, batch: &BatchOf<Self>) -> Result<MicroLoss>;
    /// Validation figures; the one named `val/loss` selects the best checkpoint.
    fn validate(&mut self, max_batches: Option<usize>) -> Result<Vec<(String, f64)>>;
}

/// Everything a checkpoint holds besides tensors.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Optimizer steps done (skipped fp16 steps included).
    pub step: u64,
    /// Next micro-batch: (epoch, position within the epoch).
    pub epoch: u64,
    pub position: usize,
    pub samples: u64,
    pub skipped_steps: u64,
    pub best_val_loss: Option<f64>,
    pub seed: u64,
}

impl TrainState {
    fn start(seed: u64) -> Self {
        Self { step: 0, epoch: 0, position: 0, samples: 0, skipped_steps: 0, best_val_loss: None, seed }
    }
}

/// A task's parameters in name order: collectives pair tensors by position, so every rank must
/// list them alike (a `VarStore`'s own order differs between processes).
fn sorted_parameters<T: Task + ?Sized>(task: &T) -> Vec<(String, Tensor)> {
    let mut params = task.parameters();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    params
}

/// Seed of micro-batch `micro` of step `step`: a SplitMix64 mix, so neighbouring steps get
/// unrelated streams.
pub fn step_seed(seed: u64, step: u64, micro: u64) -> i64 {
    let mut z = seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ micro.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) >> 1) as i64
}

pub struct Trainer<'a> {
    cfg: TrainConfig,
    seed: u64,
    run_dir: PathBuf,
    resolved_config: String,
    collective: &'a dyn Collective,
    /// Print plain log lines (stderr) besides the progress display.
    pub quiet: bool,
}

/// The end of a run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub state: TrainState,
    pub last_checkpoint: PathBuf,
    pub final_validation: Vec<(String, f64)>,
}

/// The loop's mutable state: optimizer, loss scaler, counters, the metrics sinks.
struct Run {
    optimizer: AdamW,
    scaler: GradScaler,
    state: TrainState,
    window: LogWindow,
    metrics: Option<MetricsLog>,
    total_steps: u64,
    end_step: u64,
    last_checkpoint: PathBuf,
}

/// What one optimizer step reports to the log.
struct StepReport {
    lr: f64,
    grad_norm: f64,
}

impl<'a> Trainer<'a> {
    pub fn new(cfg: TrainConfig, seed: u64, run_dir: &Path, resolved_config: String, collective: &'a dyn Collective) -> Self {
        Self { cfg, seed, run_dir: run_dir.to_path_buf(), resolved_config, collective, quiet: false }
    }

    /// Optimizer steps the schedule spans: `epochs` worth, whatever `max_steps` says, so that a
    /// run stopped early and resumed follows the same schedule as an uninterrupted one.
    pub fn total_steps(&self, batches_per_epoch: usize) -> u64 {
        (batches_per_epoch / self.cfg.grad_accum.max(1)) as u64 * self.cfg.epochs
    }

    fn is_main(&self) -> bool {
        self.collective.rank() == 0
    }

    fn checkpoints(&self) -> CheckpointDir {
        CheckpointDir::new(self.run_dir.join("checkpoints"), self.cfg.keep_last)
    }

    /// The checkpoint a `--resume` continues from (read-only: nothing in the run folder changes).
    pub fn latest(&self) -> Result<Option<PathBuf>> {
        self.checkpoints().latest_complete()
    }

    /// Train `task` from scratch, or from the latest checkpoint when `resume`. Everything that
    /// can refuse the run (too little data, a checkpoint that does not fit the model or was
    /// trained on other backbones) is checked before the run folder is touched.
    pub fn fit<T: Task>(&self, task: &mut T, resume: bool) -> Result<Outcome> {
        let mut run = self.start(task, resume)?;
        // Every rank starts from rank 0's weights, matched by name (see `sorted_parameters`).
        self.collective.broadcast(&sorted_parameters(task).into_iter().map(|(_, t)| t).collect::<Vec<_>>())?;
        std::fs::create_dir_all(&self.run_dir).with_context(|| format!("cannot create the run folder {}", self.run_dir.display()))?;
        if self.is_main() {
            crate::atomic::write(&self.run_dir.join(crate::yaml::RESOLVED_NAME), self.resolved_config.as_bytes())?;
            run.metrics = Some(MetricsLog::open(&self.run_dir)?);
        }
        let todo = run.end_step.saturating_sub(run.state.step);
        let progress = if self.is_main() && !self.quiet { Progress::new("train", todo) } else { Progress::hidden("train", todo) };
        let mut batches = task.data().batches(run.state.epoch, run.state.position);
        let mut final_validation = Vec::new();
        while run.state.step < run.end_step {
            let (parts, samples, report) = self.step(task, &mut run, &mut batches)?;
            run.window.add(samples, &parts);
            progress.inc(1);
            let last = run.state.step == run.end_step;
            if run.state.step % self.cfg.log_every.max(1) == 0 || last {
                self.log_window(&mut run, &report, task.device())?;
            }
            let mut is_best = false;
            if last || (self.cfg.eval_every > 0 && run.state.step % self.cfg.eval_every == 0) {
                let figures = self.validate(task, &mut run, &mut is_best)?;
                if last {
                    final_validation = figures;
                }
            }
            if last || is_best || (self.cfg.checkpoint_every > 0 && run.state.step % self.cfg.checkpoint_every == 0) {
                self.checkpoint(task, &mut run, is_best)?;
            }
        }
        progress.finish();
        Ok(Outcome { state: run.state, last_checkpoint: run.last_checkpoint, final_validation })
    }

    /// Fresh state, or the latest checkpoint restored strictly; nothing is written.
    fn start<T: Task>(&self, task: &mut T, resume: bool) -> Result<Run> {
        let batches_per_epoch = task.data().batches_per_epoch();
        let accum = self.cfg.grad_accum.max(1);
        if batches_per_epoch < accum {
            bail!(
                "the training data gives {batches_per_epoch} micro-batches per epoch, fewer than the {accum} one optimizer \
                 step accumulates (global batch train.batch_size = {}; lower it or train.grad_accum, or prepare more data)",
                self.cfg.batch_size
            );
        }
        let total_steps = self.total_steps(batches_per_epoch);
        let mut run = Run {
            optimizer: AdamW::new(task.parameters(), self.cfg.optimizer).with_lr_scales(|name| task.lr_scale(name)),
            scaler: GradScaler::new(self.cfg.scaler),
            state: TrainState::start(self.seed),
            window: LogWindow::new(),
            metrics: None,
            total_steps,
            end_step: self.cfg.max_steps.unwrap_or(total_steps),
            last_checkpoint: PathBuf::new(),
        };
        let ckpts = self.checkpoints();
        match (resume, ckpts.latest_complete()?) {
            (true, Some(dir)) => {
                run.state = restore(&dir, task, &mut run.optimizer, &mut run.scaler)?;
                if run.state.seed != self.seed {
                    bail!("{} was trained with seed {}, the config says {}", dir.display(), run.state.seed, self.seed);
                }
                self.log(&format!("resuming from {} (step {}, epoch {}, batch {})", dir.display(), run.state.step, run.state.epoch, run.state.position));
                run.last_checkpoint = dir;
            }
            (true, None) => self.log(&format!("--resume: no checkpoint in {}; starting from scratch", ckpts.root().display())),
            (false, Some(dir)) => bail!(
                "{} already holds checkpoints (latest {}); pass --resume to continue it, or change `name`/`output_dir`",
                self.run_dir.display(),
                dir.display()
            ),
            (false, None) => {}
        }
        Ok(run)
    }

    /// One optimizer step: the micro-batches' forward and backward passes, the gradient
    /// all-reduce, fp16 unscaling, clipping and the AdamW update.
    fn step<T: Task>(&self, task: &mut T, run: &mut Run, batches: &mut Box<dyn Iterator<Item = BatchOf<T>>>) -> Result<(BTreeMap<String, f64>, usize, StepReport)> {
        let cfg = &self.cfg;
        let accum = cfg.grad_accum.max(1);
        let step = run.state.step;
        run.optimizer.zero_grad();
        let mut parts: BTreeMap<String, f64> = BTreeMap::new();
        let mut samples = 0usize;
        for micro in 0..accum {
            let batch = loop {
                match batches.next() {
                    Some(b) => break b,
                    None => {
                        run.state.epoch += 1;
                        run.state.position = 0;
                        *batches = task.data().batches(run.state.epoch, 0);
                    }
                }
            };
            run.state.position += 1;
            samples += task.data().batch_samples(&batch);
            tch::manual_seed(step_seed(self.seed, step, micro as u64));
            let loss = task.loss(&batch)?;
            let value = loss.total.double_value(&[]);
            if !value.is_finite() && cfg.precision != Precision::Fp16 {
                bail!(
                    "loss is {value} at step {step} (micro-batch {micro}, epoch {}, batch {}); parts: {}. \
                     Lower the learning rate or check the data; fp16 runs skip such steps instead",
                    run.state.epoch,
                    run.state.position - 1,
                    format_parts(&loss.parts)
                );
            }
            for (name, v) in &loss.parts {
                *parts.entry(name.clone()).or_default() += v / accum as f64;
            }
            let scaled = &loss.total / accum as f64;
            let scaled = if cfg.precision == Precision::Fp16 { run.scaler.scale_loss(&scaled) } else { scaled };
            scaled.backward();
        }
        let grads = run.optimizer.grads();
        let world = self.collective.world_size();
        if world > 1 {
            self.collective.all_reduce_sum(&grads)?;
            tch::no_grad(|| {
                for g in &grads {
                    let _ = g.shallow_clone().g_div_scalar_(world as f64);
                }
            });
        }
        let found_inf = if cfg.precision == Precision::Fp16 {
            let local = Tensor::from_slice(&[run.scaler.unscale(&grads) as i32 as f32]).to_device(task.device());
            self.collective.all_reduce_sum(&[local.shallow_clone()])?;
            local.double_value(&[0]) > 0.0
        } else {
            false
        };
        let lr = learning_rate(&cfg.schedule, step, run.total_steps);
        let grad_norm = if found_inf {
            run.state.skipped_steps += 1;
            f64::NAN
        } else {
            let norm = run.optimizer.clip_grad_norm(if cfg.clip_grad_norm > 0.0 { cfg.clip_grad_norm } else { f64::INFINITY });
            run.optimizer.step(lr);
            norm
        };
        if cfg.precision == Precision::Fp16 {
            run.scaler.update(found_inf);
        }
        run.state.step += 1;
        run.state.samples += samples as u64;
        Ok((parts, samples, StepReport { lr, grad_norm }))
    }

    /// Log the window since the last line. Every rank drains its window and takes part in the
    /// reduction, so the figures describe the global batch; rank 0 writes them.
    fn log_window(&self, run: &mut Run, report: &StepReport, device: Device) -> Result<()> {
        let mut scalars = run.window.drain();
        self.reduce_across_ranks(&mut scalars, device)?;
        let fp16 = self.cfg.precision == Precision::Fp16;
        scalars.push(("lr".into(), report.lr));
        scalars.push(("grad_norm".into(), report.grad_norm));
        scalars.push(("loss_scale".into(), if fp16 { run.scaler.scale() } else { 1.0 }));
        scalars.push(("skipped_steps".into(), run.state.skipped_steps as f64));
        scalars.push(("epoch".into(), run.state.epoch as f64));
        scalars.extend(super::metrics::memory_mib());
        self.log(&format!("step {}/{} {}", run.state.step, run.end_step, format_parts(&scalars)));
        if let Some(m) = run.metrics.as_mut() {
            m.log(run.state.step, &as_refs(&scalars))?;
        }
        Ok(())
    }

    /// Validation figures; a lower finite `val/loss` than any before marks the step best.
    fn validate<T: Task>(&self, task: &mut T, run: &mut Run, is_best: &mut bool) -> Result<Vec<(String, f64)>> {
        let figures = task.validate(self.cfg.eval_batches)?;
        if let Some(&(_, loss)) = figures.iter().find(|(n, _)| n == "val/loss") {
            *is_best = loss.is_finite() && run.state.best_val_loss.is_none_or(|b| loss < b);
            if *is_best {
                run.state.best_val_loss = Some(loss);
            }
        }
        if self.is_main() {
            self.log(&format!("validation at step {}: {}", run.state.step, format_parts(&figures)));
            if let Some(m) = run.metrics.as_mut() {
                m.log(run.state.step, &as_refs(&figures))?;
            }
        }
        Ok(figures)
    }

    /// Save a checkpoint (rank 0): the task's model state, optimizer, scaler, counters, config
    /// and the backbones it was trained on.
    fn checkpoint<T: Task>(&self, task: &T, run: &mut Run, is_best: bool) -> Result<()> {
        if !self.is_main() {
            return Ok(());
        }
        let groups = tensor_groups(task, &run.optimizer, &run.scaler);
        let ckpts = self.checkpoints();
        let contents = checkpoint::Contents { groups: &groups, resolved_config: &self.resolved_config, backbones: &task.backbones() };
        run.last_checkpoint = ckpts
            .save(run.state.step, &contents, &run.state, is_best)
            .with_context(|| format!("cannot save the checkpoint of step {} in {}", run.state.step, ckpts.root().display()))?;
        Ok(())
    }

    /// Average the window's losses over ranks and sum their throughput (`samples_per_s`).
    fn reduce_across_ranks(&self, scalars: &mut [(String, f64)], device: Device) -> Result<()> {
        let world = self.collective.world_size();
        if world == 1 {
            return Ok(());
        }
        let values: Vec<f64> = scalars.iter().map(|(_, v)| *v).collect();
        let summed = Tensor::from_slice(&values).to_device(device);
        self.collective.all_reduce_sum(&[summed.shallow_clone()])?;
        let summed = Vec::<f64>::try_from(summed.to_device(Device::Cpu))?;
        for ((name, value), total) in scalars.iter_mut().zip(summed) {
            *value = if name == "samples_per_s" { total } else { total / world as f64 };
        }
        Ok(())
    }

    fn log(&self, line: &str) {
        if self.is_main() && !self.quiet {
            eprintln!("[train] {line}");
        }
    }
}

/// Validation figures: the mean of each figure `figures` gives per batch (`loss`, ...), as
/// `val/<name>`, over the first `max_batches` batches (all when unset) of the validation split
/// (none: no figures), without gradients, each batch under a fixed seed.
pub fn validation_means(
    valid: &Option<ValidationSet>,
    max_batches: Option<usize>,
    seed: u64,
    mut figures: impl FnMut(&Batch) -> Result<Vec<(String, f64)>>,
) -> Result<Vec<(String, f64)>> {
    let Some((set, options)) = valid else { return Ok(Vec::new()) };
    let loader = Loader::new(Arc::clone(set), options.clone())?;
    let mut sums: Vec<(String, f64)> = Vec::new();
    let mut count = 0usize;
    for (i, batch) in loader.batches(0, 0).take(max_batches.unwrap_or(usize::MAX)).enumerate() {
        tch::manual_seed(step_seed(seed, u64::MAX, i as u64));
        let parts = tch::no_grad(|| figures(&batch))?;
        if sums.is_empty() {
            sums = parts.iter().map(|(k, _)| (format!("val/{k}"), 0.0)).collect();
        }
        for (sum, (_, v)) in sums.iter_mut().zip(&parts) {
            sum.1 += v;
        }
        count += 1;
    }
    for sum in &mut sums {
        sum.1 /= count.max(1) as f64;
    }
    Ok(sums)
}

/// Running means of the logged parts between two log lines, and throughput.
struct LogWindow {
    started: Instant,
    samples: usize,
    steps: usize,
    sums: BTreeMap<String, f64>,
}

impl LogWindow {
    fn new() -> Self {
        Self { started: Instant::now(), samples: 0, steps: 0, sums: BTreeMap::new() }
    }

    fn add(&mut self, samples: usize, parts: &BTreeMap<String, f64>) {
        self.samples += samples;
        self.steps += 1;
        for (k, v) in parts {
            *self.sums.entry(k.clone()).or_default() += v;
        }
    }

    fn drain(&mut self) -> Vec<(String, f64)> {
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let mut out: Vec<(String, f64)> = self.sums.iter().map(|(k, v)| (k.clone(), v / self.steps.max(1) as f64)).collect();
        out.push(("samples_per_s".into(), self.samples as f64 / secs));
        out.push(("step_time_s".into(), secs / self.steps.max(1) as f64));
        *self = Self::new();
        out
    }
}

fn as_refs(scalars: &[(String, f64)]) -> Vec<(&str, f64)> {
    scalars.iter().map(|(k, v)| (k.as_str(), *v)).collect()
}

fn format_parts(parts: &[(String, f64)]) -> String {
    parts.iter().map(|(k, v)| format!("{k}={v:.4}")).collect::<Vec<_>>().join(" ")
}

fn tensor_groups<T: Task>(task: &T, optimizer: &AdamW, scaler: &GradScaler) -> TensorGroups {
    let mut groups = TensorGroups::new();
    groups.insert("model".into(), task.model_state());
    groups.insert("optimizer".into(), optimizer.state());
    groups.insert("scaler".into(), scaler.state());
    groups
}

/// Restore `dir` into the task, optimizer and scaler. Every group is checked against what the
/// model expects before any tensor is copied, so a checkpoint that does not fit changes nothing.
fn restore<T: Task>(dir: &Path, task: &mut T, optimizer: &mut AdamW, scaler: &mut GradScaler) -> Result<TrainState> {
    let loaded: checkpoint::Loaded<TrainState> = checkpoint::load(dir)?;
    let expected = tensor_groups(task, optimizer, scaler);
    for (name, tensors) in &expected {
        let saved = loaded.groups.get(name).with_context(|| format!("{} has no {name}.safetensors", dir.display()))?;
        crate::models::weights::check_names_and_shapes(tensors, saved, &dir.join(format!("{name}.safetensors")))
            .with_context(|| format!("cannot resume from {}: it does not fit the model this config builds", dir.display()))?;
    }
    checkpoint::check_backbones(&loaded.backbones, &task.backbones(), dir)?;
    crate::models::weights::copy_checked(&task.model_state(), &loaded.groups["model"], dir)?;
    optimizer.load_state(&loaded.groups["optimizer"], &dir.join("optimizer.safetensors"))?;
    let s = &loaded.groups["scaler"];
    scaler.load_state(&s["scale"], &s["growth_tracker"]);
    Ok(loaded.state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, nn::VarStore};

    /// Regression y = 3x - 1 on fixed data. No randomness: torch's generator is shared by the
    /// test threads (tests/train_stage1.rs checks the reseeding with dropout, in its own process).
    struct Toy {
        vs: VarStore,
        w: Tensor,
        b: Tensor,
        data: Vec<(f32, f32)>,
        batch: usize,
        /// Make the loss infinite at these steps' first micro-batch (calls counted).
        poison: Vec<usize>,
        calls: usize,
    }

    impl Toy {
        fn new(poison: Vec<usize>) -> Self {
            let vs = VarStore::new(Device::Cpu);
            let w = vs.root().var("w", &[4], nn::Init::Const(0.1));
            let b = vs.root().var("b", &[1], nn::Init::Const(0.0));
            let data = (0..24).map(|i| { let x = i as f32 / 12.0 - 1.0; (x, 3.0 * x - 1.0) }).collect();
            Self { vs, w, b, data, batch: 4, poison, calls: 0 }
        }
    }

    impl BatchSource for Toy {
        type Batch = (u64, usize);
        fn batches_per_epoch(&self) -> usize {
            self.data.len() / self.batch
        }
        fn batch_samples(&self, _: &Self::Batch) -> usize {
            self.batch
        }
        fn batches(&self, epoch: u64, start: usize) -> Box<dyn Iterator<Item = Self::Batch>> {
            Box::new((start..self.batches_per_epoch()).map(move |p| (epoch, p)))
        }
    }

    impl Task for Toy {
        type Data = Self;
        fn parameters(&self) -> Vec<(String, Tensor)> {
            crate::models::weights::trainable(&self.vs)
        }
        fn device(&self) -> Device {
            Device::Cpu
        }
        fn data(&self) -> &Self {
            self
        }
        fn loss(&mut self, &(epoch, position): &(u64, usize)) -> Result<MicroLoss> {
            self.calls += 1;
            // Epoch-dependent order, as a shuffling loader would give.
            let rows: Vec<(f32, f32)> = (0..self.batch).map(|k| self.data[(position * self.batch + k + epoch as usize * 5) % self.data.len()]).collect();
            let x = Tensor::from_slice(&rows.iter().map(|r| r.0).collect::<Vec<_>>()).view([-1, 1]);
            let y = Tensor::from_slice(&rows.iter().map(|r| r.1).collect::<Vec<_>>());
            let features = Tensor::cat(&[&x, &x.square(), &x.sin(), &x.cos()], 1);
            let pred = features.matmul(&self.w) + &self.b;
            let mut total = (pred - y).square().mean(Kind::Float);
            if self.poison.contains(&self.calls) {
                total = total * f64::INFINITY;
            }
            let v = total.double_value(&[]);
            Ok(MicroLoss { total, parts: vec![("loss".into(), v)] })
        }
        fn validate(&mut self, _: Option<usize>) -> Result<Vec<(String, f64)>> {
            let x = Tensor::from_slice(&self.data.iter().map(|r| r.0).collect::<Vec<_>>()).view([-1, 1]);
            let y = Tensor::from_slice(&self.data.iter().map(|r| r.1).collect::<Vec<_>>());
            let pred = Tensor::cat(&[&x, &x.square(), &x.sin(), &x.cos()], 1).matmul(&self.w) + &self.b;
            Ok(vec![("val/loss".into(), (pred - y).square().mean(Kind::Float).double_value(&[]))])
        }
    }

    fn cfg(precision: Precision) -> TrainConfig {
        TrainConfig {
            epochs: 3,
            batch_size: 4,
            grad_accum: 2,
            precision,
            schedule: ScheduleConfig { peak_lr: 0.05, floor_lr: 0.005, warmup_steps: 2, warmup_start_factor: 0.1 },
            log_every: 2,
            eval_every: 4,
            checkpoint_every: 3,
            keep_last: 2,
            device: "cpu".into(),
            ..TrainConfig::default()
        }
    }

    fn weights(vs: &VarStore) -> Vec<u32> {
        crate::models::weights::variables(vs).iter().flat_map(|(_, t)| Vec::<f32>::try_from(t).unwrap()).map(f32::to_bits).collect()
    }

    #[test]
    fn learns_and_resumes_bitwise_from_a_mid_run_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let full_dir = dir.path().join("full");
        let mut full = Toy::new(vec![]);
        let t = Trainer { quiet: true, ..Trainer::new(cfg(Precision::Fp32), 7, &full_dir, "x: 1\n".into(), &SingleProcess) };
        let out = t.fit(&mut full, false).unwrap();
        assert_eq!(out.state.step, 9, "3 epochs x 6 batches / accumulation 2");
        assert_eq!((out.state.epoch, out.state.position), (2, 6));

        // Interrupted: stop at step 4 (max_steps), then resume to the end with a fresh model.
        let part_dir = dir.path().join("part");
        let mut first = Toy::new(vec![]);
        let stop = TrainConfig { max_steps: Some(4), ..cfg(Precision::Fp32) };
        let t1 = Trainer { quiet: true, ..Trainer::new(stop, 7, &part_dir, "x: 1\n".into(), &SingleProcess) };
        // The schedule must span the full run for the resumed steps to match.
        assert_eq!(t1.total_steps(6), 9);
        t1.fit(&mut first, false).unwrap();
        let mut resumed = Toy::new(vec![]);
        let t2 = Trainer { quiet: true, ..Trainer::new(cfg(Precision::Fp32), 7, &part_dir, "x: 1\n".into(), &SingleProcess) };
        let err = t2.fit(&mut Toy::new(vec![]), false).unwrap_err().to_string();
        assert!(err.contains("--resume"), "{err}");
        let out2 = t2.fit(&mut resumed, true).unwrap();
        // Same position and counters (the best validation loss may differ: the first leg also
        // validated at its last step).
        assert_eq!(TrainState { best_val_loss: None, ..out2.state }, TrainState { best_val_loss: None, ..out.state });
        assert_eq!(weights(&resumed.vs), weights(&full.vs), "resumed weights differ from the uninterrupted run");

        let lines = std::fs::read_to_string(full_dir.join("metrics.jsonl")).unwrap();
        let first_line: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
        for key in ["loss", "lr", "grad_norm", "samples_per_s", "loss_scale"] {
            assert!(first_line.get(key).is_some(), "metrics line lacks {key}: {first_line}");
        }
        assert!(lines.contains("val/loss"));
        let ckpts = CheckpointDir::new(full_dir.join("checkpoints"), 2);
        assert!(ckpts.pointer(checkpoint::BEST).unwrap().is_some());
    }

    #[test]
    fn fp16_skips_the_step_and_backs_off_on_inf() {
        let dir = tempfile::tempdir().unwrap();
        // Micro-batch call 3 = step 1's first micro-batch gets an infinite loss.
        let mut task = Toy::new(vec![3]);
        let c = TrainConfig {
            max_steps: Some(2),
            grad_accum: 2,
            scaler: ScalerConfig { init_scale: 1024.0, ..Default::default() },
            eval_every: 0,
            ..cfg(Precision::Fp16)
        };
        let t = Trainer { quiet: true, ..Trainer::new(c.clone(), 1, dir.path(), String::new(), &SingleProcess) };
        let out = t.fit(&mut task, false).unwrap();
        assert_eq!(out.state.skipped_steps, 1);
        let saved: checkpoint::Loaded<TrainState> = checkpoint::load(&out.last_checkpoint).unwrap();
        assert_eq!(saved.groups["scaler"]["scale"].double_value(&[0]), 512.0, "scale halves on inf");
        assert_eq!(saved.groups["optimizer"]["step"].int64_value(&[]), 1, "the poisoned step was skipped");

        // Same run without the poison, stopped after one step: identical weights, as the skipped
        // step changed nothing.
        let dir2 = tempfile::tempdir().unwrap();
        let mut clean = Toy::new(vec![]);
        let t = Trainer { quiet: true, ..Trainer::new(TrainConfig { max_steps: Some(1), ..c }, 1, dir2.path(), String::new(), &SingleProcess) };
        t.fit(&mut clean, false).unwrap();
        assert_eq!(weights(&task.vs), weights(&clean.vs));
    }

    #[test]
    fn non_finite_loss_in_fp32_is_an_error_naming_the_step() {
        let dir = tempfile::tempdir().unwrap();
        let mut task = Toy::new(vec![5]);
        let t = Trainer { quiet: true, ..Trainer::new(cfg(Precision::Fp32), 1, dir.path(), String::new(), &SingleProcess) };
        let err = t.fit(&mut task, false).unwrap_err().to_string();
        assert!(err.contains("loss is inf at step 2"), "{err}");
    }

    #[test]
    fn a_checkpoint_that_does_not_fit_the_model_is_refused_before_anything_changes() {
        let dir = tempfile::tempdir().unwrap();
        let c = TrainConfig { max_steps: Some(3), ..cfg(Precision::Fp32) };
        let t = Trainer { quiet: true, ..Trainer::new(c.clone(), 7, dir.path(), "x: 1\n".into(), &SingleProcess) };
        t.fit(&mut Toy::new(vec![]), false).unwrap();
        let latest = t.latest().unwrap().unwrap();
        // A wider model: the saved `w` is mis-shaped, and its optimizer moments with it.
        let mut wider = Toy::new(vec![]);
        wider.w = wider.vs.root().var("w2", &[5], nn::Init::Const(0.0));
        let before = weights(&wider.vs);
        let err = format!("{:#}", t.fit(&mut wider, true).unwrap_err());
        assert!(err.contains("does not fit the model") && err.contains("1 missing tensor(s)") && err.contains("w2 [5]"), "{err}");
        assert_eq!(weights(&wider.vs), before, "nothing was copied");
        assert_eq!(t.latest().unwrap().unwrap(), latest);
    }

    #[test]
    fn too_little_data_for_one_step_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut task = Toy::new(vec![]);
        let t = Trainer::new(TrainConfig { grad_accum: 10, ..cfg(Precision::Fp32) }, 1, dir.path(), String::new(), &SingleProcess);
        let err = t.fit(&mut task, false).unwrap_err().to_string();
        assert!(err.contains("6 micro-batches per epoch"), "{err}");
    }
}
