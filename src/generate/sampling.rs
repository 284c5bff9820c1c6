//! Logits processing and seeded draws: the grammar's mask (everything else at -inf),
//! temperature, top-k (the paper's k = 15), top-p (BOSSA's `nucleus_filter`), then one draw.
//!
//! Draws are reproducible (same seed, same output on one machine and thread count): they happen
//! on the CPU, from f64 probabilities, with a counter-based generator keyed by (seed, sample,
//! window, step) ([`KeyedRng`]), never with libtorch's global generator. So a sample's tokens do
//! not depend on which other samples share its batch, nor on the order rows are drawn in.
//!
//! BOSSA's `generate_nucleus2` applies either top-p or top-k, dividing by the temperature first;
//! here both may apply, in the order of HF `generate` (temperature, top-k, top-p).
use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};

use super::grammar::TokenSet;
use crate::data::pairing::KeyedRng;
use crate::yaml::{Problems, Validate};

/// Domain tag of the sampling draws in the keyed generator ("SAMPLE").
const DRAW_DOMAIN: u64 = 0x5341_4d50_4c45;

/// The sampling settings of an arrangement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// Logits are divided by it; above 1 flattens the distribution.
    pub temperature: f64,
    /// Keep the k most likely tokens (the paper: 15); `null` keeps all.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches p; `null` keeps all.
    pub top_p: Option<f64>,
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self { temperature: 1.0, top_k: Some(15), top_p: None, seed: 0 }
    }
}

impl Validate for SamplingConfig {
    fn validate(&self, at: &str, p: &mut Problems) {
        let t = self.temperature;
        p.check(t.is_finite() && t > 0.0, at, "temperature", || format!("is {t}; must be above 0"));
        if let Some(k) = self.top_k {
            p.check(k >= 1, at, "top_k", || "is 0; must be at least 1 (or null for no top-k)".into());
        }
        if let Some(top_p) = self.top_p {
            p.check(top_p > 0.0 && top_p <= 1.0, at, "top_p", || format!("is {top_p}; must be in (0, 1] (or null)"));
        }
    }
}

/// What a draw is keyed by, besides the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrawKey {
    pub sample: u64,
    pub window: u64,
    /// Index of the token within the window's new tokens.
    pub step: u64,
}

impl SamplingConfig {
    /// The distribution a draw picks from: (id, probability) of the tokens that survive the mask,
    /// top-k and top-p, most likely first (ties by id), probabilities summing to 1.
    pub fn distribution(&self, logits: &[f64], allowed: &TokenSet) -> Result<Vec<(u32, f64)>> {
        let mut scaled = Vec::with_capacity(allowed.len());
        for id in allowed.iter() {
            let Some(&logit) = logits.get(id as usize) else {
                bail!("token {id} is allowed but the logits cover only {} ids", logits.len());
            };
            ensure!(!logit.is_nan(), "the logit of token {id} is NaN");
            if logit > f64::NEG_INFINITY {
                scaled.push((id, logit / self.temperature));
            }
        }
        ensure!(!scaled.is_empty(), "none of the {} allowed tokens has a finite logit", allowed.len());
        scaled.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if let Some(k) = self.top_k {
            scaled.truncate(k.max(1));
        }
        let mut probs = softmax(&scaled);
        if let Some(p) = self.top_p {
            // BOSSA `nucleus_filter`: keep a token while the mass before it is below p (so the
            // first always stays and the prefix kept is the shortest that reaches p).
            let mut before = 0.0;
            let kept = probs.iter().take_while(|&&(_, q)| {
                let keep = before < p;
                before += q;
                keep
            });
            let kept = kept.count();
            probs.truncate(kept);
            let total: f64 = probs.iter().map(|&(_, q)| q).sum();
            probs.iter_mut().for_each(|(_, q)| *q /= total);
        }
        Ok(probs)
    }

    /// Draw one allowed token from a row of logits, keyed by (seed, sample, window, step).
    pub fn draw(&self, logits: &[f64], allowed: &TokenSet, key: DrawKey) -> Result<u32> {
        let probs = self.distribution(logits, allowed)?;
        let mut rng = KeyedRng::new(&[self.seed, key.sample, key.window, key.step, DRAW_DOMAIN]);
        // 53 random bits: a uniform double in [0, 1).
        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let mut cumulative = 0.0;
        for &(id, q) in &probs {
            cumulative += q;
            if u < cumulative {
                return Ok(id);
            }
        }
        // u within rounding of 1: the last token.
        Ok(probs.last().map(|&(id, _)| id).expect("distribution is never empty"))
    }
}

fn softmax(logits: &[(u32, f64)]) -> Vec<(u32, f64)> {
    let max = logits.iter().map(|&(_, l)| l).fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<(u32, f64)> = logits.iter().map(|&(id, l)| (id, (l - max).exp())).collect();
    let total: f64 = exps.iter().map(|&(_, e)| e).sum();
    exps.into_iter().map(|(id, e)| (id, e / total)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(top_k: Option<usize>, top_p: Option<f64>, temperature: f64) -> SamplingConfig {
        SamplingConfig { temperature, top_k, top_p, seed: 7 }
    }

    fn key(step: u64) -> DrawKey {
        DrawKey { sample: 0, window: 0, step }
    }

    #[test]
    fn mask_and_top_k_keep_the_k_best_allowed_tokens() {
        let logits: Vec<f64> = (0..10).map(|i| f64::from(i) * 0.5).collect();
        // Token 9 has the highest logit but is not allowed.
        let allowed = TokenSet::from_ranges(std::iter::once(0..9));
        let probs = config(Some(3), None, 1.0).distribution(&logits, &allowed).unwrap();
        assert_eq!(probs.iter().map(|&(id, _)| id).collect::<Vec<_>>(), [8, 7, 6]);
        let z: f64 = [4.0f64, 3.5, 3.0].iter().map(|l| l.exp()).sum();
        for (&(_, q), l) in probs.iter().zip([4.0f64, 3.5, 3.0]) {
            assert!((q - l.exp() / z).abs() < 1e-12);
        }
        // Without top-k every allowed token stays, none outside.
        let all = config(None, None, 1.0).distribution(&logits, &allowed).unwrap();
        assert_eq!(all.len(), 9);
        assert!((all.iter().map(|&(_, q)| q).sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn temperature_divides_the_logits() {
        let logits = [1.0, 2.0, 4.0];
        let allowed = TokenSet::from_ranges(std::iter::once(0..3));
        let probs = config(None, None, 2.0).distribution(&logits, &allowed).unwrap();
        let z: f64 = logits.iter().map(|l| (l / 2.0).exp()).sum();
        assert_eq!(probs[0].0, 2);
        assert!((probs[0].1 - 2f64.exp() / z).abs() < 1e-12);
        let sharp = config(None, None, 0.1).distribution(&logits, &allowed).unwrap();
        assert!(sharp[0].1 > 0.9999);
    }

    #[test]
    fn top_p_matches_bossas_nucleus_filter() {
        // Probabilities .5 .3 .15 .05: BOSSA keeps a token while the cumulative mass before it is
        // below p.
        let logits = [0.5f64, 0.3, 0.15, 0.05].map(f64::ln);
        let allowed = TokenSet::from_ranges(std::iter::once(0..4));
        for (p, kept) in [(0.3, 1), (0.45, 1), (0.7, 2), (0.85, 3), (0.97, 4), (1.0, 4)] {
            let probs = config(None, Some(p), 1.0).distribution(&logits, &allowed).unwrap();
            assert_eq!(probs.len(), kept, "p = {p}");
            let total: f64 = [0.5, 0.3, 0.15, 0.05][..kept].iter().sum();
            assert!((probs[0].1 - 0.5 / total).abs() < 1e-12, "renormalised");
        }
        // Top-k first, then top-p over what is left.
        let probs = config(Some(2), Some(0.97), 1.0).distribution(&logits, &allowed).unwrap();
        assert_eq!(probs.iter().map(|&(id, _)| id).collect::<Vec<_>>(), [0, 1]);
    }

    #[test]
    fn draws_are_keyed_and_follow_the_distribution() {
        let logits = [0.5f64, 0.3, 0.15, 0.05].map(f64::ln);
        let allowed = TokenSet::from_ranges(std::iter::once(0..4));
        let cfg = config(None, None, 1.0);
        let draws: Vec<u32> = (0..20_000).map(|s| cfg.draw(&logits, &allowed, key(s)).unwrap()).collect();
        let again: Vec<u32> = (0..20_000).rev().map(|s| cfg.draw(&logits, &allowed, key(s)).unwrap()).collect();
        assert!(draws.iter().eq(again.iter().rev()), "a draw depends on its key only");
        for (id, q) in [(0, 0.5), (1, 0.3), (2, 0.15), (3, 0.05)] {
            let freq = draws.iter().filter(|&&d| d == id).count() as f64 / draws.len() as f64;
            assert!((freq - q).abs() < 0.015, "token {id}: {freq} vs {q}");
        }
        let other_seed = SamplingConfig { seed: 8, ..cfg.clone() };
        let other: Vec<u32> = (0..200).map(|s| other_seed.draw(&logits, &allowed, key(s)).unwrap()).collect();
        assert_ne!(other, draws[..200]);
        let other_sample: Vec<u32> = (0..200).map(|s| cfg.draw(&logits, &allowed, DrawKey { sample: 1, ..key(s) }).unwrap()).collect();
        assert_ne!(other_sample, draws[..200]);
    }

    #[test]
    fn bad_logits_are_errors() {
        let allowed = TokenSet::from_ranges(std::iter::once(0..3));
        let cfg = SamplingConfig::default();
        let err = cfg.distribution(&[0.0, f64::NAN, 1.0], &allowed).unwrap_err().to_string();
        assert!(err.contains("NaN"), "{err}");
        let err = cfg.distribution(&[f64::NEG_INFINITY; 3], &allowed).unwrap_err().to_string();
        assert!(err.contains("finite"), "{err}");
        assert!(cfg.distribution(&[0.0; 2], &allowed).is_err());
    }

    #[test]
    fn config_ranges_name_their_keys() {
        assert!(crate::yaml::validate(&SamplingConfig::default()).is_ok());
        let bad = SamplingConfig { temperature: 0.0, top_k: Some(0), top_p: Some(1.5), seed: 0 };
        let mut problems = Problems::default();
        bad.validate("generate.sampling", &mut problems);
        let err = problems.into_result().unwrap_err().to_string();
        for key in ["generate.sampling.temperature", "generate.sampling.top_k", "generate.sampling.top_p"] {
            assert!(err.contains(key), "{err}");
        }
    }
}
