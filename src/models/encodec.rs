//! EnCodec encoder + residual vector quantizer: audio -> discrete codes (HF `EncodecModel.encode`).
//!
//! Only the encode path is built (SEANet encoder, LSTM, RVQ); `decoder.*` tensors of the
//! checkpoint are ignored. Variable names mirror HF's `EncodecModel` state dict, so a
//! `facebook/encodec_32khz` folder loads as it is. Weight-normed convolutions come under two
//! names: `conv.weight_g`/`conv.weight_v` (checkpoints saved by transformers 4.x, including the
//! hub's `facebook/encodec_32khz`) and `conv.parametrizations.weight.original0`/`original1` (what
//! `save_pretrained` writes with `torch.nn.utils.parametrizations.weight_norm`, transformers 5);
//! both load. Supported configs: mono, unchunked, `weight_norm` (the 24 kHz and 32 kHz models).
use crate::models::weights::Checkpoint;
use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use std::path::Path;
use tch::{nn, nn::VarStore, Device, Kind, Tensor};

/// HF `EncodecConfig` fields that the encode path reads; defaults are HF's.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct EncodecConfig {
    pub sampling_rate: u32,
    pub audio_channels: i64,
    pub normalize: bool,
    pub chunk_length_s: Option<f64>,
    pub target_bandwidths: Vec<f64>,
    pub hidden_size: i64,
    pub num_filters: i64,
    pub num_residual_layers: i64,
    pub upsampling_ratios: Vec<i64>,
    pub norm_type: String,
    pub kernel_size: i64,
    pub last_kernel_size: i64,
    pub residual_kernel_size: i64,
    pub dilation_growth_rate: i64,
    pub use_causal_conv: bool,
    pub pad_mode: String,
    pub compress: i64,
    pub num_lstm_layers: i64,
    pub codebook_size: i64,
    pub codebook_dim: Option<i64>,
    pub use_conv_shortcut: bool,
}

impl Default for EncodecConfig {
    fn default() -> Self {
        Self {
            sampling_rate: 24_000,
            audio_channels: 1,
            normalize: false,
            chunk_length_s: None,
            target_bandwidths: vec![1.5, 3.0, 6.0, 12.0, 24.0],
            hidden_size: 128,
            num_filters: 32,
            num_residual_layers: 1,
            upsampling_ratios: vec![8, 5, 4, 2],
            norm_type: "weight_norm".into(),
            kernel_size: 7,
            last_kernel_size: 7,
            residual_kernel_size: 3,
            dilation_growth_rate: 2,
            use_causal_conv: true,
            pad_mode: "reflect".into(),
            compress: 2,
            num_lstm_layers: 2,
            codebook_size: 1024,
            codebook_dim: None,
            use_conv_shortcut: true,
        }
    }
}

impl EncodecConfig {
    /// Read an HF `config.json` (or the folder holding it) and check it is one this encoder runs.
    pub fn from_file(path: &Path) -> Result<Self> {
        let file = if path.is_dir() { path.join("config.json") } else { path.to_path_buf() };
        let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        let de = &mut serde_json::Deserializer::from_str(&text);
        let config: Self = serde_path_to_error::deserialize(de)
            .with_context(|| format!("{}: not a valid EnCodec config", file.display()))?;
        config.validate().with_context(|| format!("{}: unsupported EnCodec config", file.display()))?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        ensure!(self.audio_channels == 1, "audio_channels is {}; only mono models are supported", self.audio_channels);
        ensure!(
            self.chunk_length_s.is_none(),
            "chunk_length_s is set; chunked models (encodec_48khz) are not supported"
        );
        ensure!(self.norm_type == "weight_norm", "norm_type is {:?}; only \"weight_norm\" is supported", self.norm_type);
        ensure!(
            ["constant", "reflect", "replicate", "circular"].contains(&self.pad_mode.as_str()),
            "unknown pad_mode {:?}",
            self.pad_mode
        );
        ensure!(!self.upsampling_ratios.is_empty(), "upsampling_ratios is empty");
        ensure!(!self.target_bandwidths.is_empty(), "target_bandwidths is empty");
        ensure!(
            self.codebook_size >= 2 && (self.codebook_size as u64).is_power_of_two(),
            "codebook_size {} is not a power of two",
            self.codebook_size
        );
        ensure!(self.num_quantizers() >= 1, "the bandwidths leave no quantizer");
        ensure!(
            self.num_quantizers_used() <= self.num_quantizers(),
            "target_bandwidths[0] needs more codebooks than the last (highest) bandwidth provides"
        );
        Ok(())
    }

    pub fn hop_length(&self) -> i64 {
        self.upsampling_ratios.iter().product()
    }

    /// Code frames per second (50 for the 32 kHz model).
    pub fn frame_rate(&self) -> i64 {
        (self.sampling_rate as f64 / self.hop_length() as f64).ceil() as i64
    }

    fn codebook_bits(&self) -> f64 {
        (self.codebook_size as f64).log2().ceil()
    }

    /// Codebooks in the checkpoint: those the highest bandwidth needs.
    pub fn num_quantizers(&self) -> i64 {
        let last = self.target_bandwidths.last().copied().unwrap_or(0.0);
        (1000.0 * last / (self.frame_rate() as f64 * self.codebook_bits())).floor() as i64
    }

    /// Codebooks `encode` uses: HF's default bandwidth is the first target bandwidth
    /// (2.2 kbps -> 4 codebooks for the 32 kHz model).
    pub fn num_quantizers_used(&self) -> i64 {
        let per_quantizer = self.codebook_bits() * self.frame_rate() as f64;
        let bandwidth = self.target_bandwidths[0];
        if bandwidth > 0.0 {
            ((bandwidth * 1000.0 / per_quantizer).floor() as i64).max(1)
        } else {
            self.num_quantizers()
        }
    }
}

/// Which names the checkpoint gives the two halves of a weight-normed convolution.
#[derive(Debug, Clone, Copy, PartialEq)]
enum WeightNormNames {
    /// `weight_g` / `weight_v` (`torch.nn.utils.weight_norm`).
    Legacy,
    /// `parametrizations.weight.original0` / `original1` (`torch.nn.utils.parametrizations.weight_norm`).
    Parametrized,
}

impl WeightNormNames {
    fn detect(ckpt: &Checkpoint) -> Result<Self> {
        if ckpt.contains("encoder.layers.0.conv.weight_g") {
            Ok(Self::Legacy)
        } else if ckpt.contains("encoder.layers.0.conv.parametrizations.weight.original0") {
            Ok(Self::Parametrized)
        } else {
            bail!(
                "{}: no `encoder.layers.0.conv.weight_g` nor `encoder.layers.0.conv.parametrizations.weight.original0`; \
                 not an HF EnCodec checkpoint with weight-normed convolutions",
                ckpt.origin().display()
            )
        }
    }
}

/// `EncodecConv1d`: weight-normed Conv1d with SEANet's causal or centred padding.
struct Conv {
    /// Weight norm magnitude `[out, 1, 1]` and direction `[out, in, k]`: weight = g * v / |v|.
    g: Tensor,
    v: Tensor,
    bias: Tensor,
    stride: i64,
    dilation: i64,
}

/// Padding rules shared by every convolution of one model.
struct Padding {
    causal: bool,
    mode: String,
}

impl Conv {
    fn new(p: nn::Path, names: WeightNormNames, c_in: i64, c_out: i64, kernel: i64, stride: i64, dilation: i64) -> Self {
        let conv = &p / "conv";
        let zeros = nn::Init::Const(0.0);
        let (g, v) = match names {
            WeightNormNames::Legacy => {
                (conv.var("weight_g", &[c_out, 1, 1], zeros), conv.var("weight_v", &[c_out, c_in, kernel], zeros))
            }
            WeightNormNames::Parametrized => {
                let w = &conv / "parametrizations" / "weight";
                (w.var("original0", &[c_out, 1, 1], zeros), w.var("original1", &[c_out, c_in, kernel], zeros))
            }
        };
        let bias = conv.var("bias", &[c_out], zeros);
        Self { g, v, bias, stride, dilation }
    }

    fn forward(&self, x: &Tensor, padding: &Padding) -> Tensor {
        let kernel = (self.v.size()[2] - 1) * self.dilation + 1;
        let padding_total = kernel - self.stride;
        // Right padding so that the last window is complete (HF `_get_extra_padding_for_conv1d`).
        let length = x.size()[2];
        let n_frames = ((length - kernel + padding_total) as f64 / self.stride as f64 + 1.0).ceil() as i64 - 1;
        let extra = n_frames * self.stride + kernel - padding_total - length;
        let (left, right) = if padding.causal {
            (padding_total, extra)
        } else {
            let right = padding_total / 2;
            (padding_total - right, right + extra)
        };
        let x = pad1d(x, left, right, &padding.mode);
        let weight = Tensor::internal_weight_norm(&self.v, &self.g, 0);
        x.conv1d(&weight, Some(&self.bias), [self.stride], [0], [self.dilation], 1)
    }
}

/// HF `EncodecConv1d._pad1d`: reflect padding longer than the input first pads zeros on the right.
fn pad1d(x: &Tensor, left: i64, right: i64, mode: &str) -> Tensor {
    if mode != "reflect" {
        return x.pad([left, right], mode, 0.0);
    }
    let length = x.size()[2];
    let max_pad = left.max(right);
    let extra = if length <= max_pad { max_pad - length + 1 } else { 0 };
    let x = if extra > 0 { x.pad([0, extra], "constant", 0.0) } else { x.shallow_clone() };
    let padded = x.pad([left, right], "reflect", None);
    let end = padded.size()[2] - extra;
    padded.narrow(2, 0, end)
}

/// `EncodecResnetBlock`: ELU -> conv(k, dilation) -> ELU -> conv(1), plus a (conv) shortcut.
struct ResnetBlock {
    conv_in: Conv,
    conv_out: Conv,
    shortcut: Option<Conv>,
}

/// `EncodecLSTM`: stacked LSTM over time with a residual connection, on tch's fused `lstm` op.
struct Lstm {
    /// Per layer: weight_ih, weight_hh, bias_ih, bias_hh (the order `Tensor::lstm` expects).
    params: Vec<Tensor>,
    num_layers: i64,
    hidden: i64,
}

impl Lstm {
    fn new(p: nn::Path, dim: i64, num_layers: i64) -> Self {
        let p = &p / "lstm";
        let zeros = nn::Init::Const(0.0);
        let mut params = Vec::new();
        for l in 0..num_layers {
            params.push(p.var(&format!("weight_ih_l{l}"), &[4 * dim, dim], zeros));
            params.push(p.var(&format!("weight_hh_l{l}"), &[4 * dim, dim], zeros));
            params.push(p.var(&format!("bias_ih_l{l}"), &[4 * dim], zeros));
            params.push(p.var(&format!("bias_hh_l{l}"), &[4 * dim], zeros));
        }
        Self { params, num_layers, hidden: dim }
    }

    /// `x`: `[batch, channels, time]`.
    fn forward(&self, x: &Tensor) -> Tensor {
        let seq = x.permute([2, 0, 1]); // [time, batch, channels]
        let state = Tensor::zeros([self.num_layers, seq.size()[1], self.hidden], (seq.kind(), seq.device()));
        let (out, _, _) = seq.lstm(&[&state, &state], &self.params.iter().collect::<Vec<_>>(), true, self.num_layers, 0.0, false, false, false);
        (out + seq).permute([1, 2, 0])
    }
}

enum Layer {
    Conv(Conv),
    Resnet(ResnetBlock),
    Lstm(Lstm),
    Elu,
}

/// The SEANet encoder followed by the residual vector quantizer.
pub struct Encodec {
    config: EncodecConfig,
    padding: Padding,
    layers: Vec<Layer>,
    /// One `[codebook_size, codebook_dim]` table per quantizer.
    codebooks: Vec<Tensor>,
    vs: VarStore,
}

impl Encodec {
    /// Build the encode path on `vs` with HF's names: `encoder.layers.{i}` where `i` is the
    /// position in HF's `ModuleList` (ELUs take an index too), `quantizer.layers.{q}.codebook.embed`.
    fn build(vs: VarStore, config: EncodecConfig, names: WeightNormNames) -> Self {
        let root = vs.root();
        let enc = &root / "encoder" / "layers";
        let at = |layers: &Vec<Layer>| &enc / layers.len();
        let f = config.num_filters;
        let mut layers = Vec::new();
        layers.push(Layer::Conv(Conv::new(at(&layers), names, config.audio_channels, f, config.kernel_size, 1, 1)));
        let mut scale = 1;
        for &ratio in config.upsampling_ratios.iter().rev() {
            let dim = scale * f;
            let hidden = dim / config.compress;
            for j in 0..config.num_residual_layers {
                let p = at(&layers);
                let dilation = config.dilation_growth_rate.pow(j as u32);
                layers.push(Layer::Resnet(ResnetBlock {
                    conv_in: Conv::new(&p / "block" / 1, names, dim, hidden, config.residual_kernel_size, 1, dilation),
                    conv_out: Conv::new(&p / "block" / 3, names, hidden, dim, 1, 1, 1),
                    shortcut: config.use_conv_shortcut.then(|| Conv::new(&p / "shortcut", names, dim, dim, 1, 1, 1)),
                }));
            }
            layers.push(Layer::Elu);
            layers.push(Layer::Conv(Conv::new(at(&layers), names, dim, 2 * dim, 2 * ratio, ratio, 1)));
            scale *= 2;
        }
        layers.push(Layer::Lstm(Lstm::new(at(&layers), scale * f, config.num_lstm_layers)));
        layers.push(Layer::Elu);
        layers.push(Layer::Conv(Conv::new(at(&layers), names, scale * f, config.hidden_size, config.last_kernel_size, 1, 1)));

        let dim = config.codebook_dim.unwrap_or(config.hidden_size);
        let codebooks = (0..config.num_quantizers())
            .map(|q| {
                let p = &root / "quantizer" / "layers" / q / "codebook";
                p.var("embed", &[config.codebook_size, dim], nn::Init::Const(0.0))
            })
            .collect();
        let padding = Padding { causal: config.use_causal_conv, mode: config.pad_mode.clone() };
        Self { config, padding, layers, codebooks, vs }
    }

    /// Load an HF EnCodec folder (`config.json` + safetensors, single or sharded) as a frozen
    /// fp32 model on `device`. fp16/bf16 checkpoints are converted on load.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let config = EncodecConfig::from_file(dir)?;
        let ckpt = Checkpoint::open(dir)?;
        let names = WeightNormNames::detect(&ckpt)?;
        let mut model = Self::build(VarStore::new(device), config, names);
        // The decoder half and the codebooks' training statistics are not needed to make codes.
        let unused = |name: &str| {
            name.starts_with("decoder.")
                || ["inited", "cluster_size", "embed_avg"].iter().any(|b| name.starts_with("quantizer.") && name.ends_with(b))
        };
        ckpt.load_into(&mut model.vs, "", unused)?;
        model.vs.freeze();
        Ok(model)
    }

    pub fn config(&self) -> &EncodecConfig {
        &self.config
    }

    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }

    /// Encoder output `[batch, hidden, frames]` of audio `[batch, 1, samples]`
    /// (normalised by its RMS first when the config says so, as HF does).
    fn embed(&self, audio: &Tensor) -> Tensor {
        let audio = audio.to_kind(Kind::Float).to_device(self.vs.device());
        let mut x = if self.config.normalize {
            let scale = audio.mean_dim(1, true, Kind::Float).square().mean_dim(-1, true, Kind::Float).sqrt() + 1e-8;
            audio / scale
        } else {
            audio
        };
        for layer in &self.layers {
            x = match layer {
                Layer::Conv(conv) => conv.forward(&x, &self.padding),
                Layer::Resnet(block) => {
                    let h = block.conv_in.forward(&x.elu(), &self.padding);
                    let h = block.conv_out.forward(&h.elu(), &self.padding);
                    match &block.shortcut {
                        Some(conv) => conv.forward(&x, &self.padding) + h,
                        None => x + h,
                    }
                }
                Layer::Lstm(lstm) => lstm.forward(&x),
                Layer::Elu => x.elu(),
            };
        }
        x
    }

    /// Codes `[batch, n_q, frames]` (int64) of audio `[batch, 1, samples]`, frames =
    /// ceil(samples / hop). Residual VQ: each codebook quantises what the previous ones left.
    pub fn encode(&self, audio: &Tensor) -> Result<Tensor> {
        let size = audio.size();
        ensure!(
            size.len() == 3 && size[1] == 1 && size[2] > 0,
            "EnCodec expects audio [batch, 1, samples] with samples > 0, got {size:?}"
        );
        tch::no_grad(|| {
            let embeddings = self.embed(audio);
            let (batch, dim, frames) = embeddings.size3()?;
            let mut residual = embeddings.permute([0, 2, 1]).reshape([-1, dim]);
            let mut codes = Vec::new();
            for embed in &self.codebooks[..self.config.num_quantizers_used() as usize] {
                // Same expression as HF's `EncodecEuclideanCodebook.quantize`, so ties resolve alike.
                let embed_t = embed.tr();
                let dist = -(residual.square().sum_dim_intlist(1, true, Kind::Float) - residual.matmul(&embed_t) * 2.0
                    + embed_t.square().sum_dim_intlist(0, true, Kind::Float));
                let index = dist.argmax(-1, false);
                residual -= embed.index_select(0, &index);
                codes.push(index.view([batch, frames]));
            }
            Ok(Tensor::stack(&codes, 1))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields of the hub's `facebook/encodec_32khz/config.json`.
    const ENCODEC_32KHZ: &str = r#"{"architectures": ["EncodecModel"], "audio_channels": 1, "chunk_length_s": null,
        "codebook_dim": 128, "codebook_size": 2048, "compress": 2, "dilation_growth_rate": 2, "hidden_size": 128,
        "kernel_size": 7, "last_kernel_size": 7, "model_type": "encodec", "norm_type": "weight_norm",
        "normalize": false, "num_filters": 64, "num_lstm_layers": 2, "num_residual_layers": 1, "overlap": null,
        "pad_mode": "reflect", "residual_kernel_size": 3, "sampling_rate": 32000, "target_bandwidths": [2.2],
        "trim_right_ratio": 1.0, "upsampling_ratios": [8, 5, 4, 4], "use_causal_conv": false,
        "use_conv_shortcut": false}"#;

    fn parse(json: &str) -> Result<EncodecConfig> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), json).unwrap();
        EncodecConfig::from_file(dir.path())
    }

    #[test]
    fn encodec_32khz_makes_four_codebooks_at_50_hz() {
        let config = parse(ENCODEC_32KHZ).unwrap();
        assert_eq!((config.hop_length(), config.frame_rate()), (640, 50));
        assert_eq!((config.num_quantizers(), config.num_quantizers_used()), (4, 4));
        let model = Encodec::build(VarStore::new(Device::Cpu), config, WeightNormNames::Legacy);
        assert_eq!(model.codebooks.len(), 4);
        let names = model.var_store().variables();
        // conv, 4 x (resnet, ELU, strided conv), LSTM at 13 over 16 x 64 channels, ELU, conv at 15.
        assert_eq!(names["encoder.layers.13.lstm.weight_ih_l1"].size(), vec![4096, 1024]);
        assert_eq!(names["encoder.layers.15.conv.weight_v"].size(), vec![128, 1024, 7]);
        assert!(!names.contains_key("encoder.layers.1.shortcut.conv.bias"), "32 kHz has identity shortcuts");
    }

    #[test]
    fn unsupported_configs_say_why() {
        let stereo_chunked = r#"{"audio_channels": 2, "chunk_length_s": 1.0, "norm_type": "time_group_norm"}"#;
        let err = format!("{:#}", parse(stereo_chunked).unwrap_err());
        assert!(err.contains("only mono models"), "{err}");
        let chunked = r#"{"chunk_length_s": 1.0}"#;
        assert!(format!("{:#}", parse(chunked).unwrap_err()).contains("chunked models"));
        let group_norm = r#"{"norm_type": "time_group_norm"}"#;
        assert!(format!("{:#}", parse(group_norm).unwrap_err()).contains("only \"weight_norm\""));
        let typo = r#"{"upsampling_ratios": "8,5,4,4"}"#;
        assert!(format!("{:#}", parse(typo).unwrap_err()).contains("upsampling_ratios"));
    }

    #[test]
    fn short_input_reflect_padding_pads_zeros_first() {
        // Length 2, reflect padding 3 on each side: HF reflects [a, b, 0, 0], then drops the 2 extra.
        let x = Tensor::from_slice(&[1.0f32, 2.0]).view([1, 1, 2]);
        let padded = Vec::<f32>::try_from(pad1d(&x, 3, 3, "reflect").view([-1])).unwrap();
        assert_eq!(padded, vec![0.0, 0.0, 2.0, 1.0, 2.0, 0.0, 0.0, 0.0]);
    }
}
