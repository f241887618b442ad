//! A dense layer `y = x · Wᵀ + b`. Weights are packed once at load time for the GEMM kernel
//! (see `kernels::packed`); bias, residual and activation are fused into the GEMM's epilogue.
//! This is the seam where a precision plan swaps the float GEMM for another kernel.

use crate::error::Result;
use crate::model::config::Activation;
use crate::model::kernels::packed::{self, Epilogue, PackedWeights};
use crate::model::weights::Weights;

pub struct Linear {
    weights: PackedWeights,
    pub bias: Vec<f32>,
}

impl Linear {
    /// Load `{name}.weight` (`[out, in]`, PyTorch layout) and `{name}.bias`.
    pub fn load(w: &Weights, name: &str, inputs: usize, outputs: usize) -> Result<Self> {
        Self::concat(w, &[name], inputs, outputs)
    }

    /// Several layers with the same input side by side (`outputs` each), as one wider layer:
    /// the Q, K and V projections become one GEMM.
    pub fn concat(w: &Weights, names: &[&str], inputs: usize, outputs: usize) -> Result<Self> {
        let mut rows = Vec::with_capacity(inputs * outputs * names.len());
        let mut bias = Vec::with_capacity(outputs * names.len());
        for name in names {
            rows.extend(w.get(&format!("{name}.weight"), &[outputs, inputs])?);
            bias.extend(w.get(&format!("{name}.bias"), &[outputs])?);
        }
        Ok(Linear {
            weights: PackedWeights::from_rows(&rows, outputs * names.len(), inputs),
            bias,
        })
    }

    pub fn inputs(&self) -> usize {
        self.weights.k
    }

    pub fn outputs(&self) -> usize {
        self.weights.n
    }

    /// `out = act(x · Wᵀ + b [+ out])` for `rows` rows; `residual` adds onto what `out` holds.
    pub fn forward(
        &self,
        x: &[f32],
        rows: usize,
        out: &mut [f32],
        residual: bool,
        act: Option<Activation>,
    ) {
        let ep = Epilogue {
            bias: Some(&self.bias),
            accumulate: residual,
            act,
        };
        packed::matmul(x, rows, &self.weights, out, ep);
    }

    /// `x · Wᵀ + b` for a single vector (heads).
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; self.outputs()];
        self.forward(x, 1, &mut out, false, None);
        out
    }
}
