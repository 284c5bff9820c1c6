//! Dynamic loss scaling for fp16 mixed precision, as `torch.cuda.amp.GradScaler` does it:
//! multiply the loss by `scale`, unscale gradients before the optimizer step, skip the step
//! and multiply the scale by `backoff` when a gradient is inf/NaN, and multiply it by
//! `growth` after `growth_interval` clean steps. The scale update is PyTorch's own kernel
//! (`_amp_update_scale_`), so the sequence of scales matches PyTorch's exactly.
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScalerConfig {
    pub init_scale: f64,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: i64,
}

impl Default for ScalerConfig {
    fn default() -> Self {
        Self { init_scale: 65536.0, growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 2000 }
    }
}

impl crate::yaml::Validate for ScalerConfig {
    fn validate(&self, at: &str, p: &mut crate::yaml::Problems) {
        p.check(self.init_scale.is_finite() && self.init_scale > 0.0, at, "init_scale", || format!("is {}; must be positive", self.init_scale));
        p.check(self.growth_factor > 1.0, at, "growth_factor", || format!("is {}; must exceed 1", self.growth_factor));
        p.check(self.backoff_factor > 0.0 && self.backoff_factor < 1.0, at, "backoff_factor", || format!("is {}; must be in (0, 1)", self.backoff_factor));
        p.check(self.growth_interval >= 1, at, "growth_interval", || format!("is {}; must be at least 1", self.growth_interval));
    }
}

pub struct GradScaler {
    config: ScalerConfig,
    scale: Tensor,
    growth_tracker: Tensor,
}

impl GradScaler {
    pub fn new(config: ScalerConfig) -> Self {
        Self {
            scale: Tensor::from_slice(&[config.init_scale as f32]),
            growth_tracker: Tensor::from_slice(&[0i32]),
            config,
        }
    }

    pub fn scale(&self) -> f64 {
        self.scale.double_value(&[0])
    }

    pub fn scale_loss(&self, loss: &Tensor) -> Tensor {
        loss * self.scale.to_device(loss.device()).to_kind(loss.kind())
    }

    /// Divide `grads` by the scale in place; true when any of them holds inf or NaN
    /// (the caller then skips the optimizer step).
    pub fn unscale(&self, grads: &[Tensor]) -> bool {
        let inv_scale = 1.0 / self.scale();
        tch::no_grad(|| {
            let mut found_inf = false;
            for g in grads {
                let mut g = g.shallow_clone();
                let _ = g.g_mul_scalar_(inv_scale);
                found_inf |= !bool::try_from(g.isfinite().all()).unwrap_or(false);
            }
            found_inf
        })
    }

    /// Update the scale after a step; `found_inf` is what [`GradScaler::unscale`] returned.
    pub fn update(&mut self, found_inf: bool) {
        let found = Tensor::from_slice(&[found_inf as i32 as f32]);
        let _ = self.scale.internal_amp_update_scale_(
            &self.growth_tracker,
            &found,
            self.config.growth_factor,
            self.config.backoff_factor,
            self.config.growth_interval,
        );
    }

    /// State to checkpoint: `scale` and `growth_tracker`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        vec![("scale".into(), self.scale.copy()), ("growth_tracker".into(), self.growth_tracker.copy())]
    }

    pub fn load_state(&mut self, scale: &Tensor, growth_tracker: &Tensor) {
        self.scale = scale.to_kind(Kind::Float).to_device(Device::Cpu).copy();
        self.growth_tracker = growth_tracker.to_kind(Kind::Int).to_device(Device::Cpu).copy();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inf_gradient_backs_off_and_clean_steps_grow() {
        let mut scaler = GradScaler::new(ScalerConfig { init_scale: 1024.0, growth_interval: 2, ..Default::default() });
        let good = Tensor::from_slice(&[2048.0f32, -1024.0]);
        assert!(!scaler.unscale(&[good.shallow_clone()]));
        assert_eq!(Vec::<f32>::try_from(&good).unwrap(), vec![2.0, -1.0]);
        scaler.update(false);
        assert_eq!(scaler.scale(), 1024.0);
        scaler.update(false);
        assert_eq!(scaler.scale(), 2048.0, "grows after growth_interval clean steps");

        let bad = Tensor::from_slice(&[1.0f32, f32::INFINITY]);
        assert!(scaler.unscale(&[bad]));
        scaler.update(true);
        assert_eq!(scaler.scale(), 1024.0, "backs off on inf");
        let nan = Tensor::from_slice(&[f32::NAN]);
        assert!(scaler.unscale(&[nan]));
        scaler.update(true);
        assert_eq!(scaler.scale(), 512.0);

        let state = scaler.state();
        let mut restored = GradScaler::new(ScalerConfig::default());
        restored.load_state(&state[0].1, &state[1].1);
        assert_eq!(restored.scale(), 512.0);
    }

    #[test]
    fn scaled_loss_carries_the_scale() {
        let scaler = GradScaler::new(ScalerConfig::default());
        let loss = Tensor::from_slice(&[0.5f32]);
        assert_eq!(scaler.scale_loss(&loss).double_value(&[0]), 32768.0);
    }
}
