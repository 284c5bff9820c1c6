//! Stage 2 end to end with tiny backbones: `train` with `kind: musecoco_lm` exports a MuseCoco in
//! the HF port's format, stage 2 starts from a stage-1 run and that MuseCoco, keeps only what
//! trains in its checkpoints and names its backbones, and a run killed with SIGKILL and resumed
//! ends bitwise equal to an uninterrupted one.
mod run_support;
mod shards_support;
mod stage2_support;

use run_support::{file, kill_after_first_checkpoint, latest, train_refused};
use stage2_support::*;

#[test]
fn stage2_trains_on_its_backbones_and_resumes_bitwise_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    backbones(dir.path());
    let export = dir.path().join("lm/musecoco");
    for f in ["config.json", "model.safetensors"] {
        assert!(export.join(f).is_file(), "the MuseCoco LM exports {f}");
    }

    // 16 pairs / batch 4 = 4 steps per epoch, 3 epochs.
    let full = stage2_config(dir.path(), "full", 3);
    ok(&["train", full.to_str().unwrap()]);
    let full_last = latest(&dir.path().join("full")).unwrap();
    assert!(full_last.ends_with("step-00000012"), "{}", full_last.display());

    // What trains is saved, MuseCoco's base weights are not; the backbones are named.
    let saved = tch::Tensor::read_safetensors(full_last.join("model.safetensors")).unwrap();
    let names: Vec<&str> = saved.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.iter().any(|n| n.starts_with("blip2qformer.Qformer.bert.encoder.layer.0.crossattention")));
    assert!(names.contains(&"musecoco_proj.weight"));
    assert!(names.iter().any(|n| n.ends_with("self_attn.lora_q.lora_A")));
    assert!(names.iter().all(|n| !n.starts_with("musecoco.") || n.contains(".lora_")), "{names:?}");
    assert!(names.iter().all(|n| !n.contains("word_embeddings") && !n.contains("audio_proj")), "no symbolic branch: {names:?}");
    let backbones: serde_json::Value = serde_json::from_slice(&file(full_last.join("backbones.json"))).unwrap();
    let roles: Vec<&str> = backbones.as_array().unwrap().iter().map(|b| b["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["stage1", "musecoco"], "{backbones}");
    let resolved = std::fs::read_to_string(dir.path().join("full/config.resolved.yaml")).unwrap();
    assert!(resolved.contains("qformer:") && resolved.contains("musicgen:"), "the stage-1 run's shapes are recorded:\n{resolved}");

    // At qformer_lr_scale 0 the Q-Former stays as stage 1 left it while the adapters train.
    let still = stage2_config(dir.path(), "still", 1);
    ok(&["train", still.to_str().unwrap(), "--set", "model.qformer_lr_scale=0"]);
    let step = |run: &str, n: u32| -> std::collections::BTreeMap<String, tch::Tensor> {
        tch::Tensor::read_safetensors(dir.path().join(format!("{run}/checkpoints/step-{n:08}/model.safetensors"))).unwrap().into_iter().collect()
    };
    let (first, last) = (step("still", 2), step("still", 4));
    let changed = |name: &str| !first[name].equal(&last[name]);
    let query = "blip2qformer.Qformer.bert.encoder.layer.0.crossattention.self.query.weight";
    assert!(!changed(query) && changed("musecoco_proj.weight"), "the Q-Former is held, the projection trains");
    assert!(!step("full", 12)[query].equal(&step("full", 10)[query]), "at the full rate the Q-Former trains");

    let cut = stage2_config(dir.path(), "cut", 3);
    let cut_dir = dir.path().join("cut");
    let killed_at = kill_after_first_checkpoint(&cut, &cut_dir, "step-00000012");
    let out = ok(&["train", cut.to_str().unwrap(), "--resume"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("resuming from"));
    let cut_last = latest(&cut_dir).unwrap();
    for f in ["model.safetensors", "optimizer.safetensors"] {
        assert!(file(cut_last.join(f)) == file(full_last.join(f)), "{f} differs after kill + resume (killed at {})", killed_at.display());
    }
}

#[test]
fn stage2_configs_that_cannot_train_are_refused_before_the_run_folder_exists() {
    let dir = tempfile::tempdir().unwrap();
    backbones(dir.path());
    let cfg = stage2_config(dir.path(), "bad", 1);
    let cases: [(&[&str], &str); 4] = [
        (&["--set", "train.precision=fp16"], "stage 2 trains in fp32"),
        (&["--set", "model.stage1=/nonexistent"], "/nonexistent"),
        (&["--set", "model.musecoco.checkpoint=/nonexistent"], "/nonexistent"),
        (&["--set", "model.stage1=null"], "`model.musicgen` must be given"),
    ];
    for (extra, want) in cases {
        train_refused(&cfg, extra, want);
        assert!(!dir.path().join("bad").exists(), "{extra:?} left a run folder");
    }
    // A stage-1 run is no MuseCoco, and a stage-2 run no stage-1 model.
    let out = run(&["train", cfg.to_str().unwrap(), "--set", &format!("model.musecoco.checkpoint={}", dir.path().join("stage1").display())]);
    assert!(!out.status.success(), "a stage-1 run taken for MuseCoco");
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.json"), "{}", String::from_utf8_lossy(&out.stderr));
}
