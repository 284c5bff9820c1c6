//! MuseCoco sampling speed at 1,000 positions of context: the recurrent linear-attention state
//! (O(1) per token) against recomputing the whole prefix for every token (what BOSSA's
//! `generate_nucleus2` amounts to: its "cache" re-runs attention over all past positions).
//!
//! `cargo bench --bench musecoco_sampling` (via `make bench`). Random weights, greedy decoding so
//! both methods must emit the same tokens (checked). Sizes: MUSECOCO_BENCH=medium (default:
//! 6 layers x 512, 8 heads) or xlarge (the real 24 x 2048 1B model: ~5 GB, slow on a CPU).
//! MUSECOCO_BENCH_TOKENS sets how many tokens each method generates (default 16).
use std::time::Instant;
use stylebridge::data::encodings::remi;
use stylebridge::models::musecoco::{MuseCoco, MuseCocoConfig, RecurrentState};
use tch::{nn::VarStore, Device, Kind, Tensor};

const CONTEXT: i64 = 1000;
const SOFT_PROMPT: i64 = 32;
/// BOSSA: `</s>` and 60 attribute tokens carry no position.
const POS_START: i64 = remi::STAGE2_POS_START;

fn config(name: &str) -> MuseCocoConfig {
    match name {
        "xlarge" => MuseCocoConfig::xlarge(),
        _ => MuseCocoConfig { n_embd: 512, n_head: 8, n_layer: 6, ffn_dim: 2048, ..MuseCocoConfig::xlarge() },
    }
}

fn main() -> anyhow::Result<()> {
    tch::manual_seed(0);
    let size = std::env::var("MUSECOCO_BENCH").unwrap_or_else(|_| "medium".into());
    let generate: i64 = std::env::var("MUSECOCO_BENCH_TOKENS").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let cfg = config(&size);
    let device = Device::cuda_if_available();
    let vs = VarStore::new(device);
    let model = MuseCoco::new(vs.root(), &cfg);
    let soft = Tensor::randn([1, SOFT_PROMPT, cfg.n_embd], (Kind::Float, device));
    let prompt_ids = Tensor::randint_low(4, cfg.vocab_size, [1, CONTEXT - SOFT_PROMPT], (Kind::Int64, device));
    println!(
        "musecoco_sampling: {size} ({} layers x {}, {} heads), context {CONTEXT} positions ({SOFT_PROMPT} soft prompt + {} tokens), {generate} new tokens, {device:?}, {} threads",
        cfg.n_layer,
        cfg.n_embd,
        cfg.n_head,
        CONTEXT - SOFT_PROMPT,
        tch::get_num_threads()
    );
    tch::no_grad(|| {
        // Warm-up (thread pool, allocator) so the first timed pass does not pay for it.
        let _ = model.forward_embeds(&soft, None, false)?;

        // Recurrent: one parallel prefill, then one O(1) step per token.
        let start = Instant::now();
        let mut state = RecurrentState::new(&cfg, 1, device);
        let x = Tensor::cat(&[soft.shallow_clone(), model.embed(&prompt_ids, POS_START, false)?], 1);
        let hidden = model.prefill(&x, None, &mut state, false)?;
        let mut next = model.logits(&hidden.narrow(1, CONTEXT - 1, 1))?.argmax(-1, false);
        let prefill_s = start.elapsed().as_secs_f64();
        let mut recurrent_tokens = Vec::new();
        let start = Instant::now();
        for i in 0..generate {
            recurrent_tokens.push(next.int64_value(&[0, 0]));
            let x = model.embed_next(&next, &[CONTEXT - SOFT_PROMPT + i], POS_START)?;
            next = model.logits(&model.step(&x, &mut state)?)?.argmax(-1, false);
        }
        let recurrent_s = start.elapsed().as_secs_f64();

        // Recompute: the whole (growing) sequence through the parallel form for every token.
        let mut ids = prompt_ids.shallow_clone();
        let mut recompute_tokens = Vec::new();
        let start = Instant::now();
        for _ in 0..generate {
            let x = Tensor::cat(&[soft.shallow_clone(), model.embed(&ids, POS_START, false)?], 1);
            let hidden = model.forward_embeds(&x, None, false)?;
            let token = model.logits(&hidden.narrow(1, x.size()[1] - 1, 1))?.argmax(-1, false);
            recompute_tokens.push(token.int64_value(&[0, 0]));
            ids = Tensor::cat(&[ids, token], 1);
        }
        let recompute_s = start.elapsed().as_secs_f64();

        let same = recurrent_tokens == recompute_tokens;
        println!("  prefill of {CONTEXT} positions (parallel form): {prefill_s:.3} s");
        println!("  recurrent state:   {:8.2} tokens/s", generate as f64 / recurrent_s);
        println!("  recompute prefix:  {:8.2} tokens/s", generate as f64 / recompute_s);
        println!(
            "  speed-up x{:.1}; same greedy tokens: {}",
            recompute_s / recurrent_s,
            if same { "yes" } else { "NO" }
        );
        anyhow::ensure!(same, "the two attention forms disagree: {recurrent_tokens:?} vs {recompute_tokens:?}");
        Ok(())
    })
}
