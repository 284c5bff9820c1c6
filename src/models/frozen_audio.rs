//! The frozen audio path every step shares (stage 1, stage 2, `arrange`, `audio features`):
//! audio -> EnCodec codes -> MusicGen's delay pattern -> the first layers of the frozen MusicGen
//! decoder -> its final layer norm (BOSSA's `last_hidden_state`). The trainable LayerNorm that
//! follows belongs to the Q-Former (`QFormer::audio_embeds`).
//!
//! Codes are checked against the decoder before they reach it (codebook count, code range and
//! pad code), and features can be cached by window: a window's codes hash to its features.
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use tch::{nn::VarStore, Device, Kind, Tensor};

use super::encodec::Encodec;
use super::musicgen::{apply_delay_pattern, MusicgenDecoder, MusicgenDecoderConfig};
use super::weights::Checkpoint;
use crate::yaml::{Problems, Validate};

/// A MusicGen decoder small enough for CPU tests and the demo, built from a seed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TinyMusicgen {
    pub hidden_size: i64,
    pub num_hidden_layers: usize,
    pub num_attention_heads: i64,
    pub ffn_dim: i64,
    /// Codebook size (the pad/BOS code is this value); must match the prepared codes.
    pub codebook_size: i64,
    pub num_codebooks: i64,
    /// The seed its weights are drawn from; unset: the run's. Stage 2 records here the seed of
    /// the stage-1 run whose decoder it inherits.
    pub seed: Option<u64>,
}

impl Default for TinyMusicgen {
    fn default() -> Self {
        Self { hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, ffn_dim: 128, codebook_size: 2048, num_codebooks: 4, seed: None }
    }
}

impl TinyMusicgen {
    fn decoder_config(&self) -> MusicgenDecoderConfig {
        MusicgenDecoderConfig {
            vocab_size: self.codebook_size,
            hidden_size: self.hidden_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            ffn_dim: self.ffn_dim,
            num_codebooks: self.num_codebooks,
            pad_token_id: Some(self.codebook_size),
            ..Default::default()
        }
    }
}

/// Where the frozen MusicGen comes from: an HF checkpoint folder, or a tiny random one.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MusicgenSource {
    pub checkpoint: Option<PathBuf>,
    /// Layers to run (default: BOSSA's half + 1, 25 of 48).
    pub layers: Option<usize>,
    pub tiny: Option<TinyMusicgen>,
}

impl Validate for MusicgenSource {
    fn validate(&self, at: &str, p: &mut Problems) {
        p.check(self.checkpoint.is_none() || self.tiny.is_none(), at, "checkpoint", || {
            "and `tiny` are both given; give one (an HF MusicGen folder, or the shape of a small random decoder)".into()
        });
        p.check(self.layers != Some(0), at, "layers", || "is 0; must be at least 1".into());
        if let Some(t) = &self.tiny {
            let at = format!("{at}.tiny");
            let heads_fit = t.num_attention_heads > 0 && t.hidden_size > 0 && t.hidden_size % t.num_attention_heads == 0;
            p.check(heads_fit, &at, "hidden_size", || format!("({}) must be a positive multiple of num_attention_heads ({})", t.hidden_size, t.num_attention_heads));
            p.check(t.num_hidden_layers >= 1, &at, "num_hidden_layers", || "is 0; must be at least 1".into());
            p.check(t.ffn_dim >= 1, &at, "ffn_dim", || format!("is {}; must be at least 1", t.ffn_dim));
            p.check((2..=65_535).contains(&t.codebook_size), &at, "codebook_size", || format!("is {}; must be 2..=65535", t.codebook_size));
            p.check((1..=32).contains(&t.num_codebooks), &at, "num_codebooks", || format!("is {}; must be 1..=32", t.num_codebooks));
        }
    }
}

/// The frozen MusicGen decoder (truncated) with an optional feature cache.
pub struct FrozenAudio {
    musicgen: MusicgenDecoder,
    cache: Option<HashMap<u64, Tensor>>,
    /// Windows the cache did not hold, run through the decoder since the cache was turned on.
    computed: usize,
}

impl FrozenAudio {
    /// Build from `source`: an HF folder loaded in `kind` (frozen), or a tiny decoder initialised
    /// in fp32 from its own seed, else `seed` (the same tiny model at every precision), then
    /// frozen and cast.
    pub fn new(source: &MusicgenSource, kind: Kind, device: Device, seed: u64) -> Result<Self> {
        let musicgen = match (&source.checkpoint, &source.tiny) {
            (Some(dir), None) => MusicgenDecoder::load(dir, source.layers, device, kind)
                .with_context(|| format!("cannot load the MusicGen checkpoint {}", dir.display()))?,
            (None, Some(tiny)) => {
                tch::manual_seed(tiny.seed.unwrap_or(seed) as i64);
                let config = tiny.decoder_config();
                let layers = source.layers.unwrap_or_else(|| config.bossa_layers());
                let model = MusicgenDecoder::new(VarStore::new(device), config, layers)?;
                for (_, mut var) in model.var_store().variables() {
                    let _ = var.set_requires_grad(false);
                    var.set_data(&var.to_kind(kind));
                }
                model
            }
            (Some(_), Some(_)) => bail!("model.musicgen: give either `checkpoint` or `tiny`, not both"),
            (None, None) => bail!("model.musicgen: give `checkpoint` (an HF MusicGen folder) or `tiny` (a small random decoder)"),
        };
        Ok(Self::from_decoder(musicgen))
    }

    /// The decoder stored inside a converted BOSSA checkpoint (`prefix` + HF decoder names).
    pub fn from_checkpoint(ckpt: &Checkpoint, prefix: &str, config: MusicgenDecoderConfig, layers: Option<usize>, device: Device, kind: Kind) -> Result<Self> {
        Ok(Self::from_decoder(MusicgenDecoder::from_checkpoint(ckpt, prefix, config, layers, device, kind)?))
    }

    pub fn from_decoder(musicgen: MusicgenDecoder) -> Self {
        Self { musicgen, cache: None, computed: 0 }
    }

    /// Keep the features of every window seen (worth it only when they fit in memory).
    pub fn with_cache(mut self, on: bool) -> Self {
        self.set_cache(on);
        self
    }

    /// Turn the cache on, empty, or off, dropping what it held.
    pub fn set_cache(&mut self, on: bool) {
        self.cache = on.then(HashMap::new);
        self.computed = 0;
    }

    pub fn config(&self) -> &MusicgenDecoderConfig {
        self.musicgen.config()
    }

    pub fn decoder(&self) -> &MusicgenDecoder {
        &self.musicgen
    }

    /// Windows run through the decoder since the cache was turned on.
    pub fn computed(&self) -> usize {
        self.computed
    }

    /// Windows held in the cache.
    pub fn cached(&self) -> usize {
        self.cache.as_ref().map_or(0, HashMap::len)
    }

    /// Check that codes made with `n_q` codebooks of `pad_code` codes (the pad code is the
    /// codebook size) fit the decoder; `origin` names where the codes come from.
    pub fn check_codes(&self, n_q: usize, pad_code: i64, origin: &str) -> Result<()> {
        let mg = self.musicgen.config();
        ensure!(
            n_q as i64 == mg.num_codebooks,
            "{origin}: the codes have {n_q} codebooks, the MusicGen decoder reads {}",
            mg.num_codebooks
        );
        ensure!(
            pad_code == mg.pad_token(),
            "{origin}: the codes' pad code is {pad_code} (codebook size), MusicGen's is {}; the EnCodec and MusicGen checkpoints do not match",
            mg.pad_token()
        );
        Ok(())
    }

    /// Check an EnCodec model's codes fit the decoder.
    pub fn check_encodec(&self, encodec: &Encodec, origin: &str) -> Result<()> {
        let c = encodec.config();
        self.check_codes(c.num_quantizers_used() as usize, c.codebook_size, origin)
    }

    /// Frozen features [B, frames + K, W] in fp32 of codes [B, K, frames] (pad code where there
    /// is no audio), from the cache where possible.
    pub fn states(&mut self, codes: &Tensor) -> Result<Tensor> {
        let run = |musicgen: &MusicgenDecoder, codes: &Tensor| -> Result<Tensor> {
            let delayed = apply_delay_pattern(codes, musicgen.config().pad_token())?;
            Ok(tch::no_grad(|| musicgen.features(&delayed))?.to_kind(Kind::Float))
        };
        let Some(cache) = self.cache.as_mut() else { return run(&self.musicgen, codes) };
        let b = codes.size()[0];
        let keys: Vec<u64> = (0..b)
            .map(|i| {
                let row = Vec::<i64>::try_from(codes.get(i).reshape([-1]).to_device(Device::Cpu)).unwrap_or_default();
                let mut h = std::collections::hash_map::DefaultHasher::new();
                row.hash(&mut h);
                h.finish()
            })
            .collect();
        // A window repeated within the batch (one clip scored against several candidates) runs once.
        let mut seen = std::collections::HashSet::new();
        let missing: Vec<i64> = (0..b).filter(|&i| !cache.contains_key(&keys[i as usize]) && seen.insert(keys[i as usize])).collect();
        self.computed += missing.len();
        if !missing.is_empty() {
            let index = Tensor::from_slice(&missing).to_device(codes.device());
            let fresh = run(&self.musicgen, &codes.index_select(0, &index))?;
            for (j, &i) in missing.iter().enumerate() {
                cache.insert(keys[i as usize], fresh.get(j as i64));
            }
        }
        Ok(Tensor::stack(&keys.iter().map(|k| cache[k].shallow_clone()).collect::<Vec<_>>(), 0))
    }
}

/// Per-step keep-mask of the delayed codes [B, frames + K]: a frame's mask, and for the K
/// trailing delay steps the mask of the last frame (BOSSA masks the tail of padded windows).
pub fn step_mask(frame_mask: &Tensor, k: i64) -> Tensor {
    let last = frame_mask.narrow(1, frame_mask.size()[1] - 1, 1).repeat([1, k]);
    Tensor::cat(&[frame_mask.shallow_clone(), last], 1)
}

/// An audio file's EnCodec codes [1, K, frames] (decoded, mono, resampled to the model's rate),
/// and its length in seconds.
pub fn encode_file(encodec: &Encodec, path: &Path) -> Result<(Tensor, f64)> {
    let rate = encodec.config().sampling_rate;
    let samples = crate::data::audio::load_mono(path, rate)?;
    ensure!(!samples.is_empty(), "{}: no audio samples", path.display());
    let audio = Tensor::from_slice(&samples).view([1, 1, -1]);
    let codes = encodec.encode(&audio).with_context(|| format!("cannot encode {}", path.display()))?;
    Ok((codes, samples.len() as f64 / f64::from(rate)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.to_kind(Kind::Float).reshape([-1])).unwrap()
    }

    #[test]
    fn step_mask_extends_the_last_frame() {
        let frames = Tensor::from_slice(&[1.0f32, 1., 0.]).view([1, 3]);
        assert_eq!(v(&step_mask(&frames, 2)), vec![1., 1., 0., 0., 0.]);
    }

    fn tiny() -> MusicgenSource {
        let tiny = TinyMusicgen { hidden_size: 8, num_hidden_layers: 2, num_attention_heads: 2, ffn_dim: 16, codebook_size: 16, num_codebooks: 4, seed: None };
        MusicgenSource { tiny: Some(tiny), ..Default::default() }
    }

    #[test]
    fn cached_states_equal_fresh_ones_and_follow_the_window() {
        let mut audio = FrozenAudio::new(&tiny(), Kind::Float, Device::Cpu, 3).unwrap().with_cache(true);
        for offset in [0i64, 3, 0] {
            let codes = (Tensor::arange(2 * 4 * 10, (Kind::Int64, Device::Cpu)).view([2, 4, 10]) + offset).remainder(16);
            let cache = audio.cache.take();
            let fresh = audio.states(&codes).unwrap();
            audio.cache = cache;
            assert!(fresh.equal(&audio.states(&codes).unwrap()), "offset {offset}");
            assert_eq!(fresh.size(), vec![2, 14, 8]);
        }
        assert_eq!(audio.cached(), 4, "2 rows x 2 distinct windows");

        // One window three times and another once: two runs of the decoder.
        audio.set_cache(true);
        let rows = Tensor::arange(2 * 4 * 10, (Kind::Int64, Device::Cpu)).view([2, 4, 10]).remainder(16);
        let batch = rows.index_select(0, &Tensor::from_slice(&[0i64, 1, 0, 0]));
        let states = audio.states(&batch).unwrap();
        assert_eq!((audio.computed(), audio.cached()), (2, 2));
        assert!(states.get(0).equal(&states.get(3)) && !states.get(0).equal(&states.get(1)));
    }

    #[test]
    fn codes_that_do_not_fit_are_refused_by_name() {
        let audio = FrozenAudio::new(&tiny(), Kind::Float, Device::Cpu, 3).unwrap();
        assert!(audio.check_codes(4, 16, "x").is_ok());
        let err = audio.check_codes(8, 16, "shards/").unwrap_err().to_string();
        assert!(err.contains("shards/: the codes have 8 codebooks"), "{err}");
        let err = audio.check_codes(4, 2048, "shards/").unwrap_err().to_string();
        assert!(err.contains("pad code is 2048"), "{err}");
    }

    #[test]
    fn source_takes_one_origin() {
        let mut p = Problems::default();
        MusicgenSource { checkpoint: Some("x".into()), ..tiny() }.validate("model.musicgen", &mut p);
        assert!(!p.is_empty());
        let mut p = Problems::default();
        tiny().validate("model.musicgen", &mut p);
        assert!(p.is_empty());
    }
}
