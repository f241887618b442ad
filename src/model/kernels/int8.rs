//! INT8 GEMM: `y = epilogue(dequant(q(x) · Wq))` with int8 weights, int8 activations and
//! int32 accumulation.
//!
//! Weights are symmetric per output channel and packed once, like the f32 panels of
//! [`super::packed`]: panels of [`NR`] output columns, the depth in groups of four, so one
//! 32-byte load holds 4 consecutive k of 8 columns. Activations are symmetric (per tensor with
//! a calibrated scale, or per row at run time) and stored as `q + 128` in a `u8`, because the
//! x86 byte multiply (`vpmaddubsw`, and VNNI's `vpdpbusd`) takes one unsigned and one signed
//! operand; the `128 · Σ w` that this adds to every output is subtracted in the epilogue from a
//! per-column sum computed at pack time.
//!
//! `vpmaddubsw` adds two u8·s8 products into a saturating i16. With activations up to 255 the
//! weights must stay within ±63 for the pair sum to fit (255·63·2 = 32130), so weights are
//! quantized to 7 bits ([`WEIGHT_MAX`]) — the "reduced range" that FBGEMM also uses on CPUs
//! without VNNI. The result is then exact: the AVX2 and portable kernels agree bit for bit.
//!
//! Kernels: AVX2 (`vpmaddubsw` + `vpmaddwd`; written and measured on this AVX2 machine), AVX-VNNI
//! and AVX-512 VNNI (`vpdpbusd`; written without a VNNI machine to test on, so each must pass a
//! self-check against the portable kernel before it is used), and a portable one. The 7-bit
//! weights are kept on VNNI too, so every kernel computes the same integers.

use rayon::prelude::*;

use super::packed::{finish, Epilogue, NR};
use super::SharedOut;

/// Largest weight magnitude after quantization (7 bits; see the module docs).
pub const WEIGHT_MAX: i32 = 63;
/// Largest activation magnitude after quantization.
pub const ACT_MAX: i32 = 127;
/// Depth of one group: four bytes of a row are broadcast as one 32-bit lane.
const KG: usize = 4;
/// Rows per micro-tile.
const MR: usize = 6;
/// Depth per pass over a panel (multiple of KG): KC × NR bytes (8 KiB) stay in L1.
const KC: usize = 512;

/// Weights `[k, n]` quantized per output column and packed into panels of `NR` columns.
#[derive(Clone)]
pub struct QWeights {
    /// `panels × (kp / 4) × NR × 4` bytes.
    data: Vec<i8>,
    /// Per output column: `w ≈ q · scale`.
    pub scales: Vec<f32>,
    /// Per output column, padded to whole panels: `-128 · Σ_k q`, the unsigned-activation
    /// compensation.
    offset: Vec<i32>,
    /// `scales`, padded to whole panels (zeros).
    scales_pad: Vec<f32>,
    pub k: usize,
    pub n: usize,
    /// `k` rounded up to a multiple of 4.
    kp: usize,
}

impl std::fmt::Debug for QWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QWeights [{}, {}] int8", self.n, self.k)
    }
}

impl QWeights {
    /// Quantize float weights in PyTorch layout `[n, k]`, symmetric per output row.
    pub fn quantize(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight size");
        let mut q = vec![0i8; n * k];
        let mut scales = vec![0.0f32; n];
        for (o, row) in w.chunks_exact(k.max(1)).enumerate().take(n) {
            let max = row.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
            let scale = if max > 0.0 && max.is_finite() {
                max / WEIGHT_MAX as f32
            } else {
                1.0
            };
            scales[o] = scale;
            for (d, &v) in q[o * k..(o + 1) * k].iter_mut().zip(row) {
                *d = (v / scale)
                    .round_ties_even()
                    .clamp(-WEIGHT_MAX as f32, WEIGHT_MAX as f32) as i8;
            }
        }
        Self::from_parts(&q, scales, n, k).expect("quantized weights are in range")
    }

    /// From already-quantized rows `[n, k]` and per-row scales (a saved artifact). Values must
    /// lie within ±[`WEIGHT_MAX`].
    pub fn from_parts(q: &[i8], scales: Vec<f32>, n: usize, k: usize) -> Result<Self, String> {
        if q.len() != n * k || scales.len() != n {
            return Err(format!(
                "int8 weights: {} values and {} scales for [{n}, {k}]",
                q.len(),
                scales.len()
            ));
        }
        if let Some(v) = q.iter().find(|v| (**v as i32).abs() > WEIGHT_MAX) {
            return Err(format!(
                "int8 weights: value {v} outside ±{WEIGHT_MAX} (7-bit weights expected)"
            ));
        }
        if let Some(s) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(format!("int8 weights: scale {s} is not a positive number"));
        }
        let kp = k.div_ceil(KG) * KG;
        let panels = n.div_ceil(NR);
        let mut data = vec![0i8; panels * kp * NR];
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

    fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    fn panel(&self, p: usize) -> &[i8] {
        &self.data[p * self.kp * NR..(p + 1) * self.kp * NR]
    }

    /// Bytes of weight data (for reports).
    pub fn bytes(&self) -> usize {
        self.data.len() + 8 * self.n
    }
}

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
    data: Vec<u8>,
    scales: Vec<f32>,
    m: usize,
    kp: usize,
}

impl QActs {
    pub fn new() -> Self {
        QActs {
            data: Vec::new(),
            scales: Vec::new(),
            m: 0,
            kp: 0,
        }
    }

    /// Quantize `x` (`m × k`, row-major) into `self`, reusing its buffers.
    pub fn quantize(&mut self, x: &[f32], m: usize, k: usize, scale: ActScale) {
        assert!(x.len() >= m * k, "quantize: input too small");
        let kp = k.div_ceil(KG) * KG;
        self.m = m;
        self.kp = kp;
        self.data.clear();
        // Padding bytes meet zero weights; any value works.
        self.data.resize(m * kp, 128);
        self.scales.clear();
        self.scales.resize(m, 1.0);
        let avx2 = use_avx2();
        let body = |(row, (dst, s)): (&[f32], (&mut [u8], &mut f32))| {
            let sc = match scale {
                ActScale::Static(s) => s,
                ActScale::Dynamic => {
                    row.iter().fold(0.0f32, |m, &v| m.max(v.abs())) / ACT_MAX as f32
                }
            };
            *s = if sc > 0.0 && sc.is_finite() { sc } else { 1.0 };
            let dst = &mut dst[..k];
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: AVX2 and FMA were detected at run time.
                unsafe { quantize_row_avx2(row, dst, 1.0 / *s) };
                return;
            }
            let _ = avx2;
            quantize_row(row, dst, 1.0 / *s);
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
}

impl Default for QActs {
    fn default() -> Self {
        Self::new()
    }
}

fn quantize_row(x: &[f32], q: &mut [u8], inv: f32) {
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
unsafe fn quantize_row_avx2(x: &[f32], q: &mut [u8], inv: f32) {
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

fn use_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::has_avx2_fma()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Which micro-kernel runs; [`Kernel::detect`] picks the best this CPU has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Portable,
    /// `vpmaddubsw` + `vpmaddwd`, 256-bit.
    Avx2,
    /// AVX-VNNI `vpdpbusd`, 256-bit (Alder Lake and later, Zen 5).
    AvxVnni,
    /// AVX-512 VNNI `vpdpbusd`, 512-bit: one register holds a whole 16-column group.
    Avx512Vnni,
}

impl Kernel {
    /// Whether this CPU can run the kernel.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Kernel::Portable => true,
                Kernel::Avx2 => use_avx2(),
                Kernel::AvxVnni => use_avx2() && is_x86_feature_detected!("avxvnni"),
                Kernel::Avx512Vnni => {
                    use_avx2()
                        && is_x86_feature_detected!("avx512f")
                        && is_x86_feature_detected!("avx512bw")
                        && is_x86_feature_detected!("avx512vnni")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Kernel::Portable
        }
    }

    /// The fastest kernel this CPU runs that also passes [`Kernel::self_check`]. The VNNI
    /// kernels were written without a VNNI machine to test on, so before one is used it must
    /// reproduce the portable kernel exactly on a ragged problem; if it does not, the next
    /// kernel is used and the failure logged. Decided once per process.
    pub fn detect() -> Self {
        static BEST: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            for k in [Kernel::Avx512Vnni, Kernel::AvxVnni, Kernel::Avx2] {
                if !k.supported() {
                    continue;
                }
                if k.self_check() {
                    tracing::debug!(kernel = ?k, "int8 GEMM kernel");
                    return k;
                }
                tracing::error!(kernel = ?k, "int8 kernel disagrees with the portable kernel; not using it");
            }
            Kernel::Portable
        })
    }

    /// Every kernel this CPU can run (tests compare them).
    pub fn available() -> Vec<Self> {
        [
            Kernel::Portable,
            Kernel::Avx2,
            Kernel::AvxVnni,
            Kernel::Avx512Vnni,
        ]
        .into_iter()
        .filter(|k| k.supported())
        .collect()
    }

    /// Exact agreement with the portable kernel on a ragged problem with extreme values.
    pub fn self_check(self) -> bool {
        if !self.supported() {
            return false;
        }
        let (m, n, k) = (23, 37, 203);
        let x: Vec<f32> = (0..m * k)
            .map(|i| (((i * 7919) % 255) as f32 - 127.0) / 127.0)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| (((i * 104_729) % 127) as f32 - 63.0) / 63.0)
            .collect();
        let w = QWeights::quantize(&w, n, k);
        let mut q = QActs::new();
        q.quantize(&x, m, k, ActScale::Static(1.0 / 127.0));
        let (mut a, mut b) = (vec![0.0f32; m * n], vec![0.0f32; m * n]);
        matmul_with(&q, &w, &mut a, Epilogue::default(), Kernel::Portable);
        matmul_with(&q, &w, &mut b, Epilogue::default(), self);
        a == b
    }
}

/// `y[m, n] = epilogue(x · W)` with `x` already quantized.
pub fn matmul(x: &QActs, w: &QWeights, y: &mut [f32], ep: Epilogue<'_>) {
    matmul_with(x, w, y, ep, Kernel::detect())
}

/// As [`matmul`], with the kernel chosen by the caller.
pub fn matmul_with(x: &QActs, w: &QWeights, y: &mut [f32], ep: Epilogue<'_>, kernel: Kernel) {
    assert!(
        kernel.supported(),
        "int8 kernel {kernel:?} is not supported by this CPU"
    );
    let (m, n) = (x.m, w.n);
    assert_eq!(x.kp, w.kp, "int8 matmul: depth mismatch");
    assert!(y.len() >= m * n, "int8 matmul: output too small");
    if let Some(b) = ep.bias {
        assert_eq!(b.len(), n, "int8 matmul: bias length");
    }
    if m == 0 || n == 0 {
        return;
    }
    let panels = w.panels();
    let threads = rayon::current_num_threads().max(1);
    let tasks = if m * n * w.k < 128 * 1024 * threads {
        1
    } else {
        threads.min(panels)
    };
    let per_task = panels.div_ceil(tasks);
    let out = SharedOut(y.as_mut_ptr());
    let run = |t: usize| {
        let p0 = t * per_task;
        let p1 = ((t + 1) * per_task).min(panels);
        // SAFETY: task t writes only columns p0*NR..p1*NR (clipped to n) of y; the tasks'
        // column ranges are disjoint and y holds m*n floats (asserted above).
        unsafe { panels_range(x, w, out.ptr(), ep, p0..p1, kernel) }
    };
    if tasks == 1 {
        run(0);
    } else {
        (0..tasks).into_par_iter().for_each(run);
    }
}

/// Rows per block: the block's activations (`mc × kp` bytes) stay in L2 while every panel of
/// the task passes over them.
fn row_block(kp: usize) -> usize {
    ((128 * 1024 / kp.max(1)) / MR * MR).max(MR)
}

/// # Safety
/// `y` must point to `m × w.n` writable floats that no one else touches in the columns of
/// `panels`.
unsafe fn panels_range(
    x: &QActs,
    w: &QWeights,
    y: *mut f32,
    ep: Epilogue<'_>,
    panels: std::ops::Range<usize>,
    kernel: Kernel,
) {
    let (m, n, kp) = (x.m, w.n, w.kp);
    let mc = row_block(kp);
    let mut acc: Vec<[[i32; NR]; MR]> = Vec::new();
    let mut tile_f = [[0.0f32; NR]; MR];
    for r0 in (0..m).step_by(mc) {
        let r1 = (r0 + mc).min(m);
        let tiles = (r1 - r0).div_ceil(MR);
        for p in panels.clone() {
            let b = w.panel(p);
            let c0 = p * NR;
            let cols = NR.min(n - c0);
            acc.clear();
            acc.resize(tiles, [[0i32; NR]; MR]);
            for k0 in (0..kp).step_by(KC) {
                let kc = KC.min(kp - k0);
                let bk = &b[k0 * NR..(k0 + kc) * NR];
                for (t, tile) in acc.iter_mut().enumerate() {
                    let r = r0 + t * MR;
                    let rows = MR.min(r1 - r);
                    let a = &x.data[r * kp + k0..(r + rows - 1) * kp + k0 + kc];
                    match kernel {
                        // SAFETY (all three): a kernel runs only where `supported()` said the
                        // CPU has its features (checked in `matmul_with`); `a` spans `rows` rows
                        // of kc bytes at stride kp, `bk` kc/4 groups.
                        #[cfg(target_arch = "x86_64")]
                        Kernel::Avx2 => avx2::tile(rows, kc, a, kp, bk, tile),
                        #[cfg(target_arch = "x86_64")]
                        Kernel::AvxVnni => avx2::tile_vnni(rows, kc, a, kp, bk, tile),
                        #[cfg(target_arch = "x86_64")]
                        Kernel::Avx512Vnni => avx512::tile(rows, kc, a, kp, bk, tile),
                        _ => portable_tile(rows, kc, a, kp, bk, tile),
                    }
                }
            }
            let offset = &w.offset[c0..c0 + NR];
            let ws = &w.scales_pad[c0..c0 + NR];
            for (t, tile) in acc.iter().enumerate() {
                let r = r0 + t * MR;
                let rows = MR.min(r1 - r);
                let sa = &x.scales[r..r + rows];
                let avx2 = kernel != Kernel::Portable;
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    // SAFETY: AVX2 was detected (the Avx2 kernel is only chosen then).
                    unsafe { dequant_avx2(tile, sa, offset, ws, &mut tile_f) };
                } else {
                    dequant(tile, sa, offset, ws, &mut tile_f);
                }
                #[cfg(not(target_arch = "x86_64"))]
                dequant(tile, sa, offset, ws, &mut tile_f);
                // SAFETY: rows r..r+rows < m and columns c0..c0+cols < n lie inside y; this task
                // owns these columns.
                unsafe { finish(y.add(r * n + c0), n, &tile_f[..rows], cols, ep, c0, avx2) };
            }
        }
    }
}

/// `out = (acc + offset) · sa[row] · ws[col]` for the first `sa.len()` rows of a tile.
#[inline(always)]
fn dequant(
    acc: &[[i32; NR]; MR],
    sa: &[f32],
    offset: &[i32],
    ws: &[f32],
    out: &mut [[f32; NR]; MR],
) {
    let (offset, ws): (&[i32; NR], &[f32; NR]) = (
        offset.try_into().expect("NR offsets"),
        ws.try_into().expect("NR scales"),
    );
    for ((acc, o), &s) in acc.iter().zip(out.iter_mut()).zip(sa) {
        for j in 0..NR {
            o[j] = (acc[j] + offset[j]) as f32 * (s * ws[j]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dequant_avx2(
    acc: &[[i32; NR]; MR],
    sa: &[f32],
    offset: &[i32],
    ws: &[f32],
    out: &mut [[f32; NR]; MR],
) {
    dequant(acc, sa, offset, ws, out)
}

/// `a`: `rows` rows of `k` bytes at stride `lda`; `b`: `k / 4` groups of `NR × 4` bytes.
fn portable_tile(
    rows: usize,
    k: usize,
    a: &[u8],
    lda: usize,
    b: &[i8],
    tile: &mut [[i32; NR]; MR],
) {
    for g in 0..k / KG {
        let bg = &b[g * NR * KG..(g + 1) * NR * KG];
        for (i, t) in tile.iter_mut().take(rows).enumerate() {
            let av = &a[i * lda + g * KG..i * lda + g * KG + KG];
            for (j, acc) in t.iter_mut().enumerate() {
                let bj = &bg[j * KG..j * KG + KG];
                *acc += (0..KG).map(|q| av[q] as i32 * bj[q] as i32).sum::<i32>();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2;

#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(test)]
mod tests;
