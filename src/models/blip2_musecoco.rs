//! BOSSA's stage-2 model (`Blip2Musecoco` in model_blip2.py) less the frozen audio path: the
//! Q-Former's audio stream (`blip2qformer.*`: LayerNorm on the MusicGen states, queries,
//! cross-attention, the query FFNs; stage 1's symbolic branch and heads are not built), the
//! projection `musecoco_proj` to MuseCoco's width, and MuseCoco (frozen, LoRA r16 on q/k/v).
//!
//! The Q outputs of the queries, projected, are a soft prompt with no positions in front of the
//! tokens `</s>` + 60 attribute tokens + `<sep>` + lead sheet + `<sep>` + piano + `</s>`, whose
//! positions skip the first 61 tokens (`encode_input_ids(token, pos_start=61)`). The loss is
//! MuseCoco's shifted cross-entropy on the piano tokens and the final `</s>` (BOSSA's labels mask
//! the prefix, the lead sheet and padding with -100), averaged over those tokens in the batch.
//!
//! Names are BOSSA's state-dict names, so a converted `bossa_stage2.pt` loads as it is:
//! `blip2qformer.*` and `musecoco_proj.*` live in [`Blip2Musecoco::vs`], MuseCoco in its own store
//! with the HF port's names (`decoder.*`, `lm_head.weight`), saved under `musecoco.`.
use anyhow::{ensure, Context, Result};
use std::collections::BTreeMap;
use tch::{nn, nn::Module, nn::VarStore, Device, Kind, Tensor};

use super::musecoco::{MuseCoco, MuseCocoConfig};
use super::qformer::{self, torch_linear, QFormer, QFormerConfig};
use super::weights::Checkpoint;

/// Token positions skip BOSSA's first 61 tokens (`</s>` and the 60 attribute tokens).
pub const POS_START: i64 = crate::data::encodings::remi::STAGE2_POS_START;
/// Name prefix of MuseCoco's tensors in a stage-2 checkpoint.
pub const MUSECOCO_PREFIX: &str = "musecoco.";
pub const QFORMER_PREFIX: &str = "blip2qformer.";

pub struct Blip2Musecoco {
    /// `blip2qformer.*` and `musecoco_proj.*`: trainable.
    pub vs: VarStore,
    pub qformer: QFormer,
    musecoco_proj: nn::Linear,
    /// MuseCoco at its store's root: frozen base weights, trainable adapters.
    pub musecoco_vs: VarStore,
    pub musecoco: MuseCoco,
}

impl Blip2Musecoco {
    /// Fresh weights: the Q-Former's audio stream (`qformer.symbolic` is ignored), a PyTorch-default
    /// `musecoco_proj`, and MuseCoco with the reference's random init (load real weights after).
    pub fn new(qformer_cfg: &QFormerConfig, musecoco_cfg: &MuseCocoConfig, device: Device) -> Self {
        let vs = VarStore::new(device);
        let qformer = QFormer::new(vs.root() / "blip2qformer", &QFormerConfig { symbolic: false, ..qformer_cfg.clone() });
        let musecoco_proj = torch_linear(vs.root() / "musecoco_proj", qformer_cfg.hidden_size, musecoco_cfg.n_embd);
        let musecoco_vs = VarStore::new(device);
        let musecoco = MuseCoco::new(musecoco_vs.root(), &MuseCocoConfig { use_lora: true, ..musecoco_cfg.clone() });
        Self { vs, qformer, musecoco_proj, musecoco_vs, musecoco }
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// What stage 2 trains, by checkpoint name: the Q-Former, `musecoco_proj` and the adapters.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        let mut params = crate::models::weights::trainable(&self.vs);
        params.extend(crate::models::weights::trainable(&self.musecoco_vs).into_iter().map(|(n, t)| (format!("{MUSECOCO_PREFIX}{n}"), t)));
        params
    }

    /// The Q-Former's outputs Z [B, Q, H] for frozen MusicGen states [B, T, W] (fp32) with
    /// keep-mask [B, T]: the style representation (several references can be mixed here).
    pub fn query_output(&self, audio_states: &Tensor, audio_mask: &Tensor, train: bool) -> Result<Tensor> {
        let embeds = self.qformer.audio_embeds(audio_states);
        Ok(self.qformer.query_output(&embeds, audio_mask, train)?.hidden)
    }

    /// Z [B, Q, H] -> the soft prompt [B, Q, C].
    pub fn project(&self, z: &Tensor) -> Tensor {
        self.musecoco_proj.forward(z)
    }

    /// Mean cross-entropy of the target tokens: `tokens` [B, L] (`</s>` + attributes + `<sep>` +
    /// lead sheet + `<sep>` + piano + `</s>` + padding), `is_target` and `is_real` [B, L] (1/0).
    pub fn loss(&self, soft_prompt: &Tensor, tokens: &Tensor, is_target: &Tensor, is_real: &Tensor, train: bool) -> Result<Tensor> {
        let (logits, targets) = self.target_logits(soft_prompt, tokens, is_target, is_real, train)?;
        Ok(logits.cross_entropy_for_logits(&targets))
    }

    /// The logits [N, vocab] (fp32) that predict the N target tokens, and those tokens [N].
    pub fn target_logits(&self, soft_prompt: &Tensor, tokens: &Tensor, is_target: &Tensor, is_real: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        let (b, l) = tokens.size2().context("tokens must be [batch, length]")?;
        let (sb, q, c) = soft_prompt.size3().context("the soft prompt must be [batch, queries, width]")?;
        ensure!(sb == b && c == self.musecoco.config().n_embd, "soft prompt {:?} for {b} token rows of MuseCoco width {}", soft_prompt.size(), self.musecoco.config().n_embd);
        ensure!(is_target.size() == [b, l] && is_real.size() == [b, l], "masks {:?} / {:?}, tokens [{b}, {l}]", is_target.size(), is_real.size());
        ensure!(l > POS_START, "{l} tokens cannot hold the {POS_START} attribute tokens and a piano part");
        let x = Tensor::cat(&[soft_prompt.to_kind(Kind::Float), self.musecoco.embed(tokens, POS_START, train)?], 1);
        let pad = Tensor::cat(&[Tensor::zeros([b, q], (Kind::Bool, tokens.device())), is_real.eq(0)], 1);
        let hidden = self.musecoco.forward_embeds(&x, Some(&pad), train)?;
        // The hidden state at position p predicts the token at p + 1: token j of the sequence is
        // predicted at position Q + j - 1 (the last soft-prompt vector predicts token 0).
        let predicting = hidden.narrow(1, q - 1, l);
        let keep = is_target.gt(0);
        ensure!(keep.any().int64_value(&[]) == 1, "the batch has no target token");
        let h = predicting.masked_select(&keep.unsqueeze(-1)).view([-1, c]);
        Ok((self.musecoco.logits(&h)?.to_kind(Kind::Float), tokens.masked_select(&keep)))
    }

    /// A converted `bossa_stage2.pt` (`stylebridge convert --format bossa-stage2`): every tensor
    /// of the model, the frozen MusicGen it also stores excepted (the audio path loads that).
    pub fn load_bossa(&mut self, ckpt: &Checkpoint) -> Result<()> {
        let foreign = |name: &str| name.starts_with(MUSECOCO_PREFIX) || name.strip_prefix(QFORMER_PREFIX).is_some_and(qformer::skipped_on_load);
        ckpt.load_into(&mut self.vs, "", foreign)?;
        MuseCoco::load(&mut self.musecoco_vs, ckpt, MUSECOCO_PREFIX)
    }

    /// The Q-Former's audio stream from a stage-1 model (a stylebridge stage-1 checkpoint's
    /// `model.safetensors` or a converted `bossa_stage1.pt`): the symbolic branch and the heads it
    /// also holds are left out, as BOSSA deletes them.
    pub fn load_stage1_qformer(&mut self, ckpt: &Checkpoint) -> Result<()> {
        ckpt.load_part(&mut self.vs, QFORMER_PREFIX, "", |name| qformer::symbolic_only(name) || qformer::skipped_on_load(name))
            .with_context(|| format!("cannot take the stage-2 Q-Former from the stage-1 model {}", ckpt.origin().display()))
    }

    /// MuseCoco's base weights from an HF-port checkpoint (adapters kept fresh when it has none).
    pub fn load_musecoco(&mut self, ckpt: &Checkpoint) -> Result<()> {
        MuseCoco::load(&mut self.musecoco_vs, ckpt, "")
    }

    /// What a stylebridge stage-2 checkpoint saved ([`Self::parameters`], strictly by name).
    pub fn load_trained(&mut self, weights: &BTreeMap<String, Tensor>, origin: &std::path::Path) -> Result<()> {
        super::weights::copy_checked(&self.parameters(), weights, origin)
    }
}
