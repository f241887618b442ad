//! Where a model's encoder runs: `cpu`, or `cuda[:N]` when this binary has the `cuda` feature and
//! the machine has a usable GPU. Asking for CUDA never fails start-up for lack of a GPU: the
//! model then runs on the CPU and the log (and `samp_model_device`) says why.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use std::sync::Arc;

use super::engine::{CpuEngine, Engine};
use crate::model::Model;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// GPU ordinal.
    Cuda(usize),
}

impl FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("{other:?} is not a device (cpu, cuda, cuda:N)")),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl serde::Serialize for Device {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Device {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a model ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// `cpu` or the GPU's description.
    pub device: String,
    /// Why a requested GPU is not used.
    pub fallback: Option<String>,
}

/// A colon-separated list of directories (`--cuda-lib-dir`).
pub fn lib_dirs(list: Option<&std::path::Path>) -> Vec<PathBuf> {
    list.map(|l| std::env::split_paths(l.as_os_str()).collect())
        .unwrap_or_default()
}

/// Whether this binary was built with the CUDA backend.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// The engine that runs `model`'s encoder passes on `want` (after its plan is applied), or the
/// CPU engine and why (logged). `lib_dirs`: extra directories holding the CUDA libraries.
pub fn place(
    model: &Arc<Model>,
    want: Device,
    lib_dirs: &[PathBuf],
) -> (Arc<dyn Engine>, Placement) {
    let cpu = || Arc::new(CpuEngine(model.clone())) as Arc<dyn Engine>;
    let (engine, fallback) = match want {
        Device::Cpu => (cpu(), None),
        Device::Cuda(ordinal) => match attach(model, ordinal, lib_dirs) {
            Ok(engine) => (engine, None),
            Err(reason) => (cpu(), Some(reason)),
        },
    };
    let placement = Placement {
        device: engine.device(),
        fallback,
    };
    match &placement.fallback {
        Some(reason) => tracing::warn!(
            model = %model.name,
            requested = %want,
            "running on the CPU instead: {reason}"
        ),
        None => tracing::info!(model = %model.name, device = %placement.device, "encoder placed"),
    }
    let bytes = engine.memory().device_weight_bytes;
    if bytes > 0 {
        let device = placement.device.split_whitespace().next().unwrap_or("cuda");
        metrics::gauge!(crate::metrics::DEVICE_MEMORY_BYTES, "device" => device.to_string(), "kind" => "weights")
            .increment(bytes as f64);
    }
    (engine, placement)
}

#[cfg(feature = "cuda")]
fn attach(model: &Model, ordinal: usize, lib_dirs: &[PathBuf]) -> Result<Arc<dyn Engine>, String> {
    use std::sync::OnceLock;
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let (found, res) = super::cuda::probe(lib_dirs);
            tracing::info!(?found, "CUDA libraries");
            res
        })
        .clone()?;
    let enc = super::cuda::CudaEncoder::new(ordinal, model.encoder(), model.plan())?;
    super::engine::check_plan(&enc, "GPU", model.plan()).map_err(|e| e.to_string())?;
    Ok(Arc::new(enc))
}

#[cfg(not(feature = "cuda"))]
fn attach(_: &Model, _: usize, _: &[PathBuf]) -> Result<Arc<dyn Engine>, String> {
    Err("this samp binary was built without the `cuda` feature".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_and_print() {
        assert_eq!("cpu".parse(), Ok(Device::Cpu));
        assert_eq!("cuda".parse(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(Device::Cuda(3)));
        assert_eq!(Device::Cuda(1).to_string(), "cuda:1");
        for bad in ["tpu", "cuda:", "cuda:x", "cuda:-1"] {
            let e = bad.parse::<Device>().unwrap_err();
            assert!(e.contains("not a device"), "{bad}: {e}");
        }
    }
}
