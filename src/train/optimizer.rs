//! AdamW written on tensors, so that its state can be saved and restored exactly
//! (tch's built-in optimizers keep their state in C++ where it cannot be checkpointed).
//!
//! Update rule and order of operations follow `torch.optim.AdamW` (single-tensor path):
//! decoupled weight decay `p *= 1 - lr*wd`, `m = lerp(m, g, 1-b1)`, `v = b2*v + (1-b2)*g*g`,
//! `p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)`.
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// BOSSA stage 1: betas (0.9, 0.999), weight decay 0.05, PyTorch's eps.
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.05 }
    }
}

impl crate::yaml::Validate for AdamWConfig {
    fn validate(&self, at: &str, p: &mut crate::yaml::Problems) {
        for (key, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            p.check((0.0..1.0).contains(&beta), at, key, || format!("is {beta}; must be in [0, 1)"));
        }
        p.check(self.eps.is_finite() && self.eps > 0.0, at, "eps", || format!("is {}; must be positive", self.eps));
        let wd = self.weight_decay;
        p.check(wd.is_finite() && wd >= 0.0, at, "weight_decay", || format!("is {wd}; must be 0 or more"));
    }
}

struct Slot {
    name: String,
    /// This parameter's learning rate relative to the schedule's (torch's per-group `lr`).
    lr_scale: f64,
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

pub struct AdamW {
    config: AdamWConfig,
    slots: Vec<Slot>,
    step: i64,
}

impl AdamW {
    /// Optimise `params` (frozen ones are skipped), in name order: the gradient norm sums over
    /// them, and a fixed order keeps it (and runs) reproducible.
    pub fn new(params: Vec<(String, Tensor)>, config: AdamWConfig) -> Self {
        let params: BTreeMap<String, Tensor> = params.into_iter().collect();
        let slots = params
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(name, param)| Slot {
                exp_avg: param.zeros_like().detach(),
                exp_avg_sq: param.zeros_like().detach(),
                lr_scale: 1.0,
                name,
                param,
            })
            .collect();
        Self { config, slots, step: 0 }
    }

    /// Give each parameter, by name, a learning rate relative to the schedule's (decay too).
    pub fn with_lr_scales(mut self, scale: impl Fn(&str) -> f64) -> Self {
        for slot in &mut self.slots {
            slot.lr_scale = scale(&slot.name);
        }
        self
    }

    pub fn steps_taken(&self) -> i64 {
        self.step
    }

    pub fn zero_grad(&mut self) {
        for slot in &mut self.slots {
            let mut grad = slot.param.grad();
            if grad.defined() {
                let _ = grad.detach_().zero_();
            }
        }
    }

    /// Gradients of the optimised parameters (undefined ones skipped).
    pub fn grads(&self) -> Vec<Tensor> {
        self.slots.iter().map(|s| s.param.grad()).filter(Tensor::defined).collect()
    }

    /// Scale gradients so that their global L2 norm is at most `max_norm`; returns the norm
    /// before clipping (as `torch.nn.utils.clip_grad_norm_`).
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let grads = self.grads();
        if grads.is_empty() {
            return 0.0;
        }
        let norm = tch::no_grad(|| {
            let squares: Vec<Tensor> = grads.iter().map(|g| g.to_kind(Kind::Float).square().sum(Kind::Float)).collect();
            Tensor::stack(&squares, 0).sum(Kind::Float).sqrt()
        });
        let norm = norm.double_value(&[]);
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            tch::no_grad(|| {
                for mut g in grads {
                    let _ = g.g_mul_scalar_(coef);
                }
            });
        }
        norm
    }

    /// One update at learning rate `lr`. Parameters without a gradient are left alone.
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let AdamWConfig { beta1, beta2, eps, weight_decay } = self.config;
        let bias_correction1 = 1.0 - beta1.powi(self.step as i32);
        let bias_correction2_sqrt = (1.0 - beta2.powi(self.step as i32)).sqrt();
        tch::no_grad(|| {
            for slot in &mut self.slots {
                let grad = slot.param.grad();
                if !grad.defined() {
                    continue;
                }
                let lr = lr * slot.lr_scale;
                let step_size = lr / bias_correction1;
                let _ = slot.param.g_mul_scalar_(1.0 - lr * weight_decay);
                let _ = slot.exp_avg.lerp_(&grad, 1.0 - beta1);
                let _ = slot.exp_avg_sq.g_mul_scalar_(beta2);
                let _ = slot.exp_avg_sq.addcmul_(&grad, &(&grad * (1.0 - beta2)));
                let denom = slot.exp_avg_sq.sqrt() / bias_correction2_sqrt + eps;
                let _ = slot.param.g_sub_(&(&slot.exp_avg / denom * step_size));
            }
        });
    }

    /// Optimizer state as named tensors (`exp_avg.<param>`, `exp_avg_sq.<param>`, `step`).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("step".to_string(), Tensor::from(self.step))];
        for slot in &self.slots {
            out.push((format!("exp_avg.{}", slot.name), slot.exp_avg.shallow_clone()));
            out.push((format!("exp_avg_sq.{}", slot.name), slot.exp_avg_sq.shallow_clone()));
        }
        out
    }

    /// Restore a state written by [`AdamW::state`] and read from `origin`; every moment must be
    /// present and shaped like its parameter.
    pub fn load_state(&mut self, saved: &BTreeMap<String, Tensor>, origin: &Path) -> Result<()> {
        // The moments are shallow clones of the slots', so copying into them restores the slots.
        crate::models::weights::copy_checked(&self.state(), saved, origin)?;
        self.step = saved["step"].int64_value(&[]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::weights::trainable;
    use tch::{nn, nn::VarStore, Device};

    /// Scalar AdamW in f64, straight from the formula, as the reference.
    fn reference(p0: f64, grads: &[f64], lr: f64, c: AdamWConfig) -> f64 {
        let (mut p, mut m, mut v) = (p0, 0.0, 0.0);
        for (i, g) in grads.iter().enumerate() {
            let t = (i + 1) as i32;
            p *= 1.0 - lr * c.weight_decay;
            m = c.beta1 * m + (1.0 - c.beta1) * g;
            v = c.beta2 * v + (1.0 - c.beta2) * g * g;
            let m_hat = m / (1.0 - c.beta1.powi(t));
            let v_hat = v / (1.0 - c.beta2.powi(t));
            p -= lr * m_hat / (v_hat.sqrt() + c.eps);
        }
        p
    }

    fn one_param_store(value: f64) -> (VarStore, Tensor) {
        let vs = VarStore::new(Device::Cpu);
        let p = vs.root().var("w", &[1], nn::Init::Const(value));
        (vs, p)
    }

    #[test]
    fn matches_the_formula_over_several_steps() {
        let cfg = AdamWConfig::default();
        let grads = [0.5, -1.25, 2.0, 0.1];
        let (vs, p) = one_param_store(1.5);
        let mut opt = AdamW::new(trainable(&vs), cfg);
        for g in grads {
            opt.zero_grad();
            // loss = g * w gives dL/dw = g
            (&p * g).sum(Kind::Float).backward();
            opt.step(1e-2);
        }
        let want = reference(1.5, &grads, 1e-2, cfg);
        let got = p.double_value(&[0]);
        assert!((got - want).abs() < 1e-6, "got {got}, want {want}");
    }

    #[test]
    fn a_scaled_parameter_follows_the_formula_at_its_own_rate() {
        let cfg = AdamWConfig::default();
        let grads = [0.5, -1.25, 2.0];
        let vs = VarStore::new(Device::Cpu);
        let (a, b) = (vs.root().var("a", &[1], nn::Init::Const(1.5)), vs.root().var("b", &[1], nn::Init::Const(1.5)));
        let mut opt = AdamW::new(trainable(&vs), cfg).with_lr_scales(|name| if name == "b" { 0.1 } else { 1.0 });
        for g in grads {
            opt.zero_grad();
            ((&a + &b) * g).sum(Kind::Float).backward();
            opt.step(1e-2);
        }
        assert!((a.double_value(&[0]) - reference(1.5, &grads, 1e-2, cfg)).abs() < 1e-6);
        assert!((b.double_value(&[0]) - reference(1.5, &grads, 1e-3, cfg)).abs() < 1e-6);
    }

    #[test]
    fn clipping_scales_to_max_norm_and_reports_the_original() {
        let vs = VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[2], nn::Init::Const(0.0));
        let mut opt = AdamW::new(trainable(&vs), AdamWConfig::default());
        (&w * Tensor::from_slice(&[3.0f32, 4.0])).sum(Kind::Float).backward();
        let norm = opt.clip_grad_norm(1.0);
        assert!((norm - 5.0).abs() < 1e-6);
        let g = Vec::<f32>::try_from(w.grad()).unwrap();
        assert!((g[0] - 0.6).abs() < 1e-5 && (g[1] - 0.8).abs() < 1e-5, "{g:?}");
    }

    #[test]
    fn state_round_trip_resumes_identically() {
        let run = |split: Option<usize>| {
            let (vs, p) = one_param_store(0.3);
            let mut opt = AdamW::new(trainable(&vs), AdamWConfig::default());
            let grads = [1.0, -0.5, 0.25, 3.0, -2.0];
            for (i, g) in grads.iter().enumerate() {
                if Some(i) == split {
                    let saved: BTreeMap<String, Tensor> =
                        opt.state().into_iter().map(|(k, t)| (k, t.copy())).collect();
                    let mut fresh = AdamW::new(trainable(&vs), AdamWConfig::default());
                    fresh.load_state(&saved, Path::new("saved")).unwrap();
                    opt = fresh;
                }
                opt.zero_grad();
                (&p * *g).sum(Kind::Float).backward();
                opt.step(1e-3);
            }
            p.double_value(&[0])
        };
        assert_eq!(run(None).to_bits(), run(Some(2)).to_bits());
    }

    #[test]
    fn frozen_variables_are_not_optimised_and_bad_state_is_rejected() {
        let mut vs = VarStore::new(Device::Cpu);
        let _ = vs.root().var("frozen", &[3], nn::Init::Const(1.0));
        vs.freeze();
        let _ = vs.root().var("w", &[2], nn::Init::Const(1.0));
        let mut opt = AdamW::new(trainable(&vs), AdamWConfig::default());
        assert_eq!(opt.state().len(), 3);
        let mut bad: BTreeMap<String, Tensor> = opt.state().into_iter().collect();
        bad.insert("exp_avg.w".into(), Tensor::zeros([5], (Kind::Float, Device::Cpu)));
        let err = opt.load_state(&bad, Path::new("bad.safetensors")).unwrap_err().to_string();
        assert!(err.contains("exp_avg.w: saved [5], model [2]"), "{err}");
    }
}
