//! Training checkpoints: one folder per saved step, made complete before it becomes
//! visible.
//!
//! ```text
//! checkpoints/
//!   step-00001200/  model.safetensors  optimizer.safetensors  scaler.safetensors  state.json
//!                   config.resolved.yaml  backbones.json
//!   latest          (text: name of the newest complete folder)
//!   best            (text: name of the best folder by the validation metric)
//! ```
//! A folder is written as `.tmp-step-*`, every file fsynced, then renamed; `latest` and
//! `best` are replaced atomically afterwards, so a kill at any point leaves the previous
//! checkpoint intact and loadable. Only the newest `keep_last` folders (plus the best) stay.
//! `model.safetensors` holds what the task declares (what trains); the frozen backbones are
//! named in `backbones.json` with the sha256 of their files, never copied.
use crate::atomic;
use anyhow::{bail, ensure, Context, Result};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::Tensor;

pub const LATEST: &str = "latest";
pub const BEST: &str = "best";
pub const BACKBONES_NAME: &str = "backbones.json";
const STATE_NAME: &str = "state.json";

/// Named tensor groups, each saved to `<group>.safetensors`.
pub type TensorGroups = BTreeMap<String, Vec<(String, Tensor)>>;

/// A frozen checkpoint a run was trained on: its role (`musecoco`, `musicgen`, `stage1`, ...),
/// where it was, and the sha256 of its files (a folder: of every file in it, by name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backbone {
    pub role: String,
    pub path: PathBuf,
    pub sha256: String,
}

impl Backbone {
    /// Hash the file or folder at `path`.
    pub fn hash(role: &str, path: &Path) -> Result<Self> {
        Ok(Self { role: role.to_string(), path: path.to_path_buf(), sha256: sha256_of(path)? })
    }
}

/// sha256 of a file, or of a folder: the hash of its files' names and hashes in name order.
pub fn sha256_of(path: &Path) -> Result<String> {
    let hash_file = |file: &Path| -> Result<String> {
        let mut f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).with_context(|| format!("cannot read {}", file.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(format!("{:x}", hasher.finalize()))
    };
    if !path.is_dir() {
        return hash_file(path);
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("cannot list {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    let mut hasher = Sha256::new();
    for file in entries {
        hasher.update(file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default().as_bytes());
        hasher.update(hash_file(&file)?.as_bytes());
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// What one checkpoint holds besides its training state.
pub struct Contents<'a> {
    pub groups: &'a TensorGroups,
    pub resolved_config: &'a str,
    pub backbones: &'a [Backbone],
}

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
    pub fn save<S: Serialize>(&self, step: u64, contents: &Contents, state: &S, is_best: bool) -> Result<PathBuf> {
        let name = format!("step-{step:08}");
        let final_dir = self.root.join(&name);
        let tmp_dir = self.root.join(format!(".tmp-{name}"));
        if tmp_dir.exists() {
            std::fs::remove_dir_all(&tmp_dir).with_context(|| format!("cannot remove stale {}", tmp_dir.display()))?;
        }
        std::fs::create_dir_all(&tmp_dir).with_context(|| format!("cannot create {}", tmp_dir.display()))?;
        for (group, tensors) in contents.groups {
            let path = tmp_dir.join(format!("{group}.safetensors"));
            let named: Vec<(&str, Tensor)> =
                tensors.iter().map(|(k, t)| (k.as_str(), t.to_device(tch::Device::Cpu).contiguous())).collect();
            Tensor::write_safetensors(&named, &path).with_context(|| format!("cannot write {}", path.display()))?;
            sync_file(&path)?;
        }
        let state_json = serde_json::to_vec_pretty(state).context("cannot serialize the training state")?;
        atomic::write(&tmp_dir.join(STATE_NAME), &state_json)?;
        atomic::write(&tmp_dir.join(crate::yaml::RESOLVED_NAME), contents.resolved_config.as_bytes())?;
        atomic::write(&tmp_dir.join(BACKBONES_NAME), &serde_json::to_vec_pretty(contents.backbones)?)?;
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

    /// The folder `latest` points to, checked to be complete and readable: a damaged one is an
    /// error that names the file and the previous complete checkpoint to go back to.
    pub fn latest_complete(&self) -> Result<Option<PathBuf>> {
        let Some(dir) = self.pointer(LATEST)? else { return Ok(None) };
        match check_complete(&dir) {
            Ok(()) => Ok(Some(dir)),
            Err(problem) => {
                let previous = self.step_folders()?.into_iter().rev().find(|d| *d != dir && check_complete(d).is_ok());
                let advice = match previous {
                    Some(p) => format!(
                        "the previous complete checkpoint is {}: to resume from it, write its name into {} (`echo {} > {}`)",
                        p.display(),
                        self.root.join(LATEST).display(),
                        p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                        self.root.join(LATEST).display()
                    ),
                    None => "no other complete checkpoint is left in this folder".to_string(),
                };
                Err(problem.context(format!("the latest checkpoint {} is damaged; {advice}", dir.display())))
            }
        }
    }

    fn step_folders(&self) -> Result<Vec<PathBuf>> {
        let mut steps: Vec<PathBuf> = std::fs::read_dir(&self.root)
            .with_context(|| format!("cannot list {}", self.root.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step-")))
            .collect();
        steps.sort();
        Ok(steps)
    }

    fn prune(&self) -> Result<()> {
        let best = self.pointer(BEST)?;
        let steps = self.step_folders()?;
        let excess = steps.len().saturating_sub(self.keep_last);
        for old in steps.into_iter().take(excess) {
            if Some(&old) != best.as_ref() {
                std::fs::remove_dir_all(&old).with_context(|| format!("cannot remove old checkpoint {}", old.display()))?;
            }
        }
        Ok(())
    }
}

/// A step folder, or the one `best` (else `latest`) points to under a run or checkpoints folder.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join(STATE_NAME).is_file() {
        return Ok(path.to_path_buf());
    }
    for root in [path.join("checkpoints"), path.to_path_buf()] {
        let dir = CheckpointDir::new(&root, 1);
        for which in [BEST, LATEST] {
            if let Some(found) = dir.pointer(which)? {
                return Ok(found);
            }
        }
    }
    bail!("{} is not a checkpoint (no state.json) and holds no `best` or `latest` pointer", path.display())
}

/// The `model:` section of a run's resolved config, read as the section of `kind` (the
/// training task: `stage1`, `stage2`, ...); a run of another kind is an error that says so.
pub fn model_section<T: DeserializeOwned>(dir: &Path, kind: &str) -> Result<T> {
    let path = dir.join(crate::yaml::RESOLVED_NAME);
    let value = crate::yaml::read_value(&path, &[])?;
    let mut model = value.get("model").cloned().with_context(|| format!("{}: no `model` section", path.display()))?;
    let found = match &mut model {
        serde_yaml_ng::Value::Mapping(m) => m.remove("kind").and_then(|k| k.as_str().map(str::to_string)),
        _ => None,
    };
    match found.as_deref() {
        Some(k) if k == kind => crate::yaml::from_value(model).with_context(|| format!("{}: model section", path.display())),
        Some(other) => bail!("{} is a {other} run, not a {kind} run", dir.display()),
        None => bail!("{}: the model section has no `kind`", path.display()),
    }
}

/// Section `key` of a run's resolved config (e.g. `data`), read as `T`.
pub fn config_section<T: DeserializeOwned>(dir: &Path, key: &str) -> Result<T> {
    let path = dir.join(crate::yaml::RESOLVED_NAME);
    let value = crate::yaml::read_value(&path, &[])?;
    let section = value.get(key).cloned().unwrap_or(serde_yaml_ng::Value::Null);
    let section = if section.is_null() { serde_yaml_ng::Value::Mapping(Default::default()) } else { section };
    crate::yaml::from_value(section).with_context(|| format!("{}: section `{key}`", path.display()))
}

/// A saved checkpoint folder, read back.
pub struct Loaded<S> {
    pub dir: PathBuf,
    pub groups: BTreeMap<String, BTreeMap<String, Tensor>>,
    pub state: S,
    pub backbones: Vec<Backbone>,
}

pub fn load<S: DeserializeOwned>(dir: &Path) -> Result<Loaded<S>> {
    let state_path = dir.join(STATE_NAME);
    let text = std::fs::read(&state_path).with_context(|| format!("cannot read {}", state_path.display()))?;
    let state = serde_json::from_slice(&text).with_context(|| format!("{} is not a valid training state", state_path.display()))?;
    let backbones = read_backbones(dir)?;
    let mut groups = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let Some(group) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".safetensors")) else {
            continue;
        };
        let tensors = Tensor::read_safetensors(&path).with_context(|| format!("cannot read {}", path.display()))?;
        groups.insert(group.to_string(), tensors.into_iter().collect());
    }
    Ok(Loaded { dir: dir.to_path_buf(), groups, state, backbones })
}

/// The backbones a checkpoint names (none for checkpoints written before they were recorded).
pub fn read_backbones(dir: &Path) -> Result<Vec<Backbone>> {
    let path = dir.join(BACKBONES_NAME);
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{} is not a list of backbones", path.display()))
}

/// A checkpoint folder is complete when its state parses and every tensor file is a readable
/// safetensors file (headers and data lengths checked without loading the tensors).
fn check_complete(dir: &Path) -> Result<()> {
    let state_path = dir.join(STATE_NAME);
    let text = std::fs::read(&state_path).with_context(|| format!("cannot read {}", state_path.display()))?;
    serde_json::from_slice::<serde_json::Value>(&text).with_context(|| format!("{} is not valid JSON", state_path.display()))?;
    for group in ["model", "optimizer"] {
        let path = dir.join(format!("{group}.safetensors"));
        crate::models::weights::Checkpoint::open(&path).with_context(|| format!("{} is unreadable", path.display()))?;
    }
    read_backbones(dir)?;
    Ok(())
}

/// A resumed run must use the backbones it was trained on: same roles, same file hashes.
pub fn check_backbones(saved: &[Backbone], now: &[Backbone], dir: &Path) -> Result<()> {
    for b in now {
        let Some(old) = saved.iter().find(|s| s.role == b.role) else {
            bail!("{} names no {} backbone, but this config uses {}", dir.display(), b.role, b.path.display());
        };
        ensure!(
            old.sha256 == b.sha256,
            "{} was trained on the {} at {} (sha256 {}), but {} now has sha256 {}: use the backbone it was trained on",
            dir.display(),
            b.role,
            old.path.display(),
            &old.sha256[..12.min(old.sha256.len())],
            b.path.display(),
            &b.sha256[..12.min(b.sha256.len())]
        );
    }
    Ok(())
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
            let g = groups(step as f32);
            ckpts.save(step, &Contents { groups: &g, resolved_config: "name: x\n", backbones: &[] }, &State { step, position: step * 2 }, step == 20).unwrap();
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
        let g = groups(1.0);
        ckpts.save(1, &Contents { groups: &g, resolved_config: "", backbones: &[] }, &State { step: 1, position: 0 }, false).unwrap();
        // A run killed mid-save leaves only a temporary folder behind.
        std::fs::create_dir_all(dir.path().join(".tmp-step-00000002")).unwrap();
        std::fs::write(dir.path().join(".tmp-step-00000002/model.safetensors"), b"partial").unwrap();
        assert!(ckpts.pointer(LATEST).unwrap().unwrap().ends_with("step-00000001"));
        ckpts.save(2, &Contents { groups: &g, resolved_config: "", backbones: &[] }, &State { step: 2, position: 0 }, false).unwrap();
        let loaded: Loaded<State> = load(&ckpts.pointer(LATEST).unwrap().unwrap()).unwrap();
        assert_eq!(loaded.state.step, 2);
    }
}
