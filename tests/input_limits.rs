//! Through the binary: sizes read from files and flags are checked before anything is allocated
//! for them (each refusal names the file or flag, the value and the limit, and exits 1 without a
//! panic), and damage a reader survives is said on stderr, naming the file and what was lost.
mod parity_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use parity_support::run_script;
use stylebridge::data::audio::write_wav;

/// Exit code, stdout, stderr.
fn stylebridge(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stylebridge")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The command fails with exit 1, no output and no panic, and stderr holds every needle.
fn refused(args: &[&str], needles: &[&str]) {
    let (code, stdout, stderr) = stylebridge(args);
    assert_eq!(code, 1, "{args:?}: exit {code}, stderr: {stderr}");
    assert!(stdout.is_empty(), "{args:?} printed {} bytes", stdout.len());
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{args:?}: {needle:?} missing from: {stderr}");
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A type-0 MIDI file of one track body (end of track appended), `ticks_per_beat` per beat.
fn smf(ticks_per_beat: u16, body: &[u8]) -> Vec<u8> {
    let body = [body, &[0x00, 0xFF, 0x2F, 0x00]].concat();
    let mut bytes = b"MThd\0\0\0\x06\0\0\0\x01".to_vec();
    bytes.extend(ticks_per_beat.to_be_bytes());
    bytes.extend(b"MTrk");
    bytes.extend((body.len() as u32).to_be_bytes());
    bytes.extend(body);
    bytes
}

/// One note of pitch 60 lasting 2^28 - 1 ticks (the longest delta MIDI holds).
const LONG_NOTE: [u8; 11] = [0x00, 0x90, 60, 64, 0xFF, 0xFF, 0xFF, 0x7F, 0x80, 60, 0];

#[test]
fn a_37_byte_midi_with_one_absurdly_long_note_is_refused_by_segments() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = smf(1, &LONG_NOTE);
    assert_eq!(bytes.len(), 37);
    let long = write(dir.path(), "long.mid", &bytes);
    // 2^28 ticks at 1 tick per beat: 268 M beats, 67 M bars of 4/4.
    let needles = ["long.mid", "tick 268435455", "more than 100000 bars"];
    refused(&["segments", s(&long)], &needles);
    refused(&["segments", s(&long), "--json"], &needles);
    // The bound sits far above any song: 1000 bars cut fine.
    let song = write(dir.path(), "song.mid", &smf(1, &[0x00, 0x90, 60, 64, 0x9F, 0x20, 0x80, 60, 0]));
    let (code, stdout, stderr) = stylebridge(&["segments", s(&song), "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["bars"].as_array().unwrap().len(), 1000);
    // Flags: a window or hop beyond the bound is refused, not an overflow.
    refused(&["segments", s(&song), "--bars", "18446744073709551615"], &["song.mid", "1 ..= 100000 bars", "18446744073709551615 bars"]);
    refused(&["segments", s(&song), "--hop", "18446744073709551615"], &["song.mid", "hop 18446744073709551615"]);
}

#[test]
fn render_refuses_absurd_rates_and_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let song = write(dir.path(), "note.mid", &smf(480, &[0x00, 0x90, 60, 64, 0x83, 0x60, 0x80, 60, 0]));
    let out = dir.path().join("out.wav");
    refused(&["render", s(&song), "-o", s(&out), "--sample-rate", "4000000000"], &["--sample-rate: sample rate 4000000000 Hz is outside the supported 1000 ..= 768000 Hz"]);
    refused(&["render", s(&song), "-o", s(&out), "--sample-rate", "0"], &["sample rate 0 Hz is outside"]);
    // At the slowest tempo MIDI holds (16.7 s a beat) and one tick a beat, the long note lasts
    // 142 years: refused before the output is allocated.
    let slow = write(dir.path(), "slow.mid", &smf(1, &[[0x00, 0xFF, 0x51, 0x03, 0xFF, 0xFF, 0xFF].as_slice(), &LONG_NOTE].concat()));
    refused(&["render", s(&slow), "-o", s(&out)], &["cannot render", "slow.mid", "longer than the 7200 s that can be rendered"]);
    assert!(!out.exists());
}

#[test]
fn other_flags_are_bounded_too() {
    let dir = tempfile::tempdir().unwrap();
    refused(&["corpus", "synth", "--out", s(&dir.path().join("c")), "--songs", "1000000000000"], &["--songs must be 1 ..= 10000, got 1000000000000"]);
    refused(&["corpus", "synth", "--out", s(&dir.path().join("c")), "--songs", "1", "--sample-rate", "4000000000"], &["--sample-rate: sample rate 4000000000 Hz"]);
    assert!(!dir.path().join("c").exists(), "nothing is written before the flags are checked");
    // A transposition beyond MIDI's range is a usage error (exit 2), not an overflow.
    let song = write(dir.path(), "note.mid", &smf(480, &[0x00, 0x90, 60, 64, 0x83, 0x60, 0x80, 60, 0]));
    let (code, _, stderr) = stylebridge(&["tokens", "octuple", s(&song), "--transpose", "2147483647"]);
    assert!(code == 2 && stderr.contains("2147483647") && !stderr.contains("panicked"), "exit {code}: {stderr}");
}

/// `audio codes` on a WAV claiming 4 GHz fails at once; on an MP3 cut to a third it encodes what
/// is there and warns that the rest is lost.
#[test]
fn audio_codes_refuses_a_4_ghz_header_and_warns_of_a_truncated_mp3() {
    let dir = tempfile::tempdir().unwrap();
    run_script("make_encodec.py", &dir.path().join("encodec"), &["--variant", "music32k"]);
    let encodec = dir.path().join("encodec/model");
    let out = dir.path().join("codes.safetensors");

    let wav = dir.path().join("tone.wav");
    write_wav(&wav, &vec![0.1; 1600], 16_000).unwrap();
    let mut bytes = std::fs::read(&wav).unwrap();
    bytes[24..28].copy_from_slice(&4_000_000_000u32.to_le_bytes());
    let fast = write(dir.path(), "4ghz.wav", &bytes);
    refused(&["audio", "codes", "--encodec", s(&encodec), s(&fast), "-o", s(&out)], &["4ghz.wav", "sample rate 4000000000 Hz is outside the supported 1000 ..= 768000 Hz"]);
    assert!(!out.exists());

    let mp3 = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/audio/tone_48000_stereo.mp3")).unwrap();
    let cut = write(dir.path(), "cut.mp3", &mp3[..mp3.len() / 3]);
    let (code, _, stderr) = stylebridge(&["audio", "codes", "--encodec", s(&encodec), s(&cut), "-o", s(&out)]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("warning: ") && stderr.contains("cut.mp3: its last MPEG frame is cut after") && stderr.contains("truncated"), "{stderr}");
    assert!(out.exists());
}
