//! A stand-in for MuseCoco's pretraining (SPEC 9): where the real MuseCoco-1B cannot be had, a
//! tiny MuseCoco is trained as a language model over the training split's stage-2 sequences
//! (`</s>` + attributes + `<sep>` + lead sheet + `<sep>` + arrangement + `</s>`, no soft prompt),
//! every weight trainable and no adapters, then exported in the HF port's format
//! (`config.json` + `model.safetensors`) so that stage 2 loads it through the loader a real
//! MuseCoco uses, freezes it and adds LoRA, as the paper does with the real one.
//!
//! The loss covers every real token after the attribute prefix (lead sheet, `<sep>`, arrangement,
//! `</s>`): a language model of the corpus's REMI sequences.
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{nn::VarStore, Device, Kind, Tensor};

use super::stage2::{Inputs, TinyMuseCoco};
use super::trainer::{MicroLoss, Task};
use crate::data::encodings::remi;
use crate::data::loader::{Batch, Loader, ValidationSet};
use crate::models::blip2_musecoco::POS_START;
use crate::models::musecoco::{MuseCoco, MuseCocoConfig};
use crate::yaml::{Problems, Validate};

/// Tokens before the lead sheet: `</s>`, 60 attribute tokens, `<sep>`.
const PREFIX_TOKENS: i64 = remi::STAGE2_POS_START + 1;

/// The `model:` config section of the stand-in pretraining (`kind: musecoco_lm`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub musecoco: TinyMuseCoco,
}

impl Validate for ModelConfig {
    fn validate(&self, at: &str, p: &mut Problems) {
        self.musecoco.validate(&format!("{at}.musecoco"), p);
    }
}

pub struct MusecocoLmTask {
    vs: VarStore,
    model: MuseCoco,
    train: Loader,
    valid: Option<ValidationSet>,
    seed: u64,
}

impl MusecocoLmTask {
    pub fn new(cfg: &ModelConfig, train: Loader, valid: Option<ValidationSet>, device: Device, seed: u64) -> Self {
        tch::manual_seed(seed as i64);
        let vs = VarStore::new(device);
        let model = MuseCoco::new(vs.root(), &MuseCocoConfig { use_lora: false, ..cfg.musecoco.config() });
        // Pretraining trains every weight the finished model will hold frozen.
        for (_, var) in vs.variables() {
            let _ = var.set_requires_grad(true);
        }
        fairseq_init(&vs, cfg.musecoco.n_embd);
        Self { vs, model, train, valid, seed }
    }

    /// The logits of every target token and the tokens.
    fn target_logits(&self, batch: &Batch, train: bool) -> Result<(Tensor, Tensor)> {
        let x = Inputs::from_batch(batch, self.vs.device())?;
        let (b, l) = x.tokens.size2()?;
        let hidden = self.model.forward_embeds(&self.model.embed(&x.tokens, POS_START, train)?, Some(&x.is_real.eq(0)), train)?;
        // Position j predicts token j + 1; targets are the real tokens after the prefix.
        let index = Tensor::arange(l - 1, (Kind::Int64, x.tokens.device())).unsqueeze(0).expand([b, l - 1], false) + 1;
        let keep = x.is_real.narrow(1, 1, l - 1).gt(0).logical_and(&index.ge(PREFIX_TOKENS));
        let c = self.model.config().n_embd;
        let h = hidden.narrow(1, 0, l - 1).masked_select(&keep.unsqueeze(-1)).view([-1, c]);
        let targets = x.tokens.narrow(1, 1, l - 1).masked_select(&keep);
        Ok((self.model.logits(&h)?.to_kind(Kind::Float), targets))
    }

    /// Write the model in the HF port's format: `config.json` (the 1B config's fields, with
    /// `use_lora: true` as the real one has, so stage 2 adds adapters) and `model.safetensors`.
    pub fn export(&self, dir: &Path) -> Result<()> {
        let cfg = self.model.config();
        let config = serde_json::json!({
            "architectures": ["MuseCocoLMHeadModel"],
            "model_type": "musecoco",
            "vocab_size": cfg.vocab_size,
            "n_embd": cfg.n_embd,
            "n_head": cfg.n_head,
            "n_layer": cfg.n_layer,
            "ffn_dim": cfg.ffn_dim,
            "scale_emb": cfg.scale_emb,
            "norm_before": cfg.norm_before,
            "layernorm_emb": cfg.layernorm_emb,
            "use_lora": true,
            "dropout": cfg.dropout,
            "bos_token_id": remi::EOS,
            "eos_token_id": remi::EOS,
            "torch_dtype": "float32",
        });
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        crate::atomic::write(&dir.join("config.json"), serde_json::to_string_pretty(&config)?.as_bytes())?;
        let named: Vec<(String, Tensor)> =
            crate::models::weights::variables(&self.vs).into_iter().map(|(n, t)| (n, t.detach().to_device(Device::Cpu).contiguous())).collect();
        let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
        crate::models::weights::write_safetensors(&dir.join("model.safetensors"), &refs)
    }
}

/// Re-draw the weights as fairseq initialises a decoder trained from scratch (MuseCoco was
/// trained with fairseq): embeddings and the output projection N(0, d^-1/2) (the padding row
/// zero), linear maps Xavier-uniform (q/k/v with gain 2^-1/2, as `MultiheadAttention` does),
/// biases zero. The HF port's N(0, 0.02) is only a placeholder its checkpoints overwrite; from
/// it, scaled token embeddings start at a quarter of the sinusoids' size and every attention
/// score near one, which a model this small trained for minutes does not grow out of.
/// The draws go in name order, the same in every process.
fn fairseq_init(vs: &VarStore, n_embd: i64) {
    tch::no_grad(|| {
        for (name, mut var) in crate::models::weights::variables(vs) {
            let size = var.size();
            if name.ends_with(".bias") || name.contains("layer_norm") {
                continue;
            }
            if name.ends_with("embed_tokens.weight") || name == "lm_head.weight" {
                let _ = var.normal_(0.0, (n_embd as f64).powf(-0.5));
                if name.ends_with("embed_tokens.weight") {
                    let _ = var.get(crate::models::musecoco::PADDING_IDX).zero_();
                }
            } else if size.len() == 2 {
                let gain = if ["q_proj", "k_proj", "v_proj"].iter().any(|p| name.contains(p)) { 0.5f64.sqrt() } else { 1.0 };
                let bound = gain * (6.0 / (size[0] + size[1]) as f64).sqrt();
                let _ = var.uniform_(-bound, bound);
            }
        }
    });
}

impl Task for MusecocoLmTask {
    type Data = Loader;

    fn parameters(&self) -> Vec<(String, Tensor)> {
        crate::models::weights::trainable(&self.vs)
    }

    fn device(&self) -> Device {
        self.vs.device()
    }

    fn data(&self) -> &Loader {
        &self.train
    }

    fn loss(&mut self, batch: &Batch) -> Result<MicroLoss> {
        let (logits, targets) = self.target_logits(batch, true)?;
        Ok(super::losses::next_token(&logits, &targets))
    }

    fn validate(&mut self, max_batches: Option<usize>) -> Result<Vec<(String, f64)>> {
        super::trainer::validation_means(&self.valid, max_batches, self.seed, |batch| {
            let (logits, targets) = self.target_logits(batch, false)?;
            Ok(super::losses::next_token_figures(&logits, &targets))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fairseq_init_draws_fairseq_scales() {
        let vs = VarStore::new(Device::Cpu);
        let cfg = MuseCocoConfig { n_embd: 64, n_head: 2, n_layer: 1, ffn_dim: 256, use_lora: false, ..MuseCocoConfig::xlarge() };
        let _model = MuseCoco::new(vs.root(), &cfg);
        tch::manual_seed(0);
        fairseq_init(&vs, cfg.n_embd);
        let vars = vs.variables();
        let std = |name: &str| vars[name].std(true).double_value(&[]);
        let max = |name: &str| vars[name].abs().max().double_value(&[]);
        // N(0, 64^-1/2 = 0.125) for the embeddings and the head, the padding row zero.
        assert!((std("decoder.embed_tokens.weight") - 0.125).abs() < 0.005 && (std("lm_head.weight") - 0.125).abs() < 0.005);
        assert_eq!(vars["decoder.embed_tokens.weight"].get(1).abs().sum(Kind::Float).double_value(&[]), 0.0);
        // Xavier-uniform bounds: q/k/v with gain 2^-1/2 (sqrt(6/128)/sqrt(2) = 0.153), fc1 sqrt(6/320).
        let q = max("decoder.layers.0.self_attn.q_proj.weight");
        assert!(q <= 0.1531 && q > 0.15, "{q}");
        let fc1 = max("decoder.layers.0.fc1.weight");
        assert!(fc1 <= (6.0f64 / 320.0).sqrt() && fc1 > 0.13, "{fc1}");
        // Biases and layer norms keep their init.
        assert_eq!(vars["decoder.layers.0.fc1.bias"].abs().sum(Kind::Float).double_value(&[]), 0.0);
        assert_eq!(vars["decoder.layer_norm.weight"].mean(Kind::Float).double_value(&[]), 1.0);
    }

    #[test]
    fn fairseq_init_is_the_same_for_the_same_seed() {
        // Every `variables()` map has its own hash order, as every process has.
        let draw = || {
            let vs = VarStore::new(Device::Cpu);
            let cfg = MuseCocoConfig { n_embd: 16, n_head: 2, n_layer: 2, ffn_dim: 32, use_lora: false, ..MuseCocoConfig::xlarge() };
            let _model = MuseCoco::new(vs.root(), &cfg);
            tch::manual_seed(3);
            fairseq_init(&vs, cfg.n_embd);
            vs.variables()
        };
        let (a, b) = (draw(), draw());
        for (name, t) in &a {
            assert!(t.equal(&b[name]), "{name} was drawn differently");
        }
    }
}
