//! Link this binary against the libtorch that tch uses, so that it runs without
//! `LD_LIBRARY_PATH` and sees CUDA when the wheel has it.
//!
//! torch-sys links `torch_cuda` with `-Wl,--no-as-needed`, but link arguments of a
//! dependency do not reach a downstream binary: without repeating them here the linker
//! drops `libtorch_cuda.so` (nothing references it by symbol) and `Cuda::is_available()`
//! is false even on a GPU machine.
use std::path::PathBuf;
use std::process::Command;

fn torch_lib_dir() -> PathBuf {
    if let Ok(root) = std::env::var("LIBTORCH") {
        return PathBuf::from(root).join("lib");
    }
    let python = std::env::var("PYTHON_SYS_EXECUTABLE").unwrap_or_else(|_| "python3".into());
    let output = Command::new(&python)
        .args(["-c", "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} to locate torch (run `make build`, which sets up the virtualenv): {e}"));
    assert!(
        output.status.success(),
        "{python} cannot import torch (run `make build`, which sets up the virtualenv): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// `pyo3-tch` builds pyo3 as an extension module, which leaves libpython unlinked: link the
/// interpreter of the venv's base installation here (with an rpath), and record the venv's
/// site-packages so that the embedded interpreter finds torch when a launcher (torchrun, srun)
/// starts the binary outside `make`. Only multi-process training ever starts Python.
fn link_libpython() {
    let python = std::env::var("PYTHON_SYS_EXECUTABLE").unwrap_or_else(|_| "python3".into());
    let script = "import site, sys, sysconfig; print(sysconfig.get_config_var('LIBDIR')); \
                  print(sysconfig.get_config_var('LDVERSION')); print(site.getsitepackages()[0]); print(sys.base_prefix)";
    let output = Command::new(&python)
        .args(["-c", script])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} to locate libpython: {e}"));
    assert!(output.status.success(), "{python} cannot report its libpython: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let [lib_dir, version, site_packages, home] = text.lines().collect::<Vec<_>>()[..] else {
        panic!("unexpected answer from {python} about libpython: {text}")
    };
    println!("cargo:rustc-link-search=native={lib_dir}");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    println!("cargo:rustc-link-arg=-lpython{version}");
    println!("cargo:rustc-env=STYLEBRIDGE_BUILD_SITE_PACKAGES={site_packages}");
    // The embedded interpreter's home (standard library): it cannot find it from the path of a
    // binary that is not `python`.
    println!("cargo:rustc-env=STYLEBRIDGE_BUILD_PYTHON_HOME={home}");
}

fn main() {
    for var in ["LIBTORCH", "LIBTORCH_USE_PYTORCH", "PYTHON_SYS_EXECUTABLE", "PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    let lib_dir = torch_lib_dir();
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    for lib in ["torch_cuda", "c10_cuda", "torch_cpu", "torch", "c10"] {
        if lib_dir.join(format!("lib{lib}.so")).exists() {
            println!("cargo:rustc-link-arg=-l{lib}");
        }
    }
    // The torch libraries need the C++ runtime; targets that do not link tch itself (an
    // integration test using only the binary) would otherwise miss it.
    println!("cargo:rustc-link-arg=-lstdc++");
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
    link_libpython();
}
