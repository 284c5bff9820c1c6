//! Training checkpoints: one folder per saved step, made complete before it becomes
//! visible.
//!
//! ```text
//! checkpoints/
//!   step-00001200/  model.safetensors  optimizer.safetensors  state.json  config.resolved.yaml
//!   latest          (text: name of the newest complete folder)
//!   best            (text: name of the best folder by the validation metric)
//! ```
//! A folder is written as `.tmp-step-*`, every file fsynced, then renamed; `latest` and
//! `best` are replaced atomically afterwards, so a kill at any point leaves the previous
//! checkpoint intact and loadable. Only the newest `keep_last` folders (plus the best) stay.
use crate::atomic;
use anyhow::{bail, Context, Result};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

pub const LATEST: &str = "latest";
pub const BEST: &str = "best";

/// Named tensor groups, each saved to `<group>.safetensors`.
pub type TensorGroups = BTreeMap<String, Vec<(String, Tensor)>>;

pub struct CheckpointDir {
    root: PathBuf,
    keep_last: usize,
}

impl CheckpointDir {
    pub fn new(root: impl Into<PathBuf>, keep_last: usize) -> Self {
        Self { root: root.into(), keep_last: keep_last.max(1) }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Save step `step`; returns the folder. `is_best` also points `best` at it.
    pub fn save<S: Serialize>(
        &self,
        step: u64,
        groups: &TensorGroups,
        state: &S,
        resolved_config: &str,
        is_best: bool,
    ) -> Result<PathBuf> {
        let name = format!("step-{step:08}");
        let final_dir = self.root.join(&name);
        let tmp_dir = self.root.join(format!(".tmp-{name}"));
        if tmp_dir.exists() {
            std::fs::remove_dir_all(&tmp_dir).with_context(|| format!("cannot remove stale {}", tmp_dir.display()))?;
        }
        std::fs::create_dir_all(&tmp_dir).with_context(|| format!("cannot create {}", tmp_dir.display()))?;
        for (group, tensors) in groups {
            let path = tmp_dir.join(format!("{group}.safetensors"));
            let named: Vec<(&str, Tensor)> =
                tensors.iter().map(|(k, t)| (k.as_str(), t.to_device(tch::Device::Cpu).contiguous())).collect();
            Tensor::write_safetensors(&named, &path).with_context(|| format!("cannot write {}", path.display()))?;
            sync_file(&path)?;
        }
        let state_json = serde_json::to_vec_pretty(state).context("cannot serialize the training state")?;
        atomic::write(&tmp_dir.join("state.json"), &state_json)?;
        atomic::write(&tmp_dir.join(crate::config::RESOLVED_NAME), resolved_config.as_bytes())?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir)
                .with_context(|| format!("cannot replace {}", final_dir.display()))?;
        }
        std::fs::rename(&tmp_dir, &final_dir)
            .with_context(|| format!("cannot move {} into place", final_dir.display()))?;
        sync_dir(&self.root);
        atomic::write(&self.root.join(LATEST), name.as_bytes())?;
        if is_best {
            atomic::write(&self.root.join(BEST), name.as_bytes())?;
        }
        self.prune()?;
        Ok(final_dir)
    }

    /// The folder `latest` (or `best`) points to, if any.
    pub fn pointer(&self, which: &str) -> Result<Option<PathBuf>> {
        let path = self.root.join(which);
        if !path.exists() {
            return Ok(None);
        }
        let name = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let dir = self.root.join(name.trim());
        if !dir.is_dir() {
            bail!("{} names {}, which does not exist", path.display(), dir.display());
        }
        Ok(Some(dir))
    }

    fn prune(&self) -> Result<()> {
        let best = self.pointer(BEST)?;
        let mut steps: Vec<PathBuf> = std::fs::read_dir(&self.root)
            .with_context(|| format!("cannot list {}", self.root.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step-")))
            .collect();
        steps.sort();
        let excess = steps.len().saturating_sub(self.keep_last);
        for old in steps.into_iter().take(excess) {
            if Some(&old) != best.as_ref() {
                std::fs::remove_dir_all(&old).with_context(|| format!("cannot remove old checkpoint {}", old.display()))?;
            }
        }
        Ok(())
    }
}

/// A saved checkpoint folder, read back.
pub struct Loaded<S> {
    pub dir: PathBuf,
    pub groups: BTreeMap<String, BTreeMap<String, Tensor>>,
    pub state: S,
}

pub fn load<S: DeserializeOwned>(dir: &Path) -> Result<Loaded<S>> {
    let state_path = dir.join("state.json");
    let text = std::fs::read(&state_path).with_context(|| format!("cannot read {}", state_path.display()))?;
    let state = serde_json::from_slice(&text).with_context(|| format!("{} is not a valid training state", state_path.display()))?;
    let mut groups = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let Some(group) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".safetensors")) else {
            continue;
        };
        let tensors = Tensor::read_safetensors(&path).with_context(|| format!("cannot read {}", path.display()))?;
        groups.insert(group.to_string(), tensors.into_iter().collect());
    }
    Ok(Loaded { dir: dir.to_path_buf(), groups, state })
}

fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot flush {} to disk", path.display()))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct State {
        step: u64,
        position: u64,
    }

    fn groups(v: f32) -> TensorGroups {
        let mut g = TensorGroups::new();
        g.insert("model".into(), vec![("w".into(), Tensor::from_slice(&[v, v + 1.0]))]);
        g.insert("optimizer".into(), vec![("step".into(), Tensor::from(3i64))]);
        g
    }

    #[test]
    fn save_load_latest_best_and_pruning() {
        let dir = tempfile::tempdir().unwrap();
        let ckpts = CheckpointDir::new(dir.path(), 2);
        assert!(ckpts.pointer(LATEST).unwrap().is_none());
        for step in [10u64, 20, 30, 40] {
            ckpts.save(step, &groups(step as f32), &State { step, position: step * 2 }, "name: x\n", step == 20).unwrap();
        }
        let latest = ckpts.pointer(LATEST).unwrap().unwrap();
        assert!(latest.ends_with("step-00000040"));
        let loaded: Loaded<State> = load(&latest).unwrap();
        assert_eq!(loaded.state, State { step: 40, position: 80 });
        assert_eq!(Vec::<f32>::try_from(&loaded.groups["model"]["w"]).unwrap(), vec![40.0, 41.0]);
        assert_eq!(loaded.groups["optimizer"]["step"].int64_value(&[]), 3);
        assert!(ckpts.pointer(BEST).unwrap().unwrap().ends_with("step-00000020"));
        let mut left: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        left.sort();
        assert_eq!(left, vec!["best", "latest", "step-00000020", "step-00000030", "step-00000040"]);
    }

    #[test]
    fn leftover_temporary_folder_is_neither_latest_nor_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let ckpts = CheckpointDir::new(dir.path(), 3);
        ckpts.save(1, &groups(1.0), &State { step: 1, position: 0 }, "", false).unwrap();
        // A run killed mid-save leaves only a temporary folder behind.
        std::fs::create_dir_all(dir.path().join(".tmp-step-00000002")).unwrap();
        std::fs::write(dir.path().join(".tmp-step-00000002/model.safetensors"), b"partial").unwrap();
        assert!(ckpts.pointer(LATEST).unwrap().unwrap().ends_with("step-00000001"));
        ckpts.save(2, &groups(2.0), &State { step: 2, position: 0 }, "", false).unwrap();
        let loaded: Loaded<State> = load(&ckpts.pointer(LATEST).unwrap().unwrap()).unwrap();
        assert_eq!(loaded.state.step, 2);
    }
}
