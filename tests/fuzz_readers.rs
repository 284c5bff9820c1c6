//! The MIDI and audio readers under seeded byte mutations of the fixtures (see `fuzz_support`):
//! no case panics, none asks for more than 256 MiB at once, each gives an error naming the file
//! or a result that holds its invariants. A fixed number of cases keeps it to a few seconds;
//! `benches/fuzz_readers.rs` runs the same loop for longer.
mod fuzz_support;

use fuzz_support::{fuzz, CountingAllocator};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Cases in `make test`: every seed about 60 times (`FUZZ_CASES` and `FUZZ_SEED` change them;
/// `FUZZ_TRACE=1` prints each case before it runs).
const CASES: usize = 1500;

#[test]
fn mutated_midi_and_audio_files_give_errors_or_valid_results() {
    let env = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (seed, cases) = (env("FUZZ_SEED", 0), env("FUZZ_CASES", CASES as u64) as usize);
    let trace = std::env::var_os("FUZZ_TRACE").is_some();
    for (reader, tally) in ["MIDI", "audio"].iter().zip(fuzz(seed, cases, None, trace)) {
        let kib = tally.largest_allocation >> 10;
        eprintln!("{reader}: {} files tried, {} errors, {} valid results, largest single allocation {kib} KiB", tally.tried, tally.errors, tally.valid);
        assert!(tally.failures.is_empty(), "{reader}: {} of {} cases failed:\n{}", tally.failures.len(), tally.tried, tally.failures.join("\n"));
        // Both answers occur, so the mutations reach past the first check and the readers refuse some.
        assert!(tally.errors > 0 && tally.valid > 0, "{reader}: {tally:?}");
    }
}
