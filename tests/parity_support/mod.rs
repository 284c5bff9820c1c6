//! Shared by the parity tests: run a `python_interop/parity/` script with the project's venv
//! python (which has `transformers`) to build a tiny HF checkpoint and its reference outputs.
// Each test binary uses a subset of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tch::Tensor;

/// The venv python the Makefile exports; the parity tests cannot run without it.
fn python() -> PathBuf {
    match std::env::var_os("PYTHON_SYS_EXECUTABLE") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "PYTHON_SYS_EXECUTABLE is unset: run the parity tests through the Makefile \
             (`make cargo ARGS=\"test --test parity_encodec\"`), which exports the venv python with transformers"
        ),
    }
}

/// Run `python_interop/<script> <args...>` with the venv python and return its output.
pub fn run_python(script: &str, args: &[&str]) -> Output {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("python_interop").join(script);
    Command::new(python()).arg(&path).args(args).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()))
}

/// Run `python_interop/parity/<script> <out_dir> <args...>`; panics with its stderr on failure.
pub fn run_script(script: &str, out_dir: &Path, args: &[&str]) {
    let out_dir = out_dir.to_str().expect("a UTF-8 temporary path");
    let output = run_python(&format!("parity/{script}"), &[&[out_dir][..], args].concat());
    assert!(output.status.success(), "{script} {args:?} failed:\n{}", String::from_utf8_lossy(&output.stderr));
}

/// The named tensors of `dir/reference.safetensors`.
pub fn reference(dir: &Path) -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(dir.join("reference.safetensors")).unwrap().into_iter().collect()
}

/// Largest absolute difference of two float tensors of one shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}
