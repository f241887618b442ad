//! f32 GEMM against weights packed once at load time: `y = x · W (+ bias) (+ y) (then act)`.
//!
//! The `gemm` crate re-packs the right-hand matrix on every call, which costs as much as the
//! multiplication itself when the left side has few rows (a batch of one sentence) and the
//! weights are cold in cache. Here the weights live in panels of [`NR`] output columns
//! (`k × NR` contiguous floats each) and a 6×16 register-tiled AVX2+FMA micro-kernel streams
//! them once per row block. A portable kernel over the same layout serves other CPUs; the choice
//! is made at run time.

use rayon::prelude::*;

use super::{gelu_erf_impl, gelu_tanh, SharedOut};
use crate::model::config::Activation;

/// Output columns per panel: two 8-float AVX registers.
pub const NR: usize = 16;
/// Rows per micro-tile.
const MR: usize = 6;
/// Depth of one pass over a panel: KC × NR floats (16 KiB) stay in L1.
const KC: usize = 256;

/// Weights `[k, n]` packed into `ceil(n / NR)` panels of `k × NR` (zero-padded).
#[derive(Clone)]
pub struct PackedWeights {
    data: Vec<f32>,
    pub k: usize,
    pub n: usize,
}

impl PackedWeights {
    /// Pack from PyTorch layout `[n, k]` (one row per output).
    pub fn from_rows(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight size");
        let panels = n.div_ceil(NR);
        let mut data = vec![0.0f32; panels * k * NR];
        for (o, row) in w.chunks_exact(k).enumerate() {
            let (p, j) = (o / NR, o % NR);
            let panel = &mut data[p * k * NR..(p + 1) * k * NR];
            for (i, &v) in row.iter().enumerate() {
                panel[i * NR + j] = v;
            }
        }
        PackedWeights { data, k, n }
    }

    /// Back to PyTorch layout `[n, k]`.
    pub fn to_rows(&self) -> Vec<f32> {
        let mut w = vec![0.0f32; self.n * self.k];
        for (o, row) in w.chunks_exact_mut(self.k.max(1)).enumerate().take(self.n) {
            let panel = self.panel(o / NR);
            for (i, v) in row.iter_mut().enumerate() {
                *v = panel[i * NR + o % NR];
            }
        }
        w
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    fn panel(&self, p: usize) -> &[f32] {
        &self.data[p * self.k * NR..(p + 1) * self.k * NR]
    }
}

/// What happens to each output after the product.
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    /// Add onto what the output already holds (a residual connection).
    pub accumulate: bool,
    pub act: Option<Activation>,
}

/// `y[m, n] = epilogue(x[m, k] · W)`, `x` and `y` row-major. Splits output panels over the
/// rayon pool when there is enough work.
pub fn matmul(x: &[f32], m: usize, w: &PackedWeights, y: &mut [f32], ep: Epilogue<'_>) {
    matmul_with(x, m, w, y, ep, use_avx2())
}

/// As [`matmul`], with the kernel chosen by the caller (tests run both).
pub fn matmul_with(
    x: &[f32],
    m: usize,
    w: &PackedWeights,
    y: &mut [f32],
    ep: Epilogue<'_>,
    avx2: bool,
) {
    let (k, n) = (w.k, w.n);
    assert!(
        x.len() >= m * k && y.len() >= m * n,
        "matmul: buffers too small"
    );
    if let Some(b) = ep.bias {
        assert_eq!(b.len(), n, "matmul: bias length");
    }
    if m == 0 || n == 0 {
        return;
    }
    let panels = w.panels();
    let threads = rayon::current_num_threads().max(1);
    // Below ~64k multiply-adds per thread the fork costs more than it saves.
    let tasks = if m * n * k < 64 * 1024 * threads {
        1
    } else {
        threads.min(panels)
    };
    let per_task = panels.div_ceil(tasks);
    let out = SharedOut(y.as_mut_ptr());
    let run = |t: usize| {
        let p0 = t * per_task;
        let p1 = ((t + 1) * per_task).min(panels);
        // SAFETY: task t writes only columns p0*NR..p1*NR (clipped to n) of y; tasks' column
        // ranges are disjoint and y holds m*n floats (asserted above).
        unsafe { panels_range(x, m, w, out.ptr(), ep, p0..p1, avx2) }
    };
    if tasks == 1 {
        run(0);
    } else {
        (0..tasks).into_par_iter().for_each(run);
    }
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

/// Rows per block: keep the block of `x` (`mc × k` floats) within ~256 KiB of L2.
fn row_block(k: usize) -> usize {
    ((64 * 1024 / k.max(1)) / MR * MR).max(MR)
}

/// # Safety
/// `y` must point to `m × w.n` writable floats that no one else touches in the columns of
/// `panels`.
unsafe fn panels_range(
    x: &[f32],
    m: usize,
    w: &PackedWeights,
    y: *mut f32,
    ep: Epilogue<'_>,
    panels: std::ops::Range<usize>,
    avx2: bool,
) {
    let (k, n) = (w.k, w.n);
    let mc = row_block(k);
    // The row block of x, re-laid as micro-panels: for each MR-row tile, k steps of MR floats.
    let mut apack = vec![0.0f32; mc.min(m).div_ceil(MR) * MR * k];
    let mut acc: Vec<[[f32; NR]; MR]> = Vec::new();
    for r0 in (0..m).step_by(mc) {
        let r1 = (r0 + mc).min(m);
        for (t, r) in (r0..r1).step_by(MR).enumerate() {
            let rows = MR.min(r1 - r);
            let tile = &mut apack[t * MR * k..(t + 1) * MR * k];
            for i in 0..rows {
                let src = &x[(r + i) * k..(r + i + 1) * k];
                for (kk, &v) in src.iter().enumerate() {
                    tile[kk * MR + i] = v;
                }
            }
            for i in rows..MR {
                for kk in 0..k {
                    tile[kk * MR + i] = 0.0;
                }
            }
        }
        let tiles = (r1 - r0).div_ceil(MR);
        for p in panels.clone() {
            let b = w.panel(p);
            let c0 = p * NR;
            let cols = NR.min(n - c0);
            // Accumulators of every micro-tile of the block, kept across k-chunks so that a
            // KC × NR slice of the panel stays in L1 while all tiles pass over it.
            acc.clear();
            acc.resize(tiles, [[0.0f32; NR]; MR]);
            for k0 in (0..k).step_by(KC) {
                let kc = KC.min(k - k0);
                let bk = &b[k0 * NR..(k0 + kc) * NR];
                for (t, tile) in acc.iter_mut().enumerate() {
                    let rows = MR.min(r1 - r0 - t * MR);
                    let a = &apack[t * MR * k + k0 * MR..t * MR * k + (k0 + kc) * MR];
                    #[cfg(target_arch = "x86_64")]
                    if avx2 {
                        // SAFETY: AVX2 and FMA were detected by the caller; `a` is a kc × MR
                        // micro-panel and `bk` a kc × NR panel slice.
                        avx2::tile(rows, kc, a, bk, tile);
                    } else {
                        portable_tile(rows, kc, a, bk, tile);
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    portable_tile(rows, kc, a, bk, tile);
                }
            }
            for (t, tile) in acc.iter().enumerate() {
                let r = r0 + t * MR;
                let rows = MR.min(r1 - r);
                // SAFETY: rows r..r+rows < m and columns c0..c0+cols < n lie inside y; this task
                // owns these columns.
                unsafe { finish(y.add(r * n + c0), n, &tile[..rows], cols, ep, c0, avx2) };
            }
        }
    }
}

/// Apply the epilogue to one micro-tile and write it to `y` (row stride `ldy`).
///
/// # Safety
/// `y` must address `tile.len()` rows of `cols` writable floats at stride `ldy`.
pub(super) unsafe fn finish(
    y: *mut f32,
    ldy: usize,
    tile: &[[f32; NR]],
    cols: usize,
    ep: Epilogue<'_>,
    c0: usize,
    avx2: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: AVX2 and FMA were detected at run time; the caller vouches for `y`.
        return finish_avx2(y, ldy, tile, cols, ep, c0);
    }
    finish_impl::<false>(y, ldy, tile, cols, ep, c0)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn finish_avx2(
    y: *mut f32,
    ldy: usize,
    tile: &[[f32; NR]],
    cols: usize,
    ep: Epilogue<'_>,
    c0: usize,
) {
    finish_impl::<true>(y, ldy, tile, cols, ep, c0)
}

/// Branches hoisted out of the loops, so each variant is a straight vectorisable loop.
#[inline(always)]
unsafe fn finish_impl<const FMA: bool>(
    y: *mut f32,
    ldy: usize,
    tile: &[[f32; NR]],
    cols: usize,
    ep: Epilogue<'_>,
    c0: usize,
) {
    // Work on whole NR-wide rows (constant trip counts vectorise); only the loads from and
    // stores to `y` respect `cols`.
    let mut bias = [0.0f32; NR];
    if let Some(b) = ep.bias {
        bias[..cols].copy_from_slice(&b[c0..c0 + cols]);
    }
    for (i, acc) in tile.iter().enumerate() {
        // SAFETY: the caller guarantees row i of `cols` floats at y + i*ldy.
        let out = std::slice::from_raw_parts_mut(y.add(i * ldy), cols);
        let mut v = [0.0f32; NR];
        for j in 0..NR {
            v[j] = acc[j] + bias[j];
        }
        if ep.accumulate {
            if cols == NR {
                for j in 0..NR {
                    v[j] += out[j];
                }
            } else {
                for j in 0..cols {
                    v[j] += out[j];
                }
            }
        }
        match ep.act {
            None => {}
            Some(Activation::Gelu) => {
                for x in v.iter_mut() {
                    *x = gelu_erf_impl::<FMA>(*x);
                }
            }
            Some(Activation::GeluTanh) => {
                for x in v.iter_mut() {
                    *x = gelu_tanh(*x);
                }
            }
            Some(Activation::Relu) => {
                for x in v.iter_mut() {
                    *x = x.max(0.0);
                }
            }
        }
        out.copy_from_slice(&v[..cols]);
    }
}

/// `a` is a k × MR micro-panel (MR floats per step), `b` a k × NR panel.
fn portable_tile(rows: usize, k: usize, a: &[f32], b: &[f32], tile: &mut [[f32; NR]; MR]) {
    for kk in 0..k {
        let brow = &b[kk * NR..(kk + 1) * NR];
        for (i, t) in tile.iter_mut().take(rows).enumerate() {
            let av = a[kk * MR + i];
            for (acc, &bv) in t.iter_mut().zip(brow) {
                *acc += av * bv;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{MR, NR};
    /// Steps ahead (one cache line of weights per step) to prefetch.
    const PREFETCH: usize = 8;
    use std::arch::x86_64::*;

    /// `tile[..rows] += a[..rows, ..k] · b` for one panel.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `a` must be a `k × MR` micro-panel, `b` `k × NR`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile(rows: usize, k: usize, a: &[f32], b: &[f32], tile: &mut [[f32; NR]; MR]) {
        assert!(a.len() >= k * MR && b.len() >= k * NR && rows <= MR);
        match rows {
            6 => kernel::<6>(k, a, b, tile),
            5 => kernel::<5>(k, a, b, tile),
            4 => kernel::<4>(k, a, b, tile),
            3 => kernel::<3>(k, a, b, tile),
            2 => kernel::<2>(k, a, b, tile),
            _ => kernel::<1>(k, a, b, tile),
        }
    }

    #[inline(always)]
    unsafe fn kernel<const R: usize>(k: usize, a: &[f32], b: &[f32], tile: &mut [[f32; NR]; MR]) {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for (i, acc) in acc.iter_mut().enumerate() {
            acc[0] = _mm256_loadu_ps(tile[i].as_ptr());
            acc[1] = _mm256_loadu_ps(tile[i].as_ptr().add(8));
        }
        let ap = a.as_ptr();
        let bp = b.as_ptr();
        for kk in 0..k {
            // SAFETY (whole loop): kk < k, so b[kk*NR .. kk*NR+16] and a[kk*MR + i] for i < R
            // are in bounds (asserted by `tile`).
            // Weights stream from memory at small batches: ask for them early. A prefetch past
            // the end of the slice is harmless (it never faults).
            _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add((kk + PREFETCH) * NR) as *const i8);
            let b0 = _mm256_loadu_ps(bp.add(kk * NR));
            let b1 = _mm256_loadu_ps(bp.add(kk * NR + 8));
            for (i, acc) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*ap.add(kk * MR + i));
                acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            _mm256_storeu_ps(tile[i].as_mut_ptr(), acc[0]);
            _mm256_storeu_ps(tile[i].as_mut_ptr().add(8), acc[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], w_rows: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
        let mut y = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = (0..k)
                    .map(|p| x[i * k + p] as f64 * w_rows[j * k + p] as f64)
                    .sum();
            }
        }
        y
    }

    #[test]
    fn matches_f64_reference_on_ragged_shapes_both_kernels() {
        let kernels: &[bool] = if use_avx2() { &[false, true] } else { &[false] };
        for &avx2 in kernels {
            for (m, n, k) in [
                (1, 1, 1),
                (5, 17, 3),
                (6, 16, 8),
                (7, 33, 70),
                (13, 40, 64),
                (64, 48, 384),
            ] {
                let x: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
                    .collect();
                let w: Vec<f32> = (0..n * k)
                    .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.05)
                    .collect();
                let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.01).collect();
                let packed = PackedWeights::from_rows(&w, n, k);
                let want = naive(&x, &w, m, n, k);
                let mut y = vec![1.0f32; m * n];
                let ep = Epilogue {
                    bias: Some(&bias),
                    accumulate: true,
                    act: None,
                };
                matmul_with(&x, m, &packed, &mut y, ep, avx2);
                for i in 0..m * n {
                    let expect = want[i] + bias[i % n] as f64 + 1.0;
                    assert!(
                        (y[i] as f64 - expect).abs() < 1e-4,
                        "avx2={avx2} {m}x{n}x{k} at {i}"
                    );
                }
                let mut g = vec![0.0f32; m * n];
                let ep = Epilogue {
                    bias: None,
                    accumulate: false,
                    act: Some(Activation::Gelu),
                };
                matmul_with(&x, m, &packed, &mut g, ep, avx2);
                for i in 0..m * n {
                    let v = want[i];
                    let gelu = 0.5 * v * (1.0 + erf64(v / std::f64::consts::SQRT_2));
                    assert!((g[i] as f64 - gelu).abs() < 1e-5, "gelu avx2={avx2} at {i}");
                }
            }
        }
    }

    fn erf64(x: f64) -> f64 {
        let mut sum = 0.0;
        let mut term = x;
        let mut n = 0.0;
        while term.abs() > 1e-17 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn large_matmul_splits_over_threads_without_overlap() {
        let (m, n, k) = (50, 200, 96);
        let x: Vec<f32> = (0..m * k).map(|i| (i % 17) as f32 * 0.01).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 23) as f32 * 0.01).collect();
        let packed = PackedWeights::from_rows(&w, n, k);
        let mut y = vec![0.0f32; m * n];
        matmul(&x, m, &packed, &mut y, Epilogue::default());
        let want = naive(&x, &w, m, n, k);
        for i in 0..m * n {
            assert!((y[i] as f64 - want[i]).abs() < 1e-3);
        }
    }
}
