//! Evaluation protocols of the paper: audio-to-MIDI retrieval (Tables 2 and 3).
pub mod retrieval;

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
