//! Self-Adaptive Mixed-Precision's vocabulary: calibration observers, precision plans and the
//! INT8 artifact. The search that picks a plan (`samp quantize`) is in [`crate::tune`].

pub mod artifact;
pub mod observer;
pub mod plan;
