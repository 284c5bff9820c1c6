//! Audio-to-MIDI retrieval, the protocol of the paper's Table 2 and Table 3 (SPEC 7).
//!
//! Per run, `queries` (audio window, MIDI segment) pairs are drawn from the test split (mixed
//! across sources as configured); each audio query ranks every MIDI candidate of the run by the
//! stage-1 similarity (max over the queries' cosine similarities). Acc@1, Acc@5 and the mean rank
//! of the true candidate are averaged over `runs` resampled runs and reported as mean +- standard
//! error (std with ddof 1 / sqrt(runs)), with and without a random transposition of the
//! candidates, beside a random-guess row and one row per source.
use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use tch::{Kind, Tensor};

use crate::data::loader::{Batch, Loader, LoaderOptions, PairSet, Stage};
use crate::data::pairing::KeyedRng;
use crate::data::split::Split;
use crate::train::losses::max_over_queries;

/// How ranks treat equal scores; printed with every report.
pub const TIE_RULE: &str = "rank = 1 + the number of other candidates scoring at least as high as the true match \
(ties count against the query, so a model that scores every candidate alike ranks last, not first)";

/// The `eval.retrieval` config section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetrievalConfig {
    pub runs: usize,
    /// Pairs per run: every query is ranked against this many candidates.
    pub queries: usize,
    /// Pairs per source in a run (source = the name of a `--data` folder); empty = split evenly.
    pub mix: BTreeMap<String, usize>,
    /// Semitone range of the random transposition of the candidates (inclusive).
    pub transpose: [i32; 2],
    pub split: Split,
    pub seed: u64,
    /// Pairs embedded per forward pass.
    pub batch_size: usize,
}

impl Default for RetrievalConfig {
    /// The paper: 10 runs of 128 pairs (64 PIAST + 64 POP909), transposition as in training.
    fn default() -> Self {
        Self { runs: 10, queries: 128, mix: BTreeMap::new(), transpose: [-6, 5], split: Split::Test, seed: 0, batch_size: 32 }
    }
}

impl crate::yaml::Validate for RetrievalConfig {
    fn validate(&self, at: &str, p: &mut crate::yaml::Problems) {
        p.check(self.runs >= 1, at, "runs", || "is 0; must be at least 1".into());
        p.check(self.queries >= 1, at, "queries", || "is 0; must be at least 1".into());
        p.check(self.batch_size >= 1, at, "batch_size", || "is 0; must be at least 1".into());
        let [lo, hi] = self.transpose;
        p.check(lo <= hi, at, "transpose", || format!("is [{lo}, {hi}]; low must not exceed high"));
    }
}

/// Rank of the true match of each query: `sim` is [n, n] (query i's true candidate is column i).
/// Pessimistic on ties ([`TIE_RULE`]): BOSSA's `argsort` breaks them arbitrarily, and an optimistic
/// rule would reward a collapsed model with Acc@1 = 100 %.
pub fn ranks(sim: &[f32], n: usize) -> Vec<usize> {
    (0..n)
        .map(|i| {
            let row = &sim[i * n..(i + 1) * n];
            1 + row.iter().enumerate().filter(|&(j, &s)| j != i && s >= row[i]).count()
        })
        .collect()
}

/// How one query fared, for error analysis (kept in `retrieval.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryOutcome {
    /// The row label (`Row::data`) of the draw.
    pub data: String,
    pub run: usize,
    pub transposed: bool,
    /// `song#segment` of the query and of its best-scoring candidate.
    pub query: String,
    pub top1: String,
    pub rank: usize,
}

impl QueryOutcome {
    /// Whether the best candidate is another window of the query's own song: with 2-bar hops,
    /// neighbouring windows share half their bars, the hardest confusion the protocol has.
    pub fn top1_same_song(&self) -> bool {
        fn song(id: &str) -> &str {
            id.rsplit_once('#').map_or(id, |(song, _)| song)
        }
        self.top1 != self.query && song(&self.top1) == song(&self.query)
    }
}

/// Figures of one run, in percent (accuracies) and candidates (mean rank).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub acc1: f64,
    pub acc5: f64,
    pub mean_rank: f64,
}

pub fn figures(ranks: &[usize]) -> Figures {
    let n = ranks.len().max(1) as f64;
    let share = |k: usize| 100.0 * ranks.iter().filter(|&&r| r <= k).count() as f64 / n;
    Figures { acc1: share(1), acc5: share(5), mean_rank: ranks.iter().sum::<usize>() as f64 / n }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub mean: f64,
    /// Standard error: sample std (ddof 1) / sqrt(runs); 0 for a single run.
    pub se: f64,
}

fn estimate(values: &[f64]) -> Estimate {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let se = if values.len() > 1 {
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() / n.sqrt()
    } else {
        0.0
    };
    Estimate { mean, se }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub acc1: Estimate,
    pub acc5: Estimate,
    pub mean_rank: Estimate,
    pub runs: Vec<Figures>,
}

pub fn summarize(runs: &[Figures]) -> Summary {
    let pick = |f: fn(&Figures) -> f64| estimate(&runs.iter().map(f).collect::<Vec<_>>());
    Summary { acc1: pick(|f| f.acc1), acc5: pick(|f| f.acc5), mean_rank: pick(|f| f.mean_rank), runs: runs.to_vec() }
}

/// A scorer that ranks by uniformly random scores: each true match lands at a uniform rank.
pub fn random_guess(queries: usize, runs: usize, seed: u64) -> Summary {
    let per_run: Vec<Figures> = (0..runs)
        .map(|run| {
            let mut rng = KeyedRng::new(&[seed, run as u64, 0x5241_4e44]);
            let ranks: Vec<usize> = (0..queries).map(|_| rng.int_in(1, queries as i64) as usize).collect();
            figures(&ranks)
        })
        .collect();
    summarize(&per_run)
}

/// What the protocol needs from a model: stage-1 features of a batch, audio [B, Q, D] and
/// symbolic [B, D], both normalised.
pub trait Embedder {
    fn embed(&mut self, batch: &Batch) -> Result<(Tensor, Tensor)>;
}

/// One source of test pairs (a prepared folder).
pub struct Source {
    pub name: String,
    pub set: Arc<PairSet>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub model: String,
    /// "pop909 64 + piast 64", or one source.
    pub data: String,
    pub transposed: bool,
    pub queries: usize,
    pub summary: Summary,
    /// Percentage of queries whose best candidate is another window of their own song (none
    /// for the random-guess row).
    pub top1_same_song: Option<Estimate>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub checkpoint: String,
    pub tie_rule: String,
    pub config: RetrievalConfig,
    pub rows: Vec<Row>,
    pub queries: Vec<QueryOutcome>,
}

/// Rows of `source` drawn for `run`: `count` distinct indices (partial Fisher-Yates keyed by
/// (seed, run, source)).
fn draw_rows(len: usize, count: usize, seed: u64, run: usize, source: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    let mut rng = KeyedRng::new(&[seed, run as u64, source as u64, 0x5245_5452]);
    for i in 0..count {
        let j = rng.int_in(i as i64, len as i64 - 1) as usize;
        order.swap(i, j);
    }
    order.truncate(count);
    order
}

/// Pairs per source in one run.
fn counts(cfg: &RetrievalConfig, sources: &[Source]) -> Result<Vec<usize>> {
    let counts: Vec<usize> = if cfg.mix.is_empty() {
        let k = sources.len();
        (0..k).map(|i| cfg.queries / k + usize::from(i < cfg.queries % k)).collect()
    } else {
        for name in cfg.mix.keys() {
            ensure!(
                sources.iter().any(|s| &s.name == name),
                "eval.retrieval.mix names source `{name}`, but the --data folders are {:?}",
                sources.iter().map(|s| &s.name).collect::<Vec<_>>()
            );
        }
        let counts: Vec<usize> = sources.iter().map(|s| cfg.mix.get(&s.name).copied().unwrap_or(0)).collect();
        ensure!(
            counts.iter().sum::<usize>() == cfg.queries,
            "eval.retrieval.mix sums to {}, but eval.retrieval.queries is {}",
            counts.iter().sum::<usize>(),
            cfg.queries
        );
        counts
    };
    for (source, &count) in sources.iter().zip(&counts) {
        ensure!(
            source.set.rows.len() >= count,
            "source `{}` has {} {} pairs; a run needs {count} of them (lower eval.retrieval.queries or set eval.retrieval.mix)",
            source.name,
            source.set.rows.len(),
            source.set.split
        );
    }
    Ok(counts)
}

/// Outcomes of one run: embed the drawn pairs (candidates transposed when `transposed`) and rank.
fn run_ranks(
    model: &mut dyn Embedder,
    sources: &[Source],
    counts: &[usize],
    cfg: &RetrievalConfig,
    options: &LoaderOptions,
    run: usize,
    transposed: bool,
) -> Result<Vec<QueryOutcome>> {
    let mut rows = Vec::new();
    for (s, (source, &count)) in sources.iter().zip(counts).enumerate() {
        rows.extend(draw_rows(source.set.rows.len(), count, cfg.seed, run, s).into_iter().map(|r| source.set.rows[r].clone()));
    }
    let n = rows.len();
    let ids: Vec<String> = rows.iter().map(|r| format!("{}#{}", r.song_id, r.segment_index)).collect();
    let set = Arc::new(PairSet { split: sources[0].set.split, layout: sources[0].set.layout.clone(), rows });
    let loader = Loader::new(set, LoaderOptions { augment: transposed, ..options.clone() })?;
    let (mut audio, mut symbolic) = (Vec::new(), Vec::new());
    for batch in loader.batches(run as u64, 0) {
        let (a, s) = tch::no_grad(|| model.embed(&batch))?;
        audio.push(a.to_kind(Kind::Float));
        symbolic.push(s.to_kind(Kind::Float));
    }
    let sim = max_over_queries(&Tensor::cat(&audio, 0), &Tensor::cat(&symbolic, 0));
    let sim: Vec<f32> = Vec::try_from(sim.reshape([-1]).to_device(tch::Device::Cpu)).context("similarity matrix")?;
    let outcomes = ranks(&sim, n)
        .into_iter()
        .enumerate()
        .map(|(i, rank)| {
            let row = &sim[i * n..(i + 1) * n];
            // Ties go against the query, as in the rank.
            let rival = (0..n).filter(|&j| j != i).reduce(|best, j| if row[j] > row[best] { j } else { best });
            let best = rival.filter(|&j| row[j] >= row[i]).unwrap_or(i);
            QueryOutcome { data: String::new(), run, transposed, query: ids[i].clone(), top1: ids[best].clone(), rank }
        })
        .collect();
    Ok(outcomes)
}

/// The full protocol: mixed rows with and without transposition, a random-guess row, and (with
/// several sources) one row per source.
pub fn evaluate(model: &mut dyn Embedder, sources: &[Source], cfg: &RetrievalConfig, options: &LoaderOptions, checkpoint: &str) -> Result<Report> {
    ensure!(!sources.is_empty(), "no test data given");
    ensure!(cfg.runs >= 1 && cfg.queries >= 1, "eval.retrieval needs at least one run of one query");
    for s in &sources[1..] {
        ensure!(s.set.layout == sources[0].set.layout, "sources `{}` and `{}` have different audio layouts", sources[0].name, s.name);
    }
    let options = LoaderOptions {
        stage: Stage::Stage1,
        batch_size: cfg.batch_size.max(1),
        seed: cfg.seed,
        shuffle: false,
        max_shift_frames: 0,
        transpose: (cfg.transpose[0], cfg.transpose[1]),
        drop_last: false,
        workers: 1,
        prefetch: 1,
        ..options.clone()
    };
    let mut groups: Vec<(String, Vec<usize>, Vec<usize>)> = Vec::new();
    let mixed = counts(cfg, sources)?;
    let label = sources.iter().zip(&mixed).map(|(s, c)| format!("{} {c}", s.name)).collect::<Vec<_>>().join(" + ");
    groups.push((label, (0..sources.len()).collect(), mixed));
    if sources.len() > 1 {
        for (i, s) in sources.iter().enumerate() {
            let count = cfg.queries.min(s.set.rows.len());
            groups.push((s.name.clone(), vec![i], vec![count]));
        }
    }
    let (mut rows, mut outcomes) = (Vec::new(), Vec::new());
    for (label, members, counts) in groups {
        let picked: Vec<Source> = members.iter().map(|&i| Source { name: sources[i].name.clone(), set: Arc::clone(&sources[i].set) }).collect();
        let queries = counts.iter().sum();
        let summary = random_guess(queries, cfg.runs, cfg.seed);
        rows.push(Row { model: "random guess".into(), data: label.clone(), transposed: false, queries, summary, top1_same_song: None });
        for transposed in [false, true] {
            let (mut per_run, mut same_song) = (Vec::new(), Vec::new());
            for run in 0..cfg.runs {
                let run_outcomes = run_ranks(model, &picked, &counts, cfg, &options, run, transposed)?;
                per_run.push(figures(&run_outcomes.iter().map(|o| o.rank).collect::<Vec<_>>()));
                let share = run_outcomes.iter().filter(|o| o.top1_same_song()).count() as f64 / run_outcomes.len() as f64;
                same_song.push(100.0 * share);
                outcomes.extend(run_outcomes.into_iter().map(|o| QueryOutcome { data: label.clone(), ..o }));
            }
            let summary = summarize(&per_run);
            rows.push(Row { model: "stage 1".into(), data: label.clone(), transposed, queries, summary, top1_same_song: Some(estimate(&same_song)) });
        }
    }
    Ok(Report { checkpoint: checkpoint.to_string(), tie_rule: TIE_RULE.to_string(), config: cfg.clone(), rows, queries: outcomes })
}

impl Report {
    pub fn to_markdown(&self) -> String {
        let mut out = format!(
            "## Audio-to-MIDI retrieval ({} runs; checkpoint {})\n\n| Model | Data | Candidates transposed | Queries | Acc@1 (%) | Acc@5 (%) | Mean rank | Top-1 another window of the song (%) |\n|---|---|---|---|---|---|---|---|\n",
            self.config.runs, self.checkpoint
        );
        for row in &self.rows {
            let s = &row.summary;
            let f = |e: &Estimate| format!("{:.1} ± {:.1}", e.mean, e.se);
            out += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
                row.model,
                row.data,
                if row.transposed { "yes" } else { "no" },
                row.queries,
                f(&s.acc1),
                f(&s.acc5),
                f(&s.mean_rank),
                row.top1_same_song.as_ref().map_or("–".to_string(), f)
            );
        }
        out += &format!("\nMean ± standard error over runs (std ddof 1 / sqrt(runs)). Tie rule: {}.\n", self.tie_rule);
        out += "Last column: queries whose best candidate is another window of their own song (2-bar hops make \
neighbouring windows share half their bars); every query's rank and best candidate are in retrieval.json.\n";
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_count_higher_and_tied_scores_against_the_query() {
        // Row 0: true score 0.5, one higher and one tied -> rank 3. Row 1: true 0.9, tied with
        // columns 0 and 2 -> rank 3. Row 2: true 0.3, both others lower -> rank 1.
        let sim = [0.5f32, 0.7, 0.5, 0.9, 0.9, 0.9, 0.2, 0.1, 0.3];
        assert_eq!(ranks(&sim, 3), vec![3, 3, 1]);
        // All tied (a collapsed model): every query ranks last.
        assert_eq!(ranks(&[1.0f32; 4], 2), vec![2, 2]);
    }

    #[test]
    fn same_song_confusions_are_other_windows_of_the_query_song() {
        let outcome = |query: &str, top1: &str| QueryOutcome {
            data: String::new(),
            run: 0,
            transposed: false,
            query: query.into(),
            top1: top1.into(),
            rank: 2,
        };
        assert!(outcome("ls000_block#1", "ls000_block#0").top1_same_song());
        assert!(!outcome("ls000_block#1", "ls000_block#1").top1_same_song(), "a hit is no confusion");
        assert!(!outcome("ls000_block#1", "ls000_alberti#1").top1_same_song());
        assert!(outcome("a#b#12", "a#b#3").top1_same_song(), "the segment is after the last #");
    }

    #[test]
    fn figures_and_standard_error_by_hand() {
        let f = figures(&[1, 2, 6, 1, 5]);
        assert_eq!(f, Figures { acc1: 40.0, acc5: 80.0, mean_rank: 3.0 });
        let s = summarize(&[Figures { acc1: 10.0, acc5: 20.0, mean_rank: 4.0 }, Figures { acc1: 20.0, acc5: 40.0, mean_rank: 2.0 }]);
        // std ddof 1 of (10, 20) = 7.0711; / sqrt(2) = 5.
        assert!((s.acc1.mean - 15.0).abs() < 1e-12 && (s.acc1.se - 5.0).abs() < 1e-12);
        assert!((s.mean_rank.se - 1.0).abs() < 1e-12);
        assert_eq!(summarize(&[f]).acc1.se, 0.0);
    }

    #[test]
    fn random_guess_is_near_its_expectation() {
        // 128 candidates: Acc@1 = 1/128 = 0.78 %, Acc@5 = 3.9 %, mean rank 64.5.
        let s = random_guess(128, 200, 1);
        assert!((s.acc1.mean - 0.78).abs() < 0.2, "{:?}", s.acc1);
        assert!((s.acc5.mean - 3.9).abs() < 0.5, "{:?}", s.acc5);
        assert!((s.mean_rank.mean - 64.5).abs() < 1.5, "{:?}", s.mean_rank);
    }

    #[test]
    fn draws_are_distinct_and_reproducible() {
        let a = draw_rows(50, 20, 3, 1, 0);
        let mut sorted = a.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 20);
        assert_eq!(a, draw_rows(50, 20, 3, 1, 0));
        assert_ne!(a, draw_rows(50, 20, 3, 2, 0));
    }
}
