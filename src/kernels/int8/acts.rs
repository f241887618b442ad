//! INT8 activations: `q + 128` bytes per row with each row's scale (static or dynamic), made
//! by scalar, AVX2 and AVX-512 quantizers that give the same bytes.

use rayon::prelude::*;

use super::{ACT_MAX, KG};
use crate::kernels::aligned::Aligned;
use crate::kernels::packed::ToInt8;
use crate::kernels::Isa;

/// How activations are scaled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ActScale {
    /// One scale for the whole tensor, found by calibration.
    Static(f32),
    /// Each row (token) scaled by its own absolute maximum at run time.
    Dynamic,
}

/// Activations quantized for the kernel: `m` rows of `kp` bytes (`q + 128`), and each row's
/// scale.
pub struct QActs {
    pub(super) data: Aligned<u8>,
    pub(super) scales: Vec<f32>,
    pub(super) m: usize,
    pub(super) kp: usize,
}

impl QActs {
    pub fn new() -> Self {
        QActs {
            data: Aligned::default(),
            scales: Vec::new(),
            m: 0,
            kp: 0,
        }
    }

    /// Rows, and bytes per row (the depth padded to a multiple of 4).
    pub fn shape(&self) -> (usize, usize) {
        (self.m, self.kp)
    }

    /// The bytes (`m` rows of `kp`) and the row scales.
    #[cfg(test)]
    pub(crate) fn parts(&self) -> (&[u8], &[f32]) {
        (&self.data[..self.m * self.kp], &self.scales)
    }

    /// Quantize `x` (`m × k`, row-major) into `self`, reusing its buffers.
    pub fn quantize(&mut self, x: &[f32], m: usize, k: usize, scale: ActScale) {
        assert!(x.len() >= m * k, "quantize: input too small");
        // Every row's first k bytes are written below; the padding bytes meet zero weights, so
        // whatever they hold works.
        let kp = self.reset(m, k, 1.0);
        let body = |(row, (dst, s)): (&[f32], (&mut [u8], &mut f32))| {
            quantize_scaled(row, &mut dst[..k], s, scale)
        };
        if k == 0 {
            return;
        }
        let rows = x[..m * k].par_chunks_exact(k);
        let outs = self
            .data
            .par_chunks_exact_mut(kp)
            .zip(self.scales.par_iter_mut());
        if m * k >= 256 * 1024 {
            rows.zip(outs).for_each(body);
        } else {
            x[..m * k]
                .chunks_exact(k)
                .zip(self.data.chunks_exact_mut(kp).zip(self.scales.iter_mut()))
                .for_each(body);
        }
    }

    /// `m` rows of depth `k` (padded to a multiple of 4, the returned row length), every scale
    /// `scale`; the bytes are stale until written.
    fn reset(&mut self, m: usize, k: usize, scale: f32) -> usize {
        let kp = k.div_ceil(KG) * KG;
        self.m = m;
        self.kp = kp;
        self.data.set_len(m * kp);
        self.scales.clear();
        self.scales.resize(m, scale);
        kp
    }

    /// Get `self` ready to receive `m` rows of width `n` quantized with dynamic scales by the
    /// tasks of a GEMM, each from its own block of rows ([`RowSink::put`]), instead of by
    /// [`quantize`](Self::quantize) after it.
    pub(in crate::kernels) fn row_sink(&mut self, m: usize, n: usize) -> RowSink {
        let kp = self.reset(m, n, 1.0);
        RowSink {
            data: self.data.as_mut_ptr(),
            scales: self.scales.as_mut_ptr(),
            m,
            n,
            kp,
        }
    }

    /// Get `self` ready to receive `m × n` outputs of a GEMM as this layer's input with a
    /// static `scale`, quantized in that GEMM's epilogue ([`Epilogue::to_int8`](crate::kernels::packed::Epilogue::to_int8)) instead of by
    /// [`quantize`](Self::quantize) afterwards; `y` is the GEMM's `m × n` float output, which
    /// then only addresses the outputs. `None` where the rows would need padding (`n` not a
    /// multiple of 4): quantize afterwards there.
    pub fn fused_output(
        &mut self,
        y: &mut [f32],
        m: usize,
        n: usize,
        scale: f32,
    ) -> Option<ToInt8> {
        assert!(y.len() >= m * n, "fused_output: output too small");
        if !n.is_multiple_of(KG) {
            return None;
        }
        let scale = usable(scale);
        self.reset(m, n, scale);
        // SAFETY: data holds m × n bytes where y holds (at least) m × n floats, and the
        // ToInt8 is used by the GEMM that follows, while `self` is borrowed by its caller.
        Some(unsafe { ToInt8::new(y.as_ptr(), self.data.as_mut_ptr(), 1.0 / scale) })
    }
}

/// One row: its scale into `s` (`scale`, or its absolute maximum over [`ACT_MAX`]) and its
/// bytes into `dst`.
fn quantize_scaled(row: &[f32], dst: &mut [u8], s: &mut f32, scale: ActScale) {
    *s = usable(match scale {
        ActScale::Static(s) => s,
        ActScale::Dynamic => crate::kernels::abs_max(row) / ACT_MAX as f32,
    });
    quantize_into(row, dst, 1.0 / *s);
}

/// Where the tasks of a GEMM put their rows of a [`QActs`] ([`QActs::row_sink`]); valid while
/// that `QActs` is not otherwise used.
pub(in crate::kernels) struct RowSink {
    data: *mut u8,
    scales: *mut f32,
    m: usize,
    n: usize,
    kp: usize,
}

// SAFETY: tasks write disjoint rows (the callers' contract on `put`).
unsafe impl Sync for RowSink {}

impl RowSink {
    /// Row `r` from `row` (`n` floats), with its own absolute maximum as the scale: the bytes
    /// and scale of [`QActs::quantize`] with [`ActScale::Dynamic`].
    ///
    /// # Safety
    /// No other task may put row `r` at the same time.
    pub(in crate::kernels) unsafe fn put(&self, r: usize, row: &[f32]) {
        assert!(
            r < self.m && row.len() == self.n,
            "RowSink::put: row out of range"
        );
        let dst = std::slice::from_raw_parts_mut(self.data.add(r * self.kp), self.n);
        quantize_scaled(row, dst, &mut *self.scales.add(r), ActScale::Dynamic);
    }
}

/// A scale that can be divided by: non-positive and non-finite scales (an all-zero row, a
/// broken calibration) become 1.
fn usable(scale: f32) -> f32 {
    if scale > 0.0 && scale.is_finite() {
        scale
    } else {
        1.0
    }
}

/// `q = quantize(x / scale)` (`inv` = 1 / scale) with this CPU's quantizer: the bytes every
/// path must produce for these floats.
pub(crate) fn quantize_into(x: &[f32], q: &mut [u8], inv: f32) {
    match Isa::detect() {
        // SAFETY (both): the ISA was detected at run time.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { quantize_row_avx512(x, q, inv) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { quantize_row_avx2(x, q, inv) },
        _ => quantize_row(x, q, inv),
    }
}

impl Default for QActs {
    fn default() -> Self {
        Self::new()
    }
}

pub(super) fn quantize_row(x: &[f32], q: &mut [u8], inv: f32) {
    let max = ACT_MAX as f32;
    for (d, &v) in q.iter_mut().zip(x) {
        // `as` maps NaN to 0, so a NaN input becomes q = 0.
        *d = ((v * inv).round_ties_even().clamp(-max, max) as i32 + 128) as u8;
    }
}

/// As [`quantize_row`], 32 values per step. `_mm256_cvtps_epi32` rounds to nearest even (the
/// default MXCSR mode), as `round_ties_even` does; NaN compares false in min/max and lands on
/// the clamp bound or 0 — finite either way.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn quantize_row_avx2(x: &[f32], q: &mut [u8], inv: f32) {
    use std::arch::x86_64::*;
    let n = x.len().min(q.len());
    let body = n / 32 * 32;
    let (vinv, lo, hi) = (
        _mm256_set1_ps(inv),
        _mm256_set1_ps(-(ACT_MAX as f32)),
        _mm256_set1_ps(ACT_MAX as f32),
    );
    let bias = _mm256_set1_epi8(-128);
    // packs interleave 128-bit lanes; this permutation puts the 8 dwords back in order.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let xp = x.as_ptr();
    let qp = q.as_mut_ptr();
    for i in (0..body).step_by(32) {
        // SAFETY: i + 32 <= body <= len of both slices.
        let conv = |o: usize| {
            let v = _mm256_mul_ps(_mm256_loadu_ps(xp.add(i + o)), vinv);
            _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, lo), hi))
        };
        let (a, b, c, d) = (conv(0), conv(8), conv(16), conv(24));
        let ab = _mm256_packs_epi32(a, b);
        let cd = _mm256_packs_epi32(c, d);
        let bytes = _mm256_packs_epi16(ab, cd);
        let bytes = _mm256_permutevar8x32_epi32(bytes, order);
        // q + 128 as a byte: flipping the sign bit (xor 0x80) is the same as adding 128.
        let bytes = _mm256_xor_si256(bytes, bias);
        _mm256_storeu_si256(qp.add(i) as *mut __m256i, bytes);
    }
    quantize_row(&x[body..n], &mut q[body..n], inv);
}

/// As [`quantize_row`], 16 values per step with AVX-512: `vcvtps2dq` rounds to nearest even
/// (the default MXCSR mode) and `vpmovsdb` narrows with saturation after the clamp.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
pub(super) unsafe fn quantize_row_avx512(x: &[f32], q: &mut [u8], inv: f32) {
    use std::arch::x86_64::*;
    let n = x.len().min(q.len());
    let body = n / 16 * 16;
    let (vinv, lo, hi) = (
        _mm512_set1_ps(inv),
        _mm512_set1_ps(-(ACT_MAX as f32)),
        _mm512_set1_ps(ACT_MAX as f32),
    );
    let bias = _mm_set1_epi8(-128);
    let xp = x.as_ptr();
    let qp = q.as_mut_ptr();
    for i in (0..body).step_by(16) {
        // SAFETY: i + 16 <= body <= len of both slices.
        let v = _mm512_mul_ps(_mm512_loadu_ps(xp.add(i)), vinv);
        let v = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(v, lo), hi));
        let bytes = _mm_xor_si128(_mm512_cvtsepi32_epi8(v), bias);
        _mm_storeu_si128(qp.add(i) as *mut __m128i, bytes);
    }
    quantize_row(&x[body..n], &mut q[body..n], inv);
}
