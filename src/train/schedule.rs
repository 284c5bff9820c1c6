//! Learning-rate schedule of BOSSA stage 1: `LinearLR` warm-up from 1% of the peak, then
//! `CosineAnnealingLR` down to a floor over the remaining steps (closed form of PyTorch's
//! recursive update). Past `total_steps` the rate stays at the floor, where PyTorch's cosine
//! would start climbing again.
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    pub peak_lr: f64,
    pub floor_lr: f64,
    pub warmup_steps: u64,
    pub warmup_start_factor: f64,
}

impl Default for ScheduleConfig {
    /// The paper: 1e-4, 1k linear warm-up, cosine to 1e-5.
    fn default() -> Self {
        Self { peak_lr: 1e-4, floor_lr: 1e-5, warmup_steps: 1000, warmup_start_factor: 0.01 }
    }
}

impl crate::yaml::Validate for ScheduleConfig {
    fn validate(&self, at: &str, p: &mut crate::yaml::Problems) {
        let (peak, floor, start) = (self.peak_lr, self.floor_lr, self.warmup_start_factor);
        p.check(peak.is_finite() && peak > 0.0, at, "peak_lr", || format!("is {peak}; must be positive"));
        p.check(floor.is_finite() && floor >= 0.0 && floor <= peak, at, "floor_lr", || format!("is {floor}; must be in [0, peak_lr = {peak}]"));
        p.check(start.is_finite() && start > 0.0 && start <= 1.0, at, "warmup_start_factor", || format!("is {start}; must be in (0, 1]"));
    }
}

/// Learning rate for optimizer step `step` (0-based) of a run of `total_steps`.
pub fn learning_rate(cfg: &ScheduleConfig, step: u64, total_steps: u64) -> f64 {
    if step < cfg.warmup_steps {
        let progress = step as f64 / cfg.warmup_steps as f64;
        return cfg.peak_lr * (cfg.warmup_start_factor + (1.0 - cfg.warmup_start_factor) * progress);
    }
    let decay_steps = total_steps.saturating_sub(cfg.warmup_steps).max(1);
    let k = (step - cfg.warmup_steps).min(decay_steps) as f64;
    let cosine = (1.0 + (std::f64::consts::PI * k / decay_steps as f64).cos()) / 2.0;
    cfg.floor_lr + (cfg.peak_lr - cfg.floor_lr) * cosine
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_floor() {
        let cfg = ScheduleConfig { peak_lr: 1e-4, floor_lr: 1e-5, warmup_steps: 10, warmup_start_factor: 0.01 };
        let close = |a: f64, b: f64| (a - b).abs() < 1e-15;
        assert!(close(learning_rate(&cfg, 0, 110), 1e-6));
        assert!(close(learning_rate(&cfg, 5, 110), 1e-4 * (0.01 + 0.99 * 0.5)));
        assert!(close(learning_rate(&cfg, 10, 110), 1e-4));
        assert!(close(learning_rate(&cfg, 60, 110), 1e-5 + 9e-5 * 0.5));
        assert!(close(learning_rate(&cfg, 110, 110), 1e-5));
        assert!(close(learning_rate(&cfg, 500, 110), 1e-5));
        let rates: Vec<f64> = (10..=110).map(|s| learning_rate(&cfg, s, 110)).collect();
        assert!(rates.windows(2).all(|w| w[1] <= w[0]));
    }
}
