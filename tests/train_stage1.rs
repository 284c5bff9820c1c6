//! `stylebridge train` and `stylebridge eval retrieval` end to end on synthetic shards with tiny
//! backbones: the run writes metrics and checkpoints, a run killed with SIGKILL and resumed ends
//! bitwise equal to an uninterrupted one, bad configs fail with clear errors, and the retrieval
//! report comes out.
mod run_support;
mod shards_support;

use std::path::{Path, PathBuf};

use stylebridge::data::shards::{AudioLayout, PairRow};
use stylebridge::data::split::Split;

use run_support::{file, kill_after_first_checkpoint, latest, ok, run, train_refused};
const CODEBOOK: u16 = 32;

/// One synthetic pair: codes and notes both derived from a per-song "style" id.
fn pair(song: usize, segment: u32, split: Split) -> PairRow {
    let style = (song % 4) as u16;
    let stored = 16 + 2 * 2;
    let codes = (0..4 * stored).map(|i| (style * 7 + (i as u16 % 5) + segment as u16) % CODEBOOK).collect();
    // OctupleMIDI note: bar, position, program, pitch, duration, velocity, time sig, tempo.
    let note = |bar: u16, pos: u16, pitch: u16| vec![4 + bar, 260 + pos, 388, 517 + pitch, 773 + 4, 901 + 20, 933 + 10, 1187 + 20];
    let lead: Vec<u16> = (0..2).flat_map(|i| note(i, 0, 72 + style)).collect();
    let piano: Vec<u16> = (0..3 + style).flat_map(|i| note(i % 4, 12 * style, 48 + 4 * i + style)).collect();
    PairRow::synthetic(&format!("song{song}"), split, segment, codes, lead, piano)
}

fn write_shards(dir: &Path, train: usize, valid: usize) {
    let layout = AudioLayout { sample_rate: 32000, frame_rate: 50.0, n_q: 4, pad_code: CODEBOOK, window_frames: 16, margin_frames: 2, encodec: "synthetic".into() };
    let rows = |split, n: usize, first: usize| (0..n).map(|i| pair(first + i / 2, (i % 2) as u32, split)).collect();
    shards_support::write(dir, layout, &[(Split::Train, rows(Split::Train, train, 0)), (Split::Valid, rows(Split::Valid, valid, 1000)), (Split::Test, rows(Split::Test, valid, 2000))]);
}

fn config(dir: &Path, name: &str, steps_epochs: u64) -> PathBuf {
    let text = format!(
        r#"name: {name}
seed: 3
output_dir: {out}
data:
  shards: {shards}
  max_notes: 12
  shift_seconds: 0.04
  workers: 1
  prefetch: 2
model:
  kind: stage1
  musicgen:
    tiny: {{hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 2, ffn_dim: 32, codebook_size: {CODEBOOK}}}
  qformer: {{hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 32, num_query_tokens: 4, embed_dim: 8, max_position_embeddings: 64}}
  objectives: CMG
train:
  epochs: {steps_epochs}
  batch_size: 4
  precision: fp32
  device: cpu
  threads: 1
  log_every: 1
  eval_every: 5
  checkpoint_every: 2
  keep_last: 2
  schedule: {{peak_lr: 0.001, floor_lr: 0.0001, warmup_steps: 2}}
eval:
  retrieval: {{runs: 2, queries: 6, batch_size: 4}}
"#,
        out = dir.display(),
        shards = dir.join("shards").display()
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn train_writes_metrics_and_checkpoints_and_eval_reports() {
    let dir = tempfile::tempdir().unwrap();
    write_shards(&dir.path().join("shards"), 16, 8);
    let cfg = config(dir.path(), "small", 2);
    let out = run(&["train", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "train failed: {}", String::from_utf8_lossy(&out.stderr));
    let run_dir = dir.path().join("small");
    // 16 rows / batch 4 = 4 steps per epoch, 2 epochs.
    let last = latest(&run_dir).unwrap();
    assert!(last.ends_with("step-00000008"), "{}", last.display());
    for f in ["model.safetensors", "optimizer.safetensors", "scaler.safetensors", "state.json", "config.resolved.yaml"] {
        assert!(last.join(f).is_file(), "missing {f}");
    }
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for key in ["loss/contrastive", "loss/matching", "loss/generation", "loss/generation/pch", "lr", "grad_norm", "samples_per_s", "memory_peak_mib"] {
        assert!(lines[0].get(key).is_some_and(|v| v.is_number()), "no {key} in {}", lines[0]);
    }
    assert!(lines.iter().any(|l| l.get("val/retrieval_acc1").is_some()), "no validation retrieval figures");
    assert!(std::fs::read_dir(&run_dir).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with("events.out.tfevents")));

    // Training again into the same folder without --resume is refused.
    let again = run(&["train", cfg.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));

    let report_dir = dir.path().join("report");
    let out = run(&[
        "eval",
        "retrieval",
        "--checkpoint",
        run_dir.to_str().unwrap(),
        "--data",
        dir.path().join("shards").to_str().unwrap(),
        "--out",
        report_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "eval failed: {}", String::from_utf8_lossy(&out.stderr));
    let md = std::fs::read_to_string(report_dir.join("retrieval.md")).unwrap();
    assert!(md.contains("random guess") && md.contains("Tie rule"), "{md}");
    let json: serde_json::Value = serde_json::from_slice(&file(report_dir.join("retrieval.json"))).unwrap();
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "random, untransposed, transposed");
    assert_eq!(rows[1]["queries"], 6);
    assert_eq!(rows[1]["summary"]["runs"].as_array().unwrap().len(), 2);
    // Every query's outcome is kept, and the figures are those of these ranks.
    let queries = json["queries"].as_array().unwrap();
    assert_eq!(queries.len(), 2 * 2 * 6, "2 runs x 6 queries, with and without transposition");
    let plain: Vec<&serde_json::Value> = queries.iter().filter(|q| q["transposed"] == false).collect();
    let hits = plain.iter().filter(|q| q["rank"] == 1).count() as f64;
    let acc1 = rows[1]["summary"]["acc1"]["mean"].as_f64().unwrap();
    assert!((acc1 - 100.0 * hits / plain.len() as f64).abs() < 1e-9, "acc1 {acc1} vs {hits} hits");
    for q in &plain {
        assert_eq!(q["rank"] == 1, q["query"] == q["top1"], "{q}");
    }
    assert!(md.contains("Top-1 another window of the song"), "{md}");
}

#[test]
fn sigkill_then_resume_is_bitwise_equal_to_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    write_shards(&dir.path().join("shards"), 24, 4);
    // 6 steps per epoch x 4 epochs.
    let full_cfg = config(dir.path(), "full", 4);
    let out = run(&["train", full_cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let full_last = latest(&dir.path().join("full")).unwrap();
    assert!(full_last.ends_with("step-00000024"));

    let cut_cfg = config(dir.path(), "cut", 4);
    let cut_dir = dir.path().join("cut");
    let killed_at = kill_after_first_checkpoint(&cut_cfg, &cut_dir, "step-00000024");

    let out = run(&["train", cut_cfg.to_str().unwrap(), "--resume"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("resuming from"));
    let cut_last = latest(&cut_dir).unwrap();
    assert!(cut_last.ends_with("step-00000024"));
    for f in ["model.safetensors", "optimizer.safetensors", "scaler.safetensors"] {
        assert!(file(cut_last.join(f)) == file(full_last.join(f)), "{f} differs after kill + resume (killed at {})", killed_at.display());
    }
}

#[test]
fn configs_that_do_not_fit_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    write_shards(&dir.path().join("shards"), 8, 4);
    let cfg = config(dir.path(), "bad", 1);
    let cases: [(&[&str], &str); 4] = [
        (&["--set", "train.batch_size=64"], "micro-batches per epoch"),
        (&["--set", "train.batch_size=3", "--set", "train.grad_accum=2"], "does not split"),
        (&["--set", "model.musicgen.tiny.codebook_size=64"], "pad code"),
        (&["--set", "train.lr=1"], "unknown field `lr`"),
    ];
    for (extra, want) in cases {
        train_refused(&cfg, extra, want);
        let _ = std::fs::remove_dir_all(dir.path().join("bad"));
    }
    let missing = run(&["train", cfg.to_str().unwrap(), "--set", &format!("data.shards={}", dir.path().join("nope").display())]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("manifest.json"), "{}", String::from_utf8_lossy(&missing.stderr));
}

/// Every file under `dir` with its bytes, to show a refused command changed nothing.
fn snapshot(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

#[test]
fn a_resume_that_does_not_fit_leaves_the_run_untouched() {
    let dir = tempfile::tempdir().unwrap();
    write_shards(&dir.path().join("shards"), 16, 4);
    let cfg = config(dir.path(), "resumed", 2);
    let cfg = cfg.to_str().unwrap();
    ok(&["train", cfg, "--set", "train.max_steps=4"]);
    let run_dir = dir.path().join("resumed");
    let before = snapshot(&run_dir);
    let cases: [(&[&str], &[&str]); 3] = [
        (&["--set", "model.qformer.num_hidden_layers=1"], &["model.qformer.num_hidden_layers: checkpoint 2, now 1"]),
        (&["--set", "data.max_notes=20", "--set", "seed=4"], &["data.max_notes: checkpoint 12, now 20", "seed: checkpoint 3, now 4"]),
        (&["--set", "train.schedule.peak_lr=0.01"], &["train.schedule.peak_lr"]),
    ];
    for (extra, wants) in cases {
        let mut args = vec!["train", cfg, "--resume"];
        args.extend_from_slice(extra);
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} resumed");
        for want in wants {
            assert!(err.contains(want), "{extra:?}: {err}");
        }
        assert!(snapshot(&run_dir) == before, "{extra:?} changed the run folder");
    }
    // Operational keys may change: the run goes on to its end.
    ok(&["train", cfg, "--resume", "--set", "train.log_every=2", "--set", "train.keep_last=3"]);
    assert!(latest(&run_dir).unwrap().ends_with("step-00000008"));

    // A damaged latest checkpoint is named, with the previous complete one to go back to.
    let last = latest(&run_dir).unwrap();
    let model = last.join("model.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let before = snapshot(&run_dir);
    let out = run(&["train", cfg, "--resume"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("step-00000008 is damaged") && err.contains("model.safetensors"), "{err}");
    assert!(err.contains("the previous complete checkpoint is") && err.contains("step-00000006"), "{err}");
    assert!(snapshot(&run_dir) == before, "the refused resume changed the run folder");
}

#[test]
fn refused_runs_leave_no_run_folder_and_nonsense_configs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_shards(&dir.path().join("shards"), 8, 4);
    let cfg = config(dir.path(), "refused", 1);
    let cfg = cfg.to_str().unwrap();
    let cases: [(&[&str], &str); 7] = [
        (&["--set", &format!("data.shards={}", dir.path().join("nope").display())], "manifest.json"),
        (&["--set", "train.epochs=0"], "`train.epochs` is 0; must be at least 1"),
        (&["--set", "train.schedule.peak_lr=-1"], "`train.schedule.peak_lr` is -1"),
        (&["--set", "train.schedule.floor_lr=0.5"], "`train.schedule.floor_lr` is 0.5; must be in [0, peak_lr"),
        (&["--set", "train.batch_size=0"], "`train.batch_size` is 0"),
        (&["--set", "train.device=cuda:1"], "device `cuda:1` is not available"),
        (&["--set", "train.device=tpu"], "`train.device` is `tpu`"),
    ];
    for (extra, want) in cases {
        train_refused(Path::new(cfg), extra, want);
        assert!(!dir.path().join("refused").exists(), "{extra:?} left a run folder");
    }
    // `config` shows the same checks before anything runs.
    let out = run(&["config", cfg, "--set", "train.batch_size=0", "--set", "data.max_notes=1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("2 config values are out of range") && err.contains("`data.max_notes` is 1"), "{err}");
}

#[test]
fn evaluation_on_a_missing_gpu_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    write_shards(&dir.path().join("shards"), 8, 4);
    let cfg = config(dir.path(), "gpu", 1);
    ok(&["train", cfg.to_str().unwrap()]);
    if tch::Cuda::is_available() {
        return; // the machine has the device asked for
    }
    let run_dir = dir.path().join("gpu");
    let out = run(&["eval", "retrieval", "--checkpoint", run_dir.to_str().unwrap(), "--device", "cuda"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("device `cuda` is not available") && err.contains("no CUDA device"), "{err}");
}
