//! Song-level train/valid/test split (SPEC 2: 90/5/5).
//!
//! Each song's split is a function of (seed, song id) alone: the id is hashed with the seed and
//! the hash, read as a fraction of 2^64, falls into the train, valid or test range. So adding
//! songs never moves an existing song to another split (a shuffle would), and every segment of
//! a song lands in the same split.
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Valid,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Valid, Split::Test];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Valid => "valid",
            Split::Test => "test",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Fractions of songs in valid and test; train gets the rest.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SplitRatios {
    pub valid: f64,
    pub test: f64,
}

impl Default for SplitRatios {
    fn default() -> Self {
        Self { valid: 0.05, test: 0.05 }
    }
}

impl SplitRatios {
    pub fn validate(&self) -> anyhow::Result<()> {
        let ok = |x: f64| x.is_finite() && (0.0..=1.0).contains(&x);
        anyhow::ensure!(
            ok(self.valid) && ok(self.test) && self.valid + self.test <= 1.0,
            "split fractions must lie in [0, 1] and sum to at most 1 (valid {}, test {})",
            self.valid,
            self.test
        );
        Ok(())
    }
}

/// The split of `song_id` under `seed`.
pub fn assign(seed: u64, song_id: &str, ratios: SplitRatios) -> Split {
    let u = unit_hash(seed, song_id);
    if u < ratios.test {
        Split::Test
    } else if u < ratios.test + ratios.valid {
        Split::Valid
    } else {
        Split::Train
    }
}

/// sha256("stylebridge-split", seed, id) as a number in [0, 1); the same on every platform
/// and Rust version, unlike `std`'s hashers.
fn unit_hash(seed: u64, song_id: &str) -> f64 {
    let mut hasher = Sha256::new();
    hasher.update(b"stylebridge-split\0");
    hasher.update(seed.to_le_bytes());
    hasher.update(song_id.as_bytes());
    let digest = hasher.finalize();
    let mut top = [0u8; 8];
    top.copy_from_slice(&digest[..8]);
    // 53 bits give an exactly representable fraction.
    (u64::from_be_bytes(top) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{i:04}")).collect()
    }

    #[test]
    fn proportions_are_close_to_90_5_5() {
        let songs = ids(20_000);
        let mut counts = [0usize; 3];
        for s in &songs {
            counts[assign(7, s, SplitRatios::default()) as usize] += 1;
        }
        let frac = counts.map(|c| c as f64 / songs.len() as f64);
        assert!((frac[0] - 0.90).abs() < 0.01, "{frac:?}");
        assert!((frac[1] - 0.05).abs() < 0.006, "{frac:?}");
        assert!((frac[2] - 0.05).abs() < 0.006, "{frac:?}");
    }

    #[test]
    fn adding_songs_keeps_existing_assignments_and_seed_matters() {
        let before: Vec<Split> = ids(500).iter().map(|s| assign(1, s, SplitRatios::default())).collect();
        let after: Vec<Split> = ids(1000).iter().map(|s| assign(1, s, SplitRatios::default())).collect();
        assert_eq!(before, after[..500]);
        let other_seed: Vec<Split> = ids(500).iter().map(|s| assign(2, s, SplitRatios::default())).collect();
        assert_ne!(before, other_seed);
    }

    #[test]
    fn extreme_ratios_and_validation() {
        let all_test = SplitRatios { valid: 0.0, test: 1.0 };
        assert!(ids(50).iter().all(|s| assign(0, s, all_test) == Split::Test));
        let all_train = SplitRatios { valid: 0.0, test: 0.0 };
        assert!(ids(50).iter().all(|s| assign(0, s, all_train) == Split::Train));
        assert!(SplitRatios { valid: 0.6, test: 0.6 }.validate().is_err());
        assert!(SplitRatios { valid: f64::NAN, test: 0.1 }.validate().is_err());
        assert_eq!(Split::parse("valid"), Some(Split::Valid));
        assert_eq!(Split::parse("dev"), None);
    }
}
