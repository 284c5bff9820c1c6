//! The reader fuzz loop of `tests/fuzz_readers.rs` for a set time, printing how many files were
//! tried, how many gave errors and valid results, the largest single allocation, and every failure.
//!
//! ```text
//! FUZZ_READERS_SECONDS=600 FUZZ_READERS_SEED=1 make cargo ARGS="bench --bench fuzz_readers"
//! ```
#[path = "../tests/fuzz_support/mod.rs"]
mod fuzz_support;

use std::time::{Duration, Instant};

use fuzz_support::{fuzz, CountingAllocator, ALLOCATION_LIMIT};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let seconds = env_u64("FUZZ_READERS_SECONDS", 60);
    let seed = env_u64("FUZZ_READERS_SEED", 1);
    let started = Instant::now();
    let tallies = fuzz(seed, usize::MAX, Some(started + Duration::from_secs(seconds)), std::env::var_os("FUZZ_TRACE").is_some());
    let elapsed = started.elapsed().as_secs_f64();
    let mut failed = 0;
    for (reader, tally) in ["MIDI", "audio"].iter().zip(&tallies) {
        println!(
            "{reader:>5}: {} files tried, {} errors, {} valid results, {} failures; largest single allocation {:.1} MiB (limit {} MiB)",
            tally.tried,
            tally.errors,
            tally.valid,
            tally.failures.len(),
            tally.largest_allocation as f64 / f64::from(1 << 20),
            ALLOCATION_LIMIT >> 20
        );
        for failure in &tally.failures {
            println!("  {failure}");
        }
        failed += tally.failures.len();
    }
    let tried: usize = tallies.iter().map(|t| t.tried).sum();
    println!("seed {seed}: {tried} files in {elapsed:.1} s ({:.0} files/s)", tried as f64 / elapsed);
    assert_eq!(failed, 0, "some cases failed");
}
