//! `stylebridge arrange` end to end on a tiny stage-2 run: a lead sheet and a reference recording
//! give a piano MIDI with the lead sheet's bars, tempo and meter, a record of how it was made, and
//! ranked candidates; the same seed gives the same file; styles mix; a batch skips a bad row and
//! finishes the rest; bad inputs are errors that name the file and the problem; `eval
//! style-transfer` arranges and judges every case of a small corpus, the same way twice, and with
//! `--cover` hears each lead sheet's own recordings.
mod parity_support;
mod run_support;
mod shards_support;
mod stage2_support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use run_support::file;
use stage2_support::*;
use stylebridge::data::audio::write_wav;
use stylebridge::data::corpus;
use stylebridge::data::shards::PairRow;
use stylebridge::data::split::Split;
use stylebridge::data::midi::{self, Instrument, Note, Score, TempoChange, TimeSignature};

/// The trained fixture, built once per test binary: backbones, a stage-2 run, a tiny EnCodec.
fn fixture() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        backbones(&dir);
        ok(&["train", stage2_config(&dir, "stage2", 1).to_str().unwrap()]);
        // 8 kHz, 4 codebooks of 32 codes: what the tiny MusicGen reads.
        parity_support::run_script("make_encodec.py", &dir.join("encodec"), &["--variant", "music32k"]);
        let tone = |f: f32| -> Vec<f32> { (0..24_000).map(|i| 0.3 * (i as f32 * f).sin() + 0.1 * (i as f32 * 3.1 * f).sin()).collect() };
        write_wav(&dir.join("low.wav"), &tone(0.02), 16_000).unwrap();
        write_wav(&dir.join("high.wav"), &tone(0.09), 16_000).unwrap();
        write_wav(&dir.join("silent.wav"), &vec![0.0; 16_000], 16_000).unwrap();
        std::fs::write(dir.join("not_audio.wav"), b"this is a text file").unwrap();
        midi::write(&lead_sheet(8, 4), &dir.join("ls44.mid")).unwrap();
        midi::write(&lead_sheet(3, 3), &dir.join("ls34.mid")).unwrap();
        midi::write(&Score { instruments: vec![], ..lead_sheet(1, 4) }, &dir.join("empty.mid")).unwrap();
        dir
    })
}

/// `bars` bars of `beats`/4 at 100 bpm: a melody note per beat and a triad per bar.
fn lead_sheet(bars: u32, beats: u32) -> Score {
    let tpb = 480;
    let melody = (0..bars * beats).map(|b| Note { start: b * tpb, end: (b + 1) * tpb, pitch: 72 + (b % 5) as u8, velocity: 90 }).collect();
    let chords = (0..bars).flat_map(|bar| [48u8, 52, 55].map(|p| Note { start: bar * beats * tpb, end: (bar + 1) * beats * tpb, pitch: p, velocity: 80 })).collect();
    let part = |name: &str, program: u8, notes| Instrument { name: name.into(), program, is_drum: false, notes, ..Instrument::default() };
    Score {
        ticks_per_beat: tpb,
        instruments: vec![part("MELODY", 0, melody), part("CHORDS", 4, chords)],
        tempo_changes: vec![TempoChange { tick: 0, bpm: 100.0 }],
        time_signatures: vec![TimeSignature { tick: 0, numerator: beats, denominator: 4 }],
    }
}

fn arrange(extra: &[&str]) -> std::process::Output {
    arrange_with(&fixture().join("stage2"), extra)
}

/// `arrange` of stage-2 run `run` with the fixture's EnCodec, on one CPU thread.
fn arrange_with(run_dir: &Path, extra: &[&str]) -> std::process::Output {
    let dir = fixture();
    let mut args = vec!["arrange", "--checkpoint", run_dir.to_str().unwrap().to_string().leak(), "--encodec", dir.join("encodec/model").to_str().unwrap().to_string().leak(), "--threads", "1", "--device", "cpu"];
    args.extend_from_slice(extra);
    run(&args)
}

fn path(p: PathBuf) -> &'static str {
    p.to_str().unwrap().to_string().leak()
}

#[test]
fn an_arrangement_keeps_the_lead_sheets_bars_and_records_how_it_was_made() {
    let dir = fixture();
    let out = dir.join("out/ls44.mid");
    let o = arrange(&["--leadsheet", path(dir.join("ls44.mid")), "--reference", path(dir.join("low.wav")), "-o", path(out.clone()), "--num-samples", "3", "--keep", "all", "--seed", "7", "--tokens", path(dir.join("out/tokens.json")), "--pedal", "--render", path(dir.join("out/ls44.wav"))]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let score = midi::read(&out).unwrap();
    assert!(score.note_count() > 0);
    let beats8 = 8 * 4 * score.ticks_per_beat;
    assert!(score.instruments.iter().flat_map(|i| &i.notes).all(|n| n.start < beats8), "every note starts inside the 8 bars");
    assert_eq!(score.time_signatures[0].numerator, 4);
    assert!((score.tempo_changes[0].bpm - 100.0).abs() < 1e-6, "the lead sheet's tempo map");
    let pedal = &score.instruments[0].control_changes;
    assert_eq!(pedal.iter().filter(|c| c.controller == 64 && c.value == 72).count(), 7, "down at each of the 8 bar lines but the last");
    let wav = stylebridge::data::audio::load_mono(&dir.join("out/ls44.wav"), 16_000).unwrap();
    assert!(wav.len() > 16_000 * 19 && wav.iter().any(|s| s.abs() > 1e-3), "8 bars at 100 bpm last 19.2 s, and they sound");

    let record: serde_json::Value = serde_json::from_slice(&file(out.with_extension("json"))).unwrap();
    let candidates = record["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 3);
    let scores: Vec<f64> = candidates.iter().map(|c| c["similarity"].as_f64().expect("ranked by the stage-1 model")).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "best first: {scores:?}");
    for c in candidates {
        assert_eq!(c["windows"].as_array().unwrap().len(), 3, "8 bars = windows 0-4, 2-6, 4-8");
        assert!(Path::new(c["file"].as_str().unwrap()).is_file());
    }
    assert_eq!(record["seed"], 7);
    assert_eq!(record["sampling"]["top_k"], 15);
    let roles: Vec<&str> = record["backbones"].as_array().unwrap().iter().map(|b| b["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["stage2", "stage1", "musecoco"]);
    assert!(record["backbones"][0]["sha256"].as_str().unwrap().len() == 64);
    let tokens: serde_json::Value = serde_json::from_slice(&file(dir.join("out/tokens.json"))).unwrap();
    assert_eq!(tokens[0]["bars"].as_array().unwrap().len(), 8);

    // Same seed, same MIDI; another seed, another arrangement.
    let again = dir.join("out/again.mid");
    let o = arrange(&["--leadsheet", path(dir.join("ls44.mid")), "--reference", path(dir.join("low.wav")), "-o", path(again.clone()), "--num-samples", "3", "--seed", "7", "--pedal"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(file(again.clone()) == file(out.clone()), "the same seed gave another arrangement");
    let other = dir.join("out/other.mid");
    assert!(arrange(&["--leadsheet", path(dir.join("ls44.mid")), "--reference", path(dir.join("low.wav")), "-o", path(other.clone()), "--seed", "8", "--pedal"]).status.success());
    assert!(file(other) != file(out), "another seed gave the same arrangement");
}

#[test]
fn styles_mix_passages_select_bars_and_follow_mode_reads_the_song() {
    let dir = fixture();
    let out = dir.join("mix/ls34.mid");
    let o = arrange(&["--leadsheet", path(dir.join("ls34.mid")), "--reference", path(dir.join("low.wav")), "--reference", path(dir.join("high.wav")), "--mix", "0.7,0.3", "-o", path(out.clone()), "--reference-mode", "follow"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let record: serde_json::Value = serde_json::from_slice(&file(out.with_extension("json"))).unwrap();
    let weights: Vec<f64> = record["references"].as_array().unwrap().iter().map(|r| r["weight"].as_f64().unwrap()).collect();
    assert_eq!(weights, [0.7, 0.3]);
    assert_eq!(record["bars"], 3, "a piece shorter than one window");
    assert_eq!(midi::read(&out).unwrap().time_signatures[0].numerator, 3);

    let part = dir.join("mix/part.mid");
    let o = arrange(&["--leadsheet", path(dir.join("ls44.mid")), "--reference", path(dir.join("low.wav")), "-o", path(part.clone()), "--start-bar", "2", "--bars", "5"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let record: serde_json::Value = serde_json::from_slice(&file(part.with_extension("json"))).unwrap();
    assert_eq!((record["start_bar"].as_u64(), record["bars"].as_u64()), (Some(2), Some(5)));
    assert_eq!(record["candidates"][0]["windows"].as_array().unwrap().len(), 2, "5 bars = windows 0-4, 2-5");
}

#[test]
fn a_batch_skips_bad_rows_and_finishes_the_rest() {
    let dir = fixture();
    let list = dir.join("batch.csv");
    std::fs::write(
        &list,
        "leadsheet,reference,out,bars,seed\nls44.mid,low.wav,batch/a.mid,4,1\nempty.mid,low.wav,batch/b.mid,,\nls34.mid,silent.wav,batch/c.mid,,\nmissing.mid,low.wav,batch/d.mid,,\nls34.mid,high.wav,batch/e.mid,,3\n",
    )
    .unwrap();
    let o = arrange(&["--batch", path(list.clone())]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    for good in ["a", "e"] {
        assert!(dir.join(format!("batch/{good}.mid")).is_file(), "row {good} was not arranged: {err}");
    }
    for bad in ["b", "c", "d"] {
        assert!(!dir.join(format!("batch/{bad}.mid")).exists(), "bad row {bad} wrote a file");
    }
    let report: serde_json::Value = serde_json::from_slice(&file(list.with_extension("report.json"))).unwrap();
    let skipped: Vec<u64> = report["skipped"].as_array().unwrap().iter().map(|s| s["line"].as_u64().unwrap()).collect();
    assert_eq!((report["arranged"].as_u64(), skipped), (Some(2), vec![3, 4, 5]), "{report}");
    assert!(err.contains("no notes") && err.contains("silent") && err.contains("missing.mid"), "{err}");
}

#[test]
fn bad_inputs_name_the_file_and_the_problem() {
    let dir = fixture();
    let lead = path(dir.join("ls44.mid"));
    let out = path(dir.join("bad/out.mid"));
    let cases: Vec<(Vec<&str>, Vec<String>)> = vec![
        (vec!["--reference", path(dir.join("not_audio.wav"))], vec!["not_audio.wav".into()]),
        (vec!["--reference", path(dir.join("silent.wav"))], vec!["silent.wav".into(), "silent".into()]),
        (vec!["--reference", path(dir.join("low.wav")), "--reference", path(dir.join("high.wav")), "--mix", "1"], vec!["--mix gives 1 weights for 2 references".into()]),
        (vec!["--reference", path(dir.join("low.wav")), "--start-bar", "9"], vec!["outside the lead sheet's 8 bars".into()]),
        (vec!["--reference", path(dir.join("low.wav")), "--top-p", "1.5"], vec!["top_p".into()]),
        (vec!["--reference", path(dir.join("low.wav")), "--reference-offset", "60"], vec!["past the end of the reference audio".into()]),
        (vec!["--reference", path(dir.join("low.wav")), "--num-samples", "100000"], vec!["--num-samples must be 1 ..= 256".into()]),
    ];
    for (extra, wants) in cases {
        let mut args = vec!["--leadsheet", lead, "-o", out];
        args.extend(extra.iter().copied());
        let o = arrange(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{extra:?}: {err}");
        for want in wants {
            assert!(err.contains(&want), "{extra:?}: {err}");
        }
    }
    // Outputs never land on an input or on each other (the record is OUT.json).
    let record = path(dir.join("bad/out.json"));
    for (extra, want) in [
        (vec!["-o", lead], "the lead sheet and the output MIDI are the same file"),
        (vec!["-o", out, "--tokens", record], "the record and --tokens are the same file"),
        (vec!["-o", out, "--render", path(dir.join("low.wav"))], "a reference and --render are the same file"),
    ] {
        let mut args = vec!["--leadsheet", lead, "--reference", path(dir.join("low.wav"))];
        args.extend(extra.iter().copied());
        let o = arrange(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.code() == Some(1) && err.contains(want), "{extra:?}: {err}");
    }
    let empty = arrange(&["--leadsheet", path(dir.join("empty.mid")), "--reference", path(dir.join("low.wav")), "-o", out]);
    assert!(String::from_utf8_lossy(&empty.stderr).contains("empty.mid") && String::from_utf8_lossy(&empty.stderr).contains("no notes"), "{}", String::from_utf8_lossy(&empty.stderr));

    // libtorch aborts on 0 threads; that is an error before it is asked.
    let o = run(&["arrange", "--checkpoint", path(dir.join("stage2")), "--leadsheet", lead, "--reference", path(dir.join("low.wav")), "-o", out, "--threads", "0"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.code() == Some(1) && err.contains("thread count must be 1"), "{err}");

    // A stage-1 run is no stage-2 model; a converted folder without MuseCoco weights neither.
    let o = run(&["arrange", "--checkpoint", path(dir.join("stage1")), "--leadsheet", lead, "--reference", path(dir.join("low.wav")), "-o", out]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("is a stage1 run, not a stage2 run"), "{err}");
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden/stage2");
    let stripped = dir.join("no_musecoco");
    std::fs::create_dir_all(&stripped).unwrap();
    std::fs::copy(golden.join("config.json"), stripped.join("config.json")).unwrap();
    let kept: Vec<(String, tch::Tensor)> = tch::Tensor::read_safetensors(golden.join("model.safetensors")).unwrap().into_iter().filter(|(n, _)| !n.starts_with("musecoco.")).collect();
    tch::Tensor::write_safetensors(&kept, stripped.join("model.safetensors")).unwrap();
    let o = run(&["arrange", "--checkpoint", path(stripped), "--leadsheet", lead, "--reference", path(dir.join("low.wav")), "-o", out, "--encodec", path(dir.join("encodec/model"))]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("no MuseCoco weights"), "{err}");
}

#[test]
fn a_converted_bossa_stage2_checkpoint_arranges() {
    let dir = fixture();
    // The golden BOSSA model's MusicGen reads 4 codebooks of 2048 codes; a converted checkpoint
    // names no EnCodec, so one is given.
    parity_support::run_script("make_encodec.py", &dir.join("encodec2048"), &["--variant", "codes2048"]);
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden/stage2");
    let out = dir.join("bossa/ls34.mid");
    let o = run(&["arrange", "--checkpoint", path(golden), "--encodec", path(dir.join("encodec2048/model")), "--leadsheet", path(dir.join("ls34.mid")), "--reference", path(dir.join("low.wav")), "-o", path(out.clone()), "--max-new-tokens", "40", "--threads", "1", "--device", "cpu"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(midi::read(&out).unwrap().time_signatures[0].numerator, 3);
    let record: serde_json::Value = serde_json::from_slice(&file(out.with_extension("json"))).unwrap();
    assert_eq!(record["backbones"][0]["role"], "stage2");
    assert!(record["ranked_by"].is_null(), "no stage-1 model to rank with");
    // Without --encodec it says what is missing.
    let o = run(&["arrange", "--checkpoint", path(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden/stage2")), "--leadsheet", path(dir.join("ls34.mid")), "--reference", path(dir.join("low.wav")), "-o", path(out)]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("names no EnCodec"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn the_style_transfer_table_arranges_every_case_and_repeats_itself_and_covers_hear_their_own_song() {
    let dir = fixture();
    let corpus_dir = dir.join("st/corpus");
    ok(&["corpus", "synth", "--songs", "4", "--seed", "3", "--bars", "8", "--styles", "alberti,block,waltz", "--out", path(corpus_dir.clone())]);
    let items = corpus::Manifest::read(&corpus_dir).unwrap().items;
    // The first two lead sheets train the judge, the last two are the test cases.
    let mut sheets: Vec<&str> = items.iter().map(|i| i.lead_sheet.as_str()).collect();
    sheets.dedup();
    assert_eq!(sheets.len(), 4);
    let split = |item: &corpus::Item| if sheets[..2].contains(&item.lead_sheet.as_str()) { Split::Train } else { Split::Test };
    let rows = |s: Split| items.iter().filter(|i| split(i) == s).enumerate().map(|(k, i)| PairRow { song_id: i.name.clone(), ..pair(k, 0, s) }).collect();
    let data = dir.join("st/shards");
    shards_support::write(&data, layout(), &[(Split::Train, rows(Split::Train)), (Split::Test, rows(Split::Test))]);
    // Each test lead sheet takes every style the other test lead sheet was arranged in.
    let styles = |sheet: &str| items.iter().filter(|i| i.lead_sheet == sheet).map(|i| i.style).collect::<Vec<_>>();
    let cases = styles(sheets[2]).iter().filter(|s| styles(sheets[3]).contains(s)).count() * 2;

    let out = dir.join("st/out");
    let stage2 = path(dir.join("stage2"));
    let o = run(&["eval", "style-transfer", "--checkpoint", stage2, "--compare", &format!("again={stage2}"), "--corpus", path(corpus_dir.clone()), "--data", path(data.clone()), "--out", path(out.clone()), "--lead-sheets", "2", "--num-samples", "2", "--max-new-tokens", "60", "--encodec", path(dir.join("encodec/model"))]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&file(out.join("style_transfer.json"))).unwrap();
    assert_eq!(report["judge_test_cases"], items.iter().filter(|i| split(i) == Split::Test).count());
    let all = |model: &str| report["rows"].as_array().unwrap().iter().find(|r| r["model"] == model && r["reference_style"] == "all").cloned().unwrap();
    assert_eq!(all("stage 2")["cases"], cases);
    assert_eq!(all("stage 2")["decoded"], 100.0, "grammar-constrained sampling always decodes");
    let drop_model = |mut r: serde_json::Value| {
        r.as_object_mut().unwrap().remove("model");
        r
    };
    assert_eq!(drop_model(all("again")), drop_model(all("stage 2")), "the same run and seed judged differently");
    let written = std::fs::read_dir(out.join("arrange/stage_2")).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "mid")).count();
    assert_eq!(written, cases);
    for case in report["cases"].as_array().unwrap() {
        let kept = case["melody_kept"].as_u64().unwrap();
        assert!(kept <= case["melody_notes"].as_u64().unwrap() && case["melody_notes"].as_u64().unwrap() > 0, "{case}");
    }
    assert_eq!(report["cover"], false);

    // Covers: every style of each test lead sheet, heard from its own recording.
    let covers = dir.join("st/covers");
    let o = run(&["eval", "style-transfer", "--checkpoint", stage2, "--cover", "--corpus", path(corpus_dir), "--data", path(data), "--out", path(covers.clone()), "--lead-sheets", "2", "--max-new-tokens", "60", "--encodec", path(dir.join("encodec/model"))]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&file(covers.join("style_transfer.json"))).unwrap();
    assert_eq!(report["cover"], true);
    let cases = report["cases"].as_array().unwrap();
    assert_eq!(cases.len(), styles(sheets[2]).len() + styles(sheets[3]).len());
    assert!(cases.iter().all(|c| c["reference"].as_str().unwrap().starts_with(c["lead_sheet"].as_str().unwrap())), "a cover heard another song");

    // Settings that would judge nothing are refused before anything runs.
    for (flag, value, want) in [("--lead-sheets", "0", "--lead-sheets must be at least 1"), ("--num-samples", "0", "--num-samples must be 1 ..= 256")] {
        let o = run(&["eval", "style-transfer", "--checkpoint", stage2, "--corpus", "nowhere", "--data", "nowhere", "--out", path(dir.join("st/refused")), flag, value]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.code() == Some(1) && err.contains(want), "{flag} {value}: {err}");
    }
}

/// Copy folder `from` to `to`; `moved` = (old, new) rewrites a path in every YAML and JSON file.
fn copy_dir(from: &Path, to: &Path, moved: Option<(&str, &str)>) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target, moved);
        } else if let Some((old, new)) = moved.filter(|_| entry.path().extension().is_some_and(|x| x == "yaml" || x == "json")) {
            std::fs::write(&target, std::fs::read_to_string(entry.path()).unwrap().replace(old, new)).unwrap();
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn a_frozen_backbone_changed_since_training_is_refused() {
    let dir = fixture();
    // The same run over a copy of its MuseCoco whose weights moved (same names and shapes).
    let (original, tampered) = (dir.join("lm/musecoco"), dir.join("tampered/musecoco"));
    copy_dir(&original, &tampered, None);
    let weights = tampered.join("model.safetensors");
    let moved: Vec<(String, tch::Tensor)> = tch::Tensor::read_safetensors(&weights).unwrap().into_iter().map(|(k, t)| (k, t + 1.0)).collect();
    tch::Tensor::write_safetensors(&moved, &weights).unwrap();
    let run_dir = dir.join("tampered/stage2");
    copy_dir(&dir.join("stage2"), &run_dir, Some((original.to_str().unwrap(), tampered.to_str().unwrap())));
    let o = arrange_with(&run_dir, &["--leadsheet", path(dir.join("ls44.mid")), "--reference", path(dir.join("low.wav")), "-o", path(dir.join("tampered/out.mid"))]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.code() == Some(1) && err.contains("was trained on the musecoco") && err.contains("use the backbone it was trained on"), "{err}");
    assert!(!dir.join("tampered/out.mid").exists());
}
