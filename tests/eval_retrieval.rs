//! The retrieval protocol end to end with a scripted embedder whose rankings are known by hand:
//! swapped pairs and tied scores count against the query, transposition of the
//! candidates leaves a pitch-blind embedder unchanged, per-source rows appear with several
//! sources, and data too small for the configured mix is refused.
use std::collections::BTreeMap;
use std::sync::Arc;

use stylebridge::data::loader::{Batch, LoaderOptions, PairSet, Stage, Symbolic};
use stylebridge::data::shards::{AudioLayout, PairRow};
use stylebridge::data::split::Split;
use stylebridge::eval::retrieval::{evaluate, Embedder, RetrievalConfig, Source};
use tch::{Kind, Tensor};

const FRAMES: usize = 8;

/// Row `id`: every code is `id`, and the first piano note's bar token is `4 + id`.
fn row(id: u16) -> PairRow {
    let note = |bar: u16| vec![4 + bar, 260, 388, 517 + 60, 777, 921, 943, 1207];
    PairRow::synthetic(&format!("s{id}"), Split::Test, 0, vec![id; 4 * FRAMES], note(0), note(id))
}

fn source(name: &str, ids: std::ops::Range<u16>) -> Source {
    let layout = AudioLayout { sample_rate: 32000, frame_rate: 50.0, n_q: 4, pad_code: 64, window_frames: FRAMES, margin_frames: 0, encodec: "t".into() };
    Source { name: name.into(), set: Arc::new(PairSet { split: Split::Test, layout, rows: ids.map(row).collect() }) }
}

/// Audio of row k = e_k; notes of row k = e_sigma(k), sigma swapping 0 and 1 and sending 7 to 6.
struct Scripted {
    dims: i64,
}

impl Scripted {
    fn sigma(k: i64) -> i64 {
        match k {
            0 => 1,
            1 => 0,
            7 => 6,
            k => k,
        }
    }
}

impl Embedder for Scripted {
    fn embed(&mut self, batch: &Batch) -> anyhow::Result<(Tensor, Tensor)> {
        let Symbolic::Stage1 { notes, tokens, .. } = &batch.symbolic else { unreachable!() };
        let width = notes * 8;
        let audio_ids: Vec<i64> = (0..batch.len()).map(|b| batch.codes[b * 4 * FRAMES]).collect();
        // Lead sheet note (8), <s> note (8), then the first piano note's bar token.
        let note_ids: Vec<i64> = (0..batch.len()).map(|b| Self::sigma(tokens[b * width + 16] - 4)).collect();
        let one_hot = |ids: &[i64]| Tensor::from_slice(ids).one_hot(self.dims).to_kind(Kind::Float);
        Ok((one_hot(&audio_ids).unsqueeze(1), one_hot(&note_ids)))
    }
}

fn options() -> LoaderOptions {
    LoaderOptions { max_notes: 4, workers: 1, ..LoaderOptions::training(Stage::Stage1, 3, 0) }
}

#[test]
fn hand_computed_rankings_with_ties_and_transposition() {
    // All 8 rows in every run. Ranks: 8, 8 (swapped pair: the true score 0 ties with the six
    // other zeros, one candidate scores 1), 1 x 4, 2 (row 6 ties with row 7's notes at 1),
    // 8 (row 7 scores 0 against every candidate: all tied).
    let cfg = RetrievalConfig { runs: 3, queries: 8, batch_size: 3, ..Default::default() };
    let report = evaluate(&mut Scripted { dims: 8 }, &[source("a", 0..8)], &cfg, &options(), "scripted").unwrap();
    assert_eq!(report.rows.len(), 3);
    assert_eq!(report.rows[0].model, "random guess");
    for row in &report.rows[1..] {
        let s = &row.summary;
        assert_eq!((s.acc1.mean, s.acc5.mean, s.mean_rank.mean), (50.0, 62.5, 3.75), "{row:?}");
        assert_eq!(s.acc1.se, 0.0, "every run holds the same 8 pairs");
        assert_eq!(s.runs.len(), 3);
    }
    assert!(report.rows[2].transposed && !report.rows[1].transposed);
    let md = report.to_markdown();
    assert!(md.contains("| stage 1 | a 8 | yes | 8 | 50.0 ± 0.0 | 62.5 ± 0.0 | 3.8 ± 0.0 |"), "{md}");
    assert!(md.contains("at least as high"), "the tie rule is stated: {md}");
}

#[test]
fn mixed_sources_give_per_source_rows_and_too_little_data_is_refused() {
    let sources = [source("a", 0..8), source("b", 8..16)];
    let cfg = RetrievalConfig { runs: 2, queries: 6, batch_size: 4, mix: BTreeMap::from([("a".into(), 2), ("b".into(), 4)]), ..Default::default() };
    let report = evaluate(&mut Scripted { dims: 16 }, &sources, &cfg, &options(), "scripted").unwrap();
    let data: Vec<&str> = report.rows.iter().map(|r| r.data.as_str()).collect();
    assert_eq!(data, ["a 2 + b 4", "a 2 + b 4", "a 2 + b 4", "a", "a", "a", "b", "b", "b"]);
    // Source b holds no swapped or tied rows: perfect retrieval there.
    assert_eq!(report.rows[7].summary.acc1.mean, 100.0);

    let greedy = RetrievalConfig { queries: 12, mix: BTreeMap::from([("a".into(), 10), ("b".into(), 2)]), ..cfg.clone() };
    let err = evaluate(&mut Scripted { dims: 16 }, &sources, &greedy, &options(), "x").unwrap_err().to_string();
    assert!(err.contains("source `a` has 8 test pairs; a run needs 10"), "{err}");
    let wrong = RetrievalConfig { mix: BTreeMap::from([("c".into(), 6)]), ..cfg };
    let err = evaluate(&mut Scripted { dims: 16 }, &sources, &wrong, &options(), "x").unwrap_err().to_string();
    assert!(err.contains("names source `c`"), "{err}");
}
