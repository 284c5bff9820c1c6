//! Stage 1 (BOSSA `Blip2Qformer`): frozen EnCodec codes -> frozen MusicGen decoder (first
//! layers) -> trainable LayerNorm -> Q-Former, trained with the contrastive (C), matching (M)
//! and audio-grounded generation (G) objectives of [`super::losses`].
//!
//! Attention masks, as BOSSA builds them (keep-masks, 1 = attend):
//! - unimodal (C): the queries see only each other and the audio; the notes see the notes that
//!   are neither lead sheet nor padding ([`unimodal_keep`]); the symbolic feature is the output at
//!   the `<s>` note that follows the lead sheet;
//! - matching (M): queries and notes attend to each other, the lead sheet still masked out;
//! - generation (G): `<DEC>` replaces `<s>`; notes see every query and, causally, the earlier
//!   notes including the lead sheet ([`generation_mask`]); the queries see no notes (their
//!   keys/values come from the query pass); labels are the piano notes and `</s>`
//!   ([`generation_labels`]).
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use tch::{nn::VarStore, Device, Kind, Tensor};

use super::losses::{self, SLOT_NAMES};
use super::checkpoint::Backbone;
use super::trainer::{Collective, MicroLoss, Precision, Task};
use crate::data::encodings::octuple;
use crate::data::loader::{Batch, Loader, LoaderOptions, PairSet, Symbolic, ValidationSet};
use crate::eval::retrieval::{self, Embedder, RetrievalConfig, Source};
use crate::models::frozen_audio::{step_mask, FrozenAudio, MusicgenSource};
use crate::models::musicgen::MusicgenDecoderConfig;
use crate::models::qformer::{causal_mask, QFormer, QFormerConfig, NOTE_WIDTH};
use crate::models::weights::Checkpoint;
use crate::yaml::{Problems, Validate};

/// Which objectives are trained (the paper's Table 3 ablation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Objectives {
    C,
    CM,
    CMG,
}

impl Objectives {
    pub fn matching(self) -> bool {
        self != Objectives::C
    }
    pub fn generation(self) -> bool {
        self == Objectives::CMG
    }
}

/// The `model:` config section of stage 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub musicgen: MusicgenSource,
    /// Q-Former shape; `encoder_width` is taken from the MusicGen checkpoint.
    pub qformer: QFormerConfig,
    /// MusicBERT-base converted by `stylebridge convert --format musicbert`; from scratch if unset.
    pub musicbert: Option<PathBuf>,
    pub objectives: Objectives,
    /// Keep the frozen MusicGen features of every audio window seen (keyed by the window's codes,
    /// so fresh shifts still get fresh features). Worth it only when everything fits in memory.
    pub cache_features: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            musicgen: MusicgenSource::default(),
            qformer: QFormerConfig::default(),
            musicbert: None,
            objectives: Objectives::CMG,
            cache_features: false,
        }
    }
}

impl PartialEq for ModelConfig {
    fn eq(&self, other: &Self) -> bool {
        // QFormerConfig has no PartialEq; compare through its serialized form.
        serde_json::to_value(self).ok() == serde_json::to_value(other).ok()
    }
}

impl Validate for ModelConfig {
    fn validate(&self, at: &str, p: &mut Problems) {
        self.musicgen.validate(&format!("{at}.musicgen"), p);
        self.qformer.validate(&format!("{at}.qformer"), p);
    }
}

/// Notes the unimodal and matching passes attend to: real notes that are not lead sheet.
pub fn unimodal_keep(is_lead_sheet: &Tensor, is_real: &Tensor) -> Tensor {
    (1.0 - is_lead_sheet.to_kind(Kind::Float)) * is_real.to_kind(Kind::Float)
}

/// The generation pass's keep-mask [B, N, Q + N]: every query, then causal over real notes.
pub fn generation_mask(is_real: &Tensor, num_queries: i64) -> Tensor {
    let (b, n) = is_real.size2().expect("is_real is [batch, notes]");
    let queries = Tensor::ones([b, num_queries], (Kind::Float, is_real.device()));
    causal_mask(&Tensor::cat(&[queries, is_real.to_kind(Kind::Float)], 1), n, false)
}

/// Generation input and labels [B, 8N]: `<s>` becomes `<DEC>`; labels keep the piano notes and
/// `</s>` (lead sheet, padding and `<DEC>` get [`losses::IGNORE`]).
pub fn generation_labels(tokens: &Tensor, is_lead_sheet: &Tensor, is_real: &Tensor) -> (Tensor, Tensor) {
    let input = tokens.masked_fill(&tokens.eq(octuple::BOS as i64), octuple::DEC as i64);
    let keep = unimodal_keep(is_lead_sheet, is_real).repeat_interleave_self_int(NOTE_WIDTH, Some(1), None).gt(0.5);
    let labelled = keep.logical_and(&input.ne(octuple::DEC as i64));
    let labels = input.where_self(&labelled, &Tensor::from(losses::IGNORE).to_device(tokens.device()));
    (input, labels)
}

/// A stage-1 batch as tensors on the model's device.
pub struct Inputs {
    pub codes: Tensor,
    pub audio_mask: Tensor,
    pub tokens: Tensor,
    pub is_lead_sheet: Tensor,
    pub is_real: Tensor,
}

impl Inputs {
    pub fn from_batch(batch: &Batch, device: Device) -> Result<Self> {
        let Symbolic::Stage1 { notes, tokens, is_lead_sheet, is_real } = &batch.symbolic else {
            bail!("stage 1 needs OctupleMIDI batches (the loader was built for stage 2)");
        };
        let (b, notes) = (batch.len() as i64, *notes as i64);
        let (codes, audio_mask) = super::batch::audio(batch, device);
        let mask = |v: &[u8]| super::batch::mask(v, b, notes, device);
        Ok(Self {
            codes,
            audio_mask,
            tokens: Tensor::from_slice(tokens).view([b, notes * NOTE_WIDTH]).to_device(device),
            is_lead_sheet: mask(is_lead_sheet),
            is_real: mask(is_real),
        })
    }
}

/// The losses of one forward pass.
pub struct Stage1Losses {
    pub total: Tensor,
    pub contrastive: Tensor,
    pub matching: Option<Tensor>,
    pub generation: Option<(Tensor, Tensor)>,
}

impl Stage1Losses {
    pub fn parts(&self) -> Vec<(String, f64)> {
        let mut out = vec![("loss".to_string(), self.total.double_value(&[])), ("loss/contrastive".into(), self.contrastive.double_value(&[]))];
        if let Some(m) = &self.matching {
            out.push(("loss/matching".into(), m.double_value(&[])));
        }
        if let Some((g, slots)) = &self.generation {
            out.push(("loss/generation".into(), g.double_value(&[])));
            let slots = Vec::<f64>::try_from(slots.to_kind(Kind::Double).to_device(Device::Cpu)).unwrap_or_default();
            out.extend(SLOT_NAMES.iter().zip(slots).map(|(name, v)| (format!("loss/generation/{name}"), v)));
        }
        out
    }
}

pub struct Stage1Model {
    audio: FrozenAudio,
    /// The trainable part: Q-Former, its heads and the LayerNorm on the audio states.
    pub vs: VarStore,
    pub qformer: QFormer,
    objectives: Objectives,
    precision: Precision,
}

impl Stage1Model {
    /// Build the model: MusicGen from its checkpoint (or tiny, from `seed`), the Q-Former from
    /// MusicBERT (or from scratch, from `seed`).
    pub fn new(cfg: &ModelConfig, precision: Precision, device: Device, seed: u64) -> Result<Self> {
        let audio = FrozenAudio::new(&cfg.musicgen, precision.compute_kind(), device, seed)?.with_cache(cfg.cache_features);
        let mut qcfg = cfg.qformer.clone();
        qcfg.encoder_width = audio.config().hidden_size;
        qcfg.symbolic = true;
        ensure!(
            qcfg.hidden_size % qcfg.num_attention_heads.max(1) == 0,
            "model.qformer: hidden_size {} is not a multiple of num_attention_heads {}",
            qcfg.hidden_size,
            qcfg.num_attention_heads
        );
        tch::manual_seed(seed.wrapping_add(1) as i64);
        let vs = VarStore::new(device);
        let qformer = QFormer::new(vs.root(), &qcfg);
        if let Some(path) = &cfg.musicbert {
            let ckpt = Checkpoint::open(path).with_context(|| format!("cannot open the MusicBERT checkpoint {}", path.display()))?;
            qformer.init_from_musicbert(&vs, &ckpt)?;
        }
        Ok(Self { audio, vs, qformer, objectives: cfg.objectives, precision })
    }

    /// Rebuild a trained model from a run, checkpoints or step folder (`best`, else `latest`):
    /// the run's model config and seed (a tiny random MusicGen is drawn from it, as in training).
    pub fn from_run(path: &std::path::Path, device: Device, precision: Precision) -> Result<(Self, std::path::PathBuf)> {
        let dir = super::checkpoint::resolve(path)?;
        let cfg: ModelConfig = super::checkpoint::model_section(&dir, "stage1")?;
        let seed: u64 = super::checkpoint::config_section(&dir, "seed")?;
        Ok((Self::load(&cfg, seed, precision, device, &dir)?, dir))
    }

    /// `cfg` built with the run's `seed`, with the trained weights of checkpoint folder `dir`.
    pub fn load(cfg: &ModelConfig, seed: u64, precision: Precision, device: Device, dir: &std::path::Path) -> Result<Self> {
        let model = Self::new(cfg, precision, device, seed)?;
        let weights = Checkpoint::open(&dir.join("model.safetensors"))?;
        let mut vs = model.vs;
        weights.load_into(&mut vs, "", |_| false)?;
        Ok(Self { vs, ..model })
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Cache the frozen audio features by window (on: empty; off: dropped).
    pub fn cache_audio(&mut self, on: bool) {
        self.audio.set_cache(on);
    }

    pub fn musicgen_config(&self) -> &MusicgenDecoderConfig {
        self.audio.config()
    }

    /// Audio embeddings (after the trainable LayerNorm) and their step keep-mask.
    fn audio_embeds(&mut self, inputs: &Inputs) -> Result<(Tensor, Tensor)> {
        let k = inputs.codes.size()[1];
        let states = self.audio.states(&inputs.codes)?;
        Ok((self.qformer.audio_embeds(&states), step_mask(&inputs.audio_mask, k)))
    }

    /// The three losses of one batch (`train` switches dropout on).
    pub fn losses(&mut self, inputs: &Inputs, collective: &dyn Collective, train: bool) -> Result<Stage1Losses> {
        let (audio_embeds, audio_mask) = self.audio_embeds(inputs)?;
        let autocast = self.precision == Precision::Fp16 && self.device().is_cuda();
        tch::autocast(autocast, || self.losses_from_audio(inputs, &audio_embeds, &audio_mask, collective, train))
    }

    fn losses_from_audio(
        &self,
        inputs: &Inputs,
        audio_embeds: &Tensor,
        audio_mask: &Tensor,
        collective: &dyn Collective,
        train: bool,
    ) -> Result<Stage1Losses> {
        let q = &self.qformer;
        let b = inputs.tokens.size()[0];
        let keep = unimodal_keep(&inputs.is_lead_sheet, &inputs.is_real);
        let query_out = q.query_output(audio_embeds, audio_mask, train)?;
        let audio_feats = q.audio_features(&query_out.hidden)?;
        let sos = inputs.is_lead_sheet.sum_dim_intlist([1i64].as_slice(), false, Kind::Int64);
        let notes_out = q.notes_output(&inputs.tokens, &keep, train)?;
        let symbolic_feats = q.symbolic_features(&notes_out.hidden, &sos)?;

        let offset = (collective.rank() as i64) * b;
        let audio_all = collective.all_gather(&audio_feats)?;
        let symbolic_all = collective.all_gather(&symbolic_feats)?;
        let (sim_a2s, sim_s2a) = losses::similarities(&audio_feats, &symbolic_feats, &audio_all, &symbolic_all, q.temp()?);
        let contrastive = losses::contrastive(&sim_a2s, &sim_s2a, offset);
        let mut total = contrastive.shallow_clone();

        let matching = if self.objectives.matching() {
            // Negatives come from every rank's batch (BOSSA gathers ids, masks and audio).
            let tokens_world = collective.all_gather(&inputs.tokens)?;
            let keep_world = collective.all_gather(&keep)?;
            let audio_world = collective.all_gather(audio_embeds)?;
            let audio_mask_world = collective.all_gather(audio_mask)?;
            let neg_audio = losses::hard_negatives(&sim_s2a, offset).to_device(self.device());
            let neg_notes = losses::hard_negatives(&sim_a2s, offset).to_device(self.device());
            let notes_all = Tensor::cat(&[&inputs.tokens, &inputs.tokens, &tokens_world.index_select(0, &neg_notes)], 0);
            let keep_all = Tensor::cat(&[&keep, &keep, &keep_world.index_select(0, &neg_notes)], 0);
            let audio_all = Tensor::cat(&[audio_embeds, &audio_world.index_select(0, &neg_audio), audio_embeds], 0);
            let audio_mask_all = Tensor::cat(&[audio_mask, &audio_mask_world.index_select(0, &neg_audio), audio_mask], 0);
            let logits = q.matching_logits(&notes_all, &keep_all, &audio_all, &audio_mask_all, train)?;
            let loss = losses::matching(&logits);
            total = total + &loss;
            Some(loss)
        } else {
            None
        };

        let generation = if self.objectives.generation() {
            let (input, labels) = generation_labels(&inputs.tokens, &inputs.is_lead_sheet, &inputs.is_real);
            let logits = q.lm_logits(&input, &inputs.is_real, &query_out.cache, train)?;
            let (loss, slots) = losses::generation(&logits, &labels);
            total = total + &loss;
            Some((loss, slots))
        } else {
            None
        };
        Ok(Stage1Losses { total, contrastive, matching, generation })
    }

    /// Retrieval features (eval mode): audio [B, Q, D] and symbolic [B, D].
    pub fn features(&mut self, inputs: &Inputs) -> Result<(Tensor, Tensor)> {
        let (audio_embeds, audio_mask) = self.audio_embeds(inputs)?;
        let q = &self.qformer;
        let audio = q.audio_features(&q.query_output(&audio_embeds, &audio_mask, false)?.hidden)?;
        let keep = unimodal_keep(&inputs.is_lead_sheet, &inputs.is_real);
        let sos = inputs.is_lead_sheet.sum_dim_intlist([1i64].as_slice(), false, Kind::Int64);
        let symbolic = q.symbolic_features(&q.notes_output(&inputs.tokens, &keep, false)?.hidden, &sos)?;
        Ok((audio, symbolic))
    }

    /// Check that the prepared data fits the model: codebooks, pad code, notes per sequence.
    pub fn check_data(&self, set: &PairSet, options: &LoaderOptions, origin: &str) -> Result<()> {
        self.audio.check_codes(set.layout.n_q, i64::from(set.layout.pad_code), origin)?;
        let positions = self.qformer.config().max_position_embeddings;
        ensure!(
            (options.max_notes as i64) <= positions,
            "data.max_notes = {} exceeds the Q-Former's {positions} positions (model.qformer.max_position_embeddings)",
            options.max_notes
        );
        Ok(())
    }
}

impl Embedder for Stage1Model {
    fn embed(&mut self, batch: &Batch) -> Result<(Tensor, Tensor)> {
        let inputs = Inputs::from_batch(batch, self.device())?;
        self.features(&inputs)
    }
}

/// Stage 1 as a [`Task`] for the trainer.
pub struct Stage1Task<'a> {
    pub model: Stage1Model,
    train: Loader,
    valid: Option<ValidationSet>,
    retrieval: RetrievalConfig,
    collective: &'a dyn Collective,
    seed: u64,
    backbones: Vec<Backbone>,
}

impl<'a> Stage1Task<'a> {
    /// `musicgen` names the frozen decoder's checkpoint (hashed into every checkpoint).
    pub fn new(
        model: Stage1Model,
        train: Loader,
        valid: Option<ValidationSet>,
        retrieval: RetrievalConfig,
        collective: &'a dyn Collective,
        seed: u64,
        musicgen: &MusicgenSource,
    ) -> Result<Self> {
        let backbones = musicgen.checkpoint.iter().map(|dir| Backbone::hash("musicgen", dir)).collect::<Result<_>>()?;
        Ok(Self { model, train, valid, retrieval, collective, seed, backbones })
    }
}

impl Task for Stage1Task<'_> {
    type Data = Loader;

    fn parameters(&self) -> Vec<(String, Tensor)> {
        crate::models::weights::trainable(&self.model.vs)
    }

    fn backbones(&self) -> Vec<Backbone> {
        self.backbones.clone()
    }

    fn device(&self) -> Device {
        self.model.device()
    }

    fn data(&self) -> &Loader {
        &self.train
    }

    fn loss(&mut self, batch: &Batch) -> Result<MicroLoss> {
        let inputs = Inputs::from_batch(batch, self.model.device())?;
        let losses = self.model.losses(&inputs, self.collective, true)?;
        Ok(MicroLoss { parts: losses.parts(), total: losses.total })
    }

    /// Validation loss (centred windows, no transposition, fixed hard-negative draws) and one
    /// retrieval run over up to `eval.retrieval.queries` validation pairs.
    fn validate(&mut self, max_batches: Option<usize>) -> Result<Vec<(String, f64)>> {
        let valid = self.valid.clone();
        let mut sums = super::trainer::validation_means(&valid, max_batches, self.seed, |batch| {
            let inputs = Inputs::from_batch(batch, self.model.device())?;
            Ok(self.model.losses(&inputs, self.collective, false)?.parts())
        })?;
        let Some((set, options)) = &self.valid else { return Ok(sums) };
        let queries = self.retrieval.queries.min(set.rows.len());
        if queries >= 2 {
            let cfg = RetrievalConfig { runs: 1, queries, mix: Default::default(), ..self.retrieval.clone() };
            let source = [Source { name: "valid".into(), set: Arc::clone(set) }];
            let report = retrieval::evaluate(&mut self.model, &source, &cfg, options, "current")?;
            if let Some(row) = report.rows.iter().find(|r| r.model != "random guess" && !r.transposed) {
                let s = &row.summary;
                sums.extend([
                    ("val/retrieval_acc1".to_string(), s.acc1.mean),
                    ("val/retrieval_acc5".to_string(), s.acc5.mean),
                    ("val/retrieval_mean_rank".to_string(), s.mean_rank.mean),
                    ("val/retrieval_queries".to_string(), queries as f64),
                ]);
            }
        }
        Ok(sums)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.to_kind(Kind::Float).reshape([-1])).unwrap()
    }

    #[test]
    fn unimodal_keep_drops_lead_sheet_and_padding() {
        // 2 lead notes, <s>, 2 piano, </s>, 2 pad.
        let lead = Tensor::from_slice(&[1u8, 1, 0, 0, 0, 0, 0, 0]).view([1, 8]);
        let real = Tensor::from_slice(&[1u8, 1, 1, 1, 1, 1, 0, 0]).view([1, 8]);
        assert_eq!(v(&unimodal_keep(&lead, &real)), vec![0., 0., 1., 1., 1., 1., 0., 0.]);
    }

    #[test]
    fn generation_mask_position_by_position() {
        // 2 queries; notes: lead, <DEC>, piano, pad.
        let real = Tensor::from_slice(&[1u8, 1, 1, 0]).view([1, 4]);
        let m = generation_mask(&real, 2);
        assert_eq!(m.size(), vec![1, 4, 6]);
        let m = v(&m);
        for note in 0..4 {
            for key in 0..6 {
                let want = if key < 2 { 1.0 } else { let k = key - 2; if k <= note && k < 3 { 1.0 } else { 0.0 } };
                assert_eq!(m[note * 6 + key], want, "note {note} key {key}");
            }
        }
    }

    #[test]
    fn generation_labels_keep_piano_and_eos_only() {
        // Notes: lead (ids 10..), <s>, piano (20..), </s>, pad.
        let mut ids = vec![];
        ids.extend([10i64; 8]);
        ids.extend([0i64; 8]);
        ids.extend([20i64; 8]);
        ids.extend([2i64; 8]);
        ids.extend([1i64; 8]);
        let tokens = Tensor::from_slice(&ids).view([1, 40]);
        let lead = Tensor::from_slice(&[1u8, 0, 0, 0, 0]).view([1, 5]);
        let real = Tensor::from_slice(&[1u8, 1, 1, 1, 0]).view([1, 5]);
        let (input, labels) = generation_labels(&tokens, &lead, &real);
        let input = Vec::<i64>::try_from(input.reshape([-1])).unwrap();
        let labels = Vec::<i64>::try_from(labels.reshape([-1])).unwrap();
        assert_eq!(&input[8..16], &[1237; 8], "<s> becomes <DEC>");
        assert_eq!(&input[0..8], &[10; 8]);
        for (i, &l) in labels.iter().enumerate() {
            let want = match i / 8 {
                2 => 20,
                3 => 2,
                _ => losses::IGNORE,
            };
            assert_eq!(l, want, "position {i}");
        }
    }

    fn tiny_model(objectives: Objectives) -> Stage1Model {
        let cfg = ModelConfig {
            musicgen: MusicgenSource {
                tiny: Some(crate::models::frozen_audio::TinyMusicgen { hidden_size: 8, num_hidden_layers: 2, num_attention_heads: 2, ffn_dim: 16, codebook_size: 16, num_codebooks: 4, seed: None }),
                ..Default::default()
            },
            qformer: QFormerConfig {
                hidden_size: 8,
                num_hidden_layers: 2,
                num_attention_heads: 2,
                intermediate_size: 16,
                num_query_tokens: 3,
                embed_dim: 4,
                max_position_embeddings: 16,
                ..Default::default()
            },
            objectives,
            ..Default::default()
        };
        Stage1Model::new(&cfg, Precision::Fp32, Device::Cpu, 5).unwrap()
    }

    /// Two rows: lead note, <s>, 2 piano notes, </s>, pad.
    fn tiny_inputs(codes_offset: i64) -> Inputs {
        let note = [4i64, 260, 388, 577, 780, 920, 940, 1200];
        let mut row: Vec<i64> = note.to_vec();
        row.extend([0; 8]);
        row.extend(note.iter().map(|t| t + 1));
        row.extend(note.iter().map(|t| t + 2));
        row.extend([2; 8]);
        row.extend([1; 8]);
        let tokens = Tensor::from_slice(&[row.clone(), row].concat()).view([2, 48]);
        let mask = |v: [f32; 6]| Tensor::from_slice(&[v, v].concat()).view([2, 6]);
        Inputs {
            codes: (Tensor::arange(2 * 4 * 10, (Kind::Int64, Device::Cpu)).view([2, 4, 10]) + codes_offset).remainder(16),
            audio_mask: Tensor::ones([2, 10], (Kind::Float, Device::Cpu)),
            tokens,
            is_lead_sheet: mask([1., 0., 0., 0., 0., 0.]),
            is_real: mask([1., 1., 1., 1., 1., 0.]),
        }
    }

    #[test]
    fn lead_sheet_is_invisible_to_the_symbolic_feature_and_all_losses_are_finite() {
        let mut model = tiny_model(Objectives::CMG);
        let x = tiny_inputs(0);
        let (_, s) = model.features(&x).unwrap();
        // Change the lead-sheet note's pitch: the unimodal pass masks it out.
        let tokens = x.tokens.copy();
        let _ = tokens.narrow(1, 3, 1).fill_(600);
        let (_, s2) = model.features(&Inputs { tokens, ..tiny_inputs(0) }).unwrap();
        assert!(s.allclose(&s2, 1e-6, 1e-6, false));
        tch::manual_seed(0);
        let losses = model.losses(&x, &crate::train::trainer::SingleProcess, true).unwrap();
        let parts = losses.parts();
        assert_eq!(parts.len(), 4 + 8, "{parts:?}");
        assert!(parts.iter().all(|(_, v)| v.is_finite()), "{parts:?}");
        losses.total.backward();
        assert!(model.vs.variables()["Qformer.cls.predictions.decoder.weight"].grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }
}
