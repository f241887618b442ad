//! A dense layer `y = x · Wᵀ + b`. Weights are kept transposed (`[in, out]`, row-major), the
//! layout the GEMM streams best. This is the seam where a precision plan swaps the float GEMM
//! for another kernel.

use crate::error::Result;
use crate::model::kernels::{self, View};
use crate::model::weights::Weights;

pub struct Linear {
    /// `[in, out]`, row-major.
    w_t: Vec<f32>,
    pub bias: Vec<f32>,
    pub inputs: usize,
    pub outputs: usize,
}

impl Linear {
    /// Load `{name}.weight` (`[out, in]`, PyTorch layout) and `{name}.bias`.
    pub fn load(w: &Weights, name: &str, inputs: usize, outputs: usize) -> Result<Self> {
        Self::concat(w, &[name], inputs, outputs)
    }

    /// Several layers with the same input side by side (`out` each), as one wider layer: the
    /// Q, K and V projections become one GEMM.
    pub fn concat(w: &Weights, names: &[&str], inputs: usize, outputs: usize) -> Result<Self> {
        let total = outputs * names.len();
        let mut w_t = vec![0.0f32; inputs * total];
        let mut bias = Vec::with_capacity(total);
        for (part, name) in names.iter().enumerate() {
            let weight = w.get(&format!("{name}.weight"), &[outputs, inputs])?;
            for (o, row) in weight.chunks_exact(inputs).enumerate() {
                for (i, &v) in row.iter().enumerate() {
                    w_t[i * total + part * outputs + o] = v;
                }
            }
            bias.extend(w.get(&format!("{name}.bias"), &[outputs])?);
        }
        Ok(Linear {
            w_t,
            bias,
            inputs,
            outputs: total,
        })
    }

    /// `out (+)= x · Wᵀ` for `rows` rows, without the bias (the caller fuses it into the next
    /// element-wise step). `accumulate` adds onto what `out` holds: the residual connection.
    pub fn matmul(&self, x: &[f32], rows: usize, out: &mut [f32], accumulate: bool) {
        kernels::gemm(
            rows,
            self.outputs,
            self.inputs,
            x,
            View::row_major(self.inputs),
            &self.w_t,
            View::row_major(self.outputs),
            out,
            View::row_major(self.outputs),
            accumulate,
            rayon::current_num_threads(),
        );
    }

    /// `x · Wᵀ + b` for a single vector (heads).
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        let mut out = self.bias.clone();
        self.matmul(x, 1, &mut out, true);
        out
    }
}
