//! Bad MIDI (and token) input through the `stylebridge tokens` binary: every case exits
//! non-zero with a message naming the file and the problem, never a panic; a file of
//! 100k notes is encoded, not rejected.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A standard MIDI file from raw track bodies (end-of-track appended).
fn smf(format: u16, ticks_per_beat: u16, tracks: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = b"MThd\0\0\0\x06".to_vec();
    bytes.extend(format.to_be_bytes());
    bytes.extend((tracks.len() as u16).to_be_bytes());
    bytes.extend(ticks_per_beat.to_be_bytes());
    for body in tracks {
        let mut body = body.clone();
        body.extend([0x00, 0xFF, 0x2F, 0x00]);
        bytes.extend(b"MTrk");
        bytes.extend((body.len() as u32).to_be_bytes());
        bytes.extend(body);
    }
    bytes
}

/// Variable-length delta time.
fn delta(mut ticks: u32) -> Vec<u8> {
    let mut out = vec![(ticks & 0x7F) as u8];
    ticks >>= 7;
    while ticks > 0 {
        out.insert(0, (ticks & 0x7F) as u8 | 0x80);
        ticks >>= 7;
    }
    out
}

/// One quarter note of pitch 60 at the start.
fn one_note() -> Vec<u8> {
    [vec![0x00, 0x90, 60, 100], delta(480), vec![0x80, 60, 0]].concat()
}

fn time_signature(numerator: u8, exponent: u8) -> Vec<u8> {
    vec![0x00, 0xFF, 0x58, 0x04, numerator, exponent, 24, 8]
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stylebridge")).args(args).output().unwrap();
    let code = out.status.code().unwrap_or(-1);
    (code, String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The command fails cleanly: exit 1, the file and the problem named, no panic.
fn assert_clean_failure(args: &[&str], file: &Path, problem: &str) {
    let (code, stdout, stderr) = run(args);
    assert_eq!(code, 1, "{args:?}: expected exit 1, stderr: {stderr}");
    assert!(stdout.is_empty(), "{args:?} printed {stdout}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    assert!(stderr.contains(&file.display().to_string()), "{args:?}: file not named in: {stderr}");
    assert!(stderr.contains(problem), "{args:?}: expected '{problem}' in: {stderr}");
}

#[test]
fn bad_midi_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = smf(0, 480, &[[time_signature(4, 2), one_note()].concat()]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated.mid", good[..good.len() - 6].to_vec(), "truncated MIDI file: track 1 declares"),
        ("missing_track.mid", { let mut b = good.clone(); b[11] = 2; b }, "declares 2 tracks but the file holds 1"),
        ("empty.mid", Vec::new(), "not a MIDI file"),
        ("wrong_header.mid", [b"RIFX".as_slice(), &good[4..]].concat(), "not a MIDI file (expected the 'MThd' header"),
        ("zero_tracks.mid", smf(1, 480, &[]), "has no tracks"),
        ("zero_notes.mid", smf(1, 480, &[time_signature(3, 2)]), "contains no notes"),
        ("zero_ppq.mid", smf(0, 0, &[one_note()]), "ticks per beat (PPQ) is 0"),
        ("smpte.mid", smf(0, 0xE728, &[one_note()]), "SMPTE"),
        (
            "zero_tempo.mid",
            smf(0, 480, &[[vec![0x00, 0xFF, 0x51, 0x03, 0, 0, 0], one_note()].concat()]),
            "absurd tempo: 0 microseconds per beat",
        ),
        ("ts_3_128.mid", smf(0, 480, &[[time_signature(3, 7), one_note()].concat()]), "unsupported time signature 3/128"),
        ("ts_0_4.mid", smf(0, 480, &[[time_signature(0, 2), one_note()].concat()]), "unsupported time signature 0/4"),
        ("ts_2_pow_40.mid", smf(0, 480, &[[time_signature(4, 40), one_note()].concat()]), "unsupported time signature 4/2^40"),
        ("ts_1_64.mid", smf(0, 480, &[[time_signature(1, 6), one_note()].concat()]), "shorter than one position"),
        (
            "tick_overflow.mid",
            smf(0, 480, &[[delta(0x0FFF_FFFF), vec![0x90, 60, 100, 0x00, 0x80, 60, 0]].concat().repeat(17)]),
            "beyond the supported 2^32-1",
        ),
        ("bad_event.mid", smf(0, 480, &[[vec![0x00, 0x42, 0x10], one_note()].concat()]), "track 1: unreadable event after 0 events"),
    ];
    // Both encodings read files the same way; alternate them to keep the test quick.
    for (i, (name, bytes, problem)) in cases.into_iter().enumerate() {
        let path = write(d, name, &bytes);
        let encoding = ["octuple", "remi"][i % 2];
        assert_clean_failure(&["tokens", encoding, path.to_str().unwrap(), "--json"], &path, problem);
    }
    let missing = d.join("absent.mid");
    assert_clean_failure(&["tokens", "octuple", missing.to_str().unwrap()], &missing, "cannot read the file");
}

#[test]
fn bad_token_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("out.mid");
    let cases: Vec<(&str, &str, &str, &str)> = vec![
        ("not_json.json", "octuple", "[0, 0,", "expected a JSON array"),
        ("negative.json", "remi", "[-5]", "expected a JSON array"),
        ("no_notes.json", "octuple", "[0,0,0,0,0,0,0,0,2,2,2,2,2,2,2,2]", "hold no notes"),
        ("partial.json", "octuple", "[4, 260, 388]", "ends inside a note"),
        ("misplaced.json", "octuple", "[260, 4, 388, 517, 773, 901, 933, 1187]", "out of place"),
        ("out_of_vocab.json", "remi", "[1253]", "outside the vocabulary"),
        ("remi_no_duration.json", "remi", "[679, 933, 6, 134, 300, 700]", "d-* after p-*"),
    ];
    for (name, encoding, text, problem) in cases {
        let path = write(d, name, text.as_bytes());
        let args = ["tokens", "decode", "--encoding", encoding, path.to_str().unwrap(), "-o", out.to_str().unwrap()];
        assert_clean_failure(&args, &path, problem);
        assert!(!out.exists(), "{name}: output written despite the error");
    }
}

/// Tokens that decode but say more than MIDI can hold (a duration past the 96 buckets, a pitch
/// above 127, a `<pad>` inside a note) are written as far as they go, with a warning on stderr
/// naming the file and what was lost.
#[test]
fn damaged_token_files_decode_with_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let note = |pitch: u32, duration: u32| vec![4, 260, 388, 517 + pitch, 773 + duration, 901 + 20, 933 + 9, 1187 + 30];
    let ids = [vec![0; 8], note(60, 12), note(62, 120), note(200, 12), vec![2; 8]].concat();
    let mut misaligned = note(64, 12);
    misaligned.insert(3, 1);
    let ids = [ids, misaligned].concat();
    let path = write(dir.path(), "damaged.json", serde_json::to_string(&ids).unwrap().as_bytes());
    let out = dir.path().join("out.mid");
    let (code, _, stderr) = run(&["tokens", "decode", "--encoding", "octuple", path.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let file = path.display().to_string();
    for what in [
        "skipped 1 special token(s) (<s>, </s>, <pad>, <DEC>) inside notes, the first at index 43 (<pad>)",
        "dropped 1 note(s) whose pitch is no MIDI note",
        "shortened 1 note(s) whose duration lies past the 96 duration buckets",
    ] {
        assert!(stderr.contains(&format!("warning: {file}: {what}")), "{what:?} missing from:\n{stderr}");
    }
    assert!(stderr.contains("wrote 3 notes"), "{stderr}");
    assert_eq!(stylebridge::data::midi::read(&out).unwrap().note_count(), 3);
}

/// 100k notes (10-note chords on every 1/12 beat, bars 0..208) encode completely.
#[test]
fn a_file_of_100k_notes_is_encoded() {
    let notes = 100_000u32;
    let mut body = Vec::new();
    for _chord in 0..notes / 10 {
        for k in 0..10u8 {
            body.extend([0x00, 0x90, 40 + 5 * k, 90]);
        }
        // One position (40 ticks at 480 per beat) later, release the chord.
        for k in 0..10u8 {
            body.extend(delta(if k == 0 { 40 } else { 0 }));
            body.extend([0x80, 40 + 5 * k, 0]);
        }
    }
    let bytes = smf(0, 480, &[body]);
    assert_eq!(stylebridge::data::midi::parse(&bytes, "big.mid").unwrap().note_count(), notes as usize);
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "big.mid", &bytes);

    let (code, stdout, stderr) = run(&["tokens", "octuple", path.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let ids: Vec<u32> = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(ids.len(), 8 * (notes as usize + 2));
    let (code, stdout, stderr) = run(&["tokens", "remi", path.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let ids: Vec<u32> = serde_json::from_str(stdout.trim()).unwrap();
    // Per note p d v; per onset o i; per bar s t b-1 (10000 onsets in 10000 / 48 bars).
    assert_eq!(ids.len(), 3 * notes as usize + 2 * 10_000 + 3 * 209);
}
