//! `stylebridge info`: what this binary runs on. On a cluster, the first thing to check is
//! that the job sees its GPUs; this also shows which libtorch was loaded and whether its CUDA
//! half is linked in (see build.rs for why that is not automatic).
use anyhow::Result;
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Info {
    version: &'static str,
    libtorch_dir: Option<PathBuf>,
    libtorch_cuda_loaded: bool,
    cuda_available: bool,
    cudnn_available: bool,
    cuda_devices: i64,
    cpu_threads: i32,
}

/// Shared libraries mapped into this process, from /proc/self/maps.
fn loaded_libraries() -> Vec<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut libs: Vec<PathBuf> =
        maps.lines().filter_map(|l| l.split_whitespace().nth(5)).filter(|p| p.contains(".so")).map(PathBuf::from).collect();
    libs.dedup();
    libs
}

pub fn run(args: Args) -> Result<()> {
    let libs = loaded_libraries();
    let named = |name: &str| libs.iter().find(|p| p.file_name().is_some_and(|f| f == name)).cloned();
    let info = Info {
        version: env!("CARGO_PKG_VERSION"),
        libtorch_dir: named("libtorch_cpu.so").and_then(|p| p.parent().map(PathBuf::from)),
        libtorch_cuda_loaded: named("libtorch_cuda.so").is_some(),
        cuda_available: tch::Cuda::is_available(),
        cudnn_available: tch::Cuda::cudnn_is_available(),
        cuda_devices: tch::Cuda::device_count(),
        cpu_threads: tch::get_num_threads(),
    };
    let text = if args.json {
        serde_json::to_string_pretty(&info)? + "\n"
    } else {
        let dir = info.libtorch_dir.as_ref().map_or("(not found)".into(), |d| d.display().to_string());
        format!(
            "stylebridge {}\nlibtorch:        {dir}\nlibtorch_cuda:   {}\nCUDA available:  {} ({} device(s), cuDNN {})\nCPU threads:     {}\n",
            info.version,
            if info.libtorch_cuda_loaded { "linked" } else { "not linked" },
            info.cuda_available,
            info.cuda_devices,
            info.cudnn_available,
            info.cpu_threads
        )
    };
    super::emit(&text)
}
