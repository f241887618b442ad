//! INT8 weights: symmetric per output channel, packed once into panels of [`NR`] columns with the
//! depth in groups of four, plus the per-column compensation for unsigned activations.

use super::{weight_max, KG, NR, WEIGHT_BITS};
use crate::kernels::aligned::Aligned;

/// Weights `[k, n]` quantized per output column and packed into panels of `NR` columns.
#[derive(Clone)]
pub struct QWeights {
    /// `panels × (kp / 4) × NR × 4` bytes.
    pub(super) data: Aligned<i8>,
    /// Per output column: `w ≈ q · scale`.
    pub scales: Vec<f32>,
    /// Per output column, padded to whole panels: `-128 · Σ_k q`, the unsigned-activation
    /// compensation.
    pub(super) offset: Vec<i32>,
    /// `scales`, padded to whole panels (zeros).
    pub(super) scales_pad: Vec<f32>,
    pub k: usize,
    pub n: usize,
    /// `k` rounded up to a multiple of 4.
    pub(super) kp: usize,
    /// Weight width: values lie within ±[`weight_max`]`(bits)`.
    pub bits: u32,
}

impl std::fmt::Debug for QWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QWeights [{}, {}] int8 ({}-bit)",
            self.n, self.k, self.bits
        )
    }
}

impl QWeights {
    /// Quantize float weights in PyTorch layout `[n, k]`, symmetric per output row, to `bits`
    /// (6, 7 or 8) bits.
    pub fn quantize(w: &[f32], n: usize, k: usize, bits: u32) -> Self {
        assert_eq!(w.len(), n * k, "weight size");
        assert!(WEIGHT_BITS.contains(&bits), "weight bits {bits}");
        let wmax = weight_max(bits);
        let mut q = vec![0i8; n * k];
        let mut scales = vec![0.0f32; n];
        for (o, row) in w.chunks_exact(k.max(1)).enumerate().take(n) {
            let max = row.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
            let scale = if max > 0.0 && max.is_finite() {
                max / wmax as f32
            } else {
                1.0
            };
            scales[o] = scale;
            for (d, &v) in q[o * k..(o + 1) * k].iter_mut().zip(row) {
                *d = (v / scale)
                    .round_ties_even()
                    .clamp(-wmax as f32, wmax as f32) as i8;
            }
        }
        Self::from_parts(&q, scales, n, k, bits).expect("quantized weights are in range")
    }

    /// From already-quantized rows `[n, k]` and per-row scales (a saved artifact). Values must
    /// lie within ±[`weight_max`]`(bits)`.
    pub fn from_parts(
        q: &[i8],
        scales: Vec<f32>,
        n: usize,
        k: usize,
        bits: u32,
    ) -> Result<Self, WeightsError> {
        if !WEIGHT_BITS.contains(&bits) {
            return Err(WeightsError::Bits(bits));
        }
        let wmax = weight_max(bits);
        if q.len() != n * k || scales.len() != n {
            return Err(WeightsError::Shape {
                values: q.len(),
                scales: scales.len(),
                n,
                k,
            });
        }
        if let Some(&value) = q.iter().find(|v| (**v as i32).abs() > wmax) {
            return Err(WeightsError::OutOfRange {
                value,
                max: wmax,
                bits,
            });
        }
        if let Some(&s) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(WeightsError::Scale(s));
        }
        let kp = k.div_ceil(KG) * KG;
        let panels = n.div_ceil(NR);
        let mut data = Aligned::zeroed(panels * kp * NR);
        let mut offset = vec![0i32; panels * NR];
        for o in 0..n {
            let (p, j) = (o / NR, o % NR);
            let panel = &mut data[p * kp * NR..(p + 1) * kp * NR];
            for (i, &v) in q[o * k..(o + 1) * k].iter().enumerate() {
                panel[(i / KG) * NR * KG + j * KG + i % KG] = v;
                offset[o] -= 128 * v as i32;
            }
        }
        let mut scales_pad = scales.clone();
        scales_pad.resize(panels * NR, 0.0);
        Ok(QWeights {
            data,
            scales,
            offset,
            scales_pad,
            k,
            n,
            kp,
            bits,
        })
    }

    /// The quantized rows `[n, k]` back out of the panels (for saving).
    pub fn rows(&self) -> Vec<i8> {
        let mut q = vec![0i8; self.n * self.k];
        for o in 0..self.n {
            let (p, j) = (o / NR, o % NR);
            let panel = self.panel(p);
            for i in 0..self.k {
                q[o * self.k + i] = panel[(i / KG) * NR * KG + j * KG + i % KG];
            }
        }
        q
    }

    pub(super) fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    pub(super) fn panel(&self, p: usize) -> &[i8] {
        &self.data[p * self.kp * NR..(p + 1) * self.kp * NR]
    }

    /// Bytes of weight data (for reports).
    pub fn bytes(&self) -> usize {
        self.data.len() + 8 * self.n
    }
}

/// Why saved INT8 weights cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WeightsError {
    #[error("int8 weights: {0}-bit weights (6, 7 or 8 expected)")]
    Bits(u32),
    #[error("int8 weights: {values} values and {scales} scales for [{n}, {k}]")]
    Shape {
        values: usize,
        scales: usize,
        n: usize,
        k: usize,
    },
    #[error("int8 weights: value {value} outside ±{max} ({bits}-bit weights expected)")]
    OutOfRange { value: i8, max: i32, bits: u32 },
    #[error("int8 weights: scale {0} is not a positive number")]
    Scale(f32),
}
