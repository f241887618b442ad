//! The loaded models: each by name with its variants (the first is the default), and how a
//! request's model and variant name pick one.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::convert::model_info;
use super::proto;
use super::status::ServeError;
use crate::backend::ModelWorker;
use crate::model::config::Task;

pub struct Registry {
    /// Per model, its variants; the first is the default.
    models: BTreeMap<String, Vec<Arc<ModelWorker>>>,
}

impl Registry {
    pub fn new(models: BTreeMap<String, Vec<Arc<ModelWorker>>>) -> Self {
        Registry { models }
    }

    /// Every variant of every model has its compute thread.
    pub fn all_alive(&self) -> bool {
        self.models.values().flatten().all(|w| w.alive())
    }

    /// The model a request names (or the only model that can do `task`), in the variant it
    /// names (or the model's default).
    pub fn pick(
        &self,
        name: &str,
        variant: &str,
        task: Task,
    ) -> Result<Arc<ModelWorker>, ServeError> {
        let variants = if name.is_empty() {
            let able: Vec<_> = self
                .models
                .values()
                .filter(|v| v[0].model.task == task)
                .collect();
            match able.as_slice() {
                [one] => *one,
                [] => {
                    return Err(ServeError::FailedPrecondition(format!(
                        "no loaded model does {}",
                        task.name()
                    )))
                }
                _ => {
                    return Err(ServeError::invalid(
                        "model",
                        format!("several models do {}; name one", task.name()),
                    ))
                }
            }
        } else {
            self.models
                .get(name)
                .ok_or_else(|| ServeError::NotFound(format!("unknown model {name:?}")))?
        };
        let worker = if variant.is_empty() {
            variants[0].clone()
        } else {
            variants
                .iter()
                .find(|w| w.variant == variant)
                .cloned()
                .ok_or_else(|| {
                    let names: Vec<&str> = variants.iter().map(|w| w.variant.as_str()).collect();
                    ServeError::NotFound(format!(
                        "model {} has no variant {variant:?} (variants: {})",
                        variants[0].model.name,
                        names.join(", ")
                    ))
                })?
        };
        worker.model.require(task)?;
        Ok(worker)
    }

    /// The float32 variant of `worker`'s model, if it has one and `worker` is quantized.
    pub fn float_variant(&self, worker: &ModelWorker) -> Option<Arc<ModelWorker>> {
        let quantized =
            |w: &ModelWorker| w.model.plan().int8_gemms() + w.model.plan().bf16_gemms() > 0;
        if !quantized(worker) {
            return None;
        }
        self.models
            .get(&worker.model.name)?
            .iter()
            .find(|w| !quantized(w))
            .cloned()
    }

    pub fn infos(&self) -> Vec<proto::ModelInfo> {
        self.models.values().map(|v| model_info(v)).collect()
    }

    pub fn info(&self, name: &str) -> Result<proto::ModelInfo, ServeError> {
        self.models
            .get(name)
            .map(|v| model_info(v))
            .ok_or_else(|| ServeError::NotFound(format!("unknown model {name:?}")))
    }
}
