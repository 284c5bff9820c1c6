//! `stylebridge prepare` end to end: a small corpus of audio + MIDI + chord files (and a few
//! POP909 songs when ../shared/data/pop909 is there) -> shards; every row loads back with the
//! right split, shapes, tokens and codes (the window centred on its segment, cut from the codes
//! of the whole track); loader shifts stay within 1 s; a killed run leaves no partial shard
//! and a rerun gives byte-identical output.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use stylebridge::data::audio;
use stylebridge::data::encodings::octuple;
use stylebridge::data::loader::{Loader, LoaderOptions, PairSet, Stage};
use stylebridge::data::midi::{self, Instrument, Note, Score, TempoChange, TimeSignature};
use stylebridge::data::shards::{Manifest, PairRow};
use stylebridge::data::split::{self, Split, SplitRatios};
use stylebridge::models::encodec::Encodec;

const BIN: &str = env!("CARGO_BIN_EXE_stylebridge");

/// A fresh folder under the target dir's test scratch space (statics are never dropped, so
/// shared fixtures live there rather than in self-deleting temp dirs).
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("prepare_e2e").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A tiny random HF EnCodec (made once per test binary by the parity script; 8 kHz, 500 codes/s).
fn encodec() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let python = std::env::var_os("PYTHON_SYS_EXECUTABLE")
            .expect("PYTHON_SYS_EXECUTABLE is unset: run through the Makefile (`make cargo ARGS=\"test --test prepare_e2e\"`)");
        let dir = scratch("encodec");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python_interop/parity/make_encodec.py");
        let out = Command::new(python).arg(&script).arg(&dir).args(["--variant", "music32k"]).output().unwrap();
        assert!(out.status.success(), "make_encodec.py failed: {}", String::from_utf8_lossy(&out.stderr));
        dir.join("model")
    })
}

/// Song `k`: `bars` bars of melody + piano at `bpm` in `meter`/4, chords every bar, and audio made
/// of decaying sines of every note (16 kHz, so prepare resamples it).
fn write_song(dir: &Path, name: &str, k: u32, bars: u32, meter: u32, bpm: f64) {
    let tpb = 480;
    let bar = tpb * meter;
    let mut piano = Vec::new();
    let mut melody = Vec::new();
    for b in 0..bars {
        let root = 48 + ((b * 5 + k) % 7) as u8;
        for beat in 0..meter {
            let t = b * bar + beat * tpb;
            piano.push(Note { start: t, end: t + tpb / 2, pitch: root + [0, 4, 7][(beat % 3) as usize], velocity: 70 });
        }
        melody.push(Note { start: b * bar + tpb / 2, end: b * bar + tpb * 2, pitch: 67 + (b % 5) as u8, velocity: 90 });
    }
    let part = |name: &str, program, notes| Instrument { name: name.into(), program, is_drum: false, notes, control_changes: vec![] };
    let score = Score {
        ticks_per_beat: tpb,
        instruments: vec![part("MELODY", 73, melody), part("PIANO", 0, piano)],
        tempo_changes: vec![TempoChange { tick: 0, bpm }],
        time_signatures: vec![TimeSignature { tick: 0, numerator: meter, denominator: 4 }],
    };
    midi::write(&score, &dir.join(format!("{name}.mid"))).unwrap();
    let seconds_per_bar = 60.0 / bpm * f64::from(meter);
    let chords: String = (0..bars)
        .map(|b| format!("{:.3} {:.3} {}\n", f64::from(b) * seconds_per_bar, f64::from(b + 1) * seconds_per_bar, ["C:maj", "A:min", "F:maj", "G:7"][(b % 4) as usize]))
        .collect();
    std::fs::write(dir.join(format!("{name}.chords.txt")), chords).unwrap();
    let rate = 16_000;
    let total = ((f64::from(bars) * seconds_per_bar + 1.0) * f64::from(rate)) as usize;
    let mut samples = vec![0f32; total];
    let seconds = |tick: u32| f64::from(tick) * 60.0 / (bpm * f64::from(tpb));
    for note in score.instruments.iter().flat_map(|i| &i.notes) {
        let freq = 440.0 * 2f64.powf((f64::from(note.pitch) - 69.0) / 12.0);
        let start = (seconds(note.start) * f64::from(rate)) as usize;
        for (i, s) in samples[start..].iter_mut().take(rate as usize / 2).enumerate() {
            let t = i as f64 / f64::from(rate);
            *s += (0.1 * (-6.0 * t).exp() * (2.0 * std::f64::consts::PI * freq * t).sin()) as f32;
        }
    }
    audio::write_wav(&dir.join(format!("{name}.wav")), &samples, rate).unwrap();
}

/// Songs s00..s{n-1} (one in 3/4), and one without a PIANO track.
fn corpus(n: u32) -> PathBuf {
    let dir = scratch("corpus");
    for k in 0..n {
        let meter = if k == 1 { 3 } else { 4 };
        write_song(&dir, &format!("s{k:02}"), k, 10 + k % 3, meter, 100.0 + 10.0 * f64::from(k % 4));
    }
    write_song(&dir, "zz_bad", 0, 8, 4, 120.0);
    let bad = dir.join("zz_bad.mid");
    let mut score = midi::read(&bad).unwrap();
    score.instruments.retain(|i| i.name != "PIANO");
    midi::write(&score, &bad).unwrap();
    dir
}

/// The corpus (8 songs + a bad one) and a clean prepare of it, shared by the tests.
struct Prepared {
    corpus: PathBuf,
    out: PathBuf,
    stderr: String,
}

fn prepared() -> &'static Prepared {
    static PREPARED: OnceLock<Prepared> = OnceLock::new();
    PREPARED.get_or_init(|| {
        let corpus = corpus(8);
        let out = scratch("clean");
        let stderr = run_ok(prepare(&corpus, &out, JOBS));
        Prepared { corpus, out, stderr }
    })
}

const JOBS: usize = 2;

fn config(dir: &Path) -> PathBuf {
    let path = dir.join("exp.yaml");
    std::fs::write(
        &path,
        "name: e2e\nseed: 3\nprepare:\n  source: pairs\n  target_tracks: [MELODY, PIANO]\n  max_shard_mib: 0.2\n  split:\n    valid: 0.25\n    test: 0.25\n",
    )
    .unwrap();
    path
}

fn prepare(corpus: &Path, out: &Path, jobs: usize) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["prepare", "--config"])
        .arg(config(corpus))
        .arg("--input")
        .arg(corpus)
        .arg("--encodec")
        .arg(encodec())
        .arg("--out")
        .arg(out)
        .args(["--jobs", &jobs.to_string()])
        .env("STYLEBRIDGE_PROGRESS_SECS", "0");
    cmd
}

fn run_ok(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "prepare failed:\n{stderr}");
    stderr
}

/// Whole-track codes `[n_q, frames]` of an audio file, as prepare computes them.
fn track_codes(model: &Encodec, path: &Path) -> (Vec<i64>, usize) {
    // prepare encodes with one libtorch thread per song on this 2-core machine; float sums in
    // another order can flip a near-tie in the residual codebooks, so encode the same way.
    tch::set_num_threads(1);
    let samples = audio::load_mono(path, model.config().sampling_rate).unwrap();
    let codes = model.encode(&tch::Tensor::from_slice(&samples).view([1, 1, -1])).unwrap();
    let frames = codes.size()[2] as usize;
    (Vec::<i64>::try_from(codes.reshape([-1])).unwrap(), frames)
}

/// Every row of every split: shapes, split (of the id's group before `separator`), centring,
/// codes cut from the whole track.
fn check_rows(out: &Path, ratios: SplitRatios, seed: u64, separator: Option<&str>) -> Vec<(Split, PairRow)> {
    let manifest = Manifest::read(out).unwrap();
    let a = &manifest.audio;
    let model = Encodec::load(Path::new(&a.encodec), tch::Device::Cpu).unwrap();
    let mut all = Vec::new();
    for s in Split::ALL {
        let set = PairSet::open(out, s, 2).unwrap();
        assert_eq!(set.rows.len(), manifest.counts[&s].rows);
        all.extend(set.rows.into_iter().map(|r| (s, r)));
    }
    let mut tracks = std::collections::HashMap::new();
    for (s, row) in &all {
        let group = separator.map_or(row.song_id.as_str(), |sep| row.song_id.split(sep).next().unwrap());
        assert_eq!(*s, split::assign(seed, group, ratios), "{} is in the wrong split", row.song_id);
        assert_eq!(row.codes.len(), a.n_q * a.stored_frames());
        assert!(row.end_bar - row.first_bar == 4 && row.end_seconds > row.start_seconds);
        // Centred: BOSSA's mid = floor((start + end) * rate / 2), window mid +- window/2.
        let mid = ((row.start_seconds + row.end_seconds) * a.frame_rate / 2.0).floor() as i64;
        let window_start = row.codes_start_frame + a.margin_frames as i64;
        assert_eq!(window_start, mid - (a.window_frames / 2) as i64);
        let (codes, frames) = tracks.entry(row.audio_path.clone()).or_insert_with(|| track_codes(&model, Path::new(&row.audio_path)));
        for q in 0..a.n_q {
            for j in 0..a.stored_frames() {
                let f = row.codes_start_frame + j as i64;
                let want = if f >= 0 && (f as usize) < *frames { codes[q * *frames + f as usize] } else { i64::from(a.pad_code) };
                assert_eq!(i64::from(row.codes[q * a.stored_frames() + j]), want, "{} seg {} q {q} frame {f}", row.song_id, row.segment_index);
            }
        }
        let target = octuple::decode(&row.piano_octuple.iter().map(|&t| u32::from(t)).collect::<Vec<_>>()).unwrap().value;
        assert!(!target.is_empty() && target.iter().all(|n| n.bar < 4));
        // The target is a piano cover: every note on program 0, whatever its track played.
        assert!(target.iter().all(|n| n.program == 0), "{} seg {}: target notes off piano", row.song_id, row.segment_index);
        assert!(!row.lead_octuple.is_empty() && !row.lead_remi.is_empty() && !row.piano_remi.is_empty());
    }
    all
}

#[test]
fn prepare_a_corpus_then_load_every_row_back() {
    let Prepared { out, stderr, .. } = prepared();
    let out = out.as_path();
    assert!(stderr.contains("skipped zz_bad") && stderr.contains("PIANO"), "the bad song must be reported:\n{stderr}");

    let manifest = Manifest::read(out).unwrap();
    assert_eq!(manifest.skipped.len(), 1);
    assert!(manifest.skipped[0].reason.contains("no track named 'PIANO'"), "{}", manifest.skipped[0].reason);
    assert!(manifest.shards.len() > 3, "0.2 MiB shards should split the rows: {:?}", manifest.shards.len());
    assert!(std::fs::read_to_string(out.join("report.txt")).unwrap().contains("skipped zz_bad"));
    let songs: usize = manifest.counts.values().map(|c| c.songs).sum();
    assert_eq!(songs, 8);
    assert!(Split::ALL.iter().all(|s| manifest.counts[s].songs > 0), "{:?}", manifest.counts);

    let rows = check_rows(out, SplitRatios { valid: 0.25, test: 0.25 }, 3, None);
    for (_, row) in &rows {
        // Target tokens: the source's PIANO notes of those 4 bars (one a beat; s01 is in 3/4) and
        // its MELODY notes (one a bar, pitches 67..=71, written on program 73).
        let beats = if row.song_id == "s01" { 3 } else { 4 };
        assert_eq!(row.piano_octuple.len(), 8 * (4 * beats + 4), "{} seg {}", row.song_id, row.segment_index);
        let melody_pitches = row.piano_octuple.chunks(8).filter(|n| (67..=71).contains(&(n[3] - octuple::FIELD_OFFSETS[3] as u16))).count();
        assert_eq!(melody_pitches, 4, "{} seg {}: the melody is part of the target", row.song_id, row.segment_index);
        assert_eq!((row.meter_numerator, row.meter_denominator), (beats as u32, 4));
    }
    // 10..12 bars, 2-bar hop: 4 or 5 segments per song.
    assert!(rows.len() >= 8 * 4, "{} rows", rows.len());

    // Loader on the prepared train split: shifts within +-1 s, codes follow the shift.
    let set = Arc::new(PairSet::open(out, Split::Train, 2).unwrap());
    let margin = set.layout.margin_frames as i32;
    assert_eq!(f64::from(margin), set.layout.frame_rate, "the margin is 1 s");
    let loader = Loader::new(Arc::clone(&set), LoaderOptions { workers: 2, ..LoaderOptions::training(Stage::Stage1, 2, 0) }).unwrap();
    let w = set.layout.window_frames;
    let mut batches = 0;
    for batch in loader.batches(0, 0) {
        batches += 1;
        for (b, (&r, d)) in batch.rows.iter().zip(&batch.draws).enumerate() {
            assert!(d.shift.abs() <= margin);
            let stored = &set.rows[r].codes;
            let offset = (margin + d.shift) as usize;
            assert!((0..w).all(|j| batch.codes[b * set.layout.n_q * w + j] == i64::from(stored[offset + j])));
        }
    }
    assert_eq!(batches, set.rows.len() / 2);

    // inspect prints the manifest, the counts and a decoded row.
    let out_text = Command::new(BIN).args(["inspect", "shards"]).arg(out).output().unwrap();
    let text = String::from_utf8_lossy(&out_text.stdout);
    assert!(out_text.status.success(), "{}", String::from_utf8_lossy(&out_text.stderr));
    for needle in ["schema v2", "train", "valid", "test", "skipped songs: 1", "warnings: 0", "row 0 of train", "<3-", "OctupleMIDI", "REMI"] {
        assert!(text.contains(needle), "inspect output lacks {needle:?}:\n{text}");
    }
}

/// Visible files (shards, manifest, report) and their bytes.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file() && !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    files.sort();
    files
}

#[test]
fn killed_prepare_leaves_no_partial_shard_and_rerun_is_identical() {
    let Prepared { corpus, out: clean, .. } = prepared();
    let out = tempfile::tempdir().unwrap();
    let mut child = prepare(corpus, out.path(), JOBS).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let songs = out.path().join(".work/songs");
    let deadline = Instant::now() + Duration::from_secs(60);
    let killed_midway;
    loop {
        let done = std::fs::read_dir(&songs).map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".parquet")).count()).unwrap_or(0);
        if done >= 2 {
            killed_midway = child.try_wait().unwrap().is_none();
            child.kill().unwrap();
            child.wait().unwrap();
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("prepare made no progress");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(killed_midway, "prepare finished before it could be killed; the corpus is too small for this test");
    // Every visible shard is whole (none exist yet in phase 1; any that do must read back).
    for (name, bytes) in snapshot(out.path()) {
        if name.ends_with(".parquet") {
            stylebridge::data::shards::decode_rows(bytes, &name).unwrap();
        }
    }
    let stderr = run_ok(prepare(corpus, out.path(), JOBS));
    assert!(!stderr.contains(" 0 reused"), "the rerun should reuse finished songs:\n{stderr}");
    assert_eq!(snapshot(out.path()), snapshot(clean), "the resumed run differs from a clean one");

    // Other segment settings in the same folder are refused rather than mixed in.
    let mut other = prepare(corpus, out.path(), JOBS);
    other.args(["--set", "segments.hop_bars=1"]);
    let result = other.output().unwrap();
    assert!(!result.status.success());
    assert!(String::from_utf8_lossy(&result.stderr).contains("was prepared with other settings"));
}

#[test]
fn embedded_corpus_prepares_with_lead_sheets_kept_in_one_split() {
    let corpus = scratch("embedded");
    let synth = Command::new(BIN)
        .args(["corpus", "synth", "--songs", "6", "--seed", "2", "--bars", "8", "--styles", "alberti,block,waltz", "--out"])
        .arg(&corpus)
        .output()
        .unwrap();
    assert!(synth.status.success(), "corpus synth failed: {}", String::from_utf8_lossy(&synth.stderr));
    let out = scratch("embedded_shards");
    let config = corpus.join("exp.yaml");
    std::fs::write(&config, "name: emb\nseed: 1\nprepare:\n  source: pairs\n  target_tracks: [MELODY, PIANO]\n  split_group_separator: \"_\"\n  split:\n    valid: 0.3\n    test: 0.3\n").unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["prepare", "--config"]).arg(&config).arg("--input").arg(&corpus).arg("--encodec").arg(encodec()).arg("--out").arg(&out);
    run_ok(cmd);
    let manifest = Manifest::read(&out).unwrap();
    assert!(manifest.skipped.is_empty(), "{:?}", manifest.skipped);
    let rows = check_rows(&out, SplitRatios { valid: 0.3, test: 0.3 }, 1, Some("_"));
    assert!(rows.len() >= 6, "{} rows", rows.len());
    let mut split_of = std::collections::HashMap::new();
    for (s, row) in &rows {
        let sheet = row.song_id.split('_').next().unwrap().to_string();
        assert_eq!(*split_of.entry(sheet).or_insert(*s), *s, "lead sheet of {} spans two splits", row.song_id);
    }
}

#[test]
fn pop909_songs_render_and_prepare() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/pop909");
    if !root.join("POP909/001/001.mid").is_file() {
        eprintln!("skipped: {} is absent", root.display());
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["prepare", "--source", "pop909", "--render-missing-audio", "--max-songs", "2", "--jobs", "2", "--input"])
        .arg(&root)
        .arg("--encodec")
        .arg(encodec())
        .arg("--out")
        .arg(out.path());
    let stderr = run_ok(cmd);
    let manifest = Manifest::read(out.path()).unwrap();
    assert!(manifest.skipped.is_empty(), "{stderr}");
    let total: usize = manifest.counts.values().map(|c| c.rows).sum();
    assert!(total > 40, "two POP909 songs should give dozens of 4-bar segments, got {total}");
    let a = &manifest.audio;
    for s in Split::ALL {
        for row in PairSet::open(out.path(), s, 2).unwrap().rows {
            let mid = ((row.start_seconds + row.end_seconds) * a.frame_rate / 2.0).floor() as i64;
            assert_eq!(row.codes_start_frame + a.margin_frames as i64, mid - (a.window_frames / 2) as i64);
            assert!(row.song_id.starts_with("pop909-00"));
            assert_eq!(row.audio_path, "(rendered from the MIDI)");
            assert!(row.piano_octuple.len() % 8 == 0 && !row.piano_octuple.is_empty());
        }
    }
}

/// A prepare whose only song is bad fails, naming the song and its reason, and leaves no manifest,
/// shard or report behind; its song cache holds no song file, so a rerun with fixed settings is
/// not refused as "prepared with other settings".
#[test]
fn prepare_of_nothing_preparable_writes_nothing_that_looks_prepared() {
    let corpus = scratch("only_bad");
    write_song(&corpus, "zz_bad", 0, 8, 4, 120.0);
    let bad = corpus.join("zz_bad.mid");
    let mut score = midi::read(&bad).unwrap();
    score.instruments.retain(|i| i.name != "PIANO");
    midi::write(&score, &bad).unwrap();
    let out = scratch("only_bad_out");
    let result = prepare(&corpus, &out, 1).output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success(), "{stderr}");
    for needle in ["no song could be prepared (1 tried)", "nothing was written to", "skipped zz_bad", "no track named 'PIANO'"] {
        assert!(stderr.contains(needle), "{needle:?} missing from:\n{stderr}");
    }
    for name in ["manifest.json", "report.txt"] {
        assert!(!out.join(name).exists(), "{name} written although nothing was prepared");
    }
    assert!(!snapshot(&out).iter().any(|(name, _)| name.ends_with(".parquet")));
    let err = format!("{:#}", PairSet::open(&out, Split::Train, 1).err().expect("no shards to open"));
    assert!(err.contains("manifest.json"), "{err}");

    // The MELODY alone is a valid target: the same folder now prepares.
    let mut rerun = prepare(&corpus, &out, 1);
    rerun.args(["--set", "prepare.target_tracks=[MELODY]"]);
    run_ok(rerun);
    assert!(Manifest::read(&out).unwrap().counts.values().map(|c| c.rows).sum::<usize>() > 0);
}

/// A song whose audio file was cut short is prepared from what is there, and the loss is in the
/// manifest, the report and on stderr, also when a rerun reuses the song.
#[test]
fn truncated_audio_is_prepared_with_a_warning_in_the_report() {
    let corpus = scratch("truncated");
    for k in 0..2 {
        write_song(&corpus, &format!("s{k:02}"), k, 10, 4, 120.0);
    }
    let wav = corpus.join("s01.wav");
    let bytes = std::fs::read(&wav).unwrap();
    std::fs::write(&wav, &bytes[..bytes.len() * 7 / 10]).unwrap();
    let out = scratch("truncated_out");
    let stderr = run_ok(prepare(&corpus, &out, 1));
    let manifest = Manifest::read(&out).unwrap();
    assert!(manifest.skipped.is_empty(), "{:?}", manifest.skipped);
    assert_eq!(manifest.warnings.len(), 1, "{:?}", manifest.warnings);
    let warning = &manifest.warnings[0];
    assert_eq!(warning.song, "s01");
    assert!(warning.warning.contains("s01.wav: its header declares 21.00 s of audio but only 14.70 s decode"), "{}", warning.warning);
    let report = std::fs::read_to_string(out.join("report.txt")).unwrap();
    let line = format!("warning s01: {}", warning.warning);
    assert!(report.contains(&line) && stderr.contains(&line), "report:\n{report}\nstderr:\n{stderr}");
    assert!(report.contains("prepared: 2 (1 with warnings)"), "{report}");

    // Reused from the song cache, the song keeps its warning.
    let again = run_ok(prepare(&corpus, &out, 1));
    assert!(again.contains("0 songs processed, 2 reused"), "{again}");
    assert_eq!(Manifest::read(&out).unwrap(), manifest);
}
