//! Checkpoint loading with strict name and shape checks.
//!
//! Models are built on a `tch::nn::VarStore` whose variable names mirror the checkpoint
//! (tch joins path segments with '.', as PyTorch state dicts do). A [`Checkpoint`] holds the
//! tensors of one safetensors file, or of the shards an HF `*.safetensors.index.json` lists;
//! [`Checkpoint::load_into`] copies them into the store, converting dtype (fp16/bf16 weights
//! load into fp32 models and back) and failing with the full list of missing, unexpected and
//! mis-shaped tensors. Pickled formats (`.bin`, `.pt`) are converted in Python first
//! (`stylebridge convert`); Rust never unpickles.
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tch::{nn::VarStore, Tensor};

pub struct Checkpoint {
    origin: PathBuf,
    tensors: BTreeMap<String, Tensor>,
}

impl Checkpoint {
    /// Open a `.safetensors` file, or a folder holding `model.safetensors` or
    /// `model.safetensors.index.json` (sharded HF checkpoints).
    pub fn open(path: &Path) -> Result<Self> {
        let files = safetensors_files(path)?;
        let mut tensors = BTreeMap::new();
        for file in &files {
            let named = Tensor::read_safetensors(file)
                .with_context(|| format!("cannot read safetensors file {}", file.display()))?;
            tensors.extend(named);
        }
        Ok(Self { origin: path.to_path_buf(), tensors })
    }

    /// Wrap tensors already in memory (tests, converted state).
    pub fn from_tensors(origin: impl Into<PathBuf>, tensors: impl IntoIterator<Item = (String, Tensor)>) -> Self {
        Self { origin: origin.into(), tensors: tensors.into_iter().collect() }
    }

    pub fn origin(&self) -> &Path {
        &self.origin
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Copy `prefix + name` for every variable of `vs`. Checkpoint tensors under `prefix` that
    /// the model does not use are an error unless `ignore(name)` says they are expected (for
    /// example the layers above the one a truncated decoder stops at).
    pub fn load_into(&self, vs: &mut VarStore, prefix: &str, ignore: impl Fn(&str) -> bool) -> Result<()> {
        let variables = vs.variables();
        let mut missing = Vec::new();
        let mut misshaped = Vec::new();
        let mut used = BTreeSet::new();
        for (name, var) in &variables {
            let key = format!("{prefix}{name}");
            match self.tensors.get(&key) {
                None => missing.push(format!("{key} {:?}", var.size())),
                Some(t) if t.size() != var.size() => {
                    misshaped.push(format!("{key}: checkpoint {:?}, model {:?}", t.size(), var.size()))
                }
                Some(_) => {
                    used.insert(key);
                }
            }
        }
        let unexpected: Vec<String> = self
            .tensors
            .iter()
            .filter(|(k, _)| k.starts_with(prefix) && !used.contains(*k) && !ignore(&k[prefix.len()..]))
            .filter(|(k, _)| !variables.contains_key(&k[prefix.len()..]))
            .map(|(k, t)| format!("{k} {:?}", t.size()))
            .collect();
        if !(missing.is_empty() && misshaped.is_empty() && unexpected.is_empty()) {
            let mut msg = format!("checkpoint {} does not match the model", self.origin.display());
            for (title, list) in [("missing", &missing), ("mis-shaped", &misshaped), ("unexpected", &unexpected)] {
                if !list.is_empty() {
                    msg.push_str(&format!("\n  {} {title} tensor(s):", list.len()));
                    for item in list.iter() {
                        msg.push_str(&format!("\n    {item}"));
                    }
                }
            }
            bail!(msg);
        }
        tch::no_grad(|| {
            for (name, var) in variables {
                let src = &self.tensors[&format!("{prefix}{name}")];
                let mut var = var;
                var.copy_(&src.to_kind(var.kind()).to_device(var.device()));
            }
        });
        Ok(())
    }
}

fn safetensors_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return match path.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => Ok(vec![path.to_path_buf()]),
            Some("json") => shards_from_index(path),
            _ => bail!(
                "{}: not a safetensors file; convert pickled checkpoints first with `stylebridge convert`",
                path.display()
            ),
        };
    }
    if !path.is_dir() {
        bail!("checkpoint {} does not exist", path.display());
    }
    let single = path.join("model.safetensors");
    let index = path.join("model.safetensors.index.json");
    if single.is_file() {
        Ok(vec![single])
    } else if index.is_file() {
        shards_from_index(&index)
    } else if path.join("pytorch_model.bin").is_file() {
        bail!(
            "{}: holds pytorch_model.bin only; convert it with `stylebridge convert` (Rust never unpickles)",
            path.display()
        )
    } else {
        bail!("{}: no model.safetensors or model.safetensors.index.json", path.display())
    }
}

fn shards_from_index(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).with_context(|| format!("cannot read {}", index.display()))?;
    let parsed: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", index.display()))?;
    let map = parsed
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{}: no `weight_map` object", index.display()))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
    Ok(shards.into_iter().map(|s| dir.join(s)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Device, Kind};

    fn tiny_store() -> VarStore {
        let vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        let _ = nn::linear(&root / "proj", 3, 2, Default::default());
        vs
    }

    #[test]
    fn loads_matching_tensors_with_dtype_conversion() {
        let w = Tensor::arange(6, (Kind::Half, Device::Cpu)).view([2, 3]);
        let b = Tensor::from_slice(&[1.0f32, 2.0]).to_kind(Kind::BFloat16);
        let ckpt = Checkpoint::from_tensors(
            "mem",
            [("m.proj.weight".to_string(), w), ("m.proj.bias".to_string(), b)],
        );
        let mut vs = tiny_store();
        ckpt.load_into(&mut vs, "m.", |_| false).unwrap();
        let vars = vs.variables();
        assert_eq!(vars["proj.weight"].kind(), Kind::Float);
        assert_eq!(Vec::<f32>::try_from(vars["proj.weight"].view([-1])).unwrap(), vec![0., 1., 2., 3., 4., 5.]);
        assert_eq!(Vec::<f32>::try_from(&vars["proj.bias"]).unwrap(), vec![1., 2.]);
    }

    #[test]
    fn lists_missing_misshaped_and_unexpected() {
        let ckpt = Checkpoint::from_tensors(
            "ckpt.safetensors",
            [
                ("proj.weight".to_string(), Tensor::zeros([3, 3], (Kind::Float, Device::Cpu))),
                ("extra.weight".to_string(), Tensor::zeros([1], (Kind::Float, Device::Cpu))),
                ("skipped.weight".to_string(), Tensor::zeros([1], (Kind::Float, Device::Cpu))),
            ],
        );
        let mut vs = tiny_store();
        let err = ckpt.load_into(&mut vs, "", |n| n.starts_with("skipped.")).unwrap_err().to_string();
        assert!(err.contains("ckpt.safetensors"), "{err}");
        assert!(err.contains("1 missing tensor(s):\n    proj.bias [2]"), "{err}");
        assert!(err.contains("proj.weight: checkpoint [3, 3], model [2, 3]"), "{err}");
        assert!(err.contains("1 unexpected tensor(s):\n    extra.weight [1]"), "{err}");
    }

    #[test]
    fn reads_sharded_index_and_rejects_pickles() {
        let dir = tempfile::tempdir().unwrap();
        let a = Tensor::ones([2, 3], (Kind::Float, Device::Cpu));
        let b = Tensor::ones([2], (Kind::Float, Device::Cpu));
        Tensor::write_safetensors(&[("proj.weight", &a)], dir.path().join("model-00001-of-00002.safetensors")).unwrap();
        Tensor::write_safetensors(&[("proj.bias", &b)], dir.path().join("model-00002-of-00002.safetensors")).unwrap();
        let index = r#"{"metadata":{},"weight_map":{"proj.weight":"model-00001-of-00002.safetensors","proj.bias":"model-00002-of-00002.safetensors"}}"#;
        std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
        let ckpt = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(ckpt.names().collect::<Vec<_>>(), vec!["proj.bias", "proj.weight"]);

        let bin_dir = tempfile::tempdir().unwrap();
        std::fs::write(bin_dir.path().join("pytorch_model.bin"), b"PK").unwrap();
        let err = Checkpoint::open(bin_dir.path()).err().unwrap().to_string();
        assert!(err.contains("stylebridge convert"), "{err}");
    }
}
