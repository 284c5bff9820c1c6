//! The window loop of stage-2 inference (SPEC 6; BOSSA `generate_nucleus2` and the loop of
//! `test_stage2_generate.ipynb`).
//!
//! Per window, each sample's prompt is the stage-2 prefix, the window's lead sheet, `<sep>`, and
//! that sample's carried bars. The soft prompt and the part every sample shares are prefilled
//! once (one row, or one per sample when each has its own soft prompt); each sample's carried
//! tokens continue from a copy of that state, and the states are combined into one batch. Then all
//! rows step together (O(1) per token through the recurrent linear-attention state), each
//! constrained by its grammar and drawn by the keyed sampler, until it closes its bars or writes
//! `</s>`; finished rows leave the batch. A window ended by `</s>` keeps its remaining bars empty
//! (`s t b-1`), so bar positions stay aligned for the next window and the score.
use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

use super::grammar::{End, Grammar};
use super::passage::Passage;
use super::sampling::{DrawKey, SamplingConfig};
use super::window::{windows, Window};
use crate::data::encodings::remi;
use crate::models::musecoco::{MuseCoco, RecurrentState};
use crate::yaml::{Problems, Validate};

/// How an arrangement is sampled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArrangeConfig {
    pub sampling: SamplingConfig,
    /// Longest token sequence of a window, prompt included (BOSSA's loop runs to 2048).
    pub max_tokens: usize,
    /// Optional cap on the new tokens of a window.
    pub max_new_tokens: Option<usize>,
    /// Whether `</s>` at a bar boundary may end a window early, leaving its other bars empty
    /// (BOSSA stops on it); when false every bar is written.
    pub end_token: bool,
}

impl Default for ArrangeConfig {
    fn default() -> Self {
        Self { sampling: SamplingConfig::default(), max_tokens: 2048, max_new_tokens: None, end_token: true }
    }
}

impl Validate for ArrangeConfig {
    fn validate(&self, at: &str, p: &mut Problems) {
        let sampling = if at.is_empty() { "sampling".to_string() } else { format!("{at}.sampling") };
        self.sampling.validate(&sampling, p);
        p.check((1..=1 << 20).contains(&self.max_tokens), at, "max_tokens", || format!("is {}; must be 1..=1048576", self.max_tokens));
        if let Some(n) = self.max_new_tokens {
            p.check(n >= 3, at, "max_new_tokens", || format!("is {n}; a bar takes at least 3 tokens (s t b-1)"));
        }
    }
}

/// How one sample's window went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WindowRecord {
    pub window: usize,
    /// Tokens sampled in the window (`</s>` included).
    pub new_tokens: usize,
    pub end: End,
}

/// Time spent on one window (all samples together).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WindowTiming {
    pub window: usize,
    /// Soft prompt, shared prompt and carried bars through the parallel form.
    pub prefill_seconds: f64,
    /// The recurrent steps with their grammar and draws.
    pub sampling_seconds: f64,
    /// Model steps taken (the longest sample's new tokens minus one).
    pub steps: usize,
}

/// One sample's piano part.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleTokens {
    pub sample: u64,
    /// The REMI tokens of every bar of the passage, each ending with `b-1`.
    pub bars: Vec<Vec<u32>>,
    pub windows: Vec<WindowRecord>,
}

#[derive(Debug, Clone)]
pub struct Arrangement {
    pub samples: Vec<SampleTokens>,
    pub timings: Vec<WindowTiming>,
}

/// Arrange `passage` once per sample id of `samples` (the ids key the random draws, so a
/// sample is the same drawn alone or among others). `soft_prompt` gives each window's projected
/// soft prompt, [1 or number of samples, queries, n_embd].
pub fn arrange(
    model: &MuseCoco,
    passage: &Passage,
    samples: Range<u64>,
    config: &ArrangeConfig,
    mut soft_prompt: impl FnMut(&Window) -> Result<Tensor>,
) -> Result<Arrangement> {
    crate::yaml::validate(config).context("arrangement settings")?;
    let k = samples.end.saturating_sub(samples.start) as usize;
    ensure!(k > 0, "no samples to draw (sample ids {samples:?})");
    let vocab = model.config().vocab_size;
    ensure!(vocab == remi::VOCAB_SIZE as i64, "arranging needs MuseCoco's REMI vocabulary of {} tokens; the model has {vocab}", remi::VOCAB_SIZE);
    let _no_grad = tch::no_grad_guard();
    let mut bars: Vec<Vec<Vec<u32>>> = vec![Vec::with_capacity(passage.len()); k];
    let mut records: Vec<Vec<WindowRecord>> = vec![Vec::new(); k];
    let mut timings = Vec::new();
    for window in windows(passage.len()) {
        let soft = soft_prompt(&window).with_context(|| format!("window {}: no soft prompt", window.index))?;
        let carried: Vec<Vec<u32>> = bars.iter().map(|b| b[window.carried.clone()].concat()).collect();
        let run = WindowRun::new(model, passage, &window, &samples, config);
        let (rows, timing) = run.sample(&soft, &carried).with_context(|| format!("window {} (bars {:?})", window.index, window.bars))?;
        let empty_bars: Vec<Vec<u32>> = passage.bar_specs(window.generated()).iter().map(|s| s.empty_bar()).collect();
        for (i, row) in rows.into_iter().enumerate() {
            records[i].push(WindowRecord { window: window.index, new_tokens: row.tokens.len(), end: row.end });
            bars[i].extend(split_bars(&row.tokens, &empty_bars));
        }
        timings.push(timing);
    }
    let samples = samples
        .zip(bars.into_iter().zip(records))
        .map(|(sample, (bars, windows))| SampleTokens { sample, bars, windows })
        .collect();
    Ok(Arrangement { samples, timings })
}

/// One sample's new tokens in a window, and why they ended.
struct RowOutcome {
    tokens: Vec<u32>,
    end: End,
}

/// One window's sampling for every sample.
struct WindowRun<'a> {
    model: &'a MuseCoco,
    config: &'a ArrangeConfig,
    window: &'a Window,
    samples: &'a Range<u64>,
    /// Stage-2 prefix, the window's lead sheet and `<sep>`: what every sample's prompt starts with.
    shared: Vec<u32>,
    passage: &'a Passage,
}

impl<'a> WindowRun<'a> {
    fn new(model: &'a MuseCoco, passage: &'a Passage, window: &'a Window, samples: &'a Range<u64>, config: &'a ArrangeConfig) -> Self {
        let mut shared = remi::stage2_prefix();
        shared.extend(passage.lead_tokens(window.bars.clone()));
        shared.push(remi::SEP);
        Self { model, config, window, samples, shared, passage }
    }

    /// The new tokens of every sample, given their carried tokens.
    fn sample(&self, soft: &Tensor, carried: &[Vec<u32>]) -> Result<(Vec<RowOutcome>, WindowTiming)> {
        let (model, k) = (self.model, carried.len());
        let device = model.device();
        let started = Instant::now();
        let prompt_lens: Vec<usize> = carried.iter().map(|c| self.shared.len() + c.len()).collect();
        let specs = self.passage.bar_specs(self.window.generated());
        let mut grammars = Vec::with_capacity(k);
        for (i, &len) in prompt_lens.iter().enumerate() {
            let budget = self.config.max_tokens.saturating_sub(len).min(self.config.max_new_tokens.unwrap_or(usize::MAX));
            let grammar = Grammar::new(specs.clone(), budget)
                .with_context(|| format!("sample {}: its prompt takes {len} of max_tokens {}", self.samples.start + i as u64, self.config.max_tokens))?;
            grammars.push(if self.config.end_token { grammar } else { grammar.without_end_token() });
        }
        let (mut state, mut logits) = self.prefill(soft, carried, device)?;
        let prefill_seconds = started.elapsed().as_secs_f64();

        let started = Instant::now();
        let mut new: Vec<Vec<u32>> = vec![Vec::new(); k];
        let mut active: Vec<usize> = (0..k).collect();
        let mut steps = 0;
        let vocab = remi::VOCAB_SIZE;
        loop {
            let rows = Vec::<f64>::try_from(logits.to_kind(Kind::Double).to_device(Device::Cpu).flatten(0, -1))?;
            for (j, &i) in active.iter().enumerate() {
                let key = DrawKey { sample: self.samples.start + i as u64, window: self.window.index as u64, step: new[i].len() as u64 };
                let token = self.config.sampling.draw(&rows[j * vocab..(j + 1) * vocab], &grammars[i].allowed(), key)?;
                grammars[i].advance(token)?;
                new[i].push(token);
            }
            let still: Vec<usize> = (0..active.len()).filter(|&j| !grammars[active[j]].is_done()).collect();
            if still.is_empty() {
                break;
            }
            if still.len() < active.len() {
                state = state.select(&still.iter().map(|&j| j as i64).collect::<Vec<_>>())?;
                active = still.iter().map(|&j| active[j]).collect();
            }
            let last: Vec<i64> = active.iter().map(|&i| i64::from(*new[i].last().expect("a token was drawn"))).collect();
            // Row i's last token sits at token index prompt + new - 1 of its own sequence.
            let index: Vec<i64> = active.iter().map(|&i| (prompt_lens[i] + new[i].len() - 1) as i64).collect();
            let x = model.embed_next(&Tensor::from_slice(&last).view([-1, 1]).to_device(device), &index, remi::STAGE2_POS_START)?;
            logits = model.logits(&model.step(&x, &mut state)?)?.squeeze_dim(1);
            steps += 1;
        }
        let timing = WindowTiming { window: self.window.index, prefill_seconds, sampling_seconds: started.elapsed().as_secs_f64(), steps };
        let rows = new
            .into_iter()
            .zip(grammars)
            .map(|(tokens, grammar)| Ok(RowOutcome { tokens, end: grammar.end().context("a row stopped before its grammar finished")? }))
            .collect::<Result<_>>()?;
        Ok((rows, timing))
    }

    /// Prefill the soft prompt and the shared prompt once, then each sample's carried tokens from
    /// its own copy of that state. Returns the batched state and the logits of each row's next
    /// token, [samples, vocab].
    fn prefill(&self, soft: &Tensor, carried: &[Vec<u32>], device: Device) -> Result<(RecurrentState, Tensor)> {
        let (model, k) = (self.model, carried.len() as i64);
        let c = model.config().n_embd;
        let size = soft.size();
        ensure!(
            size.len() == 3 && (size[0] == 1 || size[0] == k) && size[2] == c,
            "the soft prompt is {size:?}, expected [{k} or 1, queries, {c}]"
        );
        let rows = size[0];
        let ids = |tokens: &[u32]| Tensor::from_slice(&tokens.iter().map(|&t| i64::from(t)).collect::<Vec<_>>()).view([1, -1]).to_device(device);
        let shared = model.embed(&ids(&self.shared), remi::STAGE2_POS_START, false)?;
        let x = Tensor::cat(&[soft.to_device(device).to_kind(shared.kind()), shared.expand([rows, -1, -1], false)], 1);
        let mut state = RecurrentState::new(model.config(), rows, device);
        let hidden = model.prefill(&x, None, &mut state, false)?;
        let mut states = Vec::with_capacity(carried.len());
        let mut last = Vec::with_capacity(carried.len());
        for (i, tokens) in carried.iter().enumerate() {
            let row = if rows == 1 { 0 } else { i as i64 };
            let mut row_state = state.select(&[row])?;
            if tokens.is_empty() {
                last.push(hidden.narrow(0, row, 1).select(1, -1));
            } else {
                let whole: Vec<u32> = self.shared.iter().chain(tokens).copied().collect();
                let embeds = model.embed(&ids(&whole), remi::STAGE2_POS_START, false)?.narrow(1, self.shared.len() as i64, tokens.len() as i64);
                last.push(model.prefill(&embeds, None, &mut row_state, false)?.select(1, -1));
            }
            states.push(row_state);
        }
        Ok((RecurrentState::cat(&states)?, model.logits(&Tensor::cat(&last, 0))?))
    }
}

/// A window's new tokens as whole bars: split after each `b-1`; after `</s>` the remaining bars
/// are empty.
fn split_bars(tokens: &[u32], empty_bars: &[Vec<u32>]) -> Vec<Vec<u32>> {
    let mut bars: Vec<Vec<u32>> = Vec::with_capacity(empty_bars.len());
    let mut current = Vec::new();
    for &t in tokens.iter().take_while(|&&t| t != remi::EOS) {
        current.push(t);
        if t == remi::BAR_END {
            bars.push(std::mem::take(&mut current));
        }
    }
    let done = bars.len();
    bars.extend(empty_bars[done.min(empty_bars.len())..].iter().cloned());
    bars
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_split_on_bar_ends_and_fill_after_the_end_token() {
        let t = |names: &str| names.split_whitespace().map(remi::token_id).collect::<Vec<u32>>();
        let empty = vec![t("s-9 t-35 b-1"), t("s-8 t-30 b-1"), t("s-9 t-31 b-1")];
        let got = split_bars(&t("s-9 t-35 o-0 i-0 p-60 d-3 v-3 b-1 </s>"), &empty);
        assert_eq!(got, [t("s-9 t-35 o-0 i-0 p-60 d-3 v-3 b-1"), t("s-8 t-30 b-1"), t("s-9 t-31 b-1")]);
        assert_eq!(split_bars(&t("</s>"), &empty), empty);
        let whole = t("s-9 t-35 b-1 s-8 t-30 b-1 s-9 t-31 o-5 i-1 p-2 d-3 v-4 b-1");
        assert_eq!(split_bars(&whole, &empty).concat(), whole);
    }

    #[test]
    fn config_is_checked() {
        assert!(crate::yaml::validate(&ArrangeConfig::default()).is_ok());
        let bad = ArrangeConfig { max_tokens: 0, max_new_tokens: Some(2), sampling: SamplingConfig { temperature: -1.0, ..Default::default() }, end_token: true };
        let mut p = Problems::default();
        bad.validate("generate", &mut p);
        let err = p.into_result().unwrap_err().to_string();
        for key in ["generate.max_tokens", "generate.max_new_tokens", "generate.sampling.temperature"] {
            assert!(err.contains(key), "{err}");
        }
    }
}
