//! Style transfer on the embedded corpus, judged independently: does an arrangement made with a
//! reference recording of style S sound, to a classifier of symbolic features, like S?
//!
//! The judge is fitted on the ground-truth arrangements of the training split only (never on
//! generated output): softmax regression on standardised features of the accompaniment (the
//! arrangement's notes that are not the lead sheet's melody, since the tune is the same in every
//! style) — where onsets fall within the beat and the bar, how dense and how polyphonic they are,
//! register and note lengths, and which register plays on the downbeat. Beside its verdicts the
//! table gives chance (one style of those the meter allows), the share of the lead sheet's melody
//! notes the arrangement keeps (same pitch, onset within 1/12 beat) and the share that decoded.
use anyhow::{ensure, Result};
use serde::Serialize;
use std::collections::BTreeMap;

use crate::data::corpus::Style;
use crate::data::midi::{Note, Score};
use crate::data::segments::{tick_to_pos, BarGrid, POSITIONS_PER_BEAT};

/// Positions (1/12 beat) within which a melody note counts as kept.
const ONSET_TOLERANCE: i64 = 1;
const FEATURES: usize = 12 + 4 + 3 + 4 + 2 + 2 + 1;

/// The accompaniment features of an arrangement (`melody`: the lead sheet's melody notes, on the
/// same timeline, to leave out).
pub fn features(arrangement: &Score, melody: &[Note]) -> Result<Vec<f64>> {
    let tpb = arrangement.ticks_per_beat;
    let grid = BarGrid::from_score(arrangement)?;
    ensure!(!grid.bars.is_empty(), "the arrangement has no notes");
    let pos = |tick: u32| i64::from(tick_to_pos(tick, tpb));
    let melody_at: Vec<(i64, u8)> = melody.iter().map(|n| (pos(n.start), n.pitch)).collect();
    let is_melody = |n: &Note| plays(&melody_at, pos(n.start), n.pitch);
    let notes: Vec<Note> = arrangement.instruments.iter().filter(|i| !i.is_drum).flat_map(|i| i.notes.iter().copied()).filter(|n| !is_melody(n)).collect();
    let mut f = vec![0.0; FEATURES];
    if notes.is_empty() {
        return Ok(f);
    }
    let beat = i64::from(POSITIONS_PER_BEAT);
    let bar_of = |p: i64| grid.bar_of_pos(p as u32).map(|b| (p - i64::from(grid.bars[b].start_pos), grid.bars[b].length_pos));
    let count = notes.len() as f64;
    let mut onsets: Vec<i64> = notes.iter().map(|n| pos(n.start)).collect();
    onsets.sort_unstable();
    onsets.dedup();
    for n in &notes {
        let p = pos(n.start);
        f[(p.rem_euclid(beat)) as usize] += 1.0 / count;
        if let Some((in_bar, _)) = bar_of(p) {
            if in_bar % beat == 0 && in_bar / beat < 4 {
                f[12 + (in_bar / beat) as usize] += 1.0 / count;
            }
        }
    }
    let beats = grid.bars.iter().map(|b| f64::from(b.length_pos)).sum::<f64>() / beat as f64;
    f[16] = onsets.len() as f64 / beats;
    f[17] = count / beats;
    f[18] = count / onsets.len() as f64;
    let pitches: Vec<f64> = notes.iter().map(|n| f64::from(n.pitch)).collect();
    let mean = pitches.iter().sum::<f64>() / count;
    f[19] = mean / 128.0;
    f[20] = (pitches.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / count).sqrt() / 24.0;
    f[21] = pitches.iter().filter(|&&p| p < 48.0).count() as f64 / count;
    f[22] = pitches.iter().filter(|&&p| p < 60.0).count() as f64 / count;
    let lengths: Vec<f64> = notes.iter().map(|n| f64::from(n.end.saturating_sub(n.start)) / f64::from(tpb)).collect();
    f[23] = lengths.iter().map(|l| l.ln_1p()).sum::<f64>() / count;
    f[24] = lengths.iter().filter(|&&l| l <= 0.5).count() as f64 / count;
    let on_downbeat = |low: bool| {
        let group: Vec<&Note> = notes.iter().filter(|n| (n.pitch < 55) == low).collect();
        let hits = group.iter().filter(|n| bar_of(pos(n.start)).is_some_and(|(in_bar, _)| in_bar == 0)).count();
        if group.is_empty() { 0.0 } else { hits as f64 / group.len() as f64 }
    };
    f[25] = on_downbeat(true);
    f[26] = on_downbeat(false);
    f[27] = f64::from(grid.bars[0].length_pos) / (4.0 * beat as f64);
    Ok(f)
}

/// Softmax regression on standardised features.
#[derive(Debug, Clone, Serialize)]
pub struct StyleJudge {
    styles: Vec<Style>,
    mean: Vec<f64>,
    scale: Vec<f64>,
    /// [styles][features + 1] (bias last).
    weights: Vec<Vec<f64>>,
}

impl StyleJudge {
    /// Fit on (features, style) samples by full-batch gradient descent (deterministic).
    pub fn fit(samples: &[(Vec<f64>, Style)]) -> Result<Self> {
        ensure!(!samples.is_empty(), "no ground-truth arrangement to fit the style judge on");
        let mut styles: Vec<Style> = samples.iter().map(|(_, s)| *s).collect();
        styles.sort_by_key(|s| *s as u8);
        styles.dedup();
        let d = samples[0].0.len();
        let n = samples.len() as f64;
        let mean: Vec<f64> = (0..d).map(|j| samples.iter().map(|(x, _)| x[j]).sum::<f64>() / n).collect();
        let scale: Vec<f64> = (0..d)
            .map(|j| (samples.iter().map(|(x, _)| (x[j] - mean[j]).powi(2)).sum::<f64>() / n).sqrt().max(1e-6))
            .collect();
        let mut judge = Self { weights: vec![vec![0.0; d + 1]; styles.len()], styles, mean, scale };
        let data: Vec<(Vec<f64>, usize)> =
            samples.iter().map(|(x, s)| (judge.standardise(x), judge.styles.iter().position(|t| t == s).unwrap_or(0))).collect();
        let (rate, l2) = (0.5, 1e-3);
        for _ in 0..2000 {
            let mut grad = vec![vec![0.0; d + 1]; judge.styles.len()];
            for (x, label) in &data {
                let p = judge.probabilities_of(x);
                for (k, row) in grad.iter_mut().enumerate() {
                    let e = p[k] - f64::from(u8::from(k == *label));
                    for j in 0..d {
                        row[j] += e * x[j] / n;
                    }
                    row[d] += e / n;
                }
            }
            for (w, g) in judge.weights.iter_mut().zip(&grad) {
                for j in 0..=d {
                    w[j] -= rate * (g[j] + if j < d { l2 * w[j] } else { 0.0 });
                }
            }
        }
        Ok(judge)
    }

    fn standardise(&self, x: &[f64]) -> Vec<f64> {
        x.iter().zip(self.mean.iter().zip(&self.scale)).map(|(v, (m, s))| (v - m) / s).collect()
    }

    fn probabilities_of(&self, z: &[f64]) -> Vec<f64> {
        let logits: Vec<f64> = self.weights.iter().map(|w| w[..z.len()].iter().zip(z).map(|(a, b)| a * b).sum::<f64>() + w[z.len()]).collect();
        let top = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let exp: Vec<f64> = logits.iter().map(|l| (l - top).exp()).collect();
        let sum: f64 = exp.iter().sum();
        exp.into_iter().map(|e| e / sum).collect()
    }

    /// The style the judge names, among those that fit a bar of `beats` quarter notes.
    pub fn judge(&self, features: &[f64], beats: u32) -> Style {
        let p = self.probabilities_of(&self.standardise(features));
        let mut best = (f64::NEG_INFINITY, self.styles[0]);
        for (k, style) in self.styles.iter().enumerate() {
            if style.fits(beats) && p[k] > best.0 {
                best = (p[k], *style);
            }
        }
        best.1
    }
}

/// Whether `notes` ((onset position, pitch) pairs) hold `pitch` within [`ONSET_TOLERANCE`] of `at`.
fn plays(notes: &[(i64, u8)], at: i64, pitch: u8) -> bool {
    notes.iter().any(|&(p, q)| q == pitch && (p - at).abs() <= ONSET_TOLERANCE)
}

/// Melody notes of the lead sheet that the arrangement plays (same pitch, onset within 1/12
/// beat): (kept, total).
pub fn melody_kept(arrangement: &Score, melody: &[Note], ticks_per_beat: u32) -> (usize, usize) {
    let pos = |tick: u32, tpb: u32| i64::from(tick_to_pos(tick, tpb));
    let played: Vec<(i64, u8)> = arrangement.instruments.iter().flat_map(|i| &i.notes).map(|n| (pos(n.start, arrangement.ticks_per_beat), n.pitch)).collect();
    let kept = melody
        .iter()
        .filter(|m| plays(&played, pos(m.start, ticks_per_beat), m.pitch))
        .count();
    (kept, melody.len())
}

/// One arrangement of the table: the reference's style and what came out.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    pub model: String,
    pub lead_sheet: String,
    pub reference: String,
    pub reference_style: Style,
    pub beats: u32,
    /// None when the arrangement did not decode.
    pub judged: Option<Style>,
    pub melody_kept: usize,
    pub melody_notes: usize,
}

/// A row per model and reference style, plus an "all" row per model.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub model: String,
    pub reference_style: String,
    pub cases: usize,
    pub judged_as_reference: f64,
    pub chance: f64,
    pub melody_kept: f64,
    pub decoded: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Covers (each reference is the lead sheet's own recording) rather than style transfer
    /// (another lead sheet's).
    pub cover: bool,
    /// The judge's accuracy on the ground-truth arrangements of the test split.
    pub judge_accuracy: f64,
    pub judge_test_cases: usize,
    pub rows: Vec<Row>,
    pub cases: Vec<Case>,
}

fn chance(beats: u32) -> f64 {
    1.0 / Style::ALL.iter().filter(|s| s.fits(beats)).count().max(1) as f64
}

impl Report {
    pub fn new(cover: bool, judge_accuracy: f64, judge_test_cases: usize, cases: Vec<Case>) -> Self {
        let mut groups: BTreeMap<(String, String), Vec<&Case>> = BTreeMap::new();
        for c in &cases {
            groups.entry((c.model.clone(), c.reference_style.name().to_string())).or_default().push(c);
            groups.entry((c.model.clone(), "all".to_string())).or_default().push(c);
        }
        let pct = |num: f64, den: f64| if den > 0.0 { 100.0 * num / den } else { f64::NAN };
        let rows = groups
            .into_iter()
            .map(|((model, style), group)| {
                let n = group.len() as f64;
                let hits = group.iter().filter(|c| c.judged == Some(c.reference_style)).count() as f64;
                let (kept, total) = group.iter().fold((0, 0), |(k, t), c| (k + c.melody_kept, t + c.melody_notes));
                Row {
                    model,
                    reference_style: style,
                    cases: group.len(),
                    judged_as_reference: pct(hits, n),
                    chance: 100.0 * group.iter().map(|c| chance(c.beats)).sum::<f64>() / n,
                    melody_kept: pct(kept as f64, total as f64),
                    decoded: pct(group.iter().filter(|c| c.judged.is_some()).count() as f64, n),
                }
            })
            .collect();
        Self { cover, judge_accuracy, judge_test_cases, rows, cases }
    }

    pub fn to_markdown(&self) -> String {
        let title = if self.cover {
            "Covers (each reference is the lead sheet's own recording in a style; the judge names the arrangement's style)"
        } else {
            "Style transfer (each reference is another lead sheet's recording; the judge names the arrangement's style)"
        };
        let mut out = format!(
            "## {title}\n\nJudge: softmax regression on accompaniment features, fitted on the training split's ground truth; {:.1} % right on the {} ground-truth arrangements of the test split.\n\n| Model | Reference style | Cases | Judged as the reference (%) | Chance (%) | Melody notes kept (%) | Decoded (%) |\n|---|---|---|---|---|---|---|\n",
            self.judge_accuracy, self.judge_test_cases
        );
        for r in &self.rows {
            out += &format!(
                "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
                r.model, r.reference_style, r.cases, r.judged_as_reference, r.chance, r.melody_kept, r.decoded
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::midi::{Instrument, TempoChange, TimeSignature};

    fn score(notes: Vec<Note>, beats: u32) -> Score {
        Score {
            ticks_per_beat: 480,
            instruments: vec![Instrument { name: "PIANO".into(), program: 0, is_drum: false, notes, control_changes: Vec::new() }],
            tempo_changes: vec![TempoChange { tick: 0, bpm: 120.0 }],
            time_signatures: vec![TimeSignature { tick: 0, numerator: beats, denominator: 4 }],
        }
    }

    fn note(start: u32, len: u32, pitch: u8) -> Note {
        Note { start, end: start + len, pitch, velocity: 80 }
    }

    /// Block chords on beats 1 and 3 against eighth-note broken chords, 8 bars of 4/4.
    fn block(shift: u8) -> Score {
        score((0..16).flat_map(|h| [48 + shift, 52 + shift, 55 + shift].map(|p| note(h * 960, 960, p))).collect(), 4)
    }

    fn eighths(shift: u8) -> Score {
        score((0..64).map(|e| note(e * 240, 240, [48, 55, 52, 55][e as usize % 4] + shift)).collect(), 4)
    }

    #[test]
    fn the_judge_tells_textures_apart_and_keeps_to_the_meter() {
        let samples: Vec<(Vec<f64>, Style)> = (0..4)
            .flat_map(|k| [(features(&block(k), &[]).unwrap(), Style::Block), (features(&eighths(k), &[]).unwrap(), Style::Alberti)])
            .collect();
        let judge = StyleJudge::fit(&samples).unwrap();
        assert_eq!(judge.judge(&features(&block(7), &[]).unwrap(), 4), Style::Block);
        assert_eq!(judge.judge(&features(&eighths(7), &[]).unwrap(), 4), Style::Alberti);
        // Only styles that fit the meter are named: a waltz judge never says stride in 3/4.
        let waltz = score((0..8).flat_map(|b| [note(b * 1440, 480, 40), note(b * 1440 + 480, 240, 60), note(b * 1440 + 960, 240, 60)]).collect(), 3);
        let samples = vec![(features(&waltz, &[]).unwrap(), Style::Waltz), (features(&block(0), &[]).unwrap(), Style::Stride)];
        let judge = StyleJudge::fit(&samples).unwrap();
        assert_eq!(judge.judge(&features(&block(0), &[]).unwrap(), 3), Style::Waltz);
    }

    #[test]
    fn melody_notes_are_left_out_of_the_features_and_counted_when_kept() {
        let melody = vec![note(0, 480, 72), note(480, 480, 74), note(960, 480, 76)];
        let mut with_tune = block(0);
        with_tune.instruments[0].notes.extend(melody.iter().copied());
        assert_eq!(features(&with_tune, &melody).unwrap(), features(&block(0), &[]).unwrap());
        // One melody note a twelfth of a beat late still counts; one at another pitch does not.
        let played = score(vec![note(40, 480, 72), note(480, 480, 73), note(960, 480, 76)], 4);
        assert_eq!(melody_kept(&played, &melody, 480), (2, 3));
    }

    #[test]
    fn table_rows_per_style_and_overall() {
        let case = |style, judged| Case {
            model: "stage 2".into(),
            lead_sheet: "ls".into(),
            reference: "r".into(),
            reference_style: style,
            beats: 4,
            judged,
            melody_kept: 3,
            melody_notes: 4,
        };
        let report = Report::new(false, 90.0, 10, vec![case(Style::Block, Some(Style::Block)), case(Style::Block, Some(Style::Stride)), case(Style::Bossa, None)]);
        let all = report.rows.iter().find(|r| r.reference_style == "all").unwrap();
        assert_eq!(all.cases, 3);
        assert!((all.judged_as_reference - 100.0 / 3.0).abs() < 1e-9 && (all.chance - 20.0).abs() < 1e-9);
        assert!((all.decoded - 200.0 / 3.0).abs() < 1e-9 && all.melody_kept == 75.0);
        let block = report.rows.iter().find(|r| r.reference_style == "block").unwrap();
        assert_eq!(block.judged_as_reference, 50.0);
        assert!(report.to_markdown().contains("| stage 2 | bossa | 1 | 0.0 | 20.0 |"));
    }
}
