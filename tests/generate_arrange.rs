//! The window loop end to end on a tiny random MuseCoco (seeded, CPU): grammar-constrained
//! sampling always yields tokens `remi::decode` reads with exactly the passage's bars; draws are
//! reproducible; a batch of samples equals each sample drawn alone; and the recurrent, batched
//! loop equals a slow reference that rebuilds every window's whole sequence and runs the parallel
//! form for every token (so the prompts, the carried bars and the positions are the ones intended).
use std::sync::Mutex;

use stylebridge::data::encodings::remi;
use stylebridge::data::midi::{Instrument, Note, Score, TempoChange, TimeSignature};
use stylebridge::generate::{arrange, windows, ArrangeConfig, DrawKey, End, Grammar, Passage, SampleTokens, SamplingConfig, Window};
use stylebridge::models::musecoco::{MuseCoco, MuseCocoConfig};
use tch::{nn::VarStore, Device, Kind, Tensor};

const EMBD: i64 = 16;
const QUERIES: i64 = 4;

/// Models are built one at a time, so each seed always gives the same weights even though tests
/// run on parallel threads sharing libtorch's generator.
static SEEDED: Mutex<()> = Mutex::new(());

fn model(seed: i64) -> (VarStore, MuseCoco) {
    let _one_at_a_time = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
    // Tiny ops on parallel test threads: intra-op workers would only wait on each other.
    tch::set_num_threads(1);
    tch::manual_seed(seed);
    let cfg = MuseCocoConfig { vocab_size: remi::VOCAB_SIZE as i64, n_embd: EMBD, n_head: 2, n_layer: 2, ffn_dim: 32, ..MuseCocoConfig::xlarge() };
    let vs = VarStore::new(Device::Cpu);
    let model = MuseCoco::new(vs.root(), &cfg);
    (vs, model)
}

/// A lead sheet: melody on beats 1 and 3 (two beats each), a triad per bar.
fn lead_sheet(meter: (u32, u32), bars: u32, bpm: f64) -> Score {
    let tpb = 480;
    let bar = tpb * 4 * meter.0 / meter.1;
    let melody = (0..bars)
        .flat_map(|b| [0, 2].map(|beat| Note { start: b * bar + beat * tpb, end: b * bar + beat * tpb + tpb, pitch: 67 + (b % 4) as u8, velocity: 90 }))
        .filter(|n| n.end <= bars * bar)
        .collect();
    let chords = (0..bars).flat_map(|b| [48u8, 52, 55].map(|pitch| Note { start: b * bar, end: (b + 1) * bar, pitch, velocity: 80 })).collect();
    Score {
        ticks_per_beat: tpb,
        instruments: vec![
            Instrument { name: "MELODY".into(), program: 0, is_drum: false, notes: melody, control_changes: Vec::new() },
            Instrument { name: "CHORDS".into(), program: 4, is_drum: false, notes: chords, control_changes: Vec::new() },
        ],
        tempo_changes: vec![TempoChange { tick: 0, bpm }],
        time_signatures: vec![TimeSignature { tick: 0, numerator: meter.0, denominator: meter.1 }],
    }
}

/// A soft prompt that depends on the window and the row, without the global generator.
fn soft_prompt(window: &Window, rows: i64) -> Tensor {
    let n = rows * QUERIES * EMBD;
    ((Tensor::arange(n, (Kind::Float, Device::Cpu)) * 0.37 + 1.3 * window.index as f64).sin() * 2.0).view([rows, QUERIES, EMBD])
}

fn config(seed: u64, temperature: f64, top_k: Option<usize>, top_p: Option<f64>, cap: usize) -> ArrangeConfig {
    ArrangeConfig { sampling: SamplingConfig { temperature, top_k, top_p, seed }, max_new_tokens: Some(cap), ..ArrangeConfig::default() }
}

fn run(model: &MuseCoco, passage: &Passage, samples: std::ops::Range<u64>, cfg: &ArrangeConfig) -> Vec<SampleTokens> {
    arrange(model, passage, samples, cfg, |w| Ok(soft_prompt(w, 1))).unwrap().samples
}

/// Every bar decodes, carries the lead sheet's header, and holds its notes inside it.
fn check_sample(passage: &Passage, sample: &SampleTokens, cap: usize) -> usize {
    assert_eq!(sample.bars.len(), passage.len(), "sample {}: one token list per passage bar", sample.sample);
    let mut notes = 0;
    for (index, (tokens, bar)) in sample.bars.iter().zip(passage.bars()).enumerate() {
        let spec = bar.spec;
        assert_eq!(tokens[..2], [remi::TIME_SIGNATURE + spec.time_signature(), remi::TEMPO + spec.tempo()], "bar {index} header");
        assert_eq!(tokens.iter().filter(|&&t| t == remi::BAR_END).count(), 1);
        assert_eq!(tokens.last(), Some(&remi::BAR_END));
        for n in remi::decode(tokens).unwrap_or_else(|e| panic!("bar {index}: {e}")) {
            assert!(n.position < spec.length() && n.time_signature == spec.time_signature() && n.tempo == spec.tempo());
            assert!(n.program < 128 && n.pitch < 128 && n.duration >= 1 && n.velocity < 32);
            notes += 1;
        }
    }
    let all: Vec<u32> = sample.bars.concat();
    let decoded = remi::decode(&all).unwrap();
    assert!(decoded.iter().all(|n| (n.bar as usize) < passage.len()));
    assert_eq!(all.iter().filter(|&&t| t == remi::BAR_END).count(), passage.len());
    assert_eq!(sample.windows.len(), windows(passage.len()).len());
    assert!(sample.windows.iter().all(|w| w.new_tokens <= cap));
    let score = passage.to_score(&sample.bars).unwrap();
    assert_eq!(score.note_count(), notes);
    notes
}

#[test]
fn sampled_tokens_always_decode_to_the_passage_bars() {
    let (_vs, model) = model(11);
    let four = Passage::new(&lead_sheet((4, 4), 8, 120.0), 0, None).unwrap();
    let three = Passage::new(&lead_sheet((3, 4), 5, 90.0), 0, None).unwrap();
    let short = Passage::new(&lead_sheet((4, 4), 3, 100.0), 0, None).unwrap();
    assert_eq!((four.len(), three.len(), short.len()), (8, 5, 3));
    let settings = [
        (1, 1.0, Some(15), None),
        (3, 1.0, Some(15), None),
        (3, 5.0, None, None),
        (1, 1.0, None, Some(0.9)),
        (3, 2.0, Some(15), Some(0.95)),
    ];
    let (mut notes, mut ends) = (0, Vec::new());
    for (k, temperature, top_k, top_p) in settings {
        for seed in 0..3 {
            let cap = 40;
            let cfg = config(seed, temperature, top_k, top_p, cap);
            for passage in [&four, &three, &short] {
                let samples = run(&model, passage, 0..k, &cfg);
                assert_eq!(samples.len(), k as usize);
                for s in &samples {
                    notes += check_sample(passage, s, cap);
                    ends.extend(s.windows.iter().map(|w| w.end));
                }
            }
        }
    }
    // The checks above ran on real content: notes were written, and windows ended on `</s>` and
    // by the budget (a random model rarely closes every bar itself; the grammar's tests cover it).
    assert!(notes > 100, "{notes} notes in all");
    for end in [End::EndToken, End::Budget] {
        assert!(ends.contains(&end), "no window ended with {end:?}");
    }
}

#[test]
fn a_window_must_write_every_bar_without_the_end_token() {
    let (_vs, model) = model(12);
    let passage = Passage::new(&lead_sheet((4, 4), 6, 120.0), 0, None).unwrap();
    let cfg = ArrangeConfig { end_token: false, ..config(3, 1.0, Some(15), None, 30) };
    for s in run(&model, &passage, 0..3, &cfg) {
        check_sample(&passage, &s, 30);
        assert!(s.windows.iter().all(|w| w.end != End::EndToken));
    }
}

#[test]
fn same_seed_same_tokens_other_seed_other_tokens() {
    let (_vs, model) = model(13);
    let passage = Passage::new(&lead_sheet((4, 4), 8, 120.0), 0, None).unwrap();
    let cfg = ArrangeConfig { end_token: false, ..config(5, 1.0, Some(15), None, 40) };
    let a = run(&model, &passage, 0..3, &cfg);
    let b = run(&model, &passage, 0..3, &cfg);
    assert_eq!(a, b);
    let other = ArrangeConfig { sampling: SamplingConfig { seed: 6, ..cfg.sampling.clone() }, ..cfg.clone() };
    let c = run(&model, &passage, 0..3, &other);
    for (x, y) in a.iter().zip(&c) {
        assert_ne!(x.bars, y.bars, "sample {}", x.sample);
    }
    // Different samples of one seed differ too.
    assert_ne!(a[0].bars, a[1].bars);
}

#[test]
fn batched_samples_equal_samples_drawn_alone() {
    let (vs, model) = model(14);
    // At the N(0, 0.02) init every linear-attention score is near one and the logits near flat:
    // a few soft-prompt positions among a hundred move no draw across a token boundary. Sharpen
    // attention and head so that conditioning shows in the tokens.
    for (name, mut var) in vs.variables() {
        let gain = if name.contains("self_attn") { 10.0 } else if name.starts_with("lm_head") { 50.0 } else { 1.0 };
        let _ = tch::no_grad(|| var.g_mul_scalar_(gain));
    }
    let passage = Passage::new(&lead_sheet((3, 4), 7, 100.0), 1, Some(6)).unwrap();
    // Every bar written (no `</s>`), so each sample has notes enough to show its conditioning.
    let cfg = ArrangeConfig { end_token: false, ..config(9, 1.5, Some(15), None, 36) };
    // One soft prompt shared by all samples, and one per sample.
    let batched = run(&model, &passage, 0..3, &cfg);
    let own = arrange(&model, &passage, 0..3, &cfg, |w| Ok(soft_prompt(w, 3))).unwrap().samples;
    for i in 0..3u64 {
        let alone = run(&model, &passage, i..i + 1, &cfg);
        assert_eq!(alone[0], batched[i as usize], "sample {i}, shared soft prompt");
        let alone = arrange(&model, &passage, i..i + 1, &cfg, |w| Ok(soft_prompt(w, 3).narrow(0, i as i64, 1))).unwrap().samples;
        assert_eq!(alone[0], own[i as usize], "sample {i}, own soft prompt");
    }
    assert_ne!(batched, own, "the soft prompt conditions the samples");
}

/// The reference: for every token, the whole sequence (soft prompt, stage-2 prefix, the window's
/// lead sheet, `<sep>`, the carried bars as the previous windows wrote them, the new tokens)
/// through the parallel form; the same grammar and keyed draws.
fn reference(model: &MuseCoco, passage: &Passage, sample: u64, cfg: &ArrangeConfig) -> Vec<Vec<u32>> {
    let mut bars: Vec<Vec<u32>> = Vec::new();
    for window in windows(passage.len()) {
        let mut prompt = remi::stage2_prefix();
        prompt.extend(passage.lead_tokens(window.bars.clone()));
        prompt.push(remi::SEP);
        prompt.extend(bars[window.carried.clone()].concat());
        let grammar = Grammar::new(passage.bar_specs(window.generated()), cfg.max_new_tokens.unwrap()).unwrap();
        let mut grammar = if cfg.end_token { grammar } else { grammar.without_end_token() };
        let mut new: Vec<u32> = Vec::new();
        while !grammar.is_done() {
            let ids: Vec<i64> = prompt.iter().chain(&new).map(|&t| i64::from(t)).collect();
            let tokens = model.embed(&Tensor::from_slice(&ids).view([1, -1]), remi::STAGE2_POS_START, false).unwrap();
            let x = Tensor::cat(&[soft_prompt(&window, 1), tokens], 1);
            let hidden = model.forward_embeds(&x, None, false).unwrap();
            let logits = model.logits(&hidden.select(1, -1)).unwrap().to_kind(Kind::Double).flatten(0, -1);
            let logits = Vec::<f64>::try_from(&logits).unwrap();
            let key = DrawKey { sample, window: window.index as u64, step: new.len() as u64 };
            let token = cfg.sampling.draw(&logits, &grammar.allowed(), key).unwrap();
            grammar.advance(token).unwrap();
            new.push(token);
        }
        let empty: Vec<Vec<u32>> = passage.bar_specs(window.generated()).iter().map(|s| s.empty_bar()).collect();
        let mut written: Vec<Vec<u32>> = new.split_inclusive(|&t| t == remi::BAR_END).filter(|b| b.last() == Some(&remi::BAR_END)).map(<[u32]>::to_vec).collect();
        let done = written.len();
        written.extend(empty[done..].iter().cloned());
        bars.extend(written);
    }
    bars
}

#[test]
fn recurrent_batched_loop_equals_recomputing_every_sequence() {
    let (_vs, model) = model(15);
    let passage = Passage::new(&lead_sheet((4, 4), 7, 120.0), 0, None).unwrap();
    let cfg = ArrangeConfig { end_token: false, ..config(21, 1.0, Some(15), None, 24) };
    let samples = tch::no_grad(|| run(&model, &passage, 0..2, &cfg));
    for s in &samples {
        let expected = tch::no_grad(|| reference(&model, &passage, s.sample, &cfg));
        assert_eq!(s.bars, expected, "sample {}", s.sample);
    }
}

#[test]
fn bad_arguments_are_errors() {
    let (_vs, model) = model(16);
    let passage = Passage::new(&lead_sheet((4, 4), 4, 120.0), 0, None).unwrap();
    let cfg = config(0, 1.0, Some(15), None, 40);
    let err = format!("{:#}", arrange(&model, &passage, 0..3, &cfg, |w| Ok(soft_prompt(w, 2))).unwrap_err());
    assert!(err.contains("soft prompt is [2, 4, 16], expected [3 or 1, queries, 16]"), "{err}");
    let err = format!("{:#}", arrange(&model, &passage, 0..3, &cfg, |_| anyhow::bail!("no audio")).unwrap_err());
    assert!(err.contains("window 0") && err.contains("no audio"), "{err}");
    assert!(arrange(&model, &passage, 2..2, &cfg, |w| Ok(soft_prompt(w, 1))).is_err());
    let small = ArrangeConfig { max_tokens: 80, ..cfg.clone() };
    let err = format!("{:#}", arrange(&model, &passage, 0..1, &small, |w| Ok(soft_prompt(w, 1))).unwrap_err());
    assert!(err.contains("max_tokens 80") && err.contains("cannot hold 4 bars"), "{err}");
    let bad = ArrangeConfig { sampling: SamplingConfig { top_p: Some(0.0), ..cfg.sampling.clone() }, ..cfg };
    let err = format!("{:#}", arrange(&model, &passage, 0..1, &bad, |w| Ok(soft_prompt(w, 1))).unwrap_err());
    assert!(err.contains("sampling.top_p"), "{err}");
}
