//! `stylebridge convert`: pickled checkpoints (fairseq MusicBERT, BOSSA stage 1/2, HF `.bin`
//! folders) to `model.safetensors` + `config.json`. The unpickling runs in the project's Python
//! (`python_interop/convert.py`, embedded here, `torch.load(weights_only=True)` with an explicit
//! allow-list); Rust only reads the result, and checks its layout before reporting success.
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

const SCRIPT: &str = include_str!("../../python_interop/convert.py");

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    /// fairseq MusicBERT `.pt` (weights under ['model']), renamed as BOSSA's init_Qformer does.
    Musicbert,
    /// BOSSA's `bossa_stage1.pt` (Blip2Qformer state dict).
    BossaStage1,
    /// BOSSA's `bossa_stage2.pt` (Blip2Musecoco state dict).
    BossaStage2,
    /// HF folder with `pytorch_model.bin` (or sharded index) and config.json (EnCodec, MusicGen).
    HfBin,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Format of the input checkpoint.
    #[arg(long, value_enum)]
    pub format: Format,
    /// The `.pt` file, or the HF folder for `hf-bin`.
    pub input: PathBuf,
    /// Output folder for model.safetensors and config.json.
    #[arg(short = 'o', long = "out")]
    pub out: PathBuf,
    /// Override an entry of the written config.json, e.g. `qformer.num_attention_heads=12`
    /// (head counts cannot be read from the tensors of BOSSA's checkpoints).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    for o in &args.overrides {
        if !matches!(o.split_once('='), Some((key, _)) if !key.is_empty()) {
            bail!("--set {o:?}: expected KEY=VALUE, e.g. qformer.num_attention_heads=12");
        }
    }
    let python = std::env::var_os("PYTHON_SYS_EXECUTABLE").context(
        "PYTHON_SYS_EXECUTABLE is not set: run through `make` (which exports the project's virtualenv python) \
         or set it to a python with torch",
    )?;
    if !args.input.exists() {
        bail!("{}: no such file or folder", args.input.display());
    }
    let format = args.format.to_possible_value().context("format has a name")?.get_name().to_string();
    let status = Command::new(&python)
        .arg("-c")
        .arg(SCRIPT)
        .arg("--format")
        .arg(&format)
        .arg(&args.input)
        .arg(&args.out)
        .args(args.overrides.iter().flat_map(|o| ["--set", o.as_str()]))
        .status()
        .with_context(|| format!("cannot run {}", PathBuf::from(&python).display()))?;
    if !status.success() {
        bail!("converting {} ({format}) failed; the converter's message is above", args.input.display());
    }
    let written = args.out.join("model.safetensors");
    let count = check_safetensors(&written)?;
    crate::cli::emit(&format!("wrote {count} tensors to {} (+ config.json)\n", written.display()))
}

/// Check a safetensors file's header against its size without reading the data (a converted
/// MusicGen-large is 13 GB); returns the number of tensors.
fn check_safetensors(path: &Path) -> Result<usize> {
    let bad =
        |why: String| anyhow::anyhow!("the converter's output {} is not valid safetensors: {why}", path.display());
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let file_len = file.metadata()?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| bad(e.to_string()))?;
    let header_len = u64::from_le_bytes(len);
    if header_len > file_len.saturating_sub(8) {
        return Err(bad(format!("header of {header_len} bytes in a file of {file_len}")));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| bad(e.to_string()))?;
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(e.to_string()))?;
    let mut end = 0;
    for (name, info) in header.iter().filter(|(k, _)| k.as_str() != "__metadata__") {
        let stop = info["data_offsets"][1].as_u64().ok_or_else(|| bad(format!("{name} has no data offsets")))?;
        end = end.max(stop);
    }
    if 8 + header_len + end != file_len {
        return Err(bad(format!("data ends at byte {} but the file has {file_len}", 8 + header_len + end)));
    }
    Ok(header.len() - usize::from(header.contains_key("__metadata__")))
}
