//! Training batches from prepared shards (BOSSA `collate_fn_musicbert` / `collate_fn_musecoco2`).
//!
//! A [`PairSet`] holds one split's rows in memory (shards are decoded by parallel threads and
//! checked against the manifest's sha256). A [`Loader`] turns it into batches:
//! - epoch order: a permutation seeded by (seed, epoch); rank `r` of `w` takes every `w`-th row
//!   from `r` on, each rank the same count (the remainder is dropped), so ranks are disjoint and
//!   step in lockstep;
//! - per row and epoch, a [`Draw`] keyed by (seed, epoch, row): window shift and transposition,
//!   so batches do not depend on which thread built them;
//! - batch `k` of an epoch is a pure function of (seed, epoch, k): [`Loader::batches`] can start
//!   at any position, which is how a run resumes mid-epoch;
//! - prefetching: worker threads build the next batches ahead into bounded queues, and the
//!   iterator hands them out in order.
//!
//! Batches are plain arrays ([`Batch`]); training turns them into tensors.
use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::yaml::{Problems, Validate};
use crate::data::encodings::{octuple, remi};
use crate::data::pairing::{self, Draw, KeyedRng, WindowSpec};
use crate::data::shards::{read_shard, AudioLayout, Manifest, PairRow};
use crate::data::split::Split;

/// The `data:` config section: prepared pairs and how the loader draws batches from them
/// (SPEC 2, BOSSA `dataset.py`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Folder of Parquet shards + manifest.json; default `<output_dir>/<name>/shards`.
    pub shards: Option<PathBuf>,
    /// Largest random shift of the audio window against its segment (at most `prepare.margin_seconds`).
    pub shift_seconds: f64,
    /// Random transposition range in semitones, both ends included (BOSSA randint(-6, 6)).
    pub transpose: [i32; 2],
    /// BOSSA `deperf`: lead-sheet velocity and tempo tokens become `<unk>`.
    pub redact_lead_performance: bool,
    /// Stage-1 notes per sequence (BOSSA 224 + the `<s>`/`</s>` notes).
    pub max_notes: usize,
    /// Stage-2 tokens per sequence.
    pub max_tokens: usize,
    /// Batch-building threads and batches each may prepare ahead.
    pub workers: usize,
    pub prefetch: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            shards: None,
            shift_seconds: 1.0,
            transpose: [-6, 5],
            redact_lead_performance: true,
            max_notes: 226,
            max_tokens: 1000,
            workers: 2,
            prefetch: 4,
        }
    }
}

impl Validate for DataConfig {
    fn validate(&self, at: &str, p: &mut Problems) {
        let s = self.shift_seconds;
        p.check(s.is_finite() && s >= 0.0, at, "shift_seconds", || format!("is {s}; must be 0 or more"));
        let [lo, hi] = self.transpose;
        p.check(lo <= hi && (-64..=64).contains(&lo) && (-64..=64).contains(&hi), at, "transpose", || {
            format!("is [{lo}, {hi}]; must be a range [low, high] with low <= high, within -64..=64")
        });
        p.check((2..=65_536).contains(&self.max_notes), at, "max_notes", || format!("is {}; must be 2..=65536", self.max_notes));
        p.check((2..=65_536).contains(&self.max_tokens), at, "max_tokens", || format!("is {}; must be 2..=65536", self.max_tokens));
        p.check((1..=256).contains(&self.workers), at, "workers", || format!("is {}; must be 1..=256", self.workers));
        p.check((1..=1024).contains(&self.prefetch), at, "prefetch", || format!("is {}; must be 1..=1024", self.prefetch));
    }
}

/// Which model input the batches carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// OctupleMIDI notes: `[lead sheet][<s> x8][piano][</s> x8][pad]`.
    Stage1,
    /// MuseCoco REMI: `</s> attributes <sep> lead sheet <sep> piano </s> [pad]`.
    Stage2,
}

/// The rows of one split, in manifest order.
pub struct PairSet {
    pub split: Split,
    pub layout: AudioLayout,
    pub rows: Vec<PairRow>,
}

impl PairSet {
    /// Read every shard of `split` from a prepared folder with `threads` reader threads.
    pub fn open(dir: &Path, split: Split, threads: usize) -> Result<Self> {
        let manifest = Manifest::read(dir)?;
        let shards: Vec<_> = manifest.shards_of(split).collect();
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<Result<Vec<PairRow>>>>> = Mutex::new((0..shards.len()).map(|_| None).collect());
        std::thread::scope(|scope| {
            for _ in 0..threads.clamp(1, shards.len().max(1)) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(info) = shards.get(i) else { break };
                    let rows = read_shard(dir, info);
                    if let Ok(mut slots) = results.lock() {
                        slots[i] = Some(rows);
                    }
                });
            }
        });
        let mut rows = Vec::with_capacity(manifest.counts.get(&split).map_or(0, |c| c.rows));
        let slots = results.into_inner().map_err(|_| anyhow::anyhow!("a shard reader thread panicked"))?;
        for (slot, info) in slots.into_iter().zip(&shards) {
            let shard_rows = slot.with_context(|| format!("shard {} was not read", info.file))??;
            rows.extend(shard_rows);
        }
        let set = Self { split, layout: manifest.audio, rows };
        set.validate().with_context(|| format!("in {}", dir.display()))?;
        Ok(set)
    }

    /// Check every row fits the layout and the vocabularies, so batching cannot fail later.
    fn validate(&self) -> Result<()> {
        let codes_len = self.layout.n_q * self.layout.stored_frames();
        for row in &self.rows {
            let name = || format!("row {} segment {} ({})", row.song_id, row.segment_index, row.split);
            ensure!(row.split == self.split, "{}: listed in a {} shard", name(), self.split);
            ensure!(row.codes.len() == codes_len, "{}: {} codes, expected n_q x frames = {codes_len}", name(), row.codes.len());
            ensure!(row.codes.iter().all(|&c| c <= self.layout.pad_code), "{}: a code above the pad code {}", name(), self.layout.pad_code);
            for (part, ids) in [("lead_octuple", &row.lead_octuple), ("piano_octuple", &row.piano_octuple)] {
                ensure!(ids.len() % octuple::TOKENS_PER_NOTE == 0, "{}: {part} is not 8 tokens per note", name());
                ensure!(ids.iter().all(|&t| (t as usize) < octuple::VOCAB_SIZE), "{}: {part} has an id outside the vocabulary", name());
            }
            for (part, ids) in [("lead_remi", &row.lead_remi), ("piano_remi", &row.piano_remi)] {
                ensure!(ids.iter().all(|&t| (t as usize) < remi::VOCAB_SIZE), "{}: {part} has an id outside the vocabulary", name());
            }
        }
        Ok(())
    }
}

/// The validation split and how to batch it.
pub type ValidationSet = (Arc<PairSet>, LoaderOptions);

/// How batches are drawn; see the `data:` config section for the meaning and defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderOptions {
    pub stage: Stage,
    pub batch_size: usize,
    pub seed: u64,
    pub rank: usize,
    pub world_size: usize,
    pub shuffle: bool,
    /// Draw a window shift and a transposition per row and epoch (training); off = centred, as is.
    pub augment: bool,
    /// Largest window shift in frames (capped by the stored margin).
    pub max_shift_frames: usize,
    pub transpose: (i32, i32),
    pub drop_last: bool,
    /// BOSSA `deperf`: lead-sheet velocity and tempo tokens become `<unk>`.
    pub redact_lead_performance: bool,
    /// Stage 1: notes per sequence (BOSSA 224 + 2 boundary notes).
    pub max_notes: usize,
    /// Stage 2: tokens per sequence (BOSSA 1000).
    pub max_tokens: usize,
    pub workers: usize,
    /// Batches each worker may have ready ahead of the consumer.
    pub prefetch: usize,
}

impl LoaderOptions {
    /// Options from the `data:` config section for one rank of `world_size`, on data of `layout`.
    pub fn from_config(data: &DataConfig, layout: &AudioLayout, stage: Stage, batch_size: usize, seed: u64, rank: usize, world_size: usize) -> Self {
        Self {
            rank,
            world_size,
            max_shift_frames: (data.shift_seconds.max(0.0) * layout.frame_rate).round() as usize,
            transpose: (data.transpose[0], data.transpose[1]),
            redact_lead_performance: data.redact_lead_performance,
            max_notes: data.max_notes,
            max_tokens: data.max_tokens,
            workers: data.workers,
            prefetch: data.prefetch,
            ..Self::training(stage, batch_size, seed)
        }
    }

    /// Evaluation: every row once, in order, centred and untransposed.
    pub fn evaluation(self) -> Self {
        Self { shuffle: false, augment: false, drop_last: false, ..self }
    }

    /// BOSSA's training settings for `stage` (batch 32 per GPU), one rank.
    pub fn training(stage: Stage, batch_size: usize, seed: u64) -> Self {
        Self {
            stage,
            batch_size,
            seed,
            rank: 0,
            world_size: 1,
            shuffle: true,
            augment: true,
            max_shift_frames: usize::MAX,
            transpose: pairing::TRANSPOSE_RANGE,
            drop_last: true,
            redact_lead_performance: true,
            max_notes: 226,
            max_tokens: 1000,
            workers: 2,
            prefetch: 2,
        }
    }
}

/// Stage-specific symbolic input of a batch; every array is row-major `[batch, len]`.
#[derive(Debug, Clone, PartialEq)]
pub enum Symbolic {
    Stage1 {
        /// Notes per row; `tokens` has 8 ids per note.
        notes: usize,
        tokens: Vec<i64>,
        /// 1 for lead-sheet notes (BOSSA's `ls_mask` is its complement).
        is_lead_sheet: Vec<u8>,
        /// 1 for real notes, 0 for padding (BOSSA `pad_mask`).
        is_real: Vec<u8>,
    },
    Stage2 {
        len: usize,
        tokens: Vec<i64>,
        /// 1 where the loss applies: the piano tokens and the final `</s>`.
        is_target: Vec<u8>,
        /// 1 for real tokens, 0 for padding (BOSSA's `token_pad_mask` is its complement).
        is_real: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub epoch: u64,
    /// Index of this batch within the epoch (on this rank).
    pub position: usize,
    /// Indices into the [`PairSet`]'s rows.
    pub rows: Vec<usize>,
    pub draws: Vec<Draw>,
    pub n_q: usize,
    pub frames: usize,
    /// `[batch, n_q, frames]`; frames outside the track hold the pad code.
    pub codes: Vec<i64>,
    /// `[batch, frames]`, 1 = a real frame. (MusicGen's delay pattern adds n_q steps after these.)
    pub audio_mask: Vec<u8>,
    pub symbolic: Symbolic,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

struct Inner {
    set: Arc<PairSet>,
    options: LoaderOptions,
    window: WindowSpec,
    max_shift: i32,
    stage2_prefix: Vec<i64>,
}

pub struct Loader {
    inner: Arc<Inner>,
}

impl Loader {
    pub fn new(set: Arc<PairSet>, options: LoaderOptions) -> Result<Self> {
        ensure!(options.batch_size > 0, "batch size must be at least 1");
        ensure!(options.world_size > 0 && options.rank < options.world_size, "rank {} is not below world size {}", options.rank, options.world_size);
        ensure!(options.transpose.0 <= options.transpose.1, "transpose range {:?} is empty", options.transpose);
        ensure!(options.max_notes >= 2 && options.max_tokens >= 2, "sequences must hold at least 2 notes / tokens");
        let window = WindowSpec { window_frames: set.layout.window_frames, margin_frames: set.layout.margin_frames };
        let max_shift = options.max_shift_frames.min(window.margin_frames) as i32;
        let stage2_prefix = remi::stage2_prefix().into_iter().map(i64::from).collect();
        Ok(Self { inner: Arc::new(Inner { set, options, window, max_shift, stage2_prefix }) })
    }

    pub fn options(&self) -> &LoaderOptions {
        &self.inner.options
    }

    /// The rows batches are drawn from.
    pub fn set(&self) -> &PairSet {
        &self.inner.set
    }

    /// This rank's rows of `epoch`, in order.
    pub fn epoch_rows(&self, epoch: u64) -> Vec<usize> {
        self.inner.epoch_rows(epoch)
    }

    pub fn batches_per_epoch(&self) -> usize {
        let o = &self.inner.options;
        let per_rank = self.inner.set.rows.len() / o.world_size;
        if o.drop_last {
            per_rank / o.batch_size
        } else {
            per_rank.div_ceil(o.batch_size)
        }
    }

    /// Batch `position` of `epoch`, built on this thread.
    pub fn batch(&self, epoch: u64, position: usize) -> Option<Batch> {
        let rows = self.inner.epoch_rows(epoch);
        (position < self.batches_per_epoch()).then(|| self.inner.build(epoch, position, &rows))
    }

    /// The batches of `epoch` from `start` on, built ahead by the worker threads.
    pub fn batches(&self, epoch: u64, start: usize) -> Batches {
        let end = self.batches_per_epoch();
        let rows = Arc::new(self.inner.epoch_rows(epoch));
        let workers = self.inner.options.workers.max(1).min(end.saturating_sub(start).max(1));
        let mut receivers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = sync_channel(self.inner.options.prefetch.max(1));
            let (inner, rows) = (Arc::clone(&self.inner), Arc::clone(&rows));
            handles.push(std::thread::spawn(move || {
                for position in (start + w..end).step_by(workers) {
                    if tx.send(inner.build(epoch, position, &rows)).is_err() {
                        break; // the consumer stopped early
                    }
                }
            }));
            receivers.push(rx);
        }
        Batches { receivers, handles, start, next: start, end }
    }
}

impl Inner {
    fn epoch_rows(&self, epoch: u64) -> Vec<usize> {
        let o = &self.options;
        let n = self.set.rows.len();
        let mut order: Vec<usize> = (0..n).collect();
        if o.shuffle {
            // Fisher-Yates with a generator keyed by (seed, epoch): the same on every rank.
            let mut rng = KeyedRng::new(&[o.seed, epoch, 0x5348_5546]);
            for i in (1..n).rev() {
                order.swap(i, rng.int_in(0, i as i64) as usize);
            }
        }
        let per_rank = n / o.world_size;
        (0..per_rank).map(|k| order[o.rank + k * o.world_size]).collect()
    }

    fn build(&self, epoch: u64, position: usize, epoch_rows: &[usize]) -> Batch {
        let o = &self.options;
        let from = position * o.batch_size;
        let rows: Vec<usize> = epoch_rows[from..(from + o.batch_size).min(epoch_rows.len())].to_vec();
        let draws: Vec<Draw> = rows
            .iter()
            .map(|&r| if o.augment { Draw::new(o.seed, epoch, r as u64, self.max_shift, o.transpose) } else { Draw::NONE })
            .collect();
        let (n_q, frames, pad) = (self.set.layout.n_q, self.window.window_frames, self.set.layout.pad_code);
        let mut codes = vec![0i64; rows.len() * n_q * frames];
        let mut audio_mask = vec![0u8; rows.len() * frames];
        for (b, (&r, draw)) in rows.iter().zip(&draws).enumerate() {
            let (c, m) = (&mut codes[b * n_q * frames..(b + 1) * n_q * frames], &mut audio_mask[b * frames..(b + 1) * frames]);
            self.window.shifted(&self.set.rows[r].codes, n_q, draw.shift, pad, c, m);
        }
        let symbolic = match o.stage {
            Stage::Stage1 => self.stage1(&rows, &draws),
            Stage::Stage2 => self.stage2(&rows, &draws),
        };
        Batch { epoch, position, rows, draws, n_q, frames, codes, audio_mask, symbolic }
    }

    fn stage1(&self, rows: &[usize], draws: &[Draw]) -> Symbolic {
        let notes = self.options.max_notes;
        let width = notes * octuple::TOKENS_PER_NOTE;
        let mut tokens = vec![i64::from(octuple::PAD); rows.len() * width];
        let (mut is_lead_sheet, mut is_real) = (vec![0u8; rows.len() * notes], vec![0u8; rows.len() * notes]);
        for (b, (&r, draw)) in rows.iter().zip(draws).enumerate() {
            let row = &self.set.rows[r];
            let mut lead: Vec<i64> = row.lead_octuple.iter().map(|&t| i64::from(t)).collect();
            let mut piano: Vec<i64> = row.piano_octuple.iter().map(|&t| i64::from(t)).collect();
            pairing::transpose_octuple(&mut lead, draw.semitones);
            pairing::transpose_octuple(&mut piano, draw.semitones);
            if self.options.redact_lead_performance {
                pairing::redact_octuple(&mut lead);
            }
            // The `<s>` note must fit: its output is the symbolic feature. (BOSSA's collate would
            // index past a sequence that a long lead sheet fills.)
            lead.truncate((notes - 1) * octuple::TOKENS_PER_NOTE);
            let boundary = |id: u32| [i64::from(id); octuple::TOKENS_PER_NOTE];
            let sequence: Vec<i64> =
                lead.iter().copied().chain(boundary(octuple::BOS)).chain(piano).chain(boundary(octuple::EOS)).collect();
            let kept = sequence.len().min(width);
            tokens[b * width..b * width + kept].copy_from_slice(&sequence[..kept]);
            let kept_notes = kept / octuple::TOKENS_PER_NOTE;
            is_real[b * notes..b * notes + kept_notes].fill(1);
            let lead_notes = (lead.len() / octuple::TOKENS_PER_NOTE).min(kept_notes);
            is_lead_sheet[b * notes..b * notes + lead_notes].fill(1);
        }
        Symbolic::Stage1 { notes, tokens, is_lead_sheet, is_real }
    }

    /// Rows padded to the longest of the batch (at most `max_tokens`, where longer rows are cut,
    /// as BOSSA cuts at 1000): padding carries no key and no target, so the loss is that of
    /// BOSSA's fixed-length rows, without computing the padding.
    fn stage2(&self, rows: &[usize], draws: &[Draw]) -> Symbolic {
        let max = self.options.max_tokens;
        let sequences: Vec<(Vec<i64>, usize)> = rows
            .iter()
            .zip(draws)
            .map(|(&r, draw)| {
                let row = &self.set.rows[r];
                let mut lead: Vec<i64> = row.lead_remi.iter().map(|&t| i64::from(t)).collect();
                let mut piano: Vec<i64> = row.piano_remi.iter().map(|&t| i64::from(t)).collect();
                pairing::transpose_remi(&mut lead, draw.semitones);
                pairing::transpose_remi(&mut piano, draw.semitones);
                if self.options.redact_lead_performance {
                    pairing::redact_remi(&mut lead);
                }
                let mut sequence = self.stage2_prefix.clone();
                sequence.extend(lead);
                sequence.push(i64::from(remi::SEP));
                let target_from = sequence.len();
                sequence.extend(piano);
                sequence.push(i64::from(remi::EOS));
                sequence.truncate(max);
                (sequence, target_from)
            })
            .collect();
        let len = sequences.iter().map(|(s, _)| s.len()).max().unwrap_or(0);
        let mut tokens = vec![i64::from(remi::PAD); rows.len() * len];
        let (mut is_target, mut is_real) = (vec![0u8; rows.len() * len], vec![0u8; rows.len() * len]);
        for (b, (sequence, target_from)) in sequences.iter().enumerate() {
            let kept = sequence.len();
            tokens[b * len..b * len + kept].copy_from_slice(sequence);
            is_real[b * len..b * len + kept].fill(1);
            if *target_from < kept {
                is_target[b * len + target_from..b * len + kept].fill(1);
            }
        }
        Symbolic::Stage2 { len, tokens, is_target, is_real }
    }
}

/// In-order iterator over prefetched batches; dropping it stops the workers.
pub struct Batches {
    receivers: Vec<Receiver<Batch>>,
    handles: Vec<JoinHandle<()>>,
    start: usize,
    next: usize,
    end: usize,
}

impl Iterator for Batches {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.end {
            return None;
        }
        let worker = (self.next - self.start) % self.receivers.len();
        self.next += 1;
        // A worker only stops early if the consumer is gone, so a closed queue means it panicked.
        Some(self.receivers[worker].recv().expect("a batch worker thread panicked"))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.end.saturating_sub(self.next);
        (left, Some(left))
    }
}

impl Drop for Batches {
    fn drop(&mut self) {
        self.receivers.clear(); // unblocks workers waiting to send
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::shards::tests::row;

    fn set(rows: usize) -> Arc<PairSet> {
        let layout = AudioLayout {
            sample_rate: 32000,
            frame_rate: 50.0,
            n_q: 4,
            pad_code: 33,
            window_frames: 16,
            margin_frames: 2,
            encodec: "test".into(),
        };
        let rows = (0..rows).map(|i| row(&format!("s{}", i / 3), (i % 3) as u32, Split::Train)).collect();
        Arc::new(PairSet { split: Split::Train, layout, rows })
    }

    fn options(stage: Stage) -> LoaderOptions {
        LoaderOptions { workers: 3, ..LoaderOptions::training(stage, 4, 11) }
    }

    #[test]
    fn same_seed_same_batches_whatever_the_worker_count() {
        let data = set(30);
        let one = Loader::new(Arc::clone(&data), LoaderOptions { workers: 1, ..options(Stage::Stage1) }).unwrap();
        let three = Loader::new(Arc::clone(&data), options(Stage::Stage1)).unwrap();
        let a: Vec<Batch> = one.batches(2, 0).collect();
        assert_eq!(a.len(), 7); // 30 rows / 4, last partial batch dropped
        assert_eq!(a, three.batches(2, 0).collect::<Vec<_>>());
        assert_ne!(a, three.batches(3, 0).collect::<Vec<_>>(), "each epoch reshuffles and redraws");
        // Resume: from position 4 on, the same batches as a full run.
        assert_eq!(three.batches(2, 4).collect::<Vec<_>>(), a[4..]);
        assert_eq!(three.batch(2, 5).as_ref(), Some(&a[5]));
        // Stopping early does not hang.
        let mut it = three.batches(2, 0);
        it.next();
        drop(it);
    }

    #[test]
    fn ranks_get_disjoint_equal_rows() {
        let data = set(31);
        let rows: Vec<Vec<usize>> = (0..4)
            .map(|rank| Loader::new(Arc::clone(&data), LoaderOptions { rank, world_size: 4, ..options(Stage::Stage1) }).unwrap().epoch_rows(0))
            .collect();
        assert!(rows.iter().all(|r| r.len() == 7));
        let mut all: Vec<usize> = rows.concat();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 28, "ranks overlap");
    }

    #[test]
    fn stage1_layout_masks_and_bounds() {
        let data = set(6);
        let loader = Loader::new(Arc::clone(&data), LoaderOptions { max_notes: 4, ..options(Stage::Stage1) }).unwrap();
        let batch = loader.batch(0, 0).unwrap();
        assert_eq!((batch.codes.len(), batch.audio_mask.len()), (4 * 4 * 16, 4 * 16));
        let Symbolic::Stage1 { notes, tokens, is_lead_sheet, is_real } = &batch.symbolic else { panic!("stage 1") };
        assert_eq!(*notes, 4);
        // Test rows: 1 lead note, 2 piano notes -> lead, <s>, piano, piano (the </s> note is cut).
        for b in 0..4 {
            assert_eq!(is_lead_sheet[b * 4..b * 4 + 4], [1, 0, 0, 0]);
            assert_eq!(is_real[b * 4..b * 4 + 4], [1, 1, 1, 1]);
            let seq = &tokens[b * 32..b * 32 + 32];
            assert_eq!(seq[5], 3, "lead velocity redacted");
            assert_eq!(&seq[8..16], &[0; 8]);
            let draw = batch.draws[b];
            assert!((-2..=2).contains(&draw.shift) && (-6..=5).contains(&draw.semitones));
            // Codes come from the stored window shifted by the draw.
            let stored = &data.rows[batch.rows[b]].codes;
            let offset = (2 + draw.shift) as usize;
            assert_eq!(batch.codes[b * 64..b * 64 + 16], stored[offset..offset + 16].iter().map(|&c| i64::from(c)).collect::<Vec<_>>());
        }
        let loose = Loader::new(Arc::clone(&data), LoaderOptions { max_notes: 8, augment: false, ..options(Stage::Stage1) }).unwrap();
        let Symbolic::Stage1 { is_real, .. } = loose.batch(0, 0).unwrap().symbolic else { panic!("stage 1") };
        assert_eq!(is_real[..8], [1, 1, 1, 1, 1, 0, 0, 0]);

        // A lead sheet that fills the sequence is cut so that the `<s>` note still fits.
        let mut long = data.rows[0].clone();
        long.lead_octuple = long.lead_octuple.repeat(5);
        let long = Arc::new(PairSet { rows: vec![long], ..PairSet { split: data.split, layout: data.layout.clone(), rows: vec![] } });
        let tight = Loader::new(long, LoaderOptions { max_notes: 3, augment: false, shuffle: false, batch_size: 1, ..options(Stage::Stage1) }).unwrap();
        let Symbolic::Stage1 { tokens, is_lead_sheet, .. } = tight.batch(0, 0).unwrap().symbolic else { panic!("stage 1") };
        assert_eq!(is_lead_sheet, [1, 1, 0]);
        assert_eq!(&tokens[16..24], &[0; 8], "<s> is the last note");
    }

    #[test]
    fn stage2_layout_targets_piano_and_final_eos() {
        let data = set(3);
        let loader = Loader::new(Arc::clone(&data), LoaderOptions { augment: false, shuffle: false, batch_size: 3, ..options(Stage::Stage2) }).unwrap();
        let batch = loader.batch(0, 0).unwrap();
        let Symbolic::Stage2 { len, tokens, is_target, is_real } = &batch.symbolic else { panic!("stage 2") };
        for b in 0..3 {
            let row = &data.rows[batch.rows[b]];
            let seq = &tokens[b * len..(b + 1) * len];
            let lead_end = 62 + row.lead_remi.len();
            assert_eq!(seq[0], 2);
            assert_eq!(seq[61], i64::from(remi::SEP));
            assert_eq!(seq[lead_end], i64::from(remi::SEP));
            let total = lead_end + 1 + row.piano_remi.len() + 1;
            assert_eq!(seq[total - 1], 2);
            assert!(seq[total..].iter().all(|&t| t == 1), "padding after </s>");
            assert_eq!(is_real[b * len..(b + 1) * len].iter().map(|&x| x as usize).sum::<usize>(), total);
            let targets: Vec<usize> = (0..*len).filter(|&i| is_target[b * len + i] == 1).collect();
            assert_eq!(targets, (lead_end + 1..total).collect::<Vec<_>>());
        }
        // Rows are padded to the longest of the batch, not to max_tokens.
        let longest = batch.rows.iter().map(|&r| 62 + data.rows[r].lead_remi.len() + 1 + data.rows[r].piano_remi.len() + 1).max().unwrap();
        assert_eq!(*len, longest);
        assert!(*len < loader.options().max_tokens);
        // Longer rows are cut at max_tokens.
        let cut = Loader::new(Arc::clone(&data), LoaderOptions { max_tokens: 64, augment: false, shuffle: false, batch_size: 3, ..options(Stage::Stage2) }).unwrap();
        let Symbolic::Stage2 { len, is_real, .. } = cut.batch(0, 0).unwrap().symbolic else { panic!("stage 2") };
        assert_eq!((len, is_real.iter().filter(|&&x| x == 1).count()), (64, 3 * 64));
    }

    #[test]
    fn config_and_evaluation_options() {
        let data = set(10);
        let cfg = DataConfig { shift_seconds: 0.02, transpose: [0, 0], max_notes: 7, ..DataConfig::default() };
        let options = LoaderOptions::from_config(&cfg, &data.layout, Stage::Stage1, 4, 3, 1, 2);
        assert_eq!((options.max_shift_frames, options.transpose, options.max_notes, options.rank, options.world_size), (1, (0, 0), 7, 1, 2));
        let train = Loader::new(Arc::clone(&data), options.clone()).unwrap();
        for b in train.batches(0, 0) {
            assert!(b.draws.iter().all(|d| d.shift.abs() <= 1 && d.semitones == 0));
        }
        // Evaluation: every row of the rank once, in order, the last batch partial, no draws.
        let eval = Loader::new(Arc::clone(&data), options.evaluation()).unwrap();
        let batches: Vec<Batch> = eval.batches(0, 0).collect();
        assert_eq!(batches.iter().map(|b| b.rows.clone()).collect::<Vec<_>>(), [vec![1, 3, 5, 7], vec![9]]);
        assert!(batches.iter().flat_map(|b| &b.draws).all(|d| *d == Draw::NONE));
    }

    #[test]
    fn bad_options_are_refused() {
        let data = set(3);
        assert!(Loader::new(Arc::clone(&data), LoaderOptions { rank: 2, world_size: 2, ..options(Stage::Stage1) }).is_err());
        assert!(Loader::new(data, LoaderOptions { batch_size: 0, ..options(Stage::Stage1) }).is_err());
    }
}
