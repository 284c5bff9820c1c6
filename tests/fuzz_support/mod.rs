//! Seeded byte-mutation fuzzing of the MIDI and audio readers, shared by `tests/fuzz_readers.rs`
//! (a fixed number of cases in `make test`) and `benches/fuzz_readers.rs` (for a set time).
//!
//! A case takes a seed file (the fixtures under tests/data/midi and tests/data/audio, and files
//! built here: WAVs of other sample formats, a MIDI file with running status, pedal and program
//! changes), applies one to three mutations drawn from (seed, case index), and reads the result.
//! It passes when the reader either returns an error or a result that holds its invariants, and
//! it fails on a panic (caught) or on a single allocation request above [`ALLOCATION_LIMIT`]
//! (the counting allocator records the largest request of the case).
use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use stylebridge::data::audio::{self, write_wav, MAX_SECONDS};
use stylebridge::data::encodings::{octuple, remi};
use stylebridge::data::midi::{self, Score};
use stylebridge::data::pairing::KeyedRng;
use stylebridge::data::segments::{segments, SegmentSpec};

/// The largest single allocation a case may request: far above what reading a small file
/// needs, far below what a size taken on trust from a header asks for.
pub const ALLOCATION_LIMIT: usize = 256 << 20;
/// Requests above this are refused outright, so that a runaway case cannot exhaust the machine
/// before it is judged: the process aborts with "memory allocation of N bytes failed", and
/// `FUZZ_TRACE=1` shows which case it was.
const REFUSED_ABOVE: usize = 4 << 30;
/// Rate the audio cases resample to.
const RATE: u32 = 16_000;

/// The global allocator of the fuzz binaries: the system allocator, recording the largest
/// request since the last [`reset_largest`].
pub struct CountingAllocator;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if self.admit(layout.size()) {
            unsafe { System.alloc(layout) }
        } else {
            std::ptr::null_mut()
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if self.admit(layout.size()) {
            unsafe { System.alloc_zeroed(layout) }
        } else {
            std::ptr::null_mut()
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if self.admit(new_size) {
            unsafe { System.realloc(ptr, layout, new_size) }
        } else {
            std::ptr::null_mut()
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

impl CountingAllocator {
    fn admit(&self, size: usize) -> bool {
        LARGEST.fetch_max(size, Ordering::Relaxed);
        size <= REFUSED_ABOVE
    }
}

fn reset_largest() {
    LARGEST.store(0, Ordering::Relaxed);
}

fn largest() -> usize {
    LARGEST.load(Ordering::Relaxed)
}

/// What a seed file is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    Midi,
    /// An audio file with this extension (the reader takes the hint from it).
    Audio(&'static str),
}

pub struct Seed {
    pub name: String,
    pub reader: Reader,
    pub bytes: Vec<u8>,
}

/// Counts of one reader's cases.
#[derive(Debug, Default)]
pub struct Tally {
    pub tried: usize,
    pub errors: usize,
    pub valid: usize,
    /// Cases that panicked, allocated too much or returned a result breaking an invariant.
    pub failures: Vec<String>,
    /// The largest single allocation request of any case.
    pub largest_allocation: usize,
}

/// Every seed: the fixtures, and files built here for what they lack.
pub fn seeds(scratch: &Path) -> Vec<Seed> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut seeds = Vec::new();
    for (dir, reader) in [("midi", None), ("audio", Some(()))] {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(root.join(dir)).unwrap().map(|e| e.unwrap().path()).collect();
        paths.sort();
        for path in paths {
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            let reader = match (reader, ext) {
                (None, "mid") => Reader::Midi,
                (Some(()), "flac") => Reader::Audio("flac"),
                (Some(()), "mp3") => Reader::Audio("mp3"),
                (Some(()), "ogg") => Reader::Audio("ogg"),
                _ => continue,
            };
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            seeds.push(Seed { name, reader, bytes: std::fs::read(&path).unwrap() });
        }
    }
    seeds.push(Seed { name: "built_pedal.mid".into(), reader: Reader::Midi, bytes: pedal_midi() });
    let tone = |rate: u32, seconds: f64| -> Vec<f32> {
        (0..(f64::from(rate) * seconds) as usize).map(|i| (0.4 * (i as f64 * 440.0 * std::f64::consts::TAU / f64::from(rate)).sin()) as f32).collect()
    };
    let path = scratch.join("seed.wav");
    write_wav(&path, &tone(8_000, 0.25), 8_000).unwrap();
    seeds.push(Seed { name: "built_pcm16_mono.wav".into(), reader: Reader::Audio("wav"), bytes: std::fs::read(&path).unwrap() });
    for (name, format, bits, channels) in [("built_float32_stereo.wav", 3u16, 32u16, 2u16), ("built_pcm24_stereo.wav", 1, 24, 2), ("built_pcm8_mono.wav", 1, 8, 1)] {
        seeds.push(Seed { name: name.into(), reader: Reader::Audio("wav"), bytes: wav(&tone(11_025, 0.2), format, bits, channels, 11_025) });
    }
    seeds
}

/// A WAV of `samples` (repeated on every channel) in a sample format `write_wav` does not write.
fn wav(samples: &[f32], format: u16, bits: u16, channels: u16, rate: u32) -> Vec<u8> {
    let mut data = Vec::new();
    for &x in samples {
        for _ in 0..channels {
            match (format, bits) {
                (3, _) => data.extend(x.to_le_bytes()),
                (_, 24) => data.extend(&((x * 8_388_607.0) as i32).to_le_bytes()[..3]),
                _ => data.push((x * 127.0 + 128.0) as u8),
            }
        }
    }
    let block = channels * bits / 8;
    let mut out = b"RIFF".to_vec();
    out.extend((36 + data.len() as u32).to_le_bytes());
    out.extend(b"WAVEfmt ");
    out.extend(16u32.to_le_bytes());
    out.extend(format.to_le_bytes());
    out.extend(channels.to_le_bytes());
    out.extend(rate.to_le_bytes());
    out.extend((rate * u32::from(block)).to_le_bytes());
    out.extend(block.to_le_bytes());
    out.extend(bits.to_le_bytes());
    out.extend(b"data");
    out.extend((data.len() as u32).to_le_bytes());
    out.extend(data);
    out
}

/// A two-track file with a tempo, a meter, a track name, a program change, running status and a
/// sustain pedal: events the fixtures hold few of.
fn pedal_midi() -> Vec<u8> {
    let conductor = [0x00, 0xFF, 0x51, 0x03, 0x07, 0xA1, 0x20, 0x00, 0xFF, 0x58, 0x04, 0x03, 0x02, 0x18, 0x08, 0x00, 0xFF, 0x2F, 0x00].to_vec();
    let mut piano = vec![0x00, 0xFF, 0x03, 0x05, b'P', b'I', b'A', b'N', b'O', 0x00, 0xC0, 0x05, 0x00, 0xB0, 64, 127];
    // Note-ons under running status, then note-offs as velocity-0 note-ons.
    piano.extend([0x00, 0x90, 60, 90, 0x00, 64, 80, 0x00, 67, 70, 0x83, 0x60, 60, 0, 0x00, 64, 0, 0x00, 67, 0]);
    piano.extend([0x00, 0xB0, 64, 0, 0x81, 0x70, 0x90, 72, 100, 0x83, 0x60, 0x80, 72, 0, 0x00, 0xFF, 0x2F, 0x00]);
    let mut bytes = b"MThd\0\0\0\x06\0\x01\0\x02\x01\xE0".to_vec();
    for track in [conductor, piano] {
        bytes.extend(b"MTrk");
        bytes.extend((track.len() as u32).to_be_bytes());
        bytes.extend(track);
    }
    bytes
}

const INTERESTING_BYTES: [u8; 6] = [0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF];
const INTERESTING_WORDS: [u32; 8] = [0, 1, 0x7F, 0xFFFF, 0x7FFF_FFFF, 0xFFFF_FFFF, 4_000_000_000, 0x0FFF_FFFF];

/// `bytes` after one to three mutations drawn from `rng`, and what they were.
fn mutate(bytes: &[u8], rng: &mut KeyedRng) -> (Vec<u8>, String) {
    let mut out = bytes.to_vec();
    let mut what = Vec::new();
    for _ in 0..rng.int_in(1, 3) {
        let len = out.len().max(1) as i64;
        // Half the offsets fall in the first 64 bytes, where headers keep their sizes.
        let at = if rng.int_in(0, 1) == 0 { rng.int_in(0, len.min(64) - 1) } else { rng.int_in(0, len - 1) } as usize;
        let at = at.min(out.len());
        match rng.int_in(0, 6) {
            0 => {
                let bit = rng.int_in(0, 7);
                if let Some(b) = out.get_mut(at) {
                    *b ^= 1 << bit;
                }
                what.push(format!("flip bit {bit} of byte {at}"));
            }
            1 => {
                let value = INTERESTING_BYTES[rng.int_in(0, 5) as usize];
                if let Some(b) = out.get_mut(at) {
                    *b = value;
                }
                what.push(format!("byte {at} = {value:#04x}"));
            }
            2 => {
                let word = INTERESTING_WORDS[rng.int_in(0, 7) as usize];
                let (le, bytes4) = if rng.int_in(0, 1) == 0 { (true, word.to_le_bytes()) } else { (false, word.to_be_bytes()) };
                for (k, b) in bytes4.iter().enumerate() {
                    if let Some(slot) = out.get_mut(at + k) {
                        *slot = *b;
                    }
                }
                what.push(format!("bytes {at}.. = {word:#x} ({})", if le { "LE" } else { "BE" }));
            }
            3 => {
                out.truncate(at);
                what.push(format!("truncate to {at}"));
            }
            4 => {
                let n = rng.int_in(1, 16) as usize;
                let insert: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                out.splice(at..at, insert);
                what.push(format!("insert {n} random bytes at {at}"));
            }
            5 => {
                let n = (rng.int_in(1, 64) as usize).min(out.len() - at);
                out.drain(at..at + n);
                what.push(format!("delete {n} bytes at {at}"));
            }
            _ => {
                let from = rng.int_in(0, len - 1) as usize;
                let n = (rng.int_in(1, 64) as usize).min(out.len().saturating_sub(from));
                let chunk = out.get(from..from + n).unwrap_or_default().to_vec();
                out.splice(at..at, chunk);
                what.push(format!("copy {n} bytes from {from} to {at}"));
            }
        }
    }
    (out, what.join(", "))
}

/// Why a result is not valid, if it is not.
type Check = Result<(), String>;

/// A parsed score's invariants, and that the downstream readers take it: segments and both
/// encodings give a result or an error, and writing it and reading it back keeps every note.
fn check_score(score: &Score) -> Check {
    let fail = |what: String| Err(what);
    if score.ticks_per_beat == 0 {
        return fail("ticks per beat 0".into());
    }
    for inst in &score.instruments {
        if let Some(n) = inst.notes.iter().find(|n| n.end < n.start || n.pitch > 127 || !(1..=127).contains(&n.velocity)) {
            return fail(format!("note {n:?} in '{}'", inst.name));
        }
        if inst.control_changes.iter().any(|c| c.controller > 127 || c.value > 127) || !inst.control_changes.is_sorted_by_key(|c| c.tick) {
            return fail(format!("control changes of '{}' out of range or order", inst.name));
        }
    }
    if let Some(t) = score.tempo_changes.iter().find(|t| !(t.bpm.is_finite() && t.bpm > 0.0)) {
        return fail(format!("tempo {t:?}"));
    }
    if let Some(ts) = score.time_signatures.iter().find(|t| t.numerator == 0 || !t.denominator.is_power_of_two()) {
        return fail(format!("time signature {ts:?}"));
    }
    let _ = segments(score, SegmentSpec::default());
    let _ = octuple::encode(score);
    let _ = remi::encode(score);
    match midi::to_bytes(score, "fuzz.mid") {
        Ok(bytes) => {
            let back = midi::parse(&bytes, "fuzz.mid").map_err(|e| format!("its own writing does not parse: {e}"))?;
            let notes = |s: &Score| {
                let mut all: Vec<_> = s.instruments.iter().flat_map(|i| i.notes.iter().map(move |n| (i.is_drum, i.program, *n))).collect();
                all.sort();
                all
            };
            if notes(&back) != notes(score) {
                return fail("writing and reading it back changes its notes".into());
            }
            Ok(())
        }
        // Refusing to write (a tempo MIDI cannot store) is an answer too.
        Err(_) => Ok(()),
    }
}

fn check_audio(samples: &[f32], warnings: &[String], file: &str) -> Check {
    if samples.is_empty() {
        return Err("no samples and no error".into());
    }
    if let Some(x) = samples.iter().find(|x| !x.is_finite()) {
        return Err(format!("a sample is {x}"));
    }
    if samples.len() as f64 > MAX_SECONDS * f64::from(RATE) + 1.0 {
        return Err(format!("{} samples, past the length limit", samples.len()));
    }
    if let Some(w) = warnings.iter().find(|w| !w.contains(file)) {
        return Err(format!("a warning that does not name the file: {w}"));
    }
    Ok(())
}

/// Read one mutated file: Ok(true) a valid result, Ok(false) an error, Err(why) a failure.
fn read(reader: Reader, bytes: &[u8], scratch: &Path) -> Result<bool, String> {
    match reader {
        Reader::Midi => match midi::parse(bytes, "fuzz.mid") {
            Ok(score) => check_score(&score).map(|()| true),
            Err(e) if e.to_string().starts_with("fuzz.mid: ") => Ok(false),
            Err(e) => Err(format!("an error that does not name the file: {e}")),
        },
        Reader::Audio(ext) => {
            let path = scratch.join(format!("case.{ext}"));
            std::fs::write(&path, bytes).unwrap();
            let file = path.display().to_string();
            match audio::load(&path, RATE) {
                Ok(loaded) => check_audio(&loaded.value, &loaded.warnings, &file).map(|()| true),
                Err(e) if format!("{e:#}").contains(&file) => Ok(false),
                Err(e) => Err(format!("an error that does not name the file: {e:#}")),
            }
        }
    }
}

/// Cases `0..` of every seed in turn until `cases` are done or `until` has passed; one tally
/// per reader kind (MIDI, audio). `trace` prints every case before it runs.
pub fn fuzz(seed: u64, cases: usize, until: Option<Instant>, trace: bool) -> [Tally; 2] {
    let scratch = tempfile::tempdir().unwrap();
    let seeds = seeds(scratch.path());
    let mut tallies = [Tally::default(), Tally::default()];
    for case in 0..cases {
        if until.is_some_and(|t| Instant::now() >= t) {
            break;
        }
        let s = &seeds[case % seeds.len()];
        let mut rng = KeyedRng::new(&[seed, case as u64]);
        let (bytes, mutation) = mutate(&s.bytes, &mut rng);
        let description = format!("case {case} (seed {seed}): {} with {mutation}", s.name);
        if trace {
            eprintln!("{description}");
        }
        reset_largest();
        let outcome = catch_unwind(AssertUnwindSafe(|| read(s.reader, &bytes, scratch.path())));
        let peak = largest();
        let tally = &mut tallies[usize::from(s.reader != Reader::Midi)];
        tally.tried += 1;
        tally.largest_allocation = tally.largest_allocation.max(peak);
        match outcome {
            _ if peak > ALLOCATION_LIMIT => tally.failures.push(format!("{description}: requested {peak} bytes at once")),
            Ok(Ok(true)) => tally.valid += 1,
            Ok(Ok(false)) => tally.errors += 1,
            Ok(Err(why)) => tally.failures.push(format!("{description}: {why}")),
            Err(_) => tally.failures.push(format!("{description}: panicked")),
        }
    }
    tallies
}
