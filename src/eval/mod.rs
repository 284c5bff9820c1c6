//! Evaluation protocols of the paper: audio-to-MIDI retrieval (Tables 2 and 3), and the
//! pluggable audio-to-MIDI scorer that ranks generated arrangements.
pub mod retrieval;
pub mod scorer;
pub mod style_transfer;

use serde::{Deserialize, Serialize};

/// The `eval:` config section.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    pub retrieval: retrieval::RetrievalConfig,
}

impl crate::yaml::Validate for EvalConfig {
    fn validate(&self, at: &str, p: &mut crate::yaml::Problems) {
        self.retrieval.validate(&format!("{at}.retrieval"), p);
    }
}
