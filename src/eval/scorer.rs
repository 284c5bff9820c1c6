//! Audio-to-MIDI similarity of given (audio window, MIDI) pairs, through any [`Embedder`] (the
//! stage-1 model today, SPEC 5: max over the queries of the cosine between the projected query
//! outputs and the symbolic feature). `arrange --num-samples K --keep best` ranks its candidates
//! with it; the cover-coherence protocol (Table 1) asks for exactly such a pluggable scorer.
//!
//! Pairs go through the training loader's stage-1 layout (lead sheet, `<s>`, arrangement,
//! `</s>`, lead-sheet performance redacted), so a pair is scored as stage 1 saw its pairs.
use anyhow::{ensure, Context, Result};
use std::sync::Arc;
use tch::Kind;

use super::retrieval::Embedder;
use crate::data::encodings::Octuple;
use crate::data::loader::{Loader, LoaderOptions, PairSet, Stage};
use crate::data::pairing::octuple_ids;
use crate::data::shards::{AudioLayout, PairRow};
use crate::data::split::Split;
use crate::train::losses::max_over_queries;

/// One pair to score: EnCodec codes of an audio window and the notes of a passage.
pub struct ScorePair {
    /// `[n_q, frames]`, row-major; frames without audio hold the pad code.
    pub codes: Vec<u16>,
    pub lead_sheet: Vec<Octuple>,
    pub arrangement: Vec<Octuple>,
}

pub struct Scorer<E: Embedder> {
    model: E,
    max_notes: usize,
    batch_size: usize,
}

impl<E: Embedder> Scorer<E> {
    /// `max_notes` as the model was trained with (its `data.max_notes`).
    pub fn new(model: E, max_notes: usize) -> Self {
        Self { model, max_notes, batch_size: 16 }
    }

    pub fn model_mut(&mut self) -> &mut E {
        &mut self.model
    }

    /// The similarity of each pair; all pairs share `n_q`, `pad_code` and their frame count.
    pub fn scores(&mut self, pairs: &[ScorePair], n_q: usize, pad_code: u16) -> Result<Vec<f64>> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let frames = pairs[0].codes.len() / n_q.max(1);
        ensure!(pairs.iter().all(|p| p.codes.len() == n_q * frames), "score pairs must share one window length");
        let layout = AudioLayout { sample_rate: 0, frame_rate: 0.0, n_q, pad_code, window_frames: frames, margin_frames: 0, encodec: String::new() };
        let rows = pairs
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let row = PairRow::synthetic("candidate", Split::Test, i as u32, p.codes.clone(), octuple_ids(&p.lead_sheet), octuple_ids(&p.arrangement));
                PairRow { codes_start_frame: 0, ..row }
            })
            .collect();
        let set = Arc::new(PairSet { split: Split::Test, layout, rows });
        let options = LoaderOptions { max_notes: self.max_notes, workers: 1, prefetch: 1, ..LoaderOptions::training(Stage::Stage1, self.batch_size, 0) }.evaluation();
        let loader = Loader::new(set, options)?;
        let mut out = Vec::with_capacity(pairs.len());
        for batch in loader.batches(0, 0) {
            let (audio, symbolic) = tch::no_grad(|| self.model.embed(&batch))?;
            let sim = max_over_queries(&audio.to_kind(Kind::Float), &symbolic.to_kind(Kind::Float)).diagonal(0, 0, 1);
            out.extend(Vec::<f64>::try_from(sim.to_kind(Kind::Double).to_device(tch::Device::Cpu)).context("similarities")?);
        }
        Ok(out)
    }
}
