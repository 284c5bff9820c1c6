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
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use tch::{nn::VarStore, Kind, Tensor};

/// Where a tensor's bytes are: in memory, or at a byte range of a safetensors file. Files
/// are indexed from their headers only and each tensor is read when asked for, so loading
/// the first 25 of musicgen-large's 48 layers never reads the rest (nor the T5 encoder).
enum Entry {
    Loaded(Tensor),
    OnDisk { file: usize, kind: Kind, shape: Vec<i64>, start: u64, len: usize },
}

pub struct Checkpoint {
    origin: PathBuf,
    files: Vec<(PathBuf, File)>,
    tensors: BTreeMap<String, Entry>,
}

impl Checkpoint {
    /// Open a `.safetensors` file, or a folder holding `model.safetensors` or
    /// `model.safetensors.index.json` (sharded HF checkpoints).
    pub fn open(path: &Path) -> Result<Self> {
        let mut files = Vec::new();
        let mut tensors = BTreeMap::new();
        for path in safetensors_files(path)? {
            let file = File::open(&path).with_context(|| format!("cannot open safetensors file {}", path.display()))?;
            for (name, entry) in index_file(&file, files.len()).with_context(|| format!("{}", path.display()))? {
                tensors.insert(name, entry);
            }
            files.push((path, file));
        }
        Ok(Self { origin: path.to_path_buf(), files, tensors })
    }

    /// Wrap tensors already in memory (tests, converted state).
    pub fn from_tensors(origin: impl Into<PathBuf>, tensors: impl IntoIterator<Item = (String, Tensor)>) -> Self {
        let tensors = tensors.into_iter().map(|(k, t)| (k, Entry::Loaded(t))).collect();
        Self { origin: origin.into(), files: Vec::new(), tensors }
    }

    pub fn origin(&self) -> &Path {
        &self.origin
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Shape of a tensor, from the header alone.
    pub fn shape(&self, name: &str) -> Option<Vec<i64>> {
        self.tensors.get(name).map(|e| match e {
            Entry::Loaded(t) => t.size(),
            Entry::OnDisk { shape, .. } => shape.clone(),
        })
    }

    /// The tensor `name` (read from disk now if it lives there). A read failure (file changed
    /// or truncated since it was opened) panics with the file name: the header was valid.
    pub fn get(&self, name: &str) -> Option<Tensor> {
        self.try_get(name).map(|r| r.unwrap_or_else(|e| panic!("{e:#}")))
    }

    fn try_get(&self, name: &str) -> Option<Result<Tensor>> {
        Some(match self.tensors.get(name)? {
            Entry::Loaded(t) => Ok(t.shallow_clone()),
            Entry::OnDisk { file, kind, shape, start, len } => {
                let (path, handle) = &self.files[*file];
                let mut bytes = vec![0u8; *len];
                handle
                    .read_exact_at(&mut bytes, *start)
                    .with_context(|| format!("cannot read tensor {name} from {}", path.display()))
                    .and_then(|()| {
                        Tensor::f_from_data_size(&bytes, shape, *kind)
                            .with_context(|| format!("cannot build tensor {name} from {}", path.display()))
                    })
            }
        })
    }

    /// Copy `prefix + name` for every variable of `vs`. Checkpoint tensors under `prefix` that
    /// the model does not use are an error unless `ignore(name)` says they are expected (for
    /// example the layers above the one a truncated decoder stops at).
    pub fn load_into(&self, vs: &mut VarStore, prefix: &str, ignore: impl Fn(&str) -> bool) -> Result<()> {
        self.load_part(vs, "", prefix, ignore)
    }

    /// [`Self::load_into`] for the variables of `vs` under `var_prefix` only (one part of a
    /// composite model): variable `var_prefix + name` takes tensor `prefix + name`.
    pub fn load_part(&self, vs: &mut VarStore, var_prefix: &str, prefix: &str, ignore: impl Fn(&str) -> bool) -> Result<()> {
        let variables: Vec<(String, Tensor)> =
            variables(vs).into_iter().filter_map(|(name, var)| name.strip_prefix(var_prefix).map(|rel| (rel.to_string(), var))).collect();
        let mut missing = Vec::new();
        let mut misshaped = Vec::new();
        let mut present = BTreeSet::new();
        for (name, var) in &variables {
            let key = format!("{prefix}{name}");
            match self.shape(&key) {
                None => missing.push(format!("{key} {:?}", var.size())),
                Some(shape) => {
                    if shape != var.size() {
                        misshaped.push(format!("{key}: checkpoint {shape:?}, model {:?}", var.size()));
                    }
                    present.insert(key);
                }
            }
        }
        let unexpected: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| k.starts_with(prefix) && !present.contains(*k) && !ignore(&k[prefix.len()..]))
            .map(|k| format!("{k} {:?}", self.shape(k).unwrap_or_default()))
            .collect();
        mismatch_report(&format!("checkpoint {}", self.origin.display()), &missing, &misshaped, &unexpected)?;
        tch::no_grad(|| {
            for (name, mut var) in variables {
                let key = format!("{prefix}{name}");
                let src = self.try_get(&key).expect("checked above")?;
                var.copy_(&src.to_kind(var.kind()).to_device(var.device()));
            }
            Ok(())
        })
    }
}

/// Write named tensors as one safetensors file, atomically.
pub fn write_safetensors(path: &Path, tensors: &[(&str, &Tensor)]) -> Result<()> {
    let scratch = tempfile::tempdir().context("cannot create a temporary folder")?;
    let staged = scratch.path().join("out.safetensors");
    Tensor::write_safetensors(tensors, &staged).with_context(|| format!("cannot serialise tensors for {}", path.display()))?;
    let bytes = std::fs::read(&staged).with_context(|| format!("cannot read back {}", staged.display()))?;
    crate::atomic::write(path, &bytes)
}

/// The variables of a store in name order (a `VarStore` keeps them in a hash map, whose order
/// differs between processes).
pub fn variables(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// The trainable variables of a store, in name order.
pub fn trainable(vs: &VarStore) -> Vec<(String, Tensor)> {
    variables(vs).into_iter().filter(|(_, t)| t.requires_grad()).collect()
}

/// Check that `saved` holds exactly the tensors of `expected` with their shapes; the error lists
/// every missing, unexpected and mis-shaped tensor of `origin`.
pub fn check_names_and_shapes(expected: &[(String, Tensor)], saved: &BTreeMap<String, Tensor>, origin: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut misshaped = Vec::new();
    for (name, t) in expected {
        match saved.get(name) {
            None => missing.push(format!("{name} {:?}", t.size())),
            Some(s) if s.size() != t.size() => misshaped.push(format!("{name}: saved {:?}, model {:?}", s.size(), t.size())),
            Some(_) => {}
        }
    }
    let names: std::collections::BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let unexpected: Vec<String> =
        saved.iter().filter(|(n, _)| !names.contains(n.as_str())).map(|(n, t)| format!("{n} {:?}", t.size())).collect();
    mismatch_report(&origin.display().to_string(), &missing, &misshaped, &unexpected)
}

/// `Ok` when all three lists are empty, else an error listing them (20 per list at most: a
/// wrong model size mismatches every layer).
fn mismatch_report(origin: &str, missing: &[String], misshaped: &[String], unexpected: &[String]) -> Result<()> {
    if missing.is_empty() && misshaped.is_empty() && unexpected.is_empty() {
        return Ok(());
    }
    let mut msg = format!("{origin} does not match the model");
    for (title, list) in [("missing", missing), ("mis-shaped", misshaped), ("unexpected", unexpected)] {
        if !list.is_empty() {
            msg.push_str(&format!("\n  {} {title} tensor(s):", list.len()));
            for item in list.iter().take(20) {
                msg.push_str(&format!("\n    {item}"));
            }
            if list.len() > 20 {
                msg.push_str(&format!("\n    ... and {} more", list.len() - 20));
            }
        }
    }
    bail!(msg)
}

/// Copy `saved` into `targets` by name after [`check_names_and_shapes`].
pub fn copy_checked(targets: &[(String, Tensor)], saved: &BTreeMap<String, Tensor>, origin: &Path) -> Result<()> {
    check_names_and_shapes(targets, saved, origin)?;
    tch::no_grad(|| {
        for (name, target) in targets {
            let mut target = target.shallow_clone();
            target.copy_(&saved[name].to_kind(target.kind()).to_device(target.device()));
        }
    });
    Ok(())
}

/// Index a safetensors file from its header: `u64` header length, JSON header mapping names
/// to dtype, shape and data offsets, then the data.
fn index_file(file: &File, file_index: usize) -> Result<Vec<(String, Entry)>> {
    let file_len = file.metadata()?.len();
    let mut len_bytes = [0u8; 8];
    file.read_exact_at(&mut len_bytes, 0).context("not a safetensors file (shorter than its header length)")?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > file_len.saturating_sub(8) || header_len > 100 << 20 {
        bail!("not a safetensors file (header of {header_len} bytes in a file of {file_len})");
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact_at(&mut header, 8)?;
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&header).context("not a safetensors file (header is not JSON)")?;
    let data_start = 8 + header_len;
    let mut entries = Vec::new();
    for (name, info) in header.into_iter().filter(|(k, _)| k != "__metadata__") {
        let bad = |what: &str| anyhow::anyhow!("tensor {name}: {what}");
        let dtype = info["dtype"].as_str().ok_or_else(|| bad("no dtype"))?;
        let kind = match dtype {
            "F64" => Kind::Double,
            "F32" => Kind::Float,
            "F16" => Kind::Half,
            "BF16" => Kind::BFloat16,
            "I64" => Kind::Int64,
            "I32" => Kind::Int,
            "I16" => Kind::Int16,
            "I8" => Kind::Int8,
            "U8" => Kind::Uint8,
            "BOOL" => Kind::Bool,
            other => bail!("tensor {name}: unsupported dtype {other}"),
        };
        let shape: Vec<i64> = serde_json::from_value(info["shape"].clone()).map_err(|_| bad("bad shape"))?;
        let offsets: [u64; 2] = serde_json::from_value(info["data_offsets"].clone()).map_err(|_| bad("bad data_offsets"))?;
        let numel: i64 = shape.iter().product();
        let len = offsets[1].checked_sub(offsets[0]).ok_or_else(|| bad("data_offsets end before they start"))?;
        if numel < 0 || len != numel as u64 * kind.elt_size_in_bytes() as u64 || data_start + offsets[1] > file_len {
            bail!("tensor {name}: {dtype} {shape:?} does not fit bytes {}..{} of the data", offsets[0], offsets[1]);
        }
        entries.push((name, Entry::OnDisk { file: file_index, kind, shape, start: data_start + offsets[0], len: len as usize }));
    }
    Ok(entries)
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
        assert!(!err.contains("proj.weight [3, 3]"), "a mis-shaped tensor is not also unexpected: {err}");
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

    #[test]
    fn reads_tensors_on_demand_in_their_stored_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let half = Tensor::from_slice(&[0.5f32, -2.0, 3.25]).to_kind(Kind::Half);
        let bf16 = Tensor::from_slice(&[1.5f32, 4.0]).to_kind(Kind::BFloat16);
        let ids = Tensor::from_slice(&[7i64, -1, 2048, 3]).view([2, 2]);
        Tensor::write_safetensors(&[("h", &half), ("b", &bf16), ("ids", &ids)], &path).unwrap();
        let ckpt = Checkpoint::open(&path).unwrap();
        assert_eq!(ckpt.shape("ids"), Some(vec![2, 2]));
        assert!(ckpt.contains("b") && !ckpt.contains("x") && ckpt.get("x").is_none());
        let h = ckpt.get("h").unwrap();
        assert_eq!(h.kind(), Kind::Half);
        assert_eq!(Vec::<f32>::try_from(h.to_kind(Kind::Float)).unwrap(), vec![0.5, -2.0, 3.25]);
        assert_eq!(Vec::<f32>::try_from(ckpt.get("b").unwrap().to_kind(Kind::Float)).unwrap(), vec![1.5, 4.0]);
        assert_eq!(Vec::<i64>::try_from(ckpt.get("ids").unwrap().view([-1])).unwrap(), vec![7, -1, 2048, 3]);
    }

    #[test]
    fn corrupt_safetensors_files_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.safetensors");
        std::fs::write(&path, b"\x05").unwrap();
        let err = format!("{:#}", Checkpoint::open(&path).err().unwrap());
        assert!(err.contains("bad.safetensors") && err.contains("not a safetensors file"), "{err}");

        let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]);
        Tensor::write_safetensors(&[("t", &t)], &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        let err = format!("{:#}", Checkpoint::open(&path).err().unwrap());
        assert!(err.contains("bad.safetensors") && err.contains("tensor t"), "{err}");
    }
}
