//! The one place a device name (`cpu`, `cuda`, `cuda:N`, `auto`) becomes a `tch::Device`, and
//! the CPU thread count is set.
//!
//! A CUDA device is checked here, where it is parsed, so that a machine without it gets a
//! message saying what is visible (the facts `stylebridge info` prints) instead of a panic deep
//! inside libtorch at the first tensor moved there.
use anyhow::{bail, Result};
use tch::Device;

/// What libtorch sees of CUDA on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visible {
    pub cuda_devices: usize,
}

impl Visible {
    pub fn now() -> Self {
        let cuda_devices = if tch::Cuda::is_available() { tch::Cuda::device_count().max(0) as usize } else { 0 };
        Self { cuda_devices }
    }

    fn describe(self) -> String {
        match self.cuda_devices {
            0 => "this machine shows no CUDA device (libtorch without CUDA, no driver, or CUDA_VISIBLE_DEVICES empty; \
                  `stylebridge info` shows what was loaded)"
                .to_string(),
            n => format!("this machine shows {n} CUDA device(s): cuda:0..cuda:{}", n - 1),
        }
    }
}

/// Set libtorch's intra-op thread count (`--threads`, `train.threads`); 0 is refused here
/// rather than by a libtorch abort.
pub fn set_threads(threads: usize) -> Result<()> {
    match i32::try_from(threads) {
        Ok(n) if n >= 1 => {
            tch::set_num_threads(n);
            Ok(())
        }
        _ => bail!("the thread count must be 1 ..= {}, got {threads}", i32::MAX),
    }
}

/// Parse `name` and check the device exists here.
pub fn parse(name: &str) -> Result<Device> {
    parse_with(name, Visible::now())
}

/// [`parse`] against given facts (tests use made-up machines).
pub fn parse_with(name: &str, visible: Visible) -> Result<Device> {
    let index = match name.trim() {
        "auto" => return Ok(if visible.cuda_devices > 0 { Device::Cuda(0) } else { Device::Cpu }),
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => i,
            _ => bail!("unknown device `{other}` (expected cpu, cuda, cuda:N or auto)"),
        },
    };
    if index >= visible.cuda_devices {
        bail!("device `{name}` is not available: {}", visible.describe());
    }
    Ok(Device::Cuda(index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_devices_that_exist() {
        let two = Visible { cuda_devices: 2 };
        assert_eq!(parse_with("cpu", two).unwrap(), Device::Cpu);
        assert_eq!(parse_with("cuda", two).unwrap(), Device::Cuda(0));
        assert_eq!(parse_with("cuda:1", two).unwrap(), Device::Cuda(1));
        assert_eq!(parse_with("auto", two).unwrap(), Device::Cuda(0));
        assert_eq!(parse_with("auto", Visible { cuda_devices: 0 }).unwrap(), Device::Cpu);
    }

    #[test]
    fn missing_cuda_says_what_is_visible() {
        let err = parse_with("cuda", Visible { cuda_devices: 0 }).unwrap_err().to_string();
        assert!(err.contains("`cuda` is not available") && err.contains("no CUDA device"), "{err}");
        let err = parse_with("cuda:1", Visible { cuda_devices: 1 }).unwrap_err().to_string();
        assert!(err.contains("shows 1 CUDA device(s): cuda:0..cuda:0"), "{err}");
        let err = parse_with("gpu", Visible { cuda_devices: 1 }).unwrap_err().to_string();
        assert!(err.contains("unknown device `gpu`"), "{err}");
        assert!(parse_with("cuda:x", Visible { cuda_devices: 1 }).is_err());
    }
}
