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
mod avx2 {
    use super::{KG, MR, NR};
    use std::arch::x86_64::*;

    /// `tile[..rows] += a · b` for one panel slice.
    ///
    /// # Safety
    /// The CPU must support AVX2. `a` must hold `rows` rows of `k` bytes at stride `lda` (the
    /// last row may end right after its `k` bytes); `b` must hold `k / 4` groups of 64 bytes.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile(
        rows: usize,
        k: usize,
        a: &[u8],
        lda: usize,
        b: &[i8],
        tile: &mut [[i32; NR]; MR],
    ) {
        assert!((1..=MR).contains(&rows) && k.is_multiple_of(KG));
        assert!(a.len() >= (rows - 1) * lda + k && b.len() >= k * NR);
        match rows {
            6 => kernel::<6, false>(k, a, lda, b, tile),
            5 => kernel::<5, false>(k, a, lda, b, tile),
            4 => kernel::<4, false>(k, a, lda, b, tile),
            3 => kernel::<3, false>(k, a, lda, b, tile),
            2 => kernel::<2, false>(k, a, lda, b, tile),
            _ => kernel::<1, false>(k, a, lda, b, tile),
        }
    }

    /// As [`tile`], with AVX-VNNI's `vpdpbusd` doing the u8·s8 products and their i32 sums.
    ///
    /// # Safety
    /// As [`tile`], and the CPU must support AVX-VNNI.
    #[target_feature(enable = "avx2,fma,avxvnni")]
    pub unsafe fn tile_vnni(
        rows: usize,
        k: usize,
        a: &[u8],
        lda: usize,
        b: &[i8],
        tile: &mut [[i32; NR]; MR],
    ) {
        assert!((1..=MR).contains(&rows) && k.is_multiple_of(KG));
        assert!(a.len() >= (rows - 1) * lda + k && b.len() >= k * NR);
        match rows {
            6 => kernel::<6, true>(k, a, lda, b, tile),
            5 => kernel::<5, true>(k, a, lda, b, tile),
            4 => kernel::<4, true>(k, a, lda, b, tile),
            3 => kernel::<3, true>(k, a, lda, b, tile),
            2 => kernel::<2, true>(k, a, lda, b, tile),
            _ => kernel::<1, true>(k, a, lda, b, tile),
        }
    }

    #[inline(always)]
    unsafe fn kernel<const R: usize, const VNNI: bool>(
        k: usize,
        a: &[u8],
        lda: usize,
        b: &[i8],
        tile: &mut [[i32; NR]; MR],
    ) {
        let mut acc = [[_mm256_setzero_si256(); 2]; R];
        for (i, acc) in acc.iter_mut().enumerate() {
            acc[0] = _mm256_loadu_si256(tile[i].as_ptr() as *const __m256i);
            acc[1] = _mm256_loadu_si256(tile[i].as_ptr().add(8) as *const __m256i);
        }
        let ones = _mm256_set1_epi16(1);
        let ap = a.as_ptr();
        let bp = b.as_ptr();
        for g in 0..k / KG {
            // SAFETY (whole loop): g < k/4, so the 64 bytes at b[g*64..] and the 4 bytes at
            // a[i*lda + g*4..] for i < R are in bounds (asserted by `tile`).
            _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add((g + 8) * NR * KG));
            let b0 = _mm256_loadu_si256(bp.add(g * NR * KG) as *const __m256i);
            let b1 = _mm256_loadu_si256(bp.add(g * NR * KG + 32) as *const __m256i);
            for (i, acc) in acc.iter_mut().enumerate() {
                let av =
                    _mm256_set1_epi32((ap.add(i * lda + g * KG) as *const i32).read_unaligned());
                if VNNI {
                    acc[0] = _mm256_dpbusd_avx_epi32(acc[0], av, b0);
                    acc[1] = _mm256_dpbusd_avx_epi32(acc[1], av, b1);
                } else {
                    // u8·s8 pairs → i16 (no saturation: |w| ≤ 63), then pairs of i16 → i32.
                    let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(av, b0), ones);
                    let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(av, b1), ones);
                    acc[0] = _mm256_add_epi32(acc[0], p0);
                    acc[1] = _mm256_add_epi32(acc[1], p1);
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            _mm256_storeu_si256(tile[i].as_mut_ptr() as *mut __m256i, acc[0]);
            _mm256_storeu_si256(tile[i].as_mut_ptr().add(8) as *mut __m256i, acc[1]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{KG, MR, NR};
    use std::arch::x86_64::*;

    /// `tile[..rows] += a · b` with AVX-512 VNNI: a 64-byte group (16 columns × 4 k) is one
    /// register, so each row needs one broadcast and one `vpdpbusd` per group.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VNNI; `a` and `b` as for the AVX2 kernel.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn tile(
        rows: usize,
        k: usize,
        a: &[u8],
        lda: usize,
        b: &[i8],
        tile: &mut [[i32; NR]; MR],
    ) {
        assert!((1..=MR).contains(&rows) && k.is_multiple_of(KG));
        assert!(a.len() >= (rows - 1) * lda + k && b.len() >= k * NR);
        match rows {
            6 => kernel::<6>(k, a, lda, b, tile),
            5 => kernel::<5>(k, a, lda, b, tile),
            4 => kernel::<4>(k, a, lda, b, tile),
            3 => kernel::<3>(k, a, lda, b, tile),
            2 => kernel::<2>(k, a, lda, b, tile),
            _ => kernel::<1>(k, a, lda, b, tile),
        }
    }

    #[inline(always)]
    unsafe fn kernel<const R: usize>(
        k: usize,
        a: &[u8],
        lda: usize,
        b: &[i8],
        tile: &mut [[i32; NR]; MR],
    ) {
        let mut acc = [_mm512_setzero_si512(); R];
        for (i, acc) in acc.iter_mut().enumerate() {
            *acc = _mm512_loadu_si512(tile[i].as_ptr() as *const _);
        }
        let ap = a.as_ptr();
        let bp = b.as_ptr();
        for g in 0..k / KG {
            // SAFETY (whole loop): as in the AVX2 kernel.
            let bv = _mm512_loadu_si512(bp.add(g * NR * KG) as *const _);
            for (i, acc) in acc.iter_mut().enumerate() {
                let av =
                    _mm512_set1_epi32((ap.add(i * lda + g * KG) as *const i32).read_unaligned());
                *acc = _mm512_dpbusd_epi32(*acc, av, bv);
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            _mm512_storeu_si512(tile[i].as_mut_ptr() as *mut _, *acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Activation;

    #[test]
    fn the_detected_kernel_passes_its_self_check() {
        let k = Kernel::detect();
        eprintln!(
            "int8 kernels on this CPU: {:?}; detected {k:?}",
            Kernel::available()
        );
        assert!(k.self_check() || k == Kernel::Portable);
        for k in [Kernel::AvxVnni, Kernel::Avx512Vnni] {
            if !k.supported() {
                eprintln!("SKIPPED: {k:?} kernel not testable here (CPU lacks the feature)");
            }
        }
    }

    fn data(len: usize, seed: usize, scale: f32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7919 + seed * 104729) % 2001) as f32 - 1000.0) / 1000.0 * scale)
            .collect()
    }

    /// The f64 product of exactly what the kernel multiplies (dequantized operands).
    fn reference(x: &[f32], m: usize, k: usize, scale: ActScale, w: &QWeights) -> Vec<f64> {
        let q = w.rows();
        let mut y = vec![0.0f64; m * w.n];
        for r in 0..m {
            let row = &x[r * k..(r + 1) * k];
            let s = match scale {
                ActScale::Static(s) => s,
                ActScale::Dynamic => row.iter().fold(0.0f32, |a, &v| a.max(v.abs())) / 127.0,
            };
            let xq: Vec<f64> = row
                .iter()
                .map(|&v| (v / s).round_ties_even().clamp(-127.0, 127.0) as f64 * s as f64)
                .collect();
            for o in 0..w.n {
                y[r * w.n + o] = (0..k)
                    .map(|i| xq[i] * q[o * k + i] as f64 * w.scales[o] as f64)
                    .sum();
            }
        }
        y
    }

    #[test]
    fn every_kernel_matches_f64_reference_on_ragged_shapes() {
        for kernel in Kernel::available() {
            for (m, n, k) in [
                (1, 1, 1),
                (3, 17, 5),
                (4, 16, 8),
                (7, 33, 70),
                (13, 40, 600),
                (70, 48, 384),
            ] {
                let x = data(m * k, 1, 3.0);
                let wf = data(n * k, 2, 0.2);
                let w = QWeights::quantize(&wf, n, k);
                let bias = data(n, 3, 1.0);
                for scale in [ActScale::Static(3.0 / 127.0), ActScale::Dynamic] {
                    let mut q = QActs::new();
                    q.quantize(&x, m, k, scale);
                    let want = reference(&x, m, k, scale, &w);
                    let mut y = vec![0.5f32; m * n];
                    let ep = Epilogue {
                        bias: Some(&bias),
                        accumulate: true,
                        act: None,
                    };
                    matmul_with(&q, &w, &mut y, ep, kernel);
                    for i in 0..m * n {
                        let expect = want[i] + bias[i % n] as f64 + 0.5;
                        assert!(
                            (y[i] as f64 - expect).abs() < 1e-4 * (1.0 + expect.abs()),
                            "{kernel:?} {scale:?} {m}x{n}x{k} at {i}: {} vs {expect}",
                            y[i]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn kernels_agree_bit_for_bit_at_saturation_edges() {
        // Extreme activations (all ±127 → bytes 1 and 255) against extreme weights (±63):
        // the pair sums are as large as they get; a saturating i16 would show here.
        let (m, n, k) = (9, 20, 64);
        let x: Vec<f32> = (0..m * k)
            .map(|i| if i % 3 == 0 { -1.0 } else { 1.0 })
            .collect();
        let wf: Vec<f32> = (0..n * k)
            .map(|i| if i % 5 == 0 { -1.0 } else { 1.0 })
            .collect();
        let w = QWeights::quantize(&wf, n, k);
        let mut q = QActs::new();
        q.quantize(&x, m, k, ActScale::Static(1.0 / 127.0));
        let want = reference(&x, m, k, ActScale::Static(1.0 / 127.0), &w);
        let mut outs = Vec::new();
        for kernel in Kernel::available() {
            let mut y = vec![0.0f32; m * n];
            let ep = Epilogue {
                bias: None,
                accumulate: false,
                act: Some(Activation::Relu),
            };
            matmul_with(&q, &w, &mut y, ep, kernel);
            for i in 0..m * n {
                assert!(
                    (y[i] as f64 - want[i].max(0.0)).abs() < 1e-4,
                    "{kernel:?} at {i}"
                );
            }
            outs.push(y);
        }
        assert!(outs.windows(2).all(|p| p[0] == p[1]));
    }

    #[test]
    fn weights_round_trip_and_bad_artifacts_are_refused() {
        let (n, k) = (19, 13);
        let w = QWeights::quantize(&data(n * k, 4, 1.0), n, k);
        let back = QWeights::from_parts(&w.rows(), w.scales.clone(), n, k).unwrap();
        assert_eq!(back.rows(), w.rows());
        let mut bad = w.rows();
        bad[3] = 100;
        let err = QWeights::from_parts(&bad, w.scales.clone(), n, k).err();
        assert!(err.unwrap_or_default().contains("outside"));
        assert!(QWeights::from_parts(&w.rows(), vec![0.0; n], n, k).is_err());
        assert!(QWeights::from_parts(&w.rows()[1..], w.scales.clone(), n, k).is_err());
    }

    #[test]
    fn zero_and_non_finite_inputs_stay_finite() {
        let (m, n, k) = (3, 8, 8);
        let mut x = vec![0.0f32; m * k];
        x[9] = f32::NAN;
        x[10] = f32::INFINITY;
        let w = QWeights::quantize(&data(n * k, 5, 1.0), n, k);
        let mut q = QActs::new();
        q.quantize(&x, m, k, ActScale::Dynamic);
        let mut y = vec![0.0f32; m * n];
        matmul(&q, &w, &mut y, Epilogue::default());
        assert!(y.iter().all(|v| v.is_finite()));
    }
}
