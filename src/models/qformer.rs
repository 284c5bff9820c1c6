//! The Q-Former of BOSSA stage 1 (`Blip2Qformer` in model_blip2.py, less the frozen MusicGen):
//! LAVIS' BERT (model_Qformer.py) with OctupleMIDI note embeddings, cross-attention to the audio
//! every `cross_attention_freq` layers (queries only), separate FFNs for the queries, 32 learned
//! queries, the LM head `upsampling` -> `cls`, and the heads `audio_proj`, `symbo_proj`,
//! `binary_head`, `temp`, plus the trainable `layer_norm` on the MusicGen hidden states.
//!
//! Variable names are BOSSA's state-dict names (`Qformer.bert.encoder.layer.N.attention.self.
//! query.weight`, `query_tokens`, `audio_proj.weight`, ...), so `bossa_stage1.pt` converted by
//! `stylebridge convert` loads as it is. Stage 2 deletes the symbolic branch (word and position
//! embeddings, `downsampling`, the text FFNs, `cls`, `upsampling` and the heads): build with
//! `symbolic: false` at `blip2qformer` to load `bossa_stage2.pt`.
//!
//! Masks are explicit: a keep-mask (1 = attend) of shape [B, Tk] (padding, bidirectional) or
//! [B, Tq, Tk] (any pattern; [`causal_mask`] builds BOSSA's generation mask). As in the
//! reference, masked self-attention scores get -10000 and masked audio frames the dtype's minimum.
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{nn, nn::Module, Kind, Tensor};

use super::weights::Checkpoint;

/// Tokens per OctupleMIDI note.
pub const NOTE_WIDTH: i64 = 8;

/// Shapes of the Q-Former. Defaults are BOSSA's (`init_Qformer` on bert-base-uncased).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct QFormerConfig {
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    /// Rows of the token embedding: MusicBERT's 1237 plus BOSSA's `<DEC>`. The LM head predicts
    /// the first `vocab_size - 1`.
    pub vocab_size: i64,
    pub max_position_embeddings: i64,
    pub layer_norm_eps: f64,
    /// Width of the audio states the queries attend to (MusicGen-large: 2048).
    pub encoder_width: i64,
    pub cross_attention_freq: i64,
    pub num_query_tokens: i64,
    /// Width of the contrastive projections.
    pub embed_dim: i64,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    /// False for stage 2, which deletes everything but the query path.
    pub symbolic: bool,
}

impl Default for QFormerConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            vocab_size: 1238,
            max_position_embeddings: 8194,
            layer_norm_eps: 1e-12,
            encoder_width: 2048,
            cross_attention_freq: 2,
            num_query_tokens: 32,
            embed_dim: 256,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            symbolic: true,
        }
    }
}

impl QFormerConfig {
    /// The `qformer` section of a config.json written by `stylebridge convert`.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
        let section =
            value.get("qformer").cloned().with_context(|| format!("{}: no `qformer` section", path.display()))?;
        let cfg: Self = serde_path_to_error::deserialize(section)
            .with_context(|| format!("{}: not a Q-Former config", path.display()))?;
        ensure!(
            cfg.num_attention_heads > 0 && cfg.hidden_size % cfg.num_attention_heads == 0,
            "{}: hidden_size {} is not a multiple of num_attention_heads {}",
            path.display(),
            cfg.hidden_size,
            cfg.num_attention_heads
        );
        Ok(cfg)
    }
}

impl crate::yaml::Validate for QFormerConfig {
    fn validate(&self, at: &str, p: &mut crate::yaml::Problems) {
        let heads_fit = self.num_attention_heads > 0 && self.hidden_size > 0 && self.hidden_size % self.num_attention_heads == 0;
        p.check(heads_fit, at, "hidden_size", || {
            format!("({}) must be a positive multiple of num_attention_heads ({})", self.hidden_size, self.num_attention_heads)
        });
        for (key, value) in [("num_hidden_layers", self.num_hidden_layers), ("intermediate_size", self.intermediate_size), ("num_query_tokens", self.num_query_tokens), ("embed_dim", self.embed_dim), ("max_position_embeddings", self.max_position_embeddings)] {
            p.check(value >= 1, at, key, || format!("is {value}; must be at least 1"));
        }
        for (key, value) in [("hidden_dropout_prob", self.hidden_dropout_prob), ("attention_probs_dropout_prob", self.attention_probs_dropout_prob)] {
            p.check((0.0..1.0).contains(&value), at, key, || format!("is {value}; must be in [0, 1)"));
        }
    }
}

fn bert_linear(p: nn::Path, in_dim: i64, out_dim: i64) -> nn::Linear {
    // BERT `_init_weights`: N(0, 0.02), zero bias.
    let c = nn::LinearConfig {
        ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.02 },
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    };
    nn::linear(p, in_dim, out_dim, c)
}

/// PyTorch's `nn.Linear` default init (weights and bias U(+-1/sqrt(in))): BOSSA's heads are plain
/// `nn.Linear`s outside the BERT init.
pub(crate) fn torch_linear(p: nn::Path, in_dim: i64, out_dim: i64) -> nn::Linear {
    let bound = 1.0 / (in_dim as f64).sqrt();
    let init = nn::Init::Uniform { lo: -bound, up: bound };
    nn::linear(p, in_dim, out_dim, nn::LinearConfig { ws_init: init, bs_init: Some(init), bias: true })
}

fn layer_norm(p: nn::Path, dim: i64, eps: f64) -> nn::LayerNorm {
    nn::layer_norm(p, vec![dim], nn::LayerNormConfig { eps, ..Default::default() })
}

/// Keep-mask (1 = attend) [B, Tk] or [B, Tq, Tk] -> additive [B, 1, Tq|1, Tk] in `kind`.
fn additive_mask(keep: &Tensor, masked_value: f64, kind: Kind) -> Result<Tensor> {
    let extended = match keep.dim() {
        2 => keep.unsqueeze(1).unsqueeze(1),
        3 => keep.unsqueeze(1),
        d => bail!("attention mask must be [batch, keys] or [batch, queries, keys], got {d} dimensions"),
    };
    Ok((1.0 - extended.to_kind(kind)) * masked_value)
}

fn dtype_min(kind: Kind) -> f64 {
    match kind {
        Kind::Half => -65504.0,
        Kind::BFloat16 => -3.3895313892515355e38,
        Kind::Double => f64::MIN,
        _ => f32::MIN as f64,
    }
}

/// Keys and values of one self-attention layer, [B, H, T, D]: what the query pass hands the
/// generation pass (BOSSA's `past_key_values`).
#[derive(Debug)]
pub struct KeyValue {
    pub key: Tensor,
    pub value: Tensor,
}

/// `BertAttention`: (self or cross) attention, then dense + residual + LayerNorm.
#[derive(Debug)]
struct Attention {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    dense: nn::Linear,
    layer_norm: nn::LayerNorm,
    heads: i64,
    attention_dropout: f64,
    hidden_dropout: f64,
}

impl Attention {
    fn new(p: nn::Path, cfg: &QFormerConfig, kv_width: i64) -> Self {
        let h = cfg.hidden_size;
        let s = &p / "self";
        let o = &p / "output";
        Self {
            query: bert_linear(&s / "query", h, h),
            key: bert_linear(&s / "key", kv_width, h),
            value: bert_linear(&s / "value", kv_width, h),
            dense: bert_linear(&o / "dense", h, h),
            layer_norm: layer_norm(&o / "LayerNorm", h, cfg.layer_norm_eps),
            heads: cfg.num_attention_heads,
            attention_dropout: cfg.attention_probs_dropout_prob,
            hidden_dropout: cfg.hidden_dropout_prob,
        }
    }

    fn split_heads(&self, x: &Tensor) -> Tensor {
        let (b, t, c) = x.size3().expect("hidden states are [batch, time, width]");
        x.view([b, t, self.heads, c / self.heads]).permute([0, 2, 1, 3])
    }

    /// `context` = None: self-attention over `hidden` (after `past`, if any); Some: cross-attention
    /// to it. `mask` is additive, broadcastable to [B, H, Tq, Tk].
    fn forward(
        &self,
        hidden: &Tensor,
        context: Option<&Tensor>,
        past: Option<&KeyValue>,
        mask: &Tensor,
        train: bool,
    ) -> (Tensor, KeyValue) {
        let source = context.unwrap_or(hidden);
        let mut key = self.split_heads(&self.key.forward(source));
        let mut value = self.split_heads(&self.value.forward(source));
        if let (None, Some(past)) = (context, past) {
            key = Tensor::cat(&[&past.key, &key], 2);
            value = Tensor::cat(&[&past.value, &value], 2);
        }
        let query = self.split_heads(&self.query.forward(hidden));
        // softmax(q k^T / sqrt(d) + mask) v with dropout on the probabilities, fused; the additive
        // mask (-10000 / the dtype's minimum, as the reference) broadcasts over heads.
        let dropout = if train { self.attention_dropout } else { 0.0 };
        let mask = mask.to_kind(query.kind());
        let attended = Tensor::scaled_dot_product_attention(&query, &key, &value, Some(&mask), dropout, false, None, false);
        let (b, t) = (hidden.size()[0], hidden.size()[1]);
        let context_layer = attended.permute([0, 2, 1, 3]).reshape([b, t, -1]);
        let out = self.dense.forward(&context_layer).dropout(self.hidden_dropout, train);
        (self.layer_norm.forward(&(out + hidden)), KeyValue { key, value })
    }
}

/// `BertIntermediate` + `BertOutput`: dense-GELU-dense, residual, LayerNorm.
#[derive(Debug)]
struct FeedForward {
    intermediate: nn::Linear,
    output: nn::Linear,
    layer_norm: nn::LayerNorm,
    dropout: f64,
}

impl FeedForward {
    /// `suffix` is "" for the text FFN and "_query" for the queries' own.
    fn new(p: &nn::Path, cfg: &QFormerConfig, suffix: &str) -> Self {
        let inter = p / format!("intermediate{suffix}");
        let out = p / format!("output{suffix}");
        Self {
            intermediate: bert_linear(&inter / "dense", cfg.hidden_size, cfg.intermediate_size),
            output: bert_linear(&out / "dense", cfg.intermediate_size, cfg.hidden_size),
            layer_norm: layer_norm(&out / "LayerNorm", cfg.hidden_size, cfg.layer_norm_eps),
            dropout: cfg.hidden_dropout_prob,
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let h = self.intermediate.forward(x).gelu("none");
        let h = self.output.forward(&h).dropout(self.dropout, train);
        self.layer_norm.forward(&(h + x))
    }
}

#[derive(Debug)]
struct Layer {
    attention: Attention,
    crossattention: Option<Attention>,
    text_ffn: Option<FeedForward>,
    query_ffn: FeedForward,
}

impl Layer {
    fn new(p: nn::Path, cfg: &QFormerConfig, index: i64) -> Self {
        let cross = cfg.cross_attention_freq > 0 && index % cfg.cross_attention_freq == 0;
        Self {
            attention: Attention::new(&p / "attention", cfg, cfg.hidden_size),
            crossattention: cross.then(|| Attention::new(&p / "crossattention", cfg, cfg.encoder_width)),
            text_ffn: cfg.symbolic.then(|| FeedForward::new(&p, cfg, "")),
            query_ffn: FeedForward::new(&p, cfg, "_query"),
        }
    }

    /// `BertLayer.forward`: the first `query_len` positions are queries (cross-attention to the
    /// audio, query FFN); the rest are notes (text FFN).
    fn forward(
        &self,
        hidden: &Tensor,
        query_len: i64,
        mask: &Tensor,
        audio: Option<(&Tensor, &Tensor)>,
        past: Option<&KeyValue>,
        train: bool,
    ) -> Result<(Tensor, KeyValue)> {
        let (attended, present) = self.attention.forward(hidden, None, past, mask, train);
        let total = attended.size()[1];
        let mut parts = Vec::new();
        if query_len > 0 {
            let mut queries = attended.narrow(1, 0, query_len);
            if let (Some(cross), Some((audio, audio_mask))) = (&self.crossattention, audio) {
                queries = cross.forward(&queries, Some(audio), None, audio_mask, train).0;
            }
            parts.push(self.query_ffn.forward(&queries, train));
        }
        if total > query_len {
            let ffn = self.text_ffn.as_ref().context("notes given to a Q-Former without its symbolic branch")?;
            parts.push(ffn.forward(&attended.narrow(1, query_len, total - query_len), train));
        }
        Ok((Tensor::cat(&parts, 1), present))
    }
}

/// Word + position embeddings of OctupleMIDI notes (the symbolic branch).
#[derive(Debug)]
struct NoteEmbeddings {
    word_embeddings: Tensor,
    downsampling: nn::Linear,
    position_embeddings: Tensor,
}

/// Query input of a forward pass: the query embeddings and the audio they cross-attend to.
#[derive(Clone, Copy)]
pub struct Queries<'a> {
    /// [B, Q, H]
    pub embeds: &'a Tensor,
    /// Audio states [B, Ta, encoder_width] (after `layer_norm`) and their keep-mask [B, Ta].
    pub audio: &'a Tensor,
    pub audio_mask: &'a Tensor,
}

pub struct BertOutput {
    /// [B, T, H]: queries first, then notes.
    pub hidden: Tensor,
    /// Self-attention keys/values of every layer (past included).
    pub cache: Vec<KeyValue>,
}

/// `BertModel` of model_Qformer.py.
#[derive(Debug)]
pub struct Bert {
    notes: Option<NoteEmbeddings>,
    embeddings_layer_norm: nn::LayerNorm,
    layers: Vec<Layer>,
    cfg: QFormerConfig,
}

impl Bert {
    fn new(p: nn::Path, cfg: &QFormerConfig) -> Self {
        let e = &p / "embeddings";
        let h = cfg.hidden_size;
        let init = nn::Init::Randn { mean: 0.0, stdev: 0.02 };
        let notes = cfg.symbolic.then(|| NoteEmbeddings {
            word_embeddings: (&e / "word_embeddings").var("weight", &[cfg.vocab_size, h], init),
            downsampling: bert_linear(&e / "downsampling", NOTE_WIDTH * h, h),
            position_embeddings: (&e / "position_embeddings").var("weight", &[cfg.max_position_embeddings, h], init),
        });
        let enc = &p / "encoder" / "layer";
        Self {
            notes,
            embeddings_layer_norm: layer_norm(&e / "LayerNorm", h, cfg.layer_norm_eps),
            layers: (0..cfg.num_hidden_layers).map(|i| Layer::new(&enc / i, cfg, i)).collect(),
            cfg: cfg.clone(),
        }
    }

    /// `BertEmbeddings.forward`: notes [B, 8N] -> concat of their 8 embeddings -> `downsampling`
    /// + positions from `past_len`; queries in front; LayerNorm over both.
    fn embed(&self, notes: Option<&Tensor>, queries: Option<&Tensor>, past_len: i64, train: bool) -> Result<Tensor> {
        if let Some(q) = queries {
            let size = q.size();
            ensure!(
                size.len() == 3 && size[2] == self.cfg.hidden_size,
                "query embeddings are {size:?}, expected [batch, queries, {}]",
                self.cfg.hidden_size
            );
            if let Some(ids) = notes {
                ensure!(ids.size()[0] == size[0], "{} note rows for {} query rows", ids.size()[0], size[0]);
            }
        }
        let mut parts: Vec<Tensor> = queries.into_iter().map(Tensor::shallow_clone).collect();
        if let Some(ids) = notes {
            let e = self.notes.as_ref().context("notes given to a Q-Former without its symbolic branch")?;
            let (b, t) = ids.size2().context("notes must be [batch, 8 x notes]")?;
            ensure!(t % NOTE_WIDTH == 0, "notes hold {t} tokens, not a multiple of {NOTE_WIDTH}");
            let n = t / NOTE_WIDTH;
            ensure!(
                past_len + n <= self.cfg.max_position_embeddings,
                "{} notes exceed the {} positions of the Q-Former",
                past_len + n,
                self.cfg.max_position_embeddings
            );
            let words = Tensor::embedding(&e.word_embeddings, ids, 1, false, false).reshape([b, n, -1]);
            let positions = e.position_embeddings.narrow(0, past_len, n);
            parts.push(e.downsampling.forward(&words) + positions);
        }
        ensure!(!parts.is_empty(), "a Q-Former pass needs notes, queries or both");
        let x = self.embeddings_layer_norm.forward(&Tensor::cat(&parts, 1));
        Ok(x.dropout(self.cfg.hidden_dropout_prob, train))
    }

    /// One pass: `notes` [B, 8N] and/or `queries`, with self-attention keep-mask `mask` ([B, Tk]
    /// or [B, Tq, Tk], Tk counting `past` positions first), optionally after cached `past`
    /// keys/values (BOSSA passes the query pass's cache to the generation pass).
    pub fn forward(
        &self,
        notes: Option<&Tensor>,
        queries: Option<Queries>,
        mask: &Tensor,
        past: Option<&[KeyValue]>,
        train: bool,
    ) -> Result<BertOutput> {
        if let Some(past) = past {
            ensure!(past.len() == self.layers.len(), "cache has {} layers, model {}", past.len(), self.layers.len());
        }
        // Positions of notes continue after cached notes (cached queries take none).
        let past_len = past.map_or(0, |p| p[0].key.size()[2] - self.cfg.num_query_tokens).max(0);
        let x = self.embed(notes, queries.map(|q| q.embeds), past_len, train)?;
        self.check_shapes(&x, queries, mask, past)?;
        let kind = x.kind();
        let self_mask = additive_mask(mask, -10000.0, kind)?;
        let audio_mask;
        let audio = match queries {
            Some(q) => {
                audio_mask = additive_mask(q.audio_mask, dtype_min(kind), kind)?;
                Some((q.audio, &audio_mask))
            }
            None => None,
        };
        let query_len = queries.map_or(0, |q| q.embeds.size()[1]);
        let mut hidden = x;
        let mut cache = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let (h, kv) = layer.forward(&hidden, query_len, &self_mask, audio, past.map(|p| &p[i]), train)?;
            hidden = h;
            cache.push(kv);
        }
        Ok(BertOutput { hidden, cache })
    }

    /// Shape errors as messages rather than libtorch aborts: masks must cover every key, the
    /// audio must have the width the cross-attention was built for.
    fn check_shapes(
        &self,
        x: &Tensor,
        queries: Option<Queries>,
        mask: &Tensor,
        past: Option<&[KeyValue]>,
    ) -> Result<()> {
        let (b, t) = (x.size()[0], x.size()[1]);
        let keys = t + past.map_or(0, |p| p[0].key.size()[2]);
        let want: Vec<i64> = if mask.dim() == 3 { vec![b, t, keys] } else { vec![b, keys] };
        ensure!(mask.size() == want, "attention mask is {:?}, expected {want:?} (batch, [queries,] keys)", mask.size());
        if let Some(q) = queries {
            let audio = q.audio.size();
            ensure!(
                audio.len() == 3 && audio[0] == b && audio[2] == self.cfg.encoder_width,
                "audio states are {audio:?}, expected [{b}, frames, {}]",
                self.cfg.encoder_width
            );
            ensure!(
                q.audio_mask.size() == [b, audio[1]],
                "audio mask is {:?}, expected [{b}, {}]",
                q.audio_mask.size(),
                audio[1]
            );
        }
        Ok(())
    }
}

/// `BertLMHeadModel`'s head: `upsampling` to 8 slots, then `cls` (dense-GELU-LayerNorm, decoder).
#[derive(Debug)]
struct LmHead {
    upsampling: nn::Linear,
    transform_dense: nn::Linear,
    transform_layer_norm: nn::LayerNorm,
    decoder: nn::Linear,
}

impl LmHead {
    fn forward(&self, notes_hidden: &Tensor) -> Tensor {
        let (b, n, h) = notes_hidden.size3().expect("hidden states are [batch, notes, width]");
        let slots = self.upsampling.forward(notes_hidden).reshape([b, n * NOTE_WIDTH, h]);
        let t = self.transform_layer_norm.forward(&self.transform_dense.forward(&slots).gelu("none"));
        self.decoder.forward(&t)
    }
}

#[derive(Debug)]
struct Heads {
    audio_proj: nn::Linear,
    symbo_proj: nn::Linear,
    binary_head: nn::Linear,
    temp: Tensor,
    lm: LmHead,
}

/// BOSSA's stage-1 model less MusicGen (see the module docs).
#[derive(Debug)]
pub struct QFormer {
    bert: Bert,
    query_tokens: Tensor,
    layer_norm: nn::LayerNorm,
    heads: Option<Heads>,
    /// Variable-name prefix of this model in its store ("" or "blip2qformer.").
    prefix: String,
    cfg: QFormerConfig,
}

impl QFormer {
    /// Build at `p`: the root of its own store (then [`Self::load`] with the checkpoint's prefix),
    /// or the matching sub-path of a store that mirrors a whole BOSSA checkpoint.
    pub fn new(p: nn::Path, cfg: &QFormerConfig) -> Self {
        let q = &p / "Qformer";
        let h = cfg.hidden_size;
        let heads = cfg.symbolic.then(|| {
            let pred = &q / "cls" / "predictions";
            Heads {
                audio_proj: torch_linear(&p / "audio_proj", h, cfg.embed_dim),
                symbo_proj: torch_linear(&p / "symbo_proj", h, cfg.embed_dim),
                binary_head: torch_linear(&p / "binary_head", h, 2),
                temp: p.var("temp", &[], nn::Init::Const(0.07)),
                lm: LmHead {
                    upsampling: bert_linear(&q / "upsampling", h, NOTE_WIDTH * h),
                    transform_dense: bert_linear(&pred / "transform" / "dense", h, h),
                    transform_layer_norm: layer_norm(&pred / "transform" / "LayerNorm", h, cfg.layer_norm_eps),
                    decoder: bert_linear(&pred / "decoder", h, cfg.vocab_size - 1),
                },
            }
        });
        Self {
            bert: Bert::new(&q / "bert", cfg),
            query_tokens: p.var(
                "query_tokens",
                &[1, cfg.num_query_tokens, h],
                nn::Init::Randn { mean: 0.0, stdev: 0.02 },
            ),
            layer_norm: layer_norm(&p / "layer_norm", cfg.encoder_width, 1e-5),
            heads,
            prefix: p.components().map(|c| format!("{c}.")).collect(),
            cfg: cfg.clone(),
        }
    }

    pub fn config(&self) -> &QFormerConfig {
        &self.cfg
    }

    pub fn bert(&self) -> &Bert {
        &self.bert
    }

    /// Load a converted BOSSA checkpoint into a store holding this model at its root; the
    /// checkpoint's names are `prefix` + the variable names ("" for stage 1, "blip2qformer." for
    /// stage 2). Tensors [`skipped_on_load`] are left alone.
    pub fn load(vs: &mut nn::VarStore, ckpt: &Checkpoint, prefix: &str) -> Result<()> {
        ckpt.load_into(vs, prefix, skipped_on_load)
    }

    /// BOSSA's `init_Qformer`: start from MusicBERT converted by `stylebridge convert --format
    /// musicbert` (names already renamed to `bert.*`, `cls.*`, `upsampling.*`). Every tensor of
    /// the checkpoint must find its variable; the query FFNs copy the text FFNs; the `<DEC>` row
    /// MusicBERT lacks becomes the mean embedding; cross-attention, queries and heads keep their
    /// fresh init.
    pub fn init_from_musicbert(&self, vs: &nn::VarStore, ckpt: &Checkpoint) -> Result<()> {
        let prefix = format!("{}Qformer.", self.prefix);
        let mut used = std::collections::BTreeSet::new();
        let mut problems = Vec::new();
        tch::no_grad(|| {
            for (name, mut var) in super::weights::variables(vs) {
                let Some(rel) = name.strip_prefix(&prefix) else { continue };
                let source = if ckpt.contains(rel) { rel.to_string() } else { rel.replace("_query", "") };
                let Some(src) = ckpt.get(&source) else { continue };
                used.insert(source.clone());
                let src = src.to_kind(var.kind());
                if src.size() == var.size() {
                    var.copy_(&src);
                } else if rel == "bert.embeddings.word_embeddings.weight" && src.size()[0] + 1 == var.size()[0] {
                    let rows = src.size()[0];
                    var.narrow(0, 0, rows).copy_(&src);
                    var.narrow(0, rows, 1).copy_(&src.mean_dim(0, true, None));
                } else {
                    problems.push(format!("{source}: checkpoint {:?}, model {:?}", src.size(), var.size()));
                }
            }
        });
        let unused: Vec<String> = ckpt.names().filter(|n| !used.contains(*n)).map(str::to_string).collect();
        if !problems.is_empty() || !unused.is_empty() {
            bail!(
                "MusicBERT checkpoint {} does not fit the Q-Former:{}{}",
                ckpt.origin().display(),
                problems.iter().map(|p| format!("\n  mis-shaped {p}")).collect::<String>(),
                unused.iter().map(|u| format!("\n  unexpected {u}")).collect::<String>()
            );
        }
        Ok(())
    }

    fn heads(&self) -> Result<&Heads> {
        self.heads.as_ref().context("this Q-Former was built without its symbolic branch (stage-2 layout)")
    }

    /// BOSSA's `LayerNorm` on the MusicGen hidden states, computed in fp32.
    pub fn audio_embeds(&self, musicgen_hidden: &Tensor) -> Tensor {
        let kind = musicgen_hidden.kind();
        let (w, b) = (self.layer_norm.ws.as_ref(), self.layer_norm.bs.as_ref());
        let to_f32 = |t: Option<&Tensor>| t.map(|t| t.to_kind(Kind::Float));
        let out = musicgen_hidden.to_kind(Kind::Float).layer_norm(
            [self.cfg.encoder_width],
            to_f32(w).as_ref(),
            to_f32(b).as_ref(),
            1e-5,
            true,
        );
        out.to_kind(kind)
    }

    fn expanded_queries(&self, batch: i64) -> Tensor {
        self.query_tokens.expand([batch, -1, -1], false)
    }

    /// The queries read the audio (no notes): `audio_embeds` [B, Ta, W], keep-mask [B, Ta].
    /// `hidden` [B, Q, H] is Z; `cache` feeds [`Self::lm_logits`].
    pub fn query_output(&self, audio_embeds: &Tensor, audio_mask: &Tensor, train: bool) -> Result<BertOutput> {
        let b = audio_embeds.size()[0];
        let embeds = self.expanded_queries(b);
        let queries = Queries { embeds: &embeds, audio: audio_embeds, audio_mask };
        let mask = Tensor::ones([b, self.cfg.num_query_tokens], (Kind::Float, audio_embeds.device()));
        self.bert.forward(None, Some(queries), &mask, None, train)
    }

    /// The notes alone, bidirectional under keep-mask `notes_mask` [B, N] (BOSSA: lead-sheet x
    /// padding mask, so the unimodal pass ignores the lead sheet).
    pub fn notes_output(&self, notes: &Tensor, notes_mask: &Tensor, train: bool) -> Result<BertOutput> {
        self.bert.forward(Some(notes), None, notes_mask, None, train)
    }

    /// normalize(audio_proj(Z)): [B, Q, embed_dim].
    pub fn audio_features(&self, query_hidden: &Tensor) -> Result<Tensor> {
        Ok(l2_normalize(&self.heads()?.audio_proj.forward(query_hidden)))
    }

    /// normalize(symbo_proj(hidden at note `index[b]`)) (BOSSA: the `<s>` note after the lead
    /// sheet): [B, embed_dim].
    pub fn symbolic_features(&self, notes_hidden: &Tensor, index: &Tensor) -> Result<Tensor> {
        let (b, n, h) = notes_hidden.size3().context("notes hidden states must be [batch, notes, width]")?;
        let (low, high) = super::id_range(index);
        ensure!(low >= 0 && high < n, "the feature note index lies in {low}..={high}, outside the {n} notes");
        let picked = notes_hidden.gather(1, &index.view([b, 1, 1]).expand([b, 1, h], false), false).squeeze_dim(1);
        Ok(l2_normalize(&self.heads()?.symbo_proj.forward(&picked)))
    }

    /// Matching logits [B, 2]: queries and notes in one bidirectional pass (notes keep-mask
    /// [B, N]), the binary head on every query output, averaged.
    pub fn matching_logits(
        &self,
        notes: &Tensor,
        notes_mask: &Tensor,
        audio_embeds: &Tensor,
        audio_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let b = notes.size()[0];
        let q = self.cfg.num_query_tokens;
        let embeds = self.expanded_queries(b);
        let queries = Queries { embeds: &embeds, audio: audio_embeds, audio_mask };
        let query_keep = Tensor::ones([b, q], (notes_mask.kind(), notes_mask.device()));
        let mask = Tensor::cat(&[query_keep, notes_mask.shallow_clone()], 1);
        let out = self.bert.forward(Some(notes), Some(queries), &mask, None, train)?;
        Ok(self.heads()?.binary_head.forward(&out.hidden.narrow(1, 0, q)).mean_dim(1, false, None))
    }

    /// Generation logits [B, 8N, vocab-1]: notes (`<DEC>` in place of `<s>`) attend to all
    /// queries (through the query pass's `query_cache`) and causally to earlier notes;
    /// `pad_mask` [B, N] keeps real notes. Logit row 8i+j predicts slot j of note i+1.
    pub fn lm_logits(
        &self,
        notes: &Tensor,
        pad_mask: &Tensor,
        query_cache: &[KeyValue],
        train: bool,
    ) -> Result<Tensor> {
        let b = notes.size()[0];
        let n = pad_mask.size()[1];
        let query_keep = Tensor::ones([b, self.cfg.num_query_tokens], (pad_mask.kind(), pad_mask.device()));
        let mask = causal_mask(&Tensor::cat(&[query_keep, pad_mask.shallow_clone()], 1), n, false);
        let out = self.bert.forward(Some(notes), None, &mask, Some(query_cache), train)?;
        Ok(self.heads()?.lm.forward(&out.hidden))
    }

    /// The contrastive temperature.
    pub fn temp(&self) -> Result<&Tensor> {
        Ok(&self.heads()?.temp)
    }
}

/// Checkpoint tensors beside the Q-Former that are not its weights: the frozen MusicGen stored in
/// BOSSA's checkpoints (the audio encoder loads those) and BERT's `position_ids` buffer.
pub fn skipped_on_load(name: &str) -> bool {
    name.starts_with("musicgen_") || name == "Qformer.bert.embeddings.position_ids"
}

/// Stage-1 tensors that stage 2 does not build (BOSSA `Blip2Musecoco.__init__` deletes them):
/// the symbolic branch (note embeddings, the text FFNs, the LM head) and the stage-1 heads. Names
/// are relative to the Q-Former model (`Qformer.bert.…`, `audio_proj.weight`, …).
pub fn symbolic_only(name: &str) -> bool {
    const EMBEDDINGS: [&str; 3] = ["word_embeddings.", "position_embeddings.", "downsampling."];
    const HEADS: [&str; 6] = ["Qformer.cls.", "Qformer.upsampling.", "audio_proj.", "symbo_proj.", "binary_head.", "temp"];
    if HEADS.iter().any(|h| name.starts_with(h)) {
        return true;
    }
    if let Some(rest) = name.strip_prefix("Qformer.bert.embeddings.") {
        return EMBEDDINGS.iter().any(|e| rest.starts_with(e));
    }
    // `Qformer.bert.encoder.layer.N.output.*` / `.intermediate.*`: the text FFN (the queries keep
    // `*_query`; `attention.output` is the attention's own projection).
    name.strip_prefix("Qformer.bert.encoder.layer.")
        .and_then(|rest| rest.split_once('.'))
        .is_some_and(|(_, part)| part.starts_with("output.") || part.starts_with("intermediate."))
}

fn l2_normalize(x: &Tensor) -> Tensor {
    // F.normalize: x / max(||x||, 1e-12).
    x / x.norm_scalaropt_dim(2.0, [-1i64].as_slice(), true).clamp_min(1e-12)
}

/// The decoder keep-mask of BERT's `get_extended_attention_mask`: `attention_mask` [B, P + S]
/// over P earlier (cached) positions and the S input positions; each input position sees the
/// prefix and itself and earlier inputs. With `has_query` (UniLM style, queries in the prefix)
/// the prefix rows are added and see only the prefix. Returns [B, S (+P), P + S].
pub fn causal_mask(attention_mask: &Tensor, seq_len: i64, has_query: bool) -> Tensor {
    let (b, total) = attention_mask.size2().expect("attention mask is [batch, keys]");
    let opts = (Kind::Float, attention_mask.device());
    let ids = Tensor::arange(seq_len, (Kind::Int64, attention_mask.device()));
    let mut causal = ids.unsqueeze(0).le_tensor(&ids.unsqueeze(1)).to_kind(Kind::Float);
    let prefix = total - seq_len;
    if prefix > 0 {
        if has_query {
            causal = Tensor::cat(&[Tensor::zeros([prefix, seq_len], opts), causal], 0);
        }
        let rows = causal.size()[0];
        causal = Tensor::cat(&[Tensor::ones([rows, prefix], opts), causal], 1);
    }
    causal.unsqueeze(0).expand([b, -1, -1], false) * attention_mask.to_kind(Kind::Float).unsqueeze(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device};

    fn tiny(symbolic: bool) -> QFormerConfig {
        QFormerConfig {
            hidden_size: 8,
            num_hidden_layers: 3,
            num_attention_heads: 2,
            intermediate_size: 12,
            vocab_size: 11,
            max_position_embeddings: 16,
            encoder_width: 6,
            num_query_tokens: 3,
            embed_dim: 4,
            symbolic,
            ..Default::default()
        }
    }

    #[test]
    fn names_follow_bossa_stage_1_and_stage_2() {
        let vs = VarStore::new(Device::Cpu);
        let _ = QFormer::new(vs.root(), &tiny(true));
        let names = vs.variables();
        for name in [
            "Qformer.bert.embeddings.word_embeddings.weight",
            "Qformer.bert.embeddings.downsampling.weight",
            "Qformer.bert.encoder.layer.0.crossattention.self.key.weight",
            "Qformer.bert.encoder.layer.2.crossattention.output.LayerNorm.bias",
            "Qformer.bert.encoder.layer.1.output_query.dense.weight",
            "Qformer.bert.encoder.layer.1.intermediate.dense.weight",
            "Qformer.upsampling.weight",
            "Qformer.cls.predictions.decoder.bias",
            "query_tokens",
            "layer_norm.weight",
            "audio_proj.weight",
            "binary_head.bias",
            "temp",
        ] {
            assert!(names.contains_key(name), "missing {name}");
        }
        assert!(!names.contains_key("Qformer.bert.encoder.layer.1.crossattention.self.key.weight"));
        assert_eq!(names["Qformer.bert.encoder.layer.0.crossattention.self.key.weight"].size(), vec![8, 6]);
        assert_eq!(names["Qformer.cls.predictions.decoder.weight"].size(), vec![10, 8]);

        let vs2 = VarStore::new(Device::Cpu);
        let _ = QFormer::new(vs2.root() / "blip2qformer", &tiny(false));
        let names2 = vs2.variables();
        assert!(names2.contains_key("blip2qformer.Qformer.bert.embeddings.LayerNorm.weight"));
        assert!(names2.contains_key("blip2qformer.Qformer.bert.encoder.layer.0.intermediate_query.dense.weight"));
        assert!(!names2
            .keys()
            .any(|n| n.contains("word_embeddings") || n.contains(".intermediate.") || n.contains("proj")));
    }

    #[test]
    fn stage_2_drops_exactly_the_symbolic_branch_and_heads() {
        let full = VarStore::new(Device::Cpu);
        let _ = QFormer::new(full.root(), &tiny(true));
        let audio = VarStore::new(Device::Cpu);
        let _ = QFormer::new(audio.root(), &tiny(false));
        let kept: std::collections::BTreeSet<String> = audio.variables().into_keys().collect();
        for name in full.variables().into_keys() {
            assert_eq!(symbolic_only(&name), !kept.contains(&name), "{name}");
        }
    }

    #[test]
    fn causal_mask_matches_bert_decoder_layout() {
        // 2 cached query positions, 3 notes, last note padded.
        let keep = Tensor::from_slice(&[1.0f32, 1., 1., 1., 0.]).view([1, 5]);
        let m = causal_mask(&keep, 3, false);
        let rows: Vec<f32> = Vec::try_from(m.view([-1])).unwrap();
        assert_eq!(rows, vec![1., 1., 1., 0., 0., 1., 1., 1., 1., 0., 1., 1., 1., 1., 0.]);
        let m = causal_mask(&Tensor::ones([1, 4], (Kind::Float, Device::Cpu)), 2, true);
        assert_eq!(m.size(), vec![1, 4, 4]);
        let rows: Vec<f32> = Vec::try_from(m.view([-1])).unwrap();
        assert_eq!(rows, vec![1., 1., 0., 0., 1., 1., 0., 0., 1., 1., 1., 0., 1., 1., 1., 1.]);
    }

    #[test]
    fn stage_2_layout_refuses_notes_with_an_error() {
        let vs = VarStore::new(Device::Cpu);
        let model = QFormer::new(vs.root(), &tiny(false));
        let notes = Tensor::zeros([1, 8], (Kind::Int64, Device::Cpu));
        let err = model.notes_output(&notes, &Tensor::ones([1, 1], (Kind::Float, Device::Cpu)), false).err().unwrap();
        assert!(err.to_string().contains("symbolic branch"), "{err}");
        let audio = Tensor::randn([1, 4, 6], (Kind::Float, Device::Cpu));
        let out = model.query_output(&audio, &Tensor::ones([1, 4], (Kind::Float, Device::Cpu)), false).unwrap();
        assert_eq!(out.hidden.size(), vec![1, 3, 8]);
    }

    #[test]
    fn shape_mistakes_are_errors_not_aborts() {
        let vs = VarStore::new(Device::Cpu);
        let model = QFormer::new(vs.root(), &tiny(true));
        let ones = |s: &[i64]| Tensor::ones(s, (Kind::Float, Device::Cpu));
        let notes = Tensor::zeros([2, 16], (Kind::Int64, Device::Cpu));
        let err = model.notes_output(&notes, &ones(&[2, 3]), false).err().unwrap();
        assert!(err.to_string().contains("attention mask is [2, 3], expected [2, 2]"), "{err}");
        let err = model.query_output(&ones(&[2, 4, 5]), &ones(&[2, 4]), false).err().unwrap();
        assert!(err.to_string().contains("audio states are [2, 4, 5]"), "{err}");
        let err = model.query_output(&ones(&[2, 4, 6]), &ones(&[2, 3]), false).err().unwrap();
        assert!(err.to_string().contains("audio mask is [2, 3]"), "{err}");
    }

    #[test]
    fn rejects_notes_not_in_groups_of_eight() {
        let vs = VarStore::new(Device::Cpu);
        let model = QFormer::new(vs.root(), &tiny(true));
        let notes = Tensor::zeros([1, 7], (Kind::Int64, Device::Cpu));
        let err = model.notes_output(&notes, &Tensor::ones([1, 1], (Kind::Float, Device::Cpu)), false).err().unwrap();
        assert!(err.to_string().contains("multiple of 8"), "{err}");
    }
}
