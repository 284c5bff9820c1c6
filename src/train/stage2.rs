//! Stage 2 (BOSSA `Blip2Musecoco`, `train_stage2.py`): frozen EnCodec codes -> the frozen audio
//! path -> the stage-1 Q-Former's audio stream (trainable) -> `musecoco_proj` -> soft prompt to
//! MuseCoco (frozen, LoRA r16 trainable), trained on the piano tokens in fp32 (BOSSA notes that
//! linear attention overflows in fp16).
//!
//! The Q-Former starts from stage 1: a stylebridge stage-1 run (its config gives the Q-Former
//! shape and the MusicGen it was trained on) or a BOSSA stage-1 checkpoint converted by
//! `stylebridge convert --format bossa-stage1` (its config.json gives both; its frozen MusicGen is
//! used unless `model.musicgen` names one). Without `stage1` it is the paper's "w/o PT" ablation:
//! the Q-Former skips stage 1 (MusicBERT init when `musicbert` is set, else random).
//!
//! A checkpoint keeps what trains (Q-Former, projection, adapters) and names the frozen
//! backbones (MuseCoco, MusicGen, the stage-1 model, the EnCodec that made the codes) with their
//! sha256; [`Stage2Model::from_run`] rebuilds the model from it for `arrange`.
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{nn::VarStore, Device, Kind, Tensor};

use super::checkpoint::{self, Backbone};
use super::stage1;
use super::trainer::{MicroLoss, Precision, Task};
use crate::data::loader::{Batch, Loader, PairSet, Symbolic, ValidationSet};
use crate::models::blip2_musecoco::{Blip2Musecoco, QFORMER_PREFIX};
use crate::models::frozen_audio::{step_mask, FrozenAudio, MusicgenSource};
use crate::models::musecoco::MuseCocoConfig;
use crate::models::musicgen::MusicgenDecoderConfig;
use crate::models::qformer::{QFormer, QFormerConfig};
use crate::models::weights::Checkpoint;
use crate::yaml::{Problems, Validate};

/// A MuseCoco small enough for CPU tests, built from a seed (the demo pretrains its own instead).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TinyMuseCoco {
    pub n_embd: i64,
    pub n_head: i64,
    pub n_layer: i64,
    pub ffn_dim: i64,
}

impl Default for TinyMuseCoco {
    fn default() -> Self {
        Self { n_embd: 128, n_head: 4, n_layer: 4, ffn_dim: 512 }
    }
}

impl TinyMuseCoco {
    pub fn config(&self) -> MuseCocoConfig {
        MuseCocoConfig { n_embd: self.n_embd, n_head: self.n_head, n_layer: self.n_layer, ffn_dim: self.ffn_dim, ..MuseCocoConfig::xlarge() }
    }
}

impl Validate for TinyMuseCoco {
    fn validate(&self, at: &str, p: &mut Problems) {
        p.check(self.n_head >= 1 && self.n_embd >= self.n_head, at, "n_embd", || format!("({}) must be at least n_head ({}) >= 1", self.n_embd, self.n_head));
        p.check(self.n_layer >= 1, at, "n_layer", || format!("is {}; must be at least 1", self.n_layer));
        p.check(self.ffn_dim >= 1, at, "ffn_dim", || format!("is {}; must be at least 1", self.ffn_dim));
    }
}

/// Where MuseCoco comes from: the HF port's folder (`config.json` + `model.safetensors`), or tiny.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MuseCocoSource {
    pub checkpoint: Option<PathBuf>,
    pub tiny: Option<TinyMuseCoco>,
}

impl Validate for MuseCocoSource {
    fn validate(&self, at: &str, p: &mut Problems) {
        p.check(self.checkpoint.is_none() || self.tiny.is_none(), at, "checkpoint", || "and `tiny` are both given; give one".into());
        if let Some(t) = &self.tiny {
            t.validate(&format!("{at}.tiny"), p);
        }
    }
}

/// The `model:` config section of stage 2 (`kind: stage2`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// The stage-1 model the Q-Former starts from: a stylebridge stage-1 run, checkpoints or
    /// step folder (`best`, else `latest`), or a converted BOSSA stage-1 folder. Unset: "w/o PT".
    pub stage1: Option<PathBuf>,
    /// "w/o PT" only: start the Q-Former from MusicBERT (`stylebridge convert --format musicbert`).
    pub musicbert: Option<PathBuf>,
    /// The frozen audio path; unset: the stage-1 model's.
    pub musicgen: Option<MusicgenSource>,
    /// The Q-Former's shape; unset: the stage-1 model's (`encoder_width` follows MusicGen).
    pub qformer: Option<QFormerConfig>,
    pub musecoco: MuseCocoSource,
    /// Keep the frozen MusicGen features of every audio window seen (see stage 1).
    pub cache_features: bool,
    /// The Q-Former's learning rate relative to the schedule's; unset: 1, one rate for all as
    /// BOSSA trains. A short run at a high rate (the demo's) wipes the style out of Z instead.
    pub qformer_lr_scale: Option<f64>,
}

impl PartialEq for ModelConfig {
    fn eq(&self, other: &Self) -> bool {
        serde_json::to_value(self).ok() == serde_json::to_value(other).ok()
    }
}

impl Validate for ModelConfig {
    fn validate(&self, at: &str, p: &mut Problems) {
        p.check(self.stage1.is_none() || self.musicbert.is_none(), at, "musicbert", || {
            "is set beside `stage1`: MusicBERT initialises the Q-Former only in the \"w/o PT\" ablation (no stage1)".into()
        });
        if self.stage1.is_none() {
            p.check(self.musicgen.is_some(), at, "musicgen", || "must be given when `stage1` is not (the \"w/o PT\" ablation)".into());
            p.check(self.qformer.is_some(), at, "qformer", || "must be given when `stage1` is not (the \"w/o PT\" ablation)".into());
        }
        if let Some(m) = &self.musicgen {
            m.validate(&format!("{at}.musicgen"), p);
        }
        if let Some(q) = &self.qformer {
            q.validate(&format!("{at}.qformer"), p);
        }
        self.musecoco.validate(&format!("{at}.musecoco"), p);
        if let Some(scale) = self.qformer_lr_scale {
            p.check(scale.is_finite() && scale >= 0.0, at, "qformer_lr_scale", || format!("is {scale}; must be 0 or more"));
        }
        p.check(self.musecoco.checkpoint.is_some() || self.musecoco.tiny.is_some(), at, "musecoco", || {
            "needs `checkpoint` (the HF port of MuseCoco) or `tiny`".into()
        });
    }
}

impl ModelConfig {
    /// The config with `musicgen` and `qformer` filled in from the stage-1 run where unset, so a
    /// run's resolved config says what it trained on without its stage-1 run.
    pub fn resolve(&self) -> Result<Self> {
        let Some(path) = &self.stage1 else { return Ok(self.clone()) };
        let origin = Stage1Origin::open(path)?;
        Ok(Self {
            musicgen: self.musicgen.clone().or(origin.musicgen),
            qformer: Some(self.qformer.clone().unwrap_or(origin.qformer)),
            ..self.clone()
        })
    }
}

/// Stage 2 trains in fp32 only.
pub fn check_precision(precision: Precision) -> Result<()> {
    ensure!(
        precision == Precision::Fp32,
        "train.precision is {precision:?}; stage 2 trains in fp32 (MuseCoco's linear attention overflows in fp16, as BOSSA notes)"
    );
    Ok(())
}

/// Where a frozen MusicGen decoder lives inside a converted BOSSA checkpoint.
const BOSSA_STAGE1_MUSICGEN: &str = "musicgen_decoder.decoder.";
const BOSSA_STAGE2_MUSICGEN: &str = "blip2qformer.musicgen_decoder.decoder.";

/// A stage-1 model to start from, read from disk.
struct Stage1Origin {
    /// The folder hashed as the `stage1` backbone.
    dir: PathBuf,
    weights: Checkpoint,
    qformer: QFormerConfig,
    /// The run's MusicGen; None for a BOSSA checkpoint, which stores its own.
    musicgen: Option<MusicgenSource>,
    embedded_musicgen: Option<(MusicgenDecoderConfig, &'static str)>,
}

impl Stage1Origin {
    fn open(path: &Path) -> Result<Self> {
        if is_converted_bossa(path) {
            let config = path.join("config.json");
            let qformer = QFormerConfig::from_json_file(&config)?;
            let weights = Checkpoint::open(path)?;
            let embedded = musicgen_section(&config)?.map(|c| (c, BOSSA_STAGE1_MUSICGEN));
            return Ok(Self { dir: path.to_path_buf(), weights, qformer, musicgen: None, embedded_musicgen: embedded });
        }
        let dir = checkpoint::resolve(path).with_context(|| format!("model.stage1 = {}", path.display()))?;
        let stage1: stage1::ModelConfig = checkpoint::model_section(&dir, "stage1")?;
        // A tiny MusicGen is drawn from the stage-1 run's seed; keep it with the source, so stage 2
        // (and its resolved config) hears what stage 1 learnt to hear.
        let mut musicgen = stage1.musicgen;
        if let Some(tiny) = &mut musicgen.tiny {
            tiny.seed.get_or_insert(checkpoint::config_section(&dir, "seed")?);
        }
        let weights = Checkpoint::open(&dir.join("model.safetensors"))?;
        Ok(Self { dir, weights, qformer: stage1.qformer, musicgen: Some(musicgen), embedded_musicgen: None })
    }
}

/// A folder `stylebridge convert` wrote from a BOSSA checkpoint (config.json + weights), not a
/// stylebridge run (which has its resolved config).
fn is_converted_bossa(path: &Path) -> bool {
    path.join("config.json").is_file() && !path.join(crate::yaml::RESOLVED_NAME).is_file()
}

/// The frozen decoder a converted BOSSA checkpoint stores under `prefix`: stored already cut,
/// so every stored layer runs.
fn stored_musicgen(ckpt: &Checkpoint, prefix: &str, decoder: MusicgenDecoderConfig, device: Device) -> Result<FrozenAudio> {
    let layers = Some(decoder.num_hidden_layers);
    FrozenAudio::from_checkpoint(ckpt, prefix, decoder, layers, device, Kind::Float)
}

/// The `musicgen` section a converted BOSSA checkpoint's config.json carries, if any.
fn musicgen_section(config: &Path) -> Result<Option<MusicgenDecoderConfig>> {
    let text = std::fs::read_to_string(config).with_context(|| format!("cannot read {}", config.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", config.display()))?;
    match json.get("musicgen") {
        None => Ok(None),
        Some(section) => serde_path_to_error::deserialize(section.clone())
            .map(Some)
            .with_context(|| format!("{}: `musicgen` is not a MusicGen decoder config", config.display())),
    }
}

/// The stage-2 model with its frozen audio path, and the backbones it stands on.
pub struct Stage2Model {
    pub audio: FrozenAudio,
    pub net: Blip2Musecoco,
    pub backbones: Vec<Backbone>,
}

impl Stage2Model {
    /// Build for training: the frozen audio path, the Q-Former from stage 1 (or "w/o PT"),
    /// MuseCoco from its checkpoint (or tiny, from `seed`), fresh adapters and projection.
    pub fn for_training(cfg: &ModelConfig, device: Device, seed: u64) -> Result<Self> {
        let origin = cfg.stage1.as_deref().map(Stage1Origin::open).transpose()?;
        let audio = build_audio(cfg, origin.as_ref(), device, seed)?;
        // A stored MusicGen (BOSSA's) is covered by the stage-1 backbone's hash.
        let source = musicgen_source(cfg, origin.as_ref());
        let mut backbones: Vec<Backbone> = source.iter().flat_map(|s| &s.checkpoint).map(|dir| Backbone::hash("musicgen", dir)).collect::<Result<_>>()?;
        let qcfg = qformer_config(cfg, origin.as_ref(), &audio)?;
        let (musecoco_cfg, musecoco_ckpt) = musecoco(&cfg.musecoco)?;
        tch::manual_seed(seed.wrapping_add(2) as i64);
        let mut net = Blip2Musecoco::new(&qcfg, &musecoco_cfg, device);
        match (&origin, &cfg.musicbert) {
            (Some(o), _) => {
                net.load_stage1_qformer(&o.weights)?;
                backbones.push(Backbone::hash("stage1", &o.dir)?);
            }
            (None, Some(path)) => {
                // MusicBERT initialises the symbolic model; stage 2 keeps its audio stream.
                let symbolic = VarStore::new(device);
                let qformer = QFormer::new(symbolic.root(), &QFormerConfig { symbolic: true, ..qcfg.clone() });
                let ckpt = Checkpoint::open(path).with_context(|| format!("cannot open the MusicBERT checkpoint {}", path.display()))?;
                qformer.init_from_musicbert(&symbolic, &ckpt)?;
                let initialised = Checkpoint::from_tensors(path, symbolic.variables());
                net.load_stage1_qformer(&initialised)?;
            }
            (None, None) => {}
        }
        if let Some((ckpt, dir)) = &musecoco_ckpt {
            net.load_musecoco(ckpt)?;
            backbones.push(Backbone::hash("musecoco", dir)?);
        }
        Ok(Self { audio: audio.with_cache(cfg.cache_features), net, backbones })
    }

    /// Rebuild a trained model for arrangement: a stylebridge stage-2 run / checkpoint folder
    /// (its config and backbones, then what it trained), or a converted `bossa_stage2.pt` folder.
    pub fn from_run(path: &Path, device: Device) -> Result<(Self, PathBuf)> {
        if is_converted_bossa(path) {
            return Ok((Self::from_bossa(path, device)?, path.to_path_buf()));
        }
        let dir = checkpoint::resolve(path)?;
        let cfg: ModelConfig = checkpoint::model_section(&dir, "stage2")?;
        let seed = checkpoint::config_section(&dir, "seed")?;
        let recorded = checkpoint::read_backbones(&dir)?;
        // The frozen models must be the ones the adapters were trained on: another MuseCoco or
        // MusicGen of the same shape would load and arrange nonsense.
        let frozen: Vec<Backbone> = recorded.iter().filter(|b| b.role == "musecoco" || b.role == "musicgen").map(|b| Backbone::hash(&b.role, &b.path)).collect::<Result<_>>()?;
        checkpoint::check_backbones(&recorded, &frozen, &dir)?;
        let mut model = Self::for_arrange(&cfg, seed, &recorded, device)?;
        // What trained only: the optimizer state stays on disk.
        let path = dir.join("model.safetensors");
        let trained = Tensor::read_safetensors(&path).with_context(|| format!("cannot read {}", path.display()))?.into_iter().collect();
        model.net.load_trained(&trained, &path)?;
        Ok((model, dir))
    }

    /// The frozen parts as the config and `seed` of the run name them, fresh trainables.
    fn for_arrange(cfg: &ModelConfig, seed: u64, recorded: &[Backbone], device: Device) -> Result<Self> {
        let origin = cfg.stage1.as_deref().map(Stage1Origin::open).transpose()?;
        let audio = build_audio(cfg, origin.as_ref(), device, seed)?;
        let qcfg = qformer_config(cfg, origin.as_ref(), &audio)?;
        let (musecoco_cfg, musecoco_ckpt) = musecoco(&cfg.musecoco)?;
        let mut net = Blip2Musecoco::new(&qcfg, &musecoco_cfg, device);
        match musecoco_ckpt {
            Some((ckpt, _)) => net.load_musecoco(&ckpt)?,
            None => bail!("the run's MuseCoco is `tiny` (random, from a seed): it cannot be rebuilt for arrangement"),
        }
        Ok(Self { audio, net, backbones: recorded.to_vec() })
    }

    fn from_bossa(dir: &Path, device: Device) -> Result<Self> {
        let config = dir.join("config.json");
        let qcfg = QFormerConfig::from_json_file(&config)?;
        let musecoco_cfg = MuseCocoConfig::from_json_file(&config)?;
        let decoder = musicgen_section(&config)?.with_context(|| {
            format!("{}: no `musicgen` section (convert the checkpoint again with this version of `stylebridge convert`)", config.display())
        })?;
        let ckpt = Checkpoint::open(dir)?;
        ensure!(
            ckpt.names().any(|n| n.starts_with(crate::models::blip2_musecoco::MUSECOCO_PREFIX)),
            "{}: no MuseCoco weights (`musecoco.*`); is this a stage-2 checkpoint?",
            dir.display()
        );
        let audio = stored_musicgen(&ckpt, BOSSA_STAGE2_MUSICGEN, decoder, device)?;
        let mut net = Blip2Musecoco::new(&QFormerConfig { encoder_width: audio.config().hidden_size, ..qcfg }, &musecoco_cfg, device);
        net.load_bossa(&ckpt)?;
        Ok(Self { audio, net, backbones: Vec::new() })
    }

    pub fn device(&self) -> Device {
        self.net.device()
    }

    /// Z [B, Q, H] of code windows [B, K, T] with frame keep-masks [B, T].
    pub fn query_output(&mut self, codes: &Tensor, frame_mask: &Tensor, train: bool) -> Result<Tensor> {
        let states = self.audio.states(codes)?;
        self.net.query_output(&states, &step_mask(frame_mask, codes.size()[1]), train)
    }

    /// Soft prompts [B, Q, C] of code windows [B, K, T] with frame keep-masks [B, T].
    pub fn soft_prompt(&mut self, codes: &Tensor, frame_mask: &Tensor, train: bool) -> Result<Tensor> {
        let z = self.query_output(codes, frame_mask, train)?;
        Ok(self.net.project(&z))
    }

    /// Check that the prepared data fit: codebooks and pad code.
    pub fn check_data(&self, set: &PairSet, origin: &str) -> Result<()> {
        self.audio.check_codes(set.layout.n_q, i64::from(set.layout.pad_code), origin)
    }
}

/// The MusicGen `model.musicgen` names, else the stage-1 run's (None: the BOSSA checkpoint's own).
fn musicgen_source(cfg: &ModelConfig, origin: Option<&Stage1Origin>) -> Option<MusicgenSource> {
    cfg.musicgen.clone().or_else(|| origin.and_then(|o| o.musicgen.clone()))
}

/// The frozen audio path: `model.musicgen`, else the stage-1 run's, else the BOSSA checkpoint's.
fn build_audio(cfg: &ModelConfig, origin: Option<&Stage1Origin>, device: Device, seed: u64) -> Result<FrozenAudio> {
    if let Some(source) = musicgen_source(cfg, origin) {
        return FrozenAudio::new(&source, Kind::Float, device, seed);
    }
    match origin.and_then(|o| o.embedded_musicgen.clone().map(|e| (o, e))) {
        Some((o, (decoder, prefix))) => stored_musicgen(&o.weights, prefix, decoder, device),
        None => bail!("model.musicgen is not set and the stage-1 model names no MusicGen (give model.musicgen)"),
    }
}

fn qformer_config(cfg: &ModelConfig, origin: Option<&Stage1Origin>, audio: &FrozenAudio) -> Result<QFormerConfig> {
    let base = match (&cfg.qformer, origin) {
        (Some(q), _) => q.clone(),
        (None, Some(o)) => o.qformer.clone(),
        (None, None) => bail!("model.qformer is not set and there is no stage-1 model to take it from"),
    };
    Ok(QFormerConfig { encoder_width: audio.config().hidden_size, symbolic: false, ..base })
}

/// MuseCoco's config and, for a real checkpoint, its weights and folder.
fn musecoco(source: &MuseCocoSource) -> Result<(MuseCocoConfig, Option<(Checkpoint, PathBuf)>)> {
    match (&source.checkpoint, &source.tiny) {
        (Some(dir), None) => {
            let cfg = MuseCocoConfig::from_json_file(&dir.join("config.json"))?;
            let ckpt = Checkpoint::open(dir).with_context(|| format!("cannot open the MuseCoco checkpoint {}", dir.display()))?;
            Ok((cfg, Some((ckpt, dir.clone()))))
        }
        (None, Some(tiny)) => Ok((tiny.config(), None)),
        _ => bail!("model.musecoco: give `checkpoint` (the HF port of MuseCoco) or `tiny`"),
    }
}

/// A stage-2 batch as tensors on the model's device.
pub struct Inputs {
    pub codes: Tensor,
    pub audio_mask: Tensor,
    pub tokens: Tensor,
    pub is_target: Tensor,
    pub is_real: Tensor,
}

impl Inputs {
    pub fn from_batch(batch: &Batch, device: Device) -> Result<Self> {
        let Symbolic::Stage2 { len, tokens, is_target, is_real } = &batch.symbolic else {
            bail!("stage 2 needs REMI batches (the loader was built for stage 1)");
        };
        let (b, len) = (batch.len() as i64, *len as i64);
        let (codes, audio_mask) = super::batch::audio(batch, device);
        let mask = |v: &[u8]| super::batch::mask(v, b, len, device);
        Ok(Self {
            codes,
            audio_mask,
            tokens: Tensor::from_slice(tokens).view([b, len]).to_device(device),
            is_target: mask(is_target),
            is_real: mask(is_real),
        })
    }
}

/// For each row of a batch, the next row (cyclically) from another song, else the row itself.
fn other_song_rows(songs: &[&str]) -> Vec<i64> {
    let n = songs.len();
    (0..n).map(|i| (1..n).map(|d| (i + d) % n).find(|&j| songs[j] != songs[i]).unwrap_or(i) as i64).collect()
}

/// Stage 2 as a [`Task`] for the trainer.
pub struct Stage2Task {
    pub model: Stage2Model,
    train: Loader,
    valid: Option<ValidationSet>,
    seed: u64,
    qformer_lr_scale: f64,
}

impl Stage2Task {
    /// Records the EnCodec that made the training codes (for `arrange`); `cfg` gives the
    /// Q-Former's learning-rate scale.
    pub fn new(mut model: Stage2Model, cfg: &ModelConfig, train: Loader, valid: Option<ValidationSet>, seed: u64) -> Result<Self> {
        let encodec = PathBuf::from(&train.set().layout.encodec);
        if encodec.exists() {
            model.backbones.push(Backbone::hash("encodec", &encodec)?);
        }
        Ok(Self { model, train, valid, seed, qformer_lr_scale: cfg.qformer_lr_scale.unwrap_or(1.0) })
    }

    /// A batch's inputs and the soft prompt its audio gives.
    fn prompted(&mut self, batch: &Batch, train: bool) -> Result<(Inputs, Tensor)> {
        let x = Inputs::from_batch(batch, self.model.device())?;
        let soft = self.model.soft_prompt(&x.codes, &x.audio_mask, train)?;
        Ok((x, soft))
    }
}

impl Task for Stage2Task {
    type Data = Loader;

    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.model.net.parameters()
    }

    fn lr_scale(&self, name: &str) -> f64 {
        if name.starts_with(QFORMER_PREFIX) { self.qformer_lr_scale } else { 1.0 }
    }

    fn backbones(&self) -> Vec<Backbone> {
        self.model.backbones.clone()
    }

    fn device(&self) -> Device {
        self.model.device()
    }

    fn data(&self) -> &Loader {
        &self.train
    }

    fn loss(&mut self, batch: &Batch) -> Result<MicroLoss> {
        let (x, soft) = self.prompted(batch, true)?;
        let (logits, targets) = self.model.net.target_logits(&soft, &x.tokens, &x.is_target, &x.is_real, true)?;
        Ok(super::losses::next_token(&logits, &targets))
    }

    /// Validation loss and accuracy (centred windows, no transposition, no dropout), and
    /// `audio_gain`: how much lower the loss is with each row's own audio than with another
    /// song's (nats per target token). Near 0, the soft prompt is ignored; it is a lower bound,
    /// as another song may share the style and a row whose batch has no other song keeps its own.
    fn validate(&mut self, max_batches: Option<usize>) -> Result<Vec<(String, f64)>> {
        let valid = self.valid.clone();
        let Some((set, _)) = &valid else { return Ok(Vec::new()) };
        super::trainer::validation_means(&valid, max_batches, self.seed, |batch| {
            let (x, soft) = self.prompted(batch, false)?;
            let net = &self.model.net;
            let (logits, targets) = net.target_logits(&soft, &x.tokens, &x.is_target, &x.is_real, false)?;
            let songs: Vec<&str> = batch.rows.iter().map(|&r| set.rows[r].song_id.as_str()).collect();
            let others = Tensor::from_slice(&other_song_rows(&songs)).to_device(soft.device());
            let (swapped, _) = net.target_logits(&soft.index_select(0, &others), &x.tokens, &x.is_target, &x.is_real, false)?;
            let mut figures = super::losses::next_token_figures(&logits, &targets);
            let loss = figures.iter().find(|(name, _)| name == "loss").map(|(_, v)| *v).context("next_token_figures gives no loss")?;
            figures.push(("audio_gain".into(), swapped.cross_entropy_for_logits(&targets).double_value(&[]) - loss));
            Ok(figures)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::other_song_rows;

    #[test]
    fn each_row_hears_the_next_other_song() {
        assert_eq!(other_song_rows(&["a", "a", "b", "c", "c"]), [2, 2, 3, 0, 0]);
        assert_eq!(other_song_rows(&["a", "a"]), [0, 1], "no other song: each row keeps its own");
        assert_eq!(other_song_rows(&["a"]), [0]);
    }
}
