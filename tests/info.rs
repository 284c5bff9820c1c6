//! The binary runs without LD_LIBRARY_PATH (rpath) and links libtorch's CUDA half whenever
//! the wheel has one, so a GPU job sees its devices.
use std::process::Command;

#[test]
fn info_reports_libtorch_and_links_cuda_when_the_wheel_has_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_stylebridge"))
        .args(["info", "--json"])
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run stylebridge");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let dir = std::path::PathBuf::from(info["libtorch_dir"].as_str().expect("libtorch_cpu.so is mapped"));
    assert!(dir.join("libtorch_cpu.so").is_file());
    let wheel_has_cuda = dir.join("libtorch_cuda.so").is_file();
    assert_eq!(info["libtorch_cuda_loaded"].as_bool(), Some(wheel_has_cuda), "{info}");
    // No GPU in CI: then CUDA must say so cleanly rather than fail.
    let devices = info["cuda_devices"].as_i64().unwrap();
    assert_eq!(info["cuda_available"].as_bool(), Some(devices > 0));
    assert!(info["cpu_threads"].as_i64().unwrap() >= 1);
}
