//! Training runs seen from outside, for the tests that train: the command run quietly, a refusal
//! checked, the latest checkpoint of a run folder, a file's bytes, and a run killed with SIGKILL
//! right after its first checkpoint.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_stylebridge");

/// `stylebridge ARGS` with the progress lines held back.
pub fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env("STYLEBRIDGE_PROGRESS_SECS", "3600").output().unwrap()
}

/// [`run`], which must succeed.
pub fn ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(out.status.success(), "{args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// `stylebridge train CONFIG EXTRA` must fail with `want` in its error; returns the error.
pub fn train_refused(config: &Path, extra: &[&str], want: &str) -> String {
    let mut args = vec!["train", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = run(&args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success() && err.contains(want), "{extra:?}: {err}");
    err
}

pub fn latest(run_dir: &Path) -> Option<PathBuf> {
    let name = std::fs::read_to_string(run_dir.join("checkpoints/latest")).ok()?;
    Some(run_dir.join("checkpoints").join(name.trim()))
}

pub fn file(path: PathBuf) -> Vec<u8> {
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Start `stylebridge train CONFIG`, SIGKILL it once `run_dir` holds a checkpoint, and return
/// that checkpoint; `last` names the run's final one, which the kill must come before.
pub fn kill_after_first_checkpoint(config: &Path, run_dir: &Path, last: &str) -> PathBuf {
    let mut child = Command::new(BIN)
        .args(["train", config.to_str().unwrap()])
        .env("STYLEBRIDGE_PROGRESS_SECS", "3600")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while latest(run_dir).is_none() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before its first checkpoint was seen");
        assert!(started.elapsed() < Duration::from_secs(120), "no checkpoint after 2 minutes");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    let killed_at = latest(run_dir).unwrap();
    assert!(!status.success() && !killed_at.ends_with(last), "the kill came after the run finished");
    killed_at
}
