//! End to end through the binary: `stylebridge segments` and `stylebridge leadsheet` on the shipped
//! example song (and on a POP909 song when ../shared holds the dataset).
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use stylebridge::data::example_song;
use stylebridge::data::leadsheet::{CHORD_PROGRAM, CHORD_VELOCITY, MELODY_PROGRAM};
use stylebridge::data::midi;
use stylebridge::data::segments::{tick_to_pos, BarGrid};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn example_dir() -> PathBuf {
    repo().join("data/examples").join(example_song::NAME)
}

fn stylebridge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stylebridge")).args(args).current_dir(repo()).output().expect("run stylebridge")
}

fn ok_stdout(args: &[&str]) -> String {
    let out = stylebridge(args);
    assert!(out.status.success(), "stylebridge {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

fn failure(args: &[&str]) -> String {
    let out = stylebridge(args);
    assert!(!out.status.success(), "stylebridge {args:?} should fail");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn shipped_example_is_what_the_generator_writes() {
    let tmp = tempfile::tempdir().unwrap();
    example_song::write(tmp.path()).unwrap();
    for file in [format!("{}.mid", example_song::NAME), "chord_midi.txt".into(), "beat_midi.txt".into()] {
        let shipped = std::fs::read(example_dir().join(&file)).unwrap();
        assert_eq!(shipped, std::fs::read(tmp.path().join(&file)).unwrap(), "{file} differs from the generator's output");
    }
}

#[test]
fn segments_of_the_example_song() {
    let midi_path = example_dir().join("waltz.mid");
    let json: serde_json::Value = serde_json::from_str(&ok_stdout(&["segments", path_str(&midi_path), "--json"])).unwrap();
    // A one-beat pickup bar, then 16 bars of 3/4: windows start at bars 0, 2, ..., 12.
    let bars = json["bars"].as_array().unwrap();
    assert_eq!(bars.len(), 17);
    assert_eq!((bars[0]["length_pos"].as_u64(), bars[1]["numerator"].as_u64()), (Some(12), Some(3)));
    let segments = json["segments"].as_array().unwrap();
    assert_eq!(segments.len(), 7);
    let last = &segments[6];
    assert_eq!((last["first_bar"].as_u64(), last["end_bar"].as_u64()), (Some(12), Some(16)));
    assert_eq!((last["start_tick"].as_u64(), last["end_tick"].as_u64()), (Some(480 + 11 * 1440), Some(480 + 15 * 1440)));
    // 34 beats at 96 bpm; the end crosses the change to 84 bpm after 37 beats.
    let (start, end) = (last["start_seconds"].as_f64().unwrap(), last["end_seconds"].as_f64().unwrap());
    assert!((start - 34.0 * 0.625).abs() < 1e-9, "{start}");
    assert!((end - (37.0 * 0.625 + 9.0 * 60.0 / 84.0)).abs() < 1e-4, "{end}");
    // Onsets counted per segment: the melody and piano of four bars.
    assert!(segments.iter().all(|s| s["notes"].as_u64().unwrap() > 12));

    let table = ok_stdout(&["segments", path_str(&midi_path), "--bars", "2", "--hop", "1"]);
    assert!(table.contains("17 bars, 16 segments of 2 bars (hop 1)"), "{table}");
}

#[test]
fn segments_rejects_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.mid");
    std::fs::write(&junk, b"not midi").unwrap();
    assert!(failure(&["segments", path_str(&junk)]).contains("junk.mid"));
    let midi_path = example_dir().join("waltz.mid");
    assert!(failure(&["segments", path_str(&midi_path), "--hop", "0"]).contains("hop"));
}

#[test]
fn lead_sheet_from_song_folder_and_from_midi_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let (from_folder, retimed, from_midi) =
        (tmp.path().join("folder.mid"), tmp.path().join("retimed.mid"), tmp.path().join("midi.mid"));
    let dir = example_dir();
    let summary: serde_json::Value = serde_json::from_str(&ok_stdout(&[
        "leadsheet",
        path_str(&dir),
        "-o",
        path_str(&from_folder),
        "--score-out",
        path_str(&retimed),
        "--json",
    ]))
    .unwrap();
    ok_stdout(&[
        "leadsheet",
        "--midi",
        path_str(&dir.join("waltz.mid")),
        "--melody-track",
        "MELODY",
        "--chords",
        path_str(&dir.join("chord_midi.txt")),
        "-o",
        path_str(&from_midi),
    ]);
    // The beat annotation describes the file's own grid, so both routes give the same file, and
    // re-timing leaves the song's notes where they were.
    assert_eq!(std::fs::read(&from_folder).unwrap(), std::fs::read(&from_midi).unwrap());
    let original = midi::read(&dir.join("waltz.mid")).unwrap();
    let retimed = midi::read(&retimed).unwrap();
    assert_eq!(retimed.instruments, original.instruments);
    assert_eq!(retimed.time_signatures, original.time_signatures);

    let sheet = midi::read(&from_folder).unwrap();
    let parts: Vec<(&str, u8)> = sheet.instruments.iter().map(|i| (i.name.as_str(), i.program)).collect();
    assert_eq!(parts, [("MELODY", MELODY_PROGRAM), ("CHORDS", CHORD_PROGRAM)]);
    assert_eq!(sheet.instruments[0].notes, original.instruments[0].notes);
    let chords = &sheet.instruments[1].notes;
    assert!(chords.iter().all(|n| n.velocity == CHORD_VELOCITY && (48..=71).contains(&n.pitch)));
    // 16 chords (the pickup's N gives none): 8 triads and 8 sevenths.
    assert_eq!(summary["chords"].as_u64(), Some(16));
    assert_eq!(chords.len(), 8 * 3 + 8 * 4);
    assert_eq!(summary["chord_notes"].as_u64(), Some(chords.len() as u64));
    assert_eq!(summary["bars"].as_u64(), Some(17));
    // The first bar's chord (C:maj from the bar line after the pickup, one bar long).
    let first: Vec<(u32, u32, u8)> = chords.iter().take(3).map(|n| (n.start, n.end, n.pitch)).collect();
    assert_eq!(first, [(480, 1920, 48), (480, 1920, 52), (480, 1920, 55)]);
}

#[test]
fn lead_sheet_rejects_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.mid");
    let dir = example_dir();
    let midi_path = dir.join("waltz.mid");
    let bad_chords = tmp.path().join("chords.txt");
    std::fs::write(&bad_chords, "0.0\t1.0\tC:maj\n1.0\t2.0\tQ:min\n").unwrap();
    let err = failure(&["leadsheet", "--midi", path_str(&midi_path), "--chords", path_str(&bad_chords), "-o", path_str(&out)]);
    assert!(err.contains("chords.txt") && err.contains("line 2") && err.contains("Q:min"), "{err}");
    let chords = dir.join("chord_midi.txt");
    let err = failure(&["leadsheet", "--midi", path_str(&midi_path), "--melody-track", "VOCALS", "--chords", path_str(&chords), "-o", path_str(&out)]);
    assert!(err.contains("VOCALS") && err.contains("MELODY"), "{err}");
    let err = failure(&["leadsheet", path_str(tmp.path()), "-o", path_str(&out)]);
    assert!(err.contains("beat_midi.txt") || err.contains(".mid"), "{err}");
    assert!(!out.exists());
}

#[test]
fn pop909_song_end_to_end() {
    let song = repo().join("../shared/data/pop909/POP909/001");
    if !song.is_dir() {
        eprintln!("skipping: {} is absent", song.display());
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (sheet, retimed) = (tmp.path().join("001_leadsheet.mid"), tmp.path().join("001_retimed.mid"));
    ok_stdout(&["leadsheet", path_str(&song), "-o", path_str(&sheet), "--score-out", path_str(&retimed)]);
    let json: serde_json::Value = serde_json::from_str(&ok_stdout(&["segments", path_str(&retimed), "--json"])).unwrap();
    let bars = json["bars"].as_array().unwrap();
    let four_four = bars.iter().filter(|b| b["numerator"].as_u64() == Some(4) && b["denominator"].as_u64() == Some(4)).count();
    assert!(four_four as f64 > 0.9 * bars.len() as f64, "{four_four} of {} bars in 4/4", bars.len());
    let segments = json["segments"].as_array().unwrap();
    assert_eq!(segments.len(), (bars.len() - 4) / 2 + 1);
    // The song folder itself gives the same segments.
    let direct: serde_json::Value = serde_json::from_str(&ok_stdout(&["segments", path_str(&song), "--json"])).unwrap();
    assert_eq!(direct["segments"], json["segments"]);
    // Bar lines land on annotated downbeats: every segment starts on a time listed in beat_midi.txt.
    let beats: Vec<f64> = std::fs::read_to_string(song.join("beat_midi.txt"))
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    for s in segments.iter().skip(1) {
        let t = s["start_seconds"].as_f64().unwrap();
        assert!(beats.iter().any(|b| (b - t).abs() < 1e-4), "segment start {t} s is not an annotated beat");
    }
    let parts = midi::read(&sheet).unwrap();
    assert_eq!(parts.instruments.len(), 2);
}

/// The bar grid numbers every note exactly as the reference OctupleMIDI encoder does: (bar,
/// position, pitch) of each note against the golden token ids of tests/data/golden/edge (meters
/// 3/4, 6/8, 7/8, changes in mid-bar, odd PPQ, tempo changes, bars past 255).
#[test]
fn bar_grid_matches_reference_octuple_bars() {
    let golden_dir = repo().join("tests/data/golden/edge");
    let mut checked = 0;
    for entry in std::fs::read_dir(repo().join("tests/data/midi")).unwrap() {
        let midi_path = entry.unwrap().path();
        let stem = midi_path.file_stem().unwrap().to_str().unwrap().to_string();
        let Ok(golden) = std::fs::read_to_string(golden_dir.join(format!("{stem}.json"))) else { continue };
        let ids: Vec<u32> = serde_json::from_value(serde_json::from_str::<serde_json::Value>(&golden).unwrap()["octuple"].clone()).unwrap();
        // 8 x <s>, 8 ids per note, 8 x </s>; bar ids from 4, positions from 260, pitches from 517.
        let mut want: Vec<(u32, u32, u32)> = ids[8..ids.len() - 8].chunks(8).map(|n| (n[0] - 4, n[1] - 260, n[3] - 517)).collect();
        want.sort();
        let score = midi::read(&midi_path).unwrap();
        let grid = BarGrid::from_score(&score).unwrap();
        let mut got: Vec<(u32, u32, u32)> = Vec::new();
        for inst in &score.instruments {
            for n in &inst.notes {
                let pos = tick_to_pos(n.start, score.ticks_per_beat);
                let bar = grid.bar_of_pos(pos).unwrap();
                let pitch = u32::from(n.pitch) + if inst.is_drum { 128 } else { 0 };
                if bar < 256 {
                    got.push((bar as u32, pos - grid.bars[bar].start_pos, pitch));
                }
            }
        }
        got.sort();
        assert_eq!(got, want, "{stem}: (bar, position, pitch) of the notes");
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} golden files found");
}
