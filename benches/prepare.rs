//! `prepare` throughput on POP909 songs, one thread, stage by stage: symbolic work (POP909
//! loading + beat re-timing + lead sheet + segments + both encodings), audio (GM rendering), and
//! EnCodec-32k at its real size (random weights: same compute as facebook/encodec_32khz) on
//! 30 s of audio, scaled to the songs' length. Prints songs/s without and with EnCodec.
//!
//! ```text
//! make cargo ARGS="bench --bench prepare"          # 4 songs; STYLEBRIDGE_BENCH_SONGS=N for more
//! ```
//! Needs ../shared/data/pop909 (or STYLEBRIDGE_POP909), a SoundFont (see `stylebridge render`),
//! and the venv python with transformers (PYTHON_SYS_EXECUTABLE, exported by the Makefile) to
//! write the random full-size EnCodec checkpoint.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use stylebridge::data::prepare::{PrepareConfig, SourceKind};
use stylebridge::data::pairing::{octuple_ids, remi_ids, segment_pairs};
use stylebridge::data::prepare::{self, EncoderPool};
use stylebridge::data::render::{resolve_soundfont, SoundFontSynth};
use stylebridge::data::segments::SegmentSpec;

/// HF `EncodecConfig` of facebook/encodec_32khz.
const ENCODEC_32K: &str = "EncodecConfig(sampling_rate=32000, upsampling_ratios=[8, 5, 4, 4], num_filters=64, hidden_size=128, \
codebook_size=2048, target_bandwidths=[2.2], use_causal_conv=False, pad_mode='reflect', use_conv_shortcut=False, \
num_lstm_layers=2, num_residual_layers=1, normalize=False)";

fn full_size_encodec(dir: &Path) -> Option<PathBuf> {
    let python = std::env::var_os("PYTHON_SYS_EXECUTABLE")?;
    let code = format!(
        "import sys, torch\nfrom transformers import EncodecConfig, EncodecModel\ntorch.manual_seed(0)\n\
         EncodecModel({ENCODEC_32K}).save_pretrained(sys.argv[1])\n"
    );
    let out = Command::new(python).args(["-c", &code]).arg(dir).output().ok()?;
    if !out.status.success() {
        eprintln!("cannot write the EnCodec checkpoint: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    Some(dir.to_path_buf())
}

/// The embedded corpus (`corpus synth`, 8-bar arrangements with WAV audio): symbolic work plus
/// decoding and resampling the audio (32 kHz files to 32 kHz: a copy; to 24 kHz: resampled).
fn embedded_corpus() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let status = Command::new(env!("CARGO_BIN_EXE_stylebridge"))
        .args(["corpus", "synth", "--songs", "8", "--seed", "0", "--out"])
        .arg(dir.path())
        .stderr(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "corpus synth failed");
    let config = PrepareConfig {
        source: SourceKind::Pairs,
        input: Some(dir.path().to_path_buf()),
        target_tracks: vec!["MELODY".into(), "PIANO".into()],
        ..Default::default()
    };
    let songs = prepare::discover(&config)?;
    for rate in [32_000, 24_000] {
        let start = Instant::now();
        for song in &songs {
            let parts = prepare::symbolic(song, &config)?;
            let pairs = segment_pairs(&parts.target, &parts.lead_sheet, SegmentSpec::default(), parts.first_bar)?;
            assert!(pairs.iter().map(|p| octuple_ids(&p.target).len() + remi_ids(&p.target).len()).sum::<usize>() > 0);
            prepare::audio(song, &parts.full, rate, None)?.print_warnings();
        }
        let seconds = start.elapsed().as_secs_f64();
        println!(
            "embedded corpus, {} arrangements, audio to {rate} Hz, without EnCodec, one thread: {:.1} songs/s",
            songs.len(),
            songs.len() as f64 / seconds
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let root = std::env::var_os("STYLEBRIDGE_POP909").map_or_else(|| PathBuf::from("../shared/data/pop909"), PathBuf::from);
    if !root.is_dir() {
        println!("skipped: POP909 not found at {}", root.display());
        return Ok(());
    }
    let n: usize = std::env::var("STYLEBRIDGE_BENCH_SONGS").ok().and_then(|s| s.parse().ok()).unwrap_or(4);
    let config = PrepareConfig { input: Some(root), render_missing_audio: true, max_songs: Some(n), ..Default::default() };
    let songs = prepare::discover(&config)?;
    let synth = SoundFontSynth::load(&resolve_soundfont(None)?)?;

    let (mut symbolic_s, mut render_s, mut audio_seconds, mut pairs) = (0.0, 0.0, 0.0, 0);
    for song in &songs {
        let start = Instant::now();
        let parts = prepare::symbolic(song, &config)?;
        let segments = segment_pairs(&parts.target, &parts.lead_sheet, SegmentSpec::default(), parts.first_bar)?;
        let tokens: usize = segments.iter().map(|p| octuple_ids(&p.lead).len() + octuple_ids(&p.target).len() + remi_ids(&p.lead).len() + remi_ids(&p.target).len()).sum();
        symbolic_s += start.elapsed().as_secs_f64();
        assert!(tokens > 0);
        pairs += segments.len();
        let start = Instant::now();
        let samples = prepare::audio(song, &parts.full, 32_000, Some(&synth))?.print_warnings();
        render_s += start.elapsed().as_secs_f64();
        audio_seconds += samples.len() as f64 / 32_000.0;
    }
    let per_song = |s: f64| s / songs.len() as f64;
    embedded_corpus()?;
    println!("{} POP909 songs, {pairs} pairs, {:.0} s of audio on average", songs.len(), per_song(audio_seconds));
    println!("symbolic (load, re-time, lead sheet, segments, tokens): {:.3} s/song = {:.1} songs/s", per_song(symbolic_s), 1.0 / per_song(symbolic_s));
    println!("audio (GM rendering at 32 kHz):                          {:.3} s/song = {:.2} songs/s", per_song(render_s), 1.0 / per_song(render_s));
    let without = per_song(symbolic_s + render_s);
    println!("prepare without EnCodec, one thread:                     {:.2} songs/s", 1.0 / without);

    let dir = tempfile::tempdir()?;
    let Some(ckpt) = full_size_encodec(dir.path()) else {
        println!("EnCodec timing skipped: PYTHON_SYS_EXECUTABLE with transformers is needed (run through make)");
        return Ok(());
    };
    tch::set_num_threads(1);
    let encoder = EncoderPool::new(&ckpt, tch::Device::Cpu, (10.16, 1.0))?;
    let clip: Vec<f32> = (0..30 * 32_000).map(|i| (i as f32 * 0.05).sin() * 0.3).collect();
    encoder.encode(&clip[..32_000])?; // warm-up
    let start = Instant::now();
    let codes = encoder.encode(&clip)?;
    let encodec_rate = start.elapsed().as_secs_f64() / 30.0;
    assert_eq!(codes.len(), 4 * 1500);
    let encodec_per_song = encodec_rate * per_song(audio_seconds);
    println!("EnCodec-32k full size, 1 CPU thread: {encodec_rate:.3} s per second of audio = {encodec_per_song:.1} s/song");
    println!("prepare with EnCodec, one thread:                        {:.3} songs/s", 1.0 / (without + encodec_per_song));
    Ok(())
}
