//! The three stage-1 objectives as BOSSA's `Blip2Qformer.forward` computes them (itself LAVIS'
//! `blip2_qformer.py` with a symbolic text side), on plain tensors so each can be checked
//! against a direct computation:
//! - contrastive: similarity = max over the queries of cos(query feature, symbolic feature),
//!   divided by the learned temperature; symmetric cross-entropy with label smoothing 0.1;
//! - matching: hard negatives drawn from softmax(similarity) with the positive pair removed
//!   (ALBEF), binary cross-entropy over [positive, negative audio, negative notes];
//! - generation: next-note prediction of the piano notes, cross-entropy with label smoothing 0.1
//!   per token, averaged per note slot over every shifted position, then weighted per slot.
use tch::{Kind, Reduction, Tensor};

use crate::models::qformer::NOTE_WIDTH;

/// BOSSA (and LAVIS) smooth every cross-entropy but the matching one.
pub const LABEL_SMOOTHING: f64 = 0.1;

/// Label value that takes no part in a loss (PyTorch's default `ignore_index`).
pub const IGNORE: i64 = -100;

/// BOSSA's weight per OctupleMIDI slot: bar, position, instrument, pitch, duration, velocity,
/// time signature, tempo.
pub const SLOT_WEIGHTS: [f64; NOTE_WIDTH as usize] = [0.25, 0.25, 0.05, 0.25, 0.1, 0.05, 0.025, 0.025];

/// Names of the slots, for logging the per-slot generation losses.
pub const SLOT_NAMES: [&str; NOTE_WIDTH as usize] = ["bar", "pos", "ins", "pch", "dur", "vel", "ts", "tmp"];

/// Max-over-queries similarity: `queries` [Ba, Q, D] and `notes` [Bs, D], both normalised, give
/// [Ba, Bs] with entry (i, j) = max_q <queries[i, q], notes[j]>.
pub fn max_over_queries(queries: &Tensor, notes: &Tensor) -> Tensor {
    queries.matmul(&notes.transpose(0, 1)).amax([1i64].as_slice(), false)
}

/// Similarities of this rank's pairs against every rank's, divided by `temp`:
/// (audio-to-symbolic [B, B_all], symbolic-to-audio [B, B_all]). With one process the second is
/// the transpose of the first.
pub fn similarities(audio: &Tensor, symbolic: &Tensor, audio_all: &Tensor, symbolic_all: &Tensor, temp: &Tensor) -> (Tensor, Tensor) {
    let a2s = max_over_queries(audio, symbolic_all) / temp;
    let s2a = max_over_queries(audio_all, symbolic).transpose(0, 1) / temp;
    (a2s, s2a)
}

/// Symmetric contrastive loss; the positive of local row i is global column `offset + i`.
pub fn contrastive(sim_a2s: &Tensor, sim_s2a: &Tensor, offset: i64) -> Tensor {
    let b = sim_a2s.size()[0];
    let targets = Tensor::arange_start(offset, offset + b, (Kind::Int64, sim_a2s.device()));
    let ce = |logits: &Tensor| {
        logits.to_kind(Kind::Float).cross_entropy_loss::<Tensor>(&targets, None, Reduction::Mean, IGNORE, LABEL_SMOOTHING)
    };
    (ce(sim_a2s) + ce(sim_s2a)) / 2.0
}

/// One hard negative per row: index into the B_all columns, drawn from softmax(sim) after the
/// positive (column `offset + i`) is set to -10000, as BOSSA does. Draws use torch's generator.
pub fn hard_negatives(sim: &Tensor, offset: i64) -> Tensor {
    tch::no_grad(|| {
        let b = sim.size()[0];
        let mut sim = sim.to_kind(Kind::Float).copy();
        let rows = Tensor::arange(b, (Kind::Int64, sim.device()));
        let _ = sim.index_put_(&[Some(rows.shallow_clone()), Some(rows + offset)], &Tensor::from(-10000.0f32), false);
        sim.softmax(1, Kind::Float).multinomial(1, false).squeeze_dim(1)
    })
}

/// Labels of the matching pass: the first `batch` rows are positives, the next `2 * batch`
/// negatives (BOSSA's order: pos, neg audio, neg notes).
pub fn matching_labels(batch: i64, device: tch::Device) -> Tensor {
    Tensor::cat(
        &[Tensor::ones([batch], (Kind::Int64, device)), Tensor::zeros([2 * batch], (Kind::Int64, device))],
        0,
    )
}

/// Matching loss: plain cross-entropy of logits [3B, 2] against [`matching_labels`].
pub fn matching(logits: &Tensor) -> Tensor {
    let b = logits.size()[0] / 3;
    let labels = matching_labels(b, logits.device());
    logits.to_kind(Kind::Float).cross_entropy_loss::<Tensor>(&labels, None, Reduction::Mean, IGNORE, 0.0)
}

/// Generation loss of BOSSA's `BertLMHeadModel` with `reduction="none"`: `logits`
/// [B, 8N, V] where row 8i+j predicts slot j of note i+1, `labels` [B, 8N] ([`IGNORE`] where
/// no loss applies). Returns (weighted loss, per-slot losses [8]). As in the reference, ignored
/// positions count as zeros in each slot's mean, so the mean runs over all B x (N-1) shifted
/// notes, not only the labelled ones.
pub fn generation(logits: &Tensor, labels: &Tensor) -> (Tensor, Tensor) {
    let (b, t, v) = logits.size3().expect("generation logits are [batch, 8 x notes, vocab]");
    let shifted = logits.narrow(1, 0, t - NOTE_WIDTH).reshape([-1, v]).to_kind(Kind::Float);
    let targets = labels.narrow(1, NOTE_WIDTH, t - NOTE_WIDTH).reshape([-1]);
    let per_token = shifted.cross_entropy_loss::<Tensor>(&targets, None, Reduction::None, IGNORE, LABEL_SMOOTHING);
    let per_slot = per_token.reshape([b * (t / NOTE_WIDTH - 1), NOTE_WIDTH]).mean_dim(0, false, Kind::Float);
    let weights = Tensor::from_slice(&SLOT_WEIGHTS).to_kind(Kind::Float).to_device(logits.device());
    let weighted = (&per_slot * &weights).sum(Kind::Float) / weights.sum(Kind::Float);
    (weighted, per_slot)
}

/// Stage 2 and the MuseCoco LM: cross-entropy of the target logits [N, V] (fp32) against the
/// target tokens [N].
pub fn next_token(logits: &Tensor, targets: &Tensor) -> super::trainer::MicroLoss {
    let total = logits.cross_entropy_for_logits(targets);
    super::trainer::MicroLoss { parts: vec![("loss".into(), total.double_value(&[]))], total }
}

/// Validation figures of [`next_token`]: loss and next-token accuracy of a REMI model's target logits [N, V] (fp32) and tokens [N]:
/// `loss`, `accuracy`, and `pitch_accuracy` on the `p-*` targets (what copying the lead sheet's
/// melody needs).
pub fn next_token_figures(logits: &Tensor, targets: &Tensor) -> Vec<(String, f64)> {
    let hits = logits.argmax(-1, false).eq_tensor(targets).to_kind(Kind::Float);
    let pitch0 = i64::from(crate::data::encodings::remi::token_id("p-0"));
    let is_pitch = targets.ge(pitch0).logical_and(&targets.lt(pitch0 + 256)).to_kind(Kind::Float);
    let pitches = is_pitch.sum(Kind::Float).double_value(&[]);
    let pitch_hits = (&hits * &is_pitch).sum(Kind::Float).double_value(&[]);
    vec![
        ("loss".into(), logits.cross_entropy_for_logits(targets).double_value(&[])),
        ("accuracy".into(), hits.mean(Kind::Float).double_value(&[])),
        ("pitch_accuracy".into(), if pitches > 0.0 { pitch_hits / pitches } else { f64::NAN }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn to_vec(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).reshape([-1])).unwrap()
    }

    /// Cross-entropy of one row with label smoothing, straight from the definition.
    fn ce_reference(logits: &[f64], target: usize, smoothing: f64) -> f64 {
        let max = logits.iter().cloned().fold(f64::MIN, f64::max);
        let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
        let nll = lse - logits[target];
        let uniform = logits.iter().map(|l| lse - l).sum::<f64>() / logits.len() as f64;
        (1.0 - smoothing) * nll + smoothing * uniform
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    fn normalized(shape: &[i64]) -> Tensor {
        let x = Tensor::randn(shape, (Kind::Double, Device::Cpu));
        &x / x.norm_scalaropt_dim(2.0, [-1i64].as_slice(), true)
    }

    #[test]
    fn contrastive_matches_a_direct_computation() {
        tch::manual_seed(3);
        let (b, q, d) = (4i64, 3i64, 5i64);
        let audio = normalized(&[b, q, d]);
        let notes = normalized(&[b, d]);
        let temp = Tensor::from(0.07f64);
        let (a2s, s2a) = similarities(&audio, &notes, &audio, &notes, &temp);
        let loss = contrastive(&a2s, &s2a, 0).double_value(&[]);

        let (av, nv) = (to_vec(&audio), to_vec(&notes));
        let dot = |i: usize, k: usize, j: usize| (0..d as usize).map(|e| av[(i * q as usize + k) * d as usize + e] * nv[j * d as usize + e]).sum::<f64>();
        let sim = |i: usize, j: usize| (0..q as usize).map(|k| dot(i, k, j)).fold(f64::MIN, f64::max) / 0.07;
        let n = b as usize;
        let mut total = 0.0;
        for i in 0..n {
            let row: Vec<f64> = (0..n).map(|j| sim(i, j)).collect();
            let col: Vec<f64> = (0..n).map(|j| sim(j, i)).collect();
            total += ce_reference(&row, i, 0.1) + ce_reference(&col, i, 0.1);
        }
        let want = total / (2.0 * n as f64);
        assert!(close(loss, want, 1e-6), "got {loss}, want {want}");
        assert!(close(to_vec(&a2s)[n + 2], sim(1, 2), 1e-9));
    }

    #[test]
    fn contrastive_targets_follow_the_rank_offset() {
        // Local rows 0..2 are global columns 2..4 (rank 1 of 2 with batch 2).
        let sim = Tensor::from_slice(&[0.0f32, 0., 5., 0., 0., 0., 0., 5.]).view([2, 4]);
        let loss = contrastive(&sim, &sim, 2).double_value(&[]);
        let want = ce_reference(&[0.0, 0.0, 5.0, 0.0], 2, 0.1);
        assert!(close(loss, want, 1e-6), "got {loss}, want {want}");
    }

    #[test]
    fn matching_is_plain_cross_entropy_over_pos_neg_neg() {
        let logits = Tensor::from_slice(&[0.3f64, 1.2, -0.5, 0.1, 2.0, -1.0, 0.0, 0.4, 1.0, 1.0, -0.2, 0.7]).view([6, 2]);
        let got = matching(&logits).double_value(&[]);
        let v = to_vec(&logits);
        let labels = [1usize, 1, 0, 0, 0, 0];
        let want = (0..6).map(|i| ce_reference(&v[2 * i..2 * i + 2], labels[i], 0.0)).sum::<f64>() / 6.0;
        assert!(close(got, want, 1e-6), "got {got}, want {want}");
    }

    #[test]
    fn hard_negatives_never_pick_the_positive_and_follow_softmax() {
        tch::manual_seed(0);
        let sim = Tensor::from_slice(&[9.0f32, 1.0, 0.0, 2.0, 9.0, 2.0]).view([2, 3]);
        let mut counts = [[0usize; 3]; 2];
        for _ in 0..4000 {
            let picked = Vec::<i64>::try_from(hard_negatives(&sim, 0)).unwrap();
            for (row, &j) in picked.iter().enumerate() {
                counts[row][j as usize] += 1;
            }
        }
        assert_eq!(counts[0][0], 0, "row 0 drew its positive");
        assert_eq!(counts[1][1], 0, "row 1 drew its positive");
        // Row 0: softmax over (1, 0) gives e/(e+1) = 0.731 for column 1.
        let share = counts[0][1] as f64 / 4000.0;
        assert!((share - 0.731).abs() < 0.03, "column 1 share {share}");
        // Row 1: columns 0 and 2 tie.
        let share = counts[1][0] as f64 / 4000.0;
        assert!((share - 0.5).abs() < 0.03, "column 0 share {share}");
        // With an offset, the positive is column offset + row.
        let wide = Tensor::zeros([2, 4], (Kind::Float, Device::Cpu));
        for _ in 0..200 {
            let picked = Vec::<i64>::try_from(hard_negatives(&wide, 2)).unwrap();
            assert!(picked[0] != 2 && picked[1] != 3, "{picked:?}");
        }
    }

    #[test]
    fn generation_matches_the_reference_reduction() {
        tch::manual_seed(5);
        let (b, n, v) = (2i64, 3i64, 6i64);
        let logits = Tensor::randn([b, n * NOTE_WIDTH, v], (Kind::Double, Device::Cpu));
        // Note 0 of row 0 is a lead-sheet note (never a label), note 2 of row 1 is padding.
        let mut labels: Vec<i64> = (0..b * n * NOTE_WIDTH).map(|i| (i * 7 + 3) % v).collect();
        labels[0..8].fill(IGNORE);
        labels[(n * NOTE_WIDTH + 2 * NOTE_WIDTH) as usize..(2 * n * NOTE_WIDTH) as usize].fill(IGNORE);
        let labels_t = Tensor::from_slice(&labels).view([b, n * NOTE_WIDTH]);
        let (weighted, per_slot) = generation(&logits, &labels_t);

        let lv = to_vec(&logits);
        let mut slot_sum = [0.0f64; 8];
        let rows = (b * (n - 1)) as f64;
        for bi in 0..b as usize {
            for note in 0..(n - 1) as usize {
                for slot in 0..8 {
                    let pred = (bi * n as usize + note) * 8 + slot;
                    let label = labels[(bi * n as usize + note + 1) * 8 + slot];
                    if label != IGNORE {
                        slot_sum[slot] += ce_reference(&lv[pred * v as usize..(pred + 1) * v as usize], label as usize, 0.1);
                    }
                }
            }
        }
        let want_slots: Vec<f64> = slot_sum.iter().map(|s| s / rows).collect();
        let got_slots = to_vec(&per_slot);
        for (g, w) in got_slots.iter().zip(&want_slots) {
            assert!(close(*g, *w, 1e-5), "slots {got_slots:?} vs {want_slots:?}");
        }
        let want = want_slots.iter().zip(SLOT_WEIGHTS).map(|(s, w)| s * w).sum::<f64>() / SLOT_WEIGHTS.iter().sum::<f64>();
        assert!(close(weighted.double_value(&[]), want, 1e-5));
    }
}
