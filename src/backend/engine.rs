//! What computes a worker's encoder passes: the model's own CPU encoder, or an accelerator
//! built from it (the CUDA encoder). The batch loop, the warm-up and the CLI see only this
//! trait; the model never holds or calls an engine.

use std::sync::Arc;

use crate::error::Result;
use crate::model::encoder::Batch;
use crate::model::Model;
use crate::quant::plan::{Plan, PlanError, Precision};

/// An encoder that runs passes over packed batches.
pub trait Engine: Send + Sync {
    /// Last-layer hidden states `[T, H]` of one packed batch. Non-finite states are an error
    /// (`SampError::NonFinite`), never an answer.
    fn forward(&self, batch: &Batch) -> Result<Vec<f32>>;
    /// Whether GEMMs planned in `precision` run here.
    fn supports(&self, precision: Precision) -> bool;
    /// Where it runs, for logs and metrics: `cpu`, or e.g. `cuda:0 (NVIDIA H200, sm_90)`.
    fn device(&self) -> String;
    /// Memory it holds beyond the model's own (CPU) copy of the weights.
    fn memory(&self) -> Memory;
    /// Make what its kernels would otherwise make on first use (the warm-up calls it).
    fn prepare(&self) {}
}

/// The plan's first GEMM whose precision `engine` does not run, as an error naming it.
pub fn check_plan(
    engine: &dyn Engine,
    backend: &'static str,
    plan: &Plan,
) -> Result<(), PlanError> {
    let runs: Vec<Precision> = Precision::ALL
        .into_iter()
        .filter(|&p| engine.supports(p))
        .collect();
    plan.check_precisions(backend, &runs)
}

/// What an engine holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// Bytes of weights resident on the engine's device (0 for the CPU: the model's copy).
    pub device_weight_bytes: usize,
}

/// The model's own encoder on the CPU.
pub struct CpuEngine(pub Arc<Model>);

impl Engine for CpuEngine {
    fn forward(&self, batch: &Batch) -> Result<Vec<f32>> {
        self.0.forward(batch)
    }

    fn supports(&self, precision: Precision) -> bool {
        crate::model::encoder::CPU_PRECISIONS.contains(&precision)
    }

    fn device(&self) -> String {
        "cpu".into()
    }

    fn prepare(&self) {
        let m = &self.0;
        let start = std::time::Instant::now();
        m.encoder().prepare_kernels(m.max_pass_tokens());
        tracing::debug!(model = %m.name, ms = start.elapsed().as_millis() as u64, "kernels prepared");
    }

    fn memory(&self) -> Memory {
        Memory::default()
    }
}

/// One timed pass over `texts` on `engine`: warms the engine up (page faults, lazy kernels)
/// and measures its tokens per second, which admission plans with until traffic measures it.
pub fn warm_up(
    model: &Model,
    engine: &dyn Engine,
    texts: &[crate::tokenize::Input],
) -> Result<(usize, std::time::Duration)> {
    let encoded = model.tokenize(texts, Default::default())?;
    let mut batch = Batch::new();
    for e in &encoded {
        batch.push(e.ids(), e.encoding.get_type_ids());
    }
    engine.prepare();
    engine.forward(&batch)?;
    let start = std::time::Instant::now();
    engine.forward(&batch)?;
    Ok((batch.tokens(), start.elapsed()))
}
