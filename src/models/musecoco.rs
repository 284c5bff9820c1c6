//! MuseCoco-1B as BOSSA's HF port defines it (musecoco/hf_musecoco/modeling_musecoco.py,
//! musecoco/1b/model/config.json): a pre-LN fairseq decoder whose self-attention is causal
//! LINEAR attention (elu+1 feature map, eps 1e-6), with LoRA r16 beside q/k/v.
//!
//! Parameter names mirror the HF port (`decoder.embed_tokens.weight`,
//! `decoder.layers.N.self_attn.q_proj.weight`, `decoder.layers.N.self_attn.lora_q.lora_A`, ...,
//! `decoder.layer_norm.*`, `lm_head.weight`); BOSSA's stage-2 checkpoint holds the same names under
//! `musecoco.`. The base weights are frozen (variables that never track gradients, as BOSSA
//! freezes every non-LoRA parameter); only the adapters train.
//!
//! Attention runs in two forms that compute the same numbers:
//! - parallel (training, prompt prefill): the sequence is cut into chunks; inside a chunk the
//!   causal products are a masked matrix product, across chunks a running state carries them;
//! - recurrent (sampling): per layer a state S = sum_j phi(k_j) v_j^T [B, H, D, D] and a
//!   normaliser z = sum_j phi(k_j) [B, H, D]; one token costs O(1) in the context length.
//!
//! Both follow the reference: out_i = (phi(q_i) . sum_{j<=i} phi(k_j) v_j^T) / (phi(q_i) .
//! sum_{j<=i} phi(k_j) + eps), keys of padded positions zeroed, the products in fp32 (the
//! reference's `causal_linear` upcasts; BOSSA notes fp16 overflows here).
use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use std::path::Path;
use tch::{nn, Kind, Tensor};

use super::lora::{self, Lora};
use super::weights::Checkpoint;

/// fairseq's padding index; positions count from `PADDING_IDX + 1`.
pub const PADDING_IDX: i64 = 1;
const LAYER_NORM_EPS: f64 = 1e-5;
const ATTENTION_EPS: f64 = 1e-6;
/// Chunk length of the parallel form: bounds its extra memory to [B, H, T, CHUNK].
const CHUNK: i64 = 64;

/// The fields of the HF port's `config.json` that shape the network.
#[derive(Debug, Clone, Deserialize)]
pub struct MuseCocoConfig {
    pub vocab_size: i64,
    pub n_embd: i64,
    pub n_head: i64,
    pub n_layer: i64,
    pub ffn_dim: i64,
    #[serde(default = "yes")]
    pub scale_emb: bool,
    #[serde(default = "yes")]
    pub norm_before: bool,
    #[serde(default)]
    pub layernorm_emb: bool,
    #[serde(default)]
    pub use_lora: bool,
    /// Residual and embedding dropout in training mode.
    #[serde(default = "default_dropout")]
    pub dropout: f64,
}

fn yes() -> bool {
    true
}

fn default_dropout() -> f64 {
    0.1
}

impl MuseCocoConfig {
    /// MuseCoco-xLarge as `musecoco/1b/model/config.json` gives it.
    pub fn xlarge() -> Self {
        Self {
            vocab_size: 1253,
            n_embd: 2048,
            n_head: 24,
            n_layer: 24,
            ffn_dim: 8192,
            scale_emb: true,
            norm_before: true,
            layernorm_emb: false,
            use_lora: true,
            dropout: 0.1,
        }
    }

    /// Read an HF `config.json` (or the `musecoco` section of a converted stage-2 config).
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
        let section = value.get("musecoco").cloned().unwrap_or(value);
        let cfg: Self = serde_path_to_error::deserialize(section)
            .with_context(|| format!("{}: not a MuseCoco config", path.display()))?;
        cfg.validate().with_context(|| format!("{}: unsupported MuseCoco config", path.display()))?;
        Ok(cfg)
    }

    /// Head width: fairseq's `d_model // n_heads` (85 for the 1B model, so q/k/v are 2048 -> 2040).
    pub fn head_dim(&self) -> i64 {
        self.n_embd / self.n_head
    }

    fn validate(&self) -> Result<()> {
        if !self.norm_before {
            bail!("norm_before = false (post-LN) is not a MuseCoco-1B layout and is not implemented");
        }
        if self.layernorm_emb {
            bail!("layernorm_emb = true is not a MuseCoco-1B layout and is not implemented");
        }
        if self.n_head <= 0 || self.n_embd < self.n_head {
            bail!("n_embd {} and n_head {} give no head width", self.n_embd, self.n_head);
        }
        Ok(())
    }
}

/// A linear map whose weights are frozen (never trainable) and kept in the store's kind.
#[derive(Debug)]
struct FrozenLinear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl FrozenLinear {
    fn new(p: nn::Path, in_dim: i64, out_dim: i64, bias: bool) -> Self {
        let kind = lora::float_kind(&p);
        // HF `_init_weights`: N(0, 0.02), zero bias. Real use overwrites them with the checkpoint.
        let w = Tensor::randn([out_dim, in_dim], (kind, p.device())) * 0.02;
        let weight = p.add("weight", w, false);
        let bias = bias.then(|| p.add("bias", Tensor::zeros([out_dim], (kind, p.device())), false));
        Self { weight, bias }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

#[derive(Debug)]
struct FrozenLayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl FrozenLayerNorm {
    fn new(p: nn::Path, dim: i64) -> Self {
        let kind = lora::float_kind(&p);
        let weight = p.add("weight", Tensor::ones([dim], (kind, p.device())), false);
        let bias = p.add("bias", Tensor::zeros([dim], (kind, p.device())), false);
        Self { weight, bias }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm([self.weight.size()[0]], Some(&self.weight), Some(&self.bias), LAYER_NORM_EPS, true)
    }
}

/// Per-layer recurrent attention state for sampling: S [B, H, D, D] and z [B, H, D], in fp32.
/// Rows are independent sequences, so states of different prompts (even of different lengths)
/// can be combined into one batch ([`Self::cat`]) and rows dropped when they finish
/// ([`Self::select`]).
#[derive(Debug)]
pub struct RecurrentState {
    layers: Vec<(Tensor, Tensor)>,
    /// Positions consumed so far by each row (soft prompt included).
    lens: Vec<i64>,
}

impl RecurrentState {
    pub fn new(cfg: &MuseCocoConfig, batch: i64, device: tch::Device) -> Self {
        let (h, d) = (cfg.n_head, cfg.head_dim());
        let layers = (0..cfg.n_layer)
            .map(|_| {
                (
                    Tensor::zeros([batch, h, d, d], (Kind::Float, device)),
                    Tensor::zeros([batch, h, d], (Kind::Float, device)),
                )
            })
            .collect();
        Self { layers, lens: vec![0; batch.max(0) as usize] }
    }

    /// Rows in the batch.
    pub fn batch(&self) -> i64 {
        self.lens.len() as i64
    }

    /// Positions each row has consumed (soft prompt included).
    #[cfg(test)]
    fn lens(&self) -> &[i64] {
        &self.lens
    }

    /// The rows `rows` (in that order; a row may repeat) as a new state.
    pub fn select(&self, rows: &[i64]) -> Result<Self> {
        let batch = self.batch();
        if let Some(bad) = rows.iter().find(|&&r| !(0..batch).contains(&r)) {
            bail!("cannot select row {bad} of a recurrent state of {batch} rows");
        }
        let device = self.layers.first().map_or(tch::Device::Cpu, |(s, _)| s.device());
        let index = Tensor::from_slice(rows).to_device(device);
        let layers = self.layers.iter().map(|(s, z)| (s.index_select(0, &index), z.index_select(0, &index))).collect();
        Ok(Self { layers, lens: rows.iter().map(|&r| self.lens[r as usize]).collect() })
    }

    /// The rows of all `states` in order, as one batch (states of one model).
    pub fn cat(states: &[RecurrentState]) -> Result<Self> {
        let first = states.first().context("cannot combine an empty list of recurrent states")?;
        let shape = |st: &RecurrentState| st.layers.iter().map(|(s, _)| s.size()[1..].to_vec()).collect::<Vec<_>>();
        for (i, st) in states.iter().enumerate() {
            ensure!(shape(st) == shape(first), "recurrent state {i} has per-layer shapes {:?}, state 0 {:?}: not one model", shape(st), shape(first));
        }
        let layers = (0..first.layers.len())
            .map(|l| {
                let s: Vec<&Tensor> = states.iter().map(|st| &st.layers[l].0).collect();
                let z: Vec<&Tensor> = states.iter().map(|st| &st.layers[l].1).collect();
                (Tensor::cat(&s, 0), Tensor::cat(&z, 0))
            })
            .collect();
        Ok(Self { layers, lens: states.iter().flat_map(|st| st.lens.iter().copied()).collect() })
    }
}

#[derive(Debug)]
struct LinearAttention {
    q_proj: FrozenLinear,
    k_proj: FrozenLinear,
    v_proj: FrozenLinear,
    out_proj: FrozenLinear,
    lora: Option<[Lora; 3]>,
    n_head: i64,
    head_dim: i64,
}

/// elu(x) + 1: the positive feature map of fast_transformers' `elu_feature_map`.
fn feature_map(x: &Tensor) -> Tensor {
    x.elu() + 1.0
}

// Tensor updates stay out of place (`x = x + y`): tch's `+=` writes in place, which would
// corrupt the caller's state and tensors autograd still needs.
#[allow(clippy::assign_op_pattern)]
impl LinearAttention {
    fn new(p: nn::Path, cfg: &MuseCocoConfig) -> Self {
        let (c, hd) = (cfg.n_embd, cfg.n_head * cfg.head_dim());
        let lora =
            cfg.use_lora.then(|| ["lora_q", "lora_k", "lora_v"].map(|name| Lora::new(&p / name, c, hd, lora::RANK)));
        Self {
            q_proj: FrozenLinear::new(&p / "q_proj", c, hd, true),
            k_proj: FrozenLinear::new(&p / "k_proj", c, hd, true),
            v_proj: FrozenLinear::new(&p / "v_proj", c, hd, true),
            out_proj: FrozenLinear::new(&p / "out_proj", hd, c, true),
            lora,
            n_head: cfg.n_head,
            head_dim: cfg.head_dim(),
        }
    }

    /// phi(q), phi(k) with padded keys zeroed, and v: each [B, H, T, D] in fp32.
    fn project(&self, x: &Tensor, keep: Option<&Tensor>) -> (Tensor, Tensor, Tensor) {
        let (b, t) = (x.size()[0], x.size()[1]);
        let heads = |y: Tensor| y.view([b, t, self.n_head, self.head_dim]);
        let (mut q, mut k, mut v) = (self.q_proj.forward(x), self.k_proj.forward(x), self.v_proj.forward(x));
        if let Some([lq, lk, lv]) = &self.lora {
            q = q + lq.forward(x);
            k = k + lk.forward(x);
            v = v + lv.forward(x);
        }
        let q = feature_map(&heads(q));
        let mut k = feature_map(&heads(k));
        if let Some(keep) = keep {
            let keep = keep.to_kind(k.kind()).view([b, t, 1, 1]);
            k = k * keep;
        }
        let to_bhtd = |y: Tensor| y.permute([0, 2, 1, 3]).to_kind(Kind::Float);
        (to_bhtd(q), to_bhtd(k), to_bhtd(heads(v)))
    }

    fn merge(&self, out: Tensor, kind: Kind) -> Tensor {
        let (b, _, t, _) = out.size4().expect("attention output is 4-d");
        self.out_proj.forward(&out.permute([0, 2, 1, 3]).reshape([b, t, self.n_head * self.head_dim]).to_kind(kind))
    }

    /// Parallel causal linear attention over x [B, T, C], continuing from `state` (updated to
    /// include the T new positions).
    fn forward_parallel(&self, x: &Tensor, keep: Option<&Tensor>, state: &mut (Tensor, Tensor)) -> Tensor {
        let (q, k, v) = self.project(x, keep);
        let t = q.size()[2];
        let (mut s, mut z) = (state.0.shallow_clone(), state.1.shallow_clone());
        let mut outs = Vec::new();
        for start in (0..t).step_by(CHUNK as usize) {
            let len = CHUNK.min(t - start);
            let (qc, kc, vc) = (q.narrow(2, start, len), k.narrow(2, start, len), v.narrow(2, start, len));
            let scores = qc.matmul(&kc.transpose(-1, -2)).tril(0);
            let numerator = scores.matmul(&vc) + qc.matmul(&s);
            let denominator =
                scores.sum_dim_intlist([-1i64].as_slice(), false, None) + qc.matmul(&z.unsqueeze(-1)).squeeze_dim(-1);
            // Reference: V * (1 / (Q . cumsum(K) + eps)).
            outs.push(numerator * (denominator + ATTENTION_EPS).reciprocal().unsqueeze(-1));
            s = s + kc.transpose(-1, -2).matmul(&vc);
            z = z + kc.sum_dim_intlist([2i64].as_slice(), false, None);
        }
        *state = (s, z);
        self.merge(Tensor::cat(&outs, 2), x.kind())
    }

    /// One position x [B, 1, C]: fold it into the state, then read the state out.
    fn forward_step(&self, x: &Tensor, state: &mut (Tensor, Tensor)) -> Tensor {
        let (q, k, v) = self.project(x, None);
        let (q, k, v) = (q.squeeze_dim(2), k.squeeze_dim(2), v.squeeze_dim(2)); // [B, H, D]
        let s = &state.0 + k.unsqueeze(-1).matmul(&v.unsqueeze(-2));
        let z = &state.1 + &k;
        let numerator = q.unsqueeze(-2).matmul(&s).squeeze_dim(-2);
        let denominator = (&q * &z).sum_dim_intlist([-1i64].as_slice(), true, None);
        let out = numerator * (denominator + ATTENTION_EPS).reciprocal();
        *state = (s, z);
        self.merge(out.unsqueeze(2), x.kind())
    }
}

#[derive(Debug)]
struct Layer {
    self_attn: LinearAttention,
    self_attn_layer_norm: FrozenLayerNorm,
    fc1: FrozenLinear,
    fc2: FrozenLinear,
    final_layer_norm: FrozenLayerNorm,
}

impl Layer {
    fn new(p: nn::Path, cfg: &MuseCocoConfig) -> Self {
        Self {
            self_attn: LinearAttention::new(&p / "self_attn", cfg),
            self_attn_layer_norm: FrozenLayerNorm::new(&p / "self_attn_layer_norm", cfg.n_embd),
            fc1: FrozenLinear::new(&p / "fc1", cfg.n_embd, cfg.ffn_dim, true),
            fc2: FrozenLinear::new(&p / "fc2", cfg.ffn_dim, cfg.n_embd, true),
            final_layer_norm: FrozenLayerNorm::new(&p / "final_layer_norm", cfg.n_embd),
        }
    }

    /// Pre-LN block; `attend` runs one of the two attention forms on the normalised input.
    fn forward(&self, x: &Tensor, dropout: f64, train: bool, attend: impl FnOnce(&Tensor) -> Tensor) -> Tensor {
        let h = attend(&self.self_attn_layer_norm.forward(x));
        let x = x + h.dropout(dropout, train);
        let h = self.fc2.forward(&self.fc1.forward(&self.final_layer_norm.forward(&x)).gelu("none"));
        &x + h.dropout(dropout, train)
    }
}

/// `MuseCocoLMHeadModel`: decoder + untied LM head.
#[derive(Debug)]
pub struct MuseCoco {
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    layer_norm: FrozenLayerNorm,
    lm_head: FrozenLinear,
    cfg: MuseCocoConfig,
}

impl MuseCoco {
    /// Build at `p`: the root of its own store (then [`Self::load`] with the checkpoint's prefix),
    /// or the matching sub-path of a store that mirrors a whole checkpoint. Base weights get the reference's random init, frozen; LoRA
    /// adapters (when `cfg.use_lora`) are the only trainable variables.
    pub fn new(p: nn::Path, cfg: &MuseCocoConfig) -> Self {
        let d = &p / "decoder";
        let kind = lora::float_kind(&p);
        let emb = Tensor::randn([cfg.vocab_size, cfg.n_embd], (kind, p.device())) * 0.02;
        let _ = emb.get(PADDING_IDX).fill_(0.0);
        let embed_tokens = (&d / "embed_tokens").add("weight", emb, false);
        let layers = (0..cfg.n_layer).map(|i| Layer::new(&d / "layers" / i, cfg)).collect();
        Self {
            embed_tokens,
            layers,
            layer_norm: FrozenLayerNorm::new(&d / "layer_norm", cfg.n_embd),
            lm_head: FrozenLinear::new(&p / "lm_head", cfg.n_embd, cfg.vocab_size, false),
            cfg: cfg.clone(),
        }
    }

    pub fn config(&self) -> &MuseCocoConfig {
        &self.cfg
    }

    /// Where the weights live.
    pub fn device(&self) -> tch::Device {
        self.embed_tokens.device()
    }

    /// Token embeddings as the reference's `encode_input_ids(ids, pos_start)`:
    /// sqrt(d) * embedding, plus fairseq sinusoidal positions (pads take the zero row), shifted
    /// so that the first `pos_start` tokens (BOSSA: 61 attribute tokens) carry none and token
    /// `pos_start + j` carries the position of token j. ids [B, T] -> [B, T, C].
    pub fn embed(&self, ids: &Tensor, pos_start: i64, train: bool) -> Result<Tensor> {
        ensure!(ids.dim() == 2, "token ids are {:?}, expected [batch, tokens]", ids.size());
        ensure!(pos_start >= 0, "pos_start is {pos_start}; it must not be negative");
        let t = ids.size()[1];
        let mut x = self.scaled_embedding(ids)?;
        if t > pos_start {
            let keep = ids.ne(PADDING_IDX).to_kind(Kind::Int64);
            let positions = keep.cumsum(1, Kind::Int64) * &keep + PADDING_IDX;
            let shifted = positions.narrow(1, 0, t - pos_start);
            let pos = self.sinusoids(&shifted).to_kind(x.kind());
            x = Tensor::cat(&[x.narrow(1, 0, pos_start), x.narrow(1, pos_start, t - pos_start) + pos], 1);
        }
        Ok(x.dropout(self.cfg.dropout, train))
    }

    /// Embedding of one token per row, row b at absolute token index `index[b]` of its own
    /// sequence (no padding before it): the row `index[b]` of [`Self::embed`] on that sequence.
    /// Rows of different lengths can so step together. ids [B, 1].
    pub fn embed_next(&self, ids: &Tensor, index: &[i64], pos_start: i64) -> Result<Tensor> {
        ensure!(
            ids.dim() == 2 && ids.size()[1] == 1 && ids.size()[0] == index.len() as i64,
            "next token ids are {:?} with {} token indices, expected [{}, 1]",
            ids.size(),
            index.len(),
            index.len()
        );
        if let Some(bad) = index.iter().find(|&&i| i < 0) {
            bail!("token index {bad} is negative");
        }
        let x = self.scaled_embedding(ids)?;
        // Tokens before `pos_start` take the padding position, whose sinusoid row is zero.
        let positions: Vec<i64> = index.iter().map(|&i| if i < pos_start { PADDING_IDX } else { PADDING_IDX + 1 + i - pos_start }).collect();
        let positions = Tensor::from_slice(&positions).view([-1, 1]).to_device(ids.device());
        Ok(&x + self.sinusoids(&positions).to_kind(x.kind()))
    }

    fn scaled_embedding(&self, ids: &Tensor) -> Result<Tensor> {
        ensure!(matches!(ids.kind(), Kind::Int64 | Kind::Int), "token ids are {:?}, expected integers", ids.kind());
        let vocab = self.cfg.vocab_size;
        if ids.numel() > 0 {
            let (lo, hi) = super::id_range(ids);
            ensure!(lo >= 0 && hi < vocab, "token ids span {lo}..={hi}, outside the vocabulary of {vocab}");
        }
        let scale = if self.cfg.scale_emb { (self.cfg.n_embd as f64).sqrt() } else { 1.0 };
        Ok(Tensor::embedding(&self.embed_tokens, ids, PADDING_IDX, false, false) * scale)
    }

    /// fairseq `SinusoidalPositionalEmbedding.get_embedding` rows for `positions` (fp32, sin
    /// half then cos half, the padding row zero, a zero column when the width is odd).
    fn sinusoids(&self, positions: &Tensor) -> Tensor {
        let dim = self.cfg.n_embd;
        let half = dim / 2;
        let device = positions.device();
        let step = (10000f64).ln() / (half - 1) as f64;
        let freqs = (Tensor::arange(half, (Kind::Float, device)) * -step).exp();
        let angles = positions.to_kind(Kind::Float).unsqueeze(-1) * freqs;
        let mut table = Tensor::cat(&[angles.sin(), angles.cos()], -1);
        if dim % 2 == 1 {
            table = table.constant_pad_nd([0i64, 1]);
        }
        table * positions.ne(PADDING_IDX).to_kind(Kind::Float).unsqueeze(-1)
    }

    /// Parallel form over embeddings x [B, T, C] (soft prompt and/or [`Self::embed`] output).
    /// `pad_mask` [B, T] is true at padded positions (their keys are dropped), as BOSSA's
    /// `attention_mask`. Returns hidden states after the final layer norm, [B, T, C].
    pub fn forward_embeds(&self, x: &Tensor, pad_mask: Option<&Tensor>, train: bool) -> Result<Tensor> {
        self.check_embeds(x, None)?;
        let mut state = RecurrentState::new(&self.cfg, x.size()[0], x.device());
        self.prefill(x, pad_mask, &mut state, train)
    }

    /// Parallel form continuing from `state` and leaving it ready for [`Self::step`]: prompt
    /// prefill for sampling. Same contract as [`Self::forward_embeds`] otherwise.
    pub fn prefill(&self, x: &Tensor, pad_mask: Option<&Tensor>, state: &mut RecurrentState, train: bool) -> Result<Tensor> {
        self.check_embeds(x, None)?;
        self.check_state(x, state)?;
        if let Some(m) = pad_mask {
            let want = [x.size()[0], x.size()[1]];
            ensure!(m.size() == want, "padding mask is {:?}, expected {want:?} (batch, positions)", m.size());
        }
        let keep = pad_mask.map(|m| m.logical_not());
        let mut x = x.shallow_clone();
        for (layer, layer_state) in self.layers.iter().zip(state.layers.iter_mut()) {
            x = layer.forward(&x, self.cfg.dropout, train, |h| {
                layer.self_attn.forward_parallel(h, keep.as_ref(), layer_state)
            });
        }
        let t = x.size()[1];
        state.lens.iter_mut().for_each(|len| *len += t);
        Ok(self.layer_norm.forward(&x))
    }

    /// Recurrent form: one position x [B, 1, C] given the state of everything before it.
    /// O(1) in the context length. Returns the hidden state [B, 1, C].
    pub fn step(&self, x: &Tensor, state: &mut RecurrentState) -> Result<Tensor> {
        self.check_embeds(x, Some(1))?;
        self.check_state(x, state)?;
        let mut x = x.shallow_clone();
        for (layer, layer_state) in self.layers.iter().zip(state.layers.iter_mut()) {
            x = layer.forward(&x, 0.0, false, |h| layer.self_attn.forward_step(h, layer_state));
        }
        state.lens.iter_mut().for_each(|len| *len += 1);
        Ok(self.layer_norm.forward(&x))
    }

    /// LM head: hidden [.., C] -> logits [.., vocab].
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let c = self.cfg.n_embd;
        ensure!(hidden.dim() >= 1 && hidden.size().last() == Some(&c), "hidden states are {:?}, expected [.., {c}]", hidden.size());
        Ok(self.lm_head.forward(hidden))
    }

    /// Shape errors as messages rather than libtorch aborts: embeddings are [batch, positions
    /// (`positions` if given), n_embd] of floats.
    fn check_embeds(&self, x: &Tensor, positions: Option<i64>) -> Result<()> {
        let c = self.cfg.n_embd;
        let size = x.size();
        let t = positions.map_or_else(|| "positions".to_string(), |t| t.to_string());
        ensure!(
            size.len() == 3 && size[2] == c && positions.is_none_or(|t| size[1] == t) && x.is_floating_point(),
            "embeddings are {size:?} of {:?}, expected [batch, {t}, {c}] of floats",
            x.kind()
        );
        Ok(())
    }

    fn check_state(&self, x: &Tensor, state: &RecurrentState) -> Result<()> {
        let b = x.size()[0];
        ensure!(state.batch() == b, "the recurrent state holds {} rows, the input {b}", state.batch());
        let (h, d) = (self.cfg.n_head, self.cfg.head_dim());
        let fits = state.layers.len() == self.layers.len() && state.layers.iter().all(|(s, _)| s.size()[1..] == [h, d, d]);
        ensure!(
            fits,
            "the recurrent state has {} layers of {:?}, the model {} layers of [{h}, {d}, {d}] (heads, head width, head width)",
            state.layers.len(),
            state.layers.first().map(|(s, _)| s.size()[1..].to_vec()),
            self.layers.len()
        );
        Ok(())
    }

    /// Load into a store holding this model at its root; the checkpoint's names are `prefix` + the
    /// variable names ("" for the HF port's model.safetensors, "musecoco." for BOSSA's converted
    /// stage-2 state). Adapters load when the checkpoint holds them; a base
    /// checkpoint without them (the HF port before stage 2) keeps the fresh adapters, as
    /// `from_pretrained` does in BOSSA.
    pub fn load(vs: &mut nn::VarStore, ckpt: &Checkpoint, prefix: &str) -> Result<()> {
        let has_lora = ckpt.names().any(|n| n.starts_with(prefix) && n.contains(".lora_"));
        if has_lora {
            return ckpt.load_into(vs, prefix, skipped_on_load);
        }
        let fresh: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(name, _)| name.contains(".lora_"))
            .map(|(name, t)| (format!("{prefix}{name}"), t.detach().copy()))
            .collect();
        let tensors = ckpt.names().filter_map(|n| ckpt.get(n).map(|t| (n.to_string(), t.shallow_clone())));
        let merged = Checkpoint::from_tensors(ckpt.origin(), tensors.chain(fresh));
        merged.load_into(vs, prefix, skipped_on_load)
    }
}

/// Buffers the reference saves that carry no weights: fairseq's `_float_tensor` dtype marker.
pub fn skipped_on_load(name: &str) -> bool {
    name.ends_with("embed_positions._float_tensor")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device};

    fn tiny() -> MuseCocoConfig {
        MuseCocoConfig {
            vocab_size: 20,
            n_embd: 12,
            n_head: 2,
            n_layer: 2,
            ffn_dim: 24,
            scale_emb: true,
            norm_before: true,
            layernorm_emb: false,
            use_lora: true,
            dropout: 0.1,
        }
    }

    #[test]
    fn base_is_frozen_and_only_lora_trains() {
        let vs = VarStore::new(Device::Cpu);
        let _ = MuseCoco::new(vs.root(), &tiny());
        let trainable = vs.trainable_variables();
        assert_eq!(trainable.len(), 2 * 3 * 2, "lora_A and lora_B for q, k, v in 2 layers");
        for (name, t) in vs.variables() {
            assert_eq!(t.requires_grad(), name.contains(".lora_"), "{name}");
        }
        assert!(vs.variables().contains_key("decoder.layers.1.self_attn.lora_v.lora_B"));
        assert!(vs.variables().contains_key("lm_head.weight"));
    }

    #[test]
    fn recurrent_steps_match_parallel_chunks() {
        // Longer than one chunk so the chunk-to-chunk state carry is exercised.
        tch::manual_seed(1);
        let vs = VarStore::new(Device::Cpu);
        let model = MuseCoco::new(vs.root(), &tiny());
        let t = CHUNK + 7;
        let x = Tensor::randn([2, t, 12], (Kind::Float, Device::Cpu));
        let parallel = model.forward_embeds(&x, None, false).unwrap();
        let mut state = RecurrentState::new(model.config(), 2, Device::Cpu);
        let split = 5;
        let prefix = model.prefill(&x.narrow(1, 0, split), None, &mut state, false).unwrap();
        let mut rows = vec![prefix];
        for i in split..t {
            rows.push(model.step(&x.narrow(1, i, 1), &mut state).unwrap());
        }
        let recurrent = Tensor::cat(&rows, 1);
        let diff = (&parallel - &recurrent).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "max diff {diff}");
        assert_eq!(state.lens(), [t, t]);
    }

    #[test]
    fn states_of_different_lengths_combine_and_step_together() {
        // Two prompts of 3 and 6 positions prefilled alone, combined, then stepped as one batch:
        // each row must match its own parallel pass over its whole sequence.
        tch::manual_seed(2);
        let vs = VarStore::new(Device::Cpu);
        let model = MuseCoco::new(vs.root(), &tiny());
        let (short, long) = (Tensor::randn([1, 5, 12], (Kind::Float, Device::Cpu)), Tensor::randn([1, 8, 12], (Kind::Float, Device::Cpu)));
        let mut states = Vec::new();
        for (x, len) in [(&short, 3), (&long, 6)] {
            let mut state = RecurrentState::new(model.config(), 1, Device::Cpu);
            let _ = model.prefill(&x.narrow(1, 0, len), None, &mut state, false).unwrap();
            states.push(state);
        }
        let mut batch = RecurrentState::cat(&states).unwrap();
        assert_eq!(batch.lens(), [3, 6]);
        let mut out = Vec::new();
        for i in 0..2 {
            let x = Tensor::cat(&[short.narrow(1, 3 + i, 1), long.narrow(1, 6 + i, 1)], 0);
            out.push(model.step(&x, &mut batch).unwrap());
        }
        for (row, (x, len)) in [(&short, 3), (&long, 6)].into_iter().enumerate() {
            let full = model.forward_embeds(&x.narrow(1, 0, len + 2), None, false).unwrap();
            for (i, o) in out.iter().enumerate() {
                let diff = (full.narrow(1, len + i as i64, 1) - o.narrow(0, row as i64, 1)).abs().max().double_value(&[]);
                assert!(diff < 1e-5, "row {row} step {i}: {diff}");
            }
        }
        // Selecting rows keeps them (and may repeat one); a bad row is an error.
        let picked = batch.select(&[1, 1, 0]).unwrap();
        assert_eq!(picked.lens(), [8, 8, 5]);
        assert!(picked.layers[0].0.get(0).equal(&batch.layers[0].0.get(1)));
        let err = batch.select(&[2]).unwrap_err().to_string();
        assert!(err.contains("row 2") && err.contains("2 rows"), "{err}");
        assert!(RecurrentState::cat(&[]).is_err());
    }

    #[test]
    fn shape_errors_are_messages() {
        let vs = VarStore::new(Device::Cpu);
        let model = MuseCoco::new(vs.root(), &tiny());
        let msg = |r: Result<Tensor>| r.unwrap_err().to_string();
        let ids = Tensor::from_slice(&[2i64, 5]).view([1, 2]);
        assert!(msg(model.embed(&ids.view([2]), 0, false)).contains("[batch, tokens]"));
        assert!(msg(model.embed(&(ids.shallow_clone() + 100), 0, false)).contains("outside the vocabulary of 20"));
        assert!(msg(model.embed(&ids.to_kind(Kind::Float), 0, false)).contains("integers"));
        assert!(msg(model.embed_next(&ids, &[0], 0)).contains("expected [1, 1]"));
        let x = Tensor::zeros([2, 3, 12], (Kind::Float, Device::Cpu));
        assert!(msg(model.forward_embeds(&x.narrow(2, 0, 5), None, false)).contains("expected [batch, positions, 12]"));
        let mask = Tensor::zeros([2, 4], (Kind::Bool, Device::Cpu));
        assert!(msg(model.forward_embeds(&x, Some(&mask), false)).contains("padding mask is [2, 4], expected [2, 3]"));
        let mut one = RecurrentState::new(model.config(), 1, Device::Cpu);
        assert!(msg(model.prefill(&x, None, &mut one, false)).contains("holds 1 rows, the input 2"));
        assert!(msg(model.step(&x, &mut one)).contains("expected [batch, 1, 12]"));
        let other = MuseCocoConfig { n_head: 3, ..tiny() };
        let mut foreign = RecurrentState::new(&other, 2, Device::Cpu);
        assert!(msg(model.step(&x.narrow(1, 0, 1), &mut foreign)).contains("layers of [2, 6, 6]"));
        assert!(msg(model.logits(&x.narrow(2, 0, 5))).contains("expected [.., 12]"));
    }

    #[test]
    fn embed_next_is_a_row_of_embed() {
        let vs = VarStore::new(Device::Cpu);
        let model = MuseCoco::new(vs.root(), &tiny());
        let ids = Tensor::from_slice(&[2i64, 5, 6, 7, 8, 9, 10]).view([1, 7]);
        for pos_start in [0, 3] {
            let full = model.embed(&ids, pos_start, false).unwrap();
            for i in 0..7 {
                let one = model.embed_next(&ids.narrow(1, i, 1), &[i], pos_start).unwrap();
                let diff = (full.narrow(1, i, 1) - one).abs().max().double_value(&[]);
                assert!(diff < 1e-6, "pos_start {pos_start} index {i}: {diff}");
            }
            // Several rows, each at its own index.
            let rows = model.embed_next(&Tensor::from_slice(&[5i64, 9]).view([2, 1]), &[1, 5], pos_start).unwrap();
            for (row, i) in [(0, 1), (1, 5)] {
                let diff = (full.narrow(1, i, 1) - rows.narrow(0, row, 1)).abs().max().double_value(&[]);
                assert!(diff < 1e-6, "pos_start {pos_start} row {row}: {diff}");
            }
        }
    }

    #[test]
    fn rejects_layouts_it_does_not_implement() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"vocab_size":20,"n_embd":12,"n_head":2,"n_layer":1,"ffn_dim":8,"norm_before":false}"#,
        )
        .unwrap();
        let err = format!("{:#}", MuseCocoConfig::from_json_file(&path).unwrap_err());
        assert!(err.contains("post-LN") && err.contains("config.json"), "{err}");
        std::fs::write(&path, r#"{"vocab_size":20,"n_embd":12}"#).unwrap();
        let err = format!("{:#}", MuseCocoConfig::from_json_file(&path).unwrap_err());
        assert!(err.contains("n_head"), "{err}");
    }
}
