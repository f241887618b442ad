//! Reading tensors out of a checkpoint: `model.safetensors` (memory-mapped) or
//! `pytorch_model.bin`, with or without the architecture's name prefix. Everything comes out as
//! row-major f32; the layers decide how to lay it out for their kernels.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::{Result, SampError};

enum Store {
    Safetensors(candle_core::safetensors::MmapedSafetensors),
    Pickle(HashMap<String, Tensor>),
}

/// The tensors of one checkpoint, looked up by name with an optional prefix.
pub struct Weights {
    path: PathBuf,
    store: Store,
    prefix: &'static str,
}

impl Weights {
    /// Open the checkpoint of `dir`; `prefix` (e.g. `bert.`) is tried before the bare name.
    pub fn open(dir: &Path, prefix: &'static str) -> Result<Self> {
        let st = dir.join("model.safetensors");
        let bin = dir.join("pytorch_model.bin");
        let (path, store) = if st.exists() {
            // SAFETY: the file is mapped read-only; samp never writes model files while serving
            // them, and a concurrent writer would be a deployment error, as for any mmap reader.
            let m = unsafe { candle_core::safetensors::MmapedSafetensors::new(&st) }.map_err(
                |source| SampError::Weights {
                    path: st.clone(),
                    source,
                },
            )?;
            (st, Store::Safetensors(m))
        } else if bin.exists() {
            let all = candle_core::pickle::read_all(&bin).map_err(|source| SampError::Weights {
                path: bin.clone(),
                source,
            })?;
            (bin, Store::Pickle(all.into_iter().collect()))
        } else if dir.join("model.safetensors.index.json").exists() {
            return Err(SampError::malformed(
                dir.join("model.safetensors.index.json"),
                "sharded checkpoints are not supported; merge into one model.safetensors",
            ));
        } else {
            return Err(SampError::MissingFile {
                path: st,
                what: "model weights (model.safetensors or pytorch_model.bin)",
            });
        };
        Ok(Weights {
            path,
            store,
            prefix,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn raw(&self, name: &str) -> Option<Result<Tensor>> {
        match &self.store {
            Store::Safetensors(m) => m.get(name).ok().map(|_| {
                m.load(name, &Device::Cpu)
                    .map_err(|e| self.bad(name, e.to_string()))
            }),
            Store::Pickle(m) => m.get(name).cloned().map(Ok),
        }
    }

    fn bad(&self, name: &str, reason: String) -> SampError {
        SampError::BadTensor {
            path: self.path.clone(),
            name: name.to_string(),
            reason,
        }
    }

    /// Candidate spellings of a tensor: with/without prefix, old `gamma`/`beta` LayerNorm names.
    fn candidates(&self, name: &str) -> Vec<String> {
        let mut names = vec![format!("{}{name}", self.prefix), name.to_string()];
        if let Some(stem) = name.strip_suffix("LayerNorm.weight") {
            names.push(format!("{}{stem}LayerNorm.gamma", self.prefix));
            names.push(format!("{stem}LayerNorm.gamma"));
        } else if let Some(stem) = name.strip_suffix("LayerNorm.bias") {
            names.push(format!("{}{stem}LayerNorm.beta", self.prefix));
            names.push(format!("{stem}LayerNorm.beta"));
        }
        names
    }

    pub fn contains(&self, name: &str) -> bool {
        self.candidates(name).iter().any(|n| match &self.store {
            Store::Safetensors(m) => m.get(n).is_ok(),
            Store::Pickle(m) => m.contains_key(n),
        })
    }

    /// Load `name` as f32 of exactly `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self
            .candidates(name)
            .iter()
            .find_map(|n| self.raw(n))
            .ok_or_else(|| self.bad(name, "not found in the checkpoint".into()))??;
        if t.dims() != shape {
            return Err(self.bad(name, format!("shape {:?}, expected {:?}", t.dims(), shape)));
        }
        t.to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| self.bad(name, e.to_string()))
    }
}
