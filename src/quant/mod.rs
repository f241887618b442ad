//! Self-Adaptive Mixed-Precision: calibration observers, precision plans, the INT8 artifact,
//! evaluation metrics and the search that picks a plan (`samp quantize`).

pub mod artifact;
pub mod eval;
pub mod observer;
pub mod plan;
pub mod report;
pub mod search;
mod timing;
