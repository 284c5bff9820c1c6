//! MusicGen decoder as BOSSA's frozen audio encoder (HF `MusicgenForConditionalGeneration`,
//! tensors under `decoder.model.decoder.`).
//!
//! BOSSA rebuilds the decoder with `num_hidden_layers = 48 // 2 + 1 = 25` and takes its
//! `last_hidden_state`, i.e. `layer_norm(output of layer 25)`; only those layers are built,
//! loaded and run here. Input: EnCodec codes in the delay pattern ([`apply_delay_pattern`]).
//!
//! Cross-attention is left out. BOSSA feeds the unconditional encoder state:
//! `enc_to_dec_proj(zeros) * mask` with `mask = 0`, so the keys' source is exactly zero; the
//! `encoder_attn` projections have no bias, so its values are exactly zero and whatever the
//! (fully masked) attention weights are, `out_proj(weights @ 0) = 0` is added to the residual.
//! `python_interop/parity/make_musicgen.py` checks this against transformers (bit-identical
//! `last_hidden_state` with and without the encoder input) and tests/parity_musicgen.rs asserts it.
use crate::models::weights::Checkpoint;
use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use std::path::Path;
use tch::{nn, nn::Module, nn::VarStore, Device, Kind, Tensor};

/// HF `MusicgenDecoderConfig` fields the decoder reads; defaults are HF's.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct MusicgenDecoderConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: usize,
    pub num_attention_heads: i64,
    pub ffn_dim: i64,
    pub num_codebooks: i64,
    pub audio_channels: i64,
    pub activation_function: String,
    /// The pad/BOS code: the extra last row of each embedding table (2048).
    pub pad_token_id: Option<i64>,
}

impl Default for MusicgenDecoderConfig {
    fn default() -> Self {
        Self {
            vocab_size: 2048,
            hidden_size: 1024,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            ffn_dim: 4096,
            num_codebooks: 4,
            audio_channels: 1,
            activation_function: "gelu".into(),
            pad_token_id: Some(2048),
        }
    }
}

impl MusicgenDecoderConfig {
    /// Read the decoder config from an HF MusicGen `config.json` (or its folder): the `decoder`
    /// object of a `MusicgenForConditionalGeneration` config, or a bare decoder config.
    pub fn from_file(path: &Path) -> Result<Self> {
        let file = if path.is_dir() { path.join("config.json") } else { path.to_path_buf() };
        let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        let mut json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", file.display()))?;
        if let Some(decoder) = json.get_mut("decoder") {
            json = decoder.take();
        }
        let config: Self = serde_path_to_error::deserialize(json)
            .with_context(|| format!("{}: not a valid MusicGen decoder config", file.display()))?;
        config.validate().with_context(|| format!("{}: unsupported MusicGen decoder config", file.display()))?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(self.audio_channels == 1, "audio_channels is {}; only mono MusicGen is supported", self.audio_channels);
        ensure!(self.num_hidden_layers >= 1, "num_hidden_layers is 0");
        ensure!(
            self.num_attention_heads > 0 && self.hidden_size % self.num_attention_heads == 0,
            "hidden_size {} is not a multiple of num_attention_heads {}",
            self.hidden_size,
            self.num_attention_heads
        );
        ensure!(self.pad_token() == self.vocab_size, "pad_token_id must be vocab_size ({})", self.vocab_size);
        activation(&self.activation_function)?;
        Ok(())
    }

    pub fn pad_token(&self) -> i64 {
        self.pad_token_id.unwrap_or(self.vocab_size)
    }

    /// The depth BOSSA reads features at: half the layers + 1 (25 of 48 for musicgen-large).
    pub fn bossa_layers(&self) -> usize {
        self.num_hidden_layers / 2 + 1
    }
}

/// The GELU variant named by `activation_function` (HF `ACT2FN` names).
fn activation(name: &str) -> Result<&'static str> {
    match name {
        "gelu" => Ok("none"),
        "gelu_new" | "gelu_pytorch_tanh" => Ok("tanh"),
        other => bail!("activation_function {other:?} is not supported (expected gelu)"),
    }
}

/// Codes `[batch, K, T]` in MusicGen's delay pattern `[batch, K, T + K]` (audiocraft
/// `DelayedPatternProvider` with delays 0..K-1, then `build_pattern_sequence`):
/// step 0 holds `pad` in every codebook, and codebook q at step s holds frame s - 1 - q
/// (`pad` where that frame does not exist). BOSSA: 508 frames -> 512 steps.
///
/// ```text
/// step      0    1    2    3   ...  T    T+1  T+2  T+3
/// q = 0    pad   f0   f1   f2  ... f(T-1) pad pad  pad
/// q = 1    pad  pad   f0   f1  ... f(T-2) f(T-1) pad pad
/// q = 3    pad  pad  pad  pad  ... f(T-4) ...        f(T-1)
/// ```
pub fn apply_delay_pattern(codes: &Tensor, pad: i64) -> Result<Tensor> {
    let (batch, k, t) = codes.size3().context("codes must be [batch, codebooks, frames]")?;
    let out = Tensor::full([batch, k, t + k], pad, (codes.kind(), codes.device()));
    for q in 0..k {
        // One batched copy per codebook: frames 0..T land on steps q+1..q+1+T.
        out.narrow(1, q, 1).narrow(2, q + 1, t).copy_(&codes.narrow(1, q, 1));
    }
    Ok(out)
}

/// Name of the position table in checkpoints that store it (a non-trainable parameter in
/// transformers 4.x, a non-persistent buffer since).
const POSITIONS: &str = "embed_positions.weights";

/// HF `MusicgenSinusoidalPositionalEmbedding.get_embedding` rows 0..len: `[cos | sin]` of
/// position * 10000^(-i / (half - 1)), a zero column appended for odd widths.
fn sinusoidal_positions(len: i64, dim: i64, device: Device) -> Tensor {
    let half = dim / 2;
    let step = (10000f64).ln() / (half - 1) as f64;
    let freqs = (Tensor::arange(half, (Kind::Int64, device)).to_kind(Kind::Float) * -step).exp();
    let angles = Tensor::arange(len, (Kind::Int64, device)).to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0);
    let emb = Tensor::cat(&[angles.cos(), angles.sin()], 1);
    if dim % 2 == 1 {
        Tensor::cat(&[emb, Tensor::zeros([len, 1], (Kind::Float, device))], 1)
    } else {
        emb
    }
}

fn linear_no_bias(p: nn::Path, d_in: i64, d_out: i64) -> nn::Linear {
    nn::linear(p, d_in, d_out, nn::LinearConfig { bias: false, ..Default::default() })
}

/// Causal multi-head self-attention without biases (`self_attn`).
struct SelfAttention {
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    out_proj: nn::Linear,
    heads: i64,
}

impl SelfAttention {
    fn new(p: nn::Path, dim: i64, heads: i64) -> Self {
        Self {
            q_proj: linear_no_bias(&p / "q_proj", dim, dim),
            k_proj: linear_no_bias(&p / "k_proj", dim, dim),
            v_proj: linear_no_bias(&p / "v_proj", dim, dim),
            out_proj: linear_no_bias(&p / "out_proj", dim, dim),
            heads,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, t, d) = x.size3().expect("hidden states are [batch, steps, dim]");
        let split = |y: Tensor| y.view([b, t, self.heads, d / self.heads]).transpose(1, 2);
        let (q, k, v) = (split(self.q_proj.forward(x)), split(self.k_proj.forward(x)), split(self.v_proj.forward(x)));
        let y = Tensor::scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, 0.0, true, None, false);
        self.out_proj.forward(&y.transpose(1, 2).reshape([b, t, d]))
    }
}

/// Pre-LN decoder layer: x + self_attn(LN(x)), then x + fc2(gelu(fc1(LN(x)))).
struct DecoderLayer {
    self_attn_layer_norm: nn::LayerNorm,
    self_attn: SelfAttention,
    final_layer_norm: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    gelu: &'static str,
}

impl DecoderLayer {
    fn new(p: nn::Path, config: &MusicgenDecoderConfig) -> Result<Self> {
        let dim = config.hidden_size;
        let ln = Default::default();
        Ok(Self {
            self_attn_layer_norm: nn::layer_norm(&p / "self_attn_layer_norm", vec![dim], ln),
            self_attn: SelfAttention::new(&p / "self_attn", dim, config.num_attention_heads),
            final_layer_norm: nn::layer_norm(&p / "final_layer_norm", vec![dim], ln),
            fc1: linear_no_bias(&p / "fc1", dim, config.ffn_dim),
            fc2: linear_no_bias(&p / "fc2", config.ffn_dim, dim),
            gelu: activation(&config.activation_function)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let x = x + self.self_attn.forward(&self.self_attn_layer_norm.forward(x));
        let h = self.fc1.forward(&self.final_layer_norm.forward(&x)).gelu(self.gelu);
        x + self.fc2.forward(&h)
    }
}

/// The first `layers.len()` layers of the MusicGen decoder and its final `layer_norm`.
pub struct MusicgenDecoder {
    config: MusicgenDecoderConfig,
    embed_tokens: Vec<nn::Embedding>,
    layers: Vec<DecoderLayer>,
    layer_norm: nn::LayerNorm,
    vs: VarStore,
}

impl MusicgenDecoder {
    /// Build `n_layers` layers on `vs` with HF's names relative to `decoder.model.decoder.`.
    pub fn new(vs: VarStore, config: MusicgenDecoderConfig, n_layers: usize) -> Result<Self> {
        ensure!(
            (1..=config.num_hidden_layers).contains(&n_layers),
            "cannot stop at layer {n_layers}: the decoder has layers 1..={}",
            config.num_hidden_layers
        );
        let root = vs.root();
        let embed_tokens = (0..config.num_codebooks)
            .map(|q| nn::embedding(&root / "embed_tokens" / q, config.vocab_size + 1, config.hidden_size, Default::default()))
            .collect();
        let layers = (0..n_layers).map(|i| DecoderLayer::new(&root / "layers" / i, &config)).collect::<Result<_>>()?;
        let layer_norm = nn::layer_norm(&root / "layer_norm", vec![config.hidden_size], Default::default());
        Ok(Self { config, embed_tokens, layers, layer_norm, vs })
    }

    /// Load the decoder of an HF MusicGen folder (`config.json` + safetensors, single or sharded;
    /// a `MusicgenForConditionalGeneration` or a `MusicgenForCausalLM`), keeping the first
    /// `n_layers` layers (default [`MusicgenDecoderConfig::bossa_layers`]), frozen, in `kind`.
    pub fn load(dir: &Path, n_layers: Option<usize>, device: Device, kind: Kind) -> Result<Self> {
        let config = MusicgenDecoderConfig::from_file(dir)?;
        let ckpt = Checkpoint::open(dir)?;
        let prefix = ["decoder.model.decoder.", "model.decoder."]
            .into_iter()
            .find(|p| ckpt.contains(&format!("{p}embed_tokens.0.weight")))
            .with_context(|| {
                format!(
                    "{}: no `decoder.model.decoder.embed_tokens.0.weight` (nor `model.decoder.…`); not an HF MusicGen checkpoint",
                    ckpt.origin().display()
                )
            })?;
        Self::from_checkpoint(&ckpt, prefix, config, n_layers, device, kind)
    }

    /// The decoder whose HF names (relative to `decoder.model.decoder.`) sit under `prefix` in
    /// `ckpt`: an HF MusicGen file, or a BOSSA checkpoint that stores it
    /// (`blip2qformer.musicgen_decoder.decoder.`). Same contract as [`Self::load`].
    pub fn from_checkpoint(ckpt: &Checkpoint, prefix: &str, config: MusicgenDecoderConfig, n_layers: Option<usize>, device: Device, kind: Kind) -> Result<Self> {
        config.validate().with_context(|| format!("{}: unsupported MusicGen decoder config", ckpt.origin().display()))?;
        let n_layers = n_layers.unwrap_or_else(|| config.bossa_layers());
        let mut vs = VarStore::new(device);
        vs.set_kind(kind);
        let mut model = Self::new(vs, config, n_layers)?;
        // Layers past the cut, every cross-attention (it adds exactly 0, see the module doc), and
        // the fixed position table that transformers 4.x saved (the hub's files), checked below.
        let unused = |name: &str| match name.strip_prefix("layers.").and_then(|rest| rest.split_once('.')) {
            Some((index, rest)) => {
                index.parse::<usize>().is_ok_and(|i| i >= n_layers) || rest.starts_with("encoder_attn")
            }
            None => name == POSITIONS,
        };
        ckpt.load_into(&mut model.vs, prefix, unused)?;
        if let Some(stored) = ckpt.get(&format!("{prefix}{POSITIONS}")) {
            let (rows, dim) = stored.size2().context("embed_positions.weights must be [positions, hidden]")?;
            let diff = (stored.to_kind(Kind::Float) - sinusoidal_positions(rows, dim, stored.device()))
                .abs()
                .max()
                .double_value(&[]);
            // Tolerance covers fp16/bf16 storage of values in [-1, 1].
            ensure!(
                dim == model.config.hidden_size && diff < 1e-2,
                "{}: {prefix}{POSITIONS} is not MusicGen's sinusoid (max |diff| {diff:.3e})",
                ckpt.origin().display()
            );
        }
        model.vs.freeze();
        Ok(model)
    }

    pub fn config(&self) -> &MusicgenDecoderConfig {
        &self.config
    }

    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Summed codebook embeddings plus sinusoidal positions of delayed codes `[batch, K, steps]`.
    fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (_, k, steps) = input_ids.size3().context("input ids must be [batch, codebooks, steps]")?;
        ensure!(k == self.config.num_codebooks, "input has {k} codebooks, the decoder {}", self.config.num_codebooks);
        let ids = input_ids.to_device(self.vs.device());
        let (low, high) = super::id_range(&ids);
        ensure!(
            low >= 0 && high <= self.config.vocab_size,
            "codes must lie in 0..={} (the last is the pad code), got {low}..={high}",
            self.config.vocab_size
        );
        let tokens = self
            .embed_tokens
            .iter()
            .enumerate()
            .map(|(q, table)| table.forward(&ids.select(1, q as i64)))
            .reduce(|a, b| a + b)
            .expect("at least one codebook");
        let positions = sinusoidal_positions(steps, self.config.hidden_size, tokens.device()).to_kind(tokens.kind());
        Ok(tokens + positions.unsqueeze(0))
    }

    /// Hidden states as HF's `output_hidden_states` gives them: the embeddings, then the output
    /// of each layer, the last one after the final `layer_norm`. `n_layers + 1` tensors
    /// `[batch, steps, hidden]`.
    pub fn hidden_states(&self, input_ids: &Tensor) -> Result<Vec<Tensor>> {
        let mut states = vec![self.embed(input_ids)?];
        for layer in &self.layers {
            states.push(layer.forward(states.last().expect("embeddings first")));
        }
        let last = states.pop().expect("at least one layer");
        states.push(self.layer_norm.forward(&last));
        Ok(states)
    }

    /// Stage-1 audio features `[batch, steps, hidden]`: `layer_norm(output of the last built
    /// layer)`, BOSSA's `last_hidden_state`. `input_ids` are delayed codes `[batch, K, steps]`.
    pub fn features(&self, input_ids: &Tensor) -> Result<Tensor> {
        let mut h = self.embed(input_ids)?;
        for layer in &self.layers {
            h = layer.forward(&h);
        }
        Ok(self.layer_norm.forward(&h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_pattern_layout() {
        // codes[q][t] = 10 * (q + 1) + t, K = 4 codebooks as in MusicGen.
        let frames = 5;
        let codes = Tensor::from_slice(&(0..4 * frames).map(|i| 10 * (i / frames + 1) + i % frames).collect::<Vec<i64>>())
            .view([1, 4, frames]);
        let out = apply_delay_pattern(&codes, 99).unwrap();
        assert_eq!(out.size(), vec![1, 4, frames + 4]);
        let rows: Vec<Vec<i64>> = (0..4).map(|q| Vec::<i64>::try_from(out.get(0).get(q)).unwrap()).collect();
        assert_eq!(rows[0], vec![99, 10, 11, 12, 13, 14, 99, 99, 99]);
        assert_eq!(rows[1], vec![99, 99, 20, 21, 22, 23, 24, 99, 99]);
        assert_eq!(rows[2], vec![99, 99, 99, 30, 31, 32, 33, 34, 99]);
        assert_eq!(rows[3], vec![99, 99, 99, 99, 40, 41, 42, 43, 44]);
        // BOSSA's window: 508 frames -> 512 steps.
        let window = Tensor::zeros([2, 4, 508], (Kind::Int64, Device::Cpu));
        assert_eq!(apply_delay_pattern(&window, 2048).unwrap().size(), vec![2, 4, 512]);
    }

    #[test]
    fn sinusoid_is_cos_then_sin_from_position_zero() {
        let pos = sinusoidal_positions(3, 5, Device::Cpu);
        assert_eq!(pos.size(), vec![3, 5]);
        let row0 = Vec::<f32>::try_from(pos.get(0)).unwrap();
        assert_eq!(row0, vec![1.0, 1.0, 0.0, 0.0, 0.0]);
        // half = 2: frequencies 1 and 10000^-1.
        let row2 = Vec::<f32>::try_from(pos.get(2)).unwrap();
        let expect = [2f32.cos(), (2e-4f32).cos(), 2f32.sin(), (2e-4f32).sin(), 0.0];
        for (a, b) in row2.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{row2:?}");
        }
    }

    fn tiny_config() -> MusicgenDecoderConfig {
        MusicgenDecoderConfig {
            vocab_size: 8,
            pad_token_id: Some(8),
            hidden_size: 8,
            num_attention_heads: 2,
            ffn_dim: 16,
            num_hidden_layers: 3,
            ..Default::default()
        }
    }

    #[test]
    fn truncated_decoder_rejects_bad_depth_codebooks_and_codes() {
        let config = tiny_config();
        assert!(MusicgenDecoder::new(VarStore::new(Device::Cpu), config.clone(), 4).is_err());
        assert!(MusicgenDecoder::new(VarStore::new(Device::Cpu), config.clone(), 0).is_err());
        let model = MusicgenDecoder::new(VarStore::new(Device::Cpu), config, 2).unwrap();
        let three_codebooks = Tensor::zeros([1, 3, 6], (Kind::Int64, Device::Cpu));
        let err = model.features(&three_codebooks).unwrap_err().to_string();
        assert!(err.contains("3 codebooks"), "{err}");
        let err = model.features(&Tensor::full([1, 4, 6], 9, (Kind::Int64, Device::Cpu))).unwrap_err().to_string();
        assert!(err.contains("codes must lie in 0..=8"), "{err}");
        let ok = model.features(&Tensor::zeros([1, 4, 6], (Kind::Int64, Device::Cpu))).unwrap();
        assert_eq!(ok.size(), vec![1, 6, 8]);
    }

    /// A decoder's variables under HF's prefix, as a MusicGen checkpoint names them.
    fn hf_named(model: &MusicgenDecoder) -> Vec<(String, Tensor)> {
        model.var_store().variables().into_iter().map(|(k, v)| (format!("decoder.model.decoder.{k}"), v)).collect()
    }

    /// Write `named` as model.safetensors and a config.json claiming a 3-layer decoder of width `hidden`.
    fn write_checkpoint(dir: &Path, named: &[(String, Tensor)], hidden: i64) {
        let refs: Vec<(&str, &Tensor)> = named.iter().map(|(k, v)| (k.as_str(), v)).collect();
        Tensor::write_safetensors(&refs, dir.join("model.safetensors")).unwrap();
        let config = format!(
            r#"{{"decoder": {{"vocab_size": 8, "pad_token_id": 8, "hidden_size": {hidden}, "num_attention_heads": 2,
                "ffn_dim": 16, "num_hidden_layers": 3}}}}"#
        );
        std::fs::write(dir.join("config.json"), config).unwrap();
    }

    #[test]
    fn checkpoint_of_another_shape_lists_the_tensors() {
        // A width-8 decoder without its fc2 weights, under a config.json that claims width 12.
        let dir = tempfile::tempdir().unwrap();
        let saved = MusicgenDecoder::new(VarStore::new(Device::Cpu), tiny_config(), 3).unwrap();
        let mut named = hf_named(&saved);
        named.retain(|(k, _)| !k.ends_with("fc2.weight"));
        write_checkpoint(dir.path(), &named, 12);
        let err = format!("{:#}", MusicgenDecoder::load(dir.path(), None, Device::Cpu, Kind::Float).err().unwrap());
        assert!(err.contains("missing tensor(s)") && err.contains("decoder.model.decoder.layers.0.fc2.weight [12, 16]"), "{err}");
        assert!(err.contains("decoder.model.decoder.layer_norm.weight: checkpoint [8], model [12]"), "{err}");
    }

    #[test]
    fn stored_position_table_of_transformers_4_is_checked_and_skipped() {
        let model = MusicgenDecoder::new(VarStore::new(Device::Cpu), tiny_config(), 3).unwrap();
        let ids = Tensor::randint(9, [1, 4, 7], (Kind::Int64, Device::Cpu));
        let want = model.features(&ids).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let table = sinusoidal_positions(64, 8, Device::Cpu).to_kind(Kind::Half);
        let with_table = |table: Tensor| {
            let mut named = hf_named(&model);
            named.push((format!("decoder.model.decoder.{POSITIONS}"), table));
            named
        };
        write_checkpoint(dir.path(), &with_table(table), 8);
        let loaded = MusicgenDecoder::load(dir.path(), Some(3), Device::Cpu, Kind::Float).unwrap();
        assert!(loaded.features(&ids).unwrap().allclose(&want, 1e-6, 1e-6, false));

        let wrong = tempfile::tempdir().unwrap();
        write_checkpoint(wrong.path(), &with_table(Tensor::zeros([64, 8], (Kind::Float, Device::Cpu))), 8);
        let err = MusicgenDecoder::load(wrong.path(), Some(3), Device::Cpu, Kind::Float).err().unwrap().to_string();
        assert!(err.contains("is not MusicGen's sinusoid"), "{err}");
    }

    #[test]
    fn musicgen_large_config_reads_the_nested_decoder() {
        // The decoder section of the hub's `facebook/musicgen-large/config.json`, nested as there.
        let json = r#"{"architectures": ["MusicgenForConditionalGeneration"], "model_type": "musicgen",
            "audio_encoder": {"model_type": "encodec", "sampling_rate": 32000},
            "text_encoder": {"model_type": "t5", "d_model": 1024},
            "decoder": {"activation_dropout": 0.0, "activation_function": "gelu", "attention_dropout": 0.0,
                "bos_token_id": 2048, "classifier_dropout": 0.0, "dropout": 0.1, "ffn_dim": 8192, "hidden_size": 2048,
                "initializer_factor": 0.02, "layerdrop": 0.0, "max_position_embeddings": 2048,
                "model_type": "musicgen_decoder", "num_attention_heads": 32, "num_codebooks": 4,
                "num_hidden_layers": 48, "pad_token_id": 2048, "scale_embedding": false,
                "tie_word_embeddings": false, "use_cache": true, "vocab_size": 2048}}"#;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), json).unwrap();
        let config = MusicgenDecoderConfig::from_file(dir.path()).unwrap();
        assert_eq!((config.hidden_size, config.num_hidden_layers, config.num_attention_heads), (2048, 48, 32));
        assert_eq!((config.ffn_dim, config.num_codebooks, config.pad_token()), (8192, 4, 2048));
        assert_eq!(config.bossa_layers(), 25);
    }
}
