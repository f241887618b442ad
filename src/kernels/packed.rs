//! f32 GEMM against weights packed once at load time: `y = x · W (+ bias) (+ y) (then act)`.
//!
//! The `gemm` crate re-packs the right-hand matrix on every call, which costs as much as the
//! multiplication itself when the left side has few rows (a batch of one sentence) and the
//! weights are cold in cache. Here the weights live in panels of [`NR`] output columns
//! (`k × NR` contiguous floats each), packed once. One macro-kernel driver ([`matmul_with`])
//! splits output panels over threads, blocks rows and depth, and runs the fused epilogue; the
//! micro-kernels behind it are a table ([`F32_KERNELS`]) of per-ISA entries, each with its tile
//! shape (`mr` rows × `np` adjacent panels), a `supported()` test, and a start-up self-check
//! against the portable kernel. Adding an ISA is one file and one table entry.
//!
//! Entries: AVX-512 (12 rows × 2 panels = 24 zmm accumulators), AVX2+FMA (6 × 1 panel, two ymm
//! per row), portable.

use super::driver::{best, entry_by_name, fused_tiles, row_block, split_panels};
#[cfg(target_arch = "x86_64")]
use super::driver::{FloatEp, FusedCall};
use super::{gelu_erf_impl, gelu_tanh, Isa};
use crate::kernels::Activation;
use crate::kernels::TileCall;

/// Output columns per panel: one 16-float zmm, or two 8-float ymm.
pub const NR: usize = 16;
/// Most rows and panels of any entry's micro-tile (sizes the accumulator blocks).
const MAX_MR: usize = 16;

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
        for (o, row) in w.chunks_exact(k.max(1)).enumerate().take(n) {
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

/// One micro-kernel call: `acc += a · b` for a tile of `rows` (≤ `mr`) rows and `np` (≤ the
/// entry's `np`) adjacent panels over `kc` steps of depth.
///
/// - `a`: the packed row tile at depth `k0`: step `kk` holds `mr` floats (`a[kk * mr + i]`).
/// - `b`: panel `p` at depth `k0` (`b[kk * NR + j]`); panel `p + q` starts `q * bstride` later.
/// - `acc`: `np × mr` rows of `NR` floats, panel-major (`acc[q * mr + i]`).
///
/// # Safety
/// The CPU must have the entry's features; every pointer must address what is described above.
pub type F32Tile = unsafe fn(&TileCall<f32, f32, f32>);

/// An entry of the f32 kernel table.
#[derive(Clone)]
pub struct F32Kernel {
    pub name: &'static str,
    /// Rows per micro-tile (the packing stride of the row tiles).
    pub mr: usize,
    /// Adjacent panels per micro-tile.
    pub np: usize,
    /// Depth per pass over a panel group: `kc × np × NR` floats of weights stay in L1.
    kc: usize,
    /// The ISA the epilogue runs with.
    pub isa: Isa,
    supported: fn() -> bool,
    tile: F32Tile,
    /// A whole-depth call on unpacked activations with the epilogue in registers, where the
    /// entry has one (then `tile` serves only the tests' checks of the tile path).
    #[cfg(target_arch = "x86_64")]
    fused: Option<F32Fused>,
}

/// See `avx512::fused`.
#[cfg(target_arch = "x86_64")]
type F32Fused = unsafe fn(&FusedCall<f32, f32>, &FloatEp);

entry_by_name!(F32Kernel);
#[cfg(test)]
super::driver::tile_path!(F32Kernel);

/// Every f32 micro-kernel, fastest first.
pub static F32_KERNELS: &[F32Kernel] = &[
    #[cfg(target_arch = "x86_64")]
    F32Kernel {
        name: "f32-avx512-12x32",
        mr: avx512::MR,
        np: avx512::NP,
        kc: 256,
        isa: Isa::Avx512,
        supported: super::has_avx512,
        tile: avx512::tile,
        fused: Some(avx512::fused),
    },
    #[cfg(target_arch = "x86_64")]
    F32Kernel {
        name: "f32-avx2-6x16",
        mr: avx2::MR,
        np: 1,
        kc: 256,
        isa: Isa::Avx2,
        supported: super::has_avx2_fma,
        tile: avx2::tile,
        fused: None,
    },
    F32Kernel {
        name: "f32-portable-6x16",
        mr: PORTABLE_MR,
        np: 1,
        kc: 256,
        isa: Isa::Portable,
        supported: || true,
        tile: portable_tile,
        #[cfg(target_arch = "x86_64")]
        fused: None,
    },
];

impl F32Kernel {
    pub fn supported(&self) -> bool {
        (self.supported)()
    }

    pub fn portable() -> &'static F32Kernel {
        F32_KERNELS.last().expect("the portable kernel")
    }

    /// The fastest entry this CPU runs that also passes its self-check; one that fails is
    /// logged and skipped. Decided once per process.
    pub fn detect() -> &'static F32Kernel {
        static BEST: std::sync::OnceLock<&'static F32Kernel> = std::sync::OnceLock::new();
        BEST.get_or_init(|| best(F32_KERNELS, "f32", Self::supported, Self::self_check))
    }

    /// Every entry this CPU can run (tests compare them).
    pub fn available() -> Vec<&'static F32Kernel> {
        F32_KERNELS.iter().filter(|k| k.supported()).collect()
    }

    /// Agreement with the portable kernel on a ragged problem (every row count of a tile, a
    /// partial panel group, a depth past one `kc` pass), within f32 rounding of the sums.
    pub fn self_check(&self) -> bool {
        self.supported()
            && agrees_with_portable(|x, m, w, y| {
                matmul_with(x, m, w, y, Epilogue::default(), self);
                true
            })
    }
}

/// Whether `f` (computing `y = x · W`, or answering false when it cannot) agrees with the
/// portable kernel on a ragged problem, within f32 rounding.
fn agrees_with_portable(f: impl Fn(&[f32], usize, &PackedWeights, &mut [f32]) -> bool) -> bool {
    let (m, n, k) = (2 * MAX_MR + 7, 3 * NR + 5, 300);
    let x: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7919) % 255) as f32 / 127.0 - 1.0)
        .collect();
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 104_729) % 127) as f32 / 63.0 - 1.0)
        .collect();
    let w = PackedWeights::from_rows(&w, n, k);
    let (mut a, mut b) = (vec![0.0f32; m * n], vec![0.0f32; m * n]);
    let portable = F32Kernel::portable();
    matmul_with(&x, m, &w, &mut a, Epilogue::default(), portable);
    f(&x, m, &w, &mut b)
        && a.iter()
            .zip(&b)
            .all(|(a, b)| (a - b).abs() <= 1e-4 * (1.0 + a.abs()))
}

/// Rows of accumulators for an epilogue: row `i` at `ptr + i * stride` (a micro-tile's
/// `[[T; NR]]`, or a block of a row-major product).
#[derive(Clone, Copy)]
pub(crate) struct AccRows<T> {
    pub ptr: *const T,
    pub stride: usize,
    pub rows: usize,
}

impl<T> AccRows<T> {
    pub fn tile(tile: &[[T; NR]]) -> Self {
        AccRows {
            ptr: tile.as_ptr().cast(),
            stride: NR,
            rows: tile.len(),
        }
    }

    /// # Safety
    /// `i < rows`, and the rows lie in one allocation.
    pub unsafe fn row(self, i: usize) -> *const T {
        self.ptr.add(i * self.stride)
    }
}

/// What happens to each output after the product.
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    /// Add onto what the output already holds (a residual connection).
    pub accumulate: bool,
    pub act: Option<Activation>,
    /// Write each output as the next INT8 layer's input byte instead of as a float.
    pub to_int8: Option<ToInt8>,
}

/// Outputs quantized for the next layer in the epilogue, instead of written as floats and
/// quantized in a pass of their own: the output at `y[i]` becomes byte `q[i]`, that is
/// `round(v / scale)` clamped to ±[`ACT_MAX`](super::int8::ACT_MAX), plus 128 — the operations
/// of [`QActs::quantize`](super::int8::QActs::quantize) in its order, so the bytes are the same.
/// `y` still addresses the outputs (every kernel's pointer arithmetic is unchanged) but is not
/// written. Made by [`QActs::fused_output`](super::int8::QActs::fused_output).
#[derive(Clone, Copy, Debug)]
pub struct ToInt8 {
    /// `y`'s first float.
    y0: *const f32,
    /// `q`'s first byte: as many bytes as `y` has floats.
    q: *mut u8,
    /// 1 / the scale.
    pub(crate) inv: f32,
}

// SAFETY: the threads of one GEMM write disjoint outputs, so disjoint bytes of `q`; `q` outlives
// the GEMM (the borrow `fused_output` took).
unsafe impl Send for ToInt8 {}
unsafe impl Sync for ToInt8 {}

impl ToInt8 {
    /// # Safety
    /// `q` must hold `len` writable bytes where `y0` holds `len` floats, for as long as the
    /// value is used.
    pub(crate) unsafe fn new(y0: *const f32, q: *mut u8, inv: f32) -> Self {
        ToInt8 { y0, q, inv }
    }

    /// The byte of the output at `yp`.
    ///
    /// # Safety
    /// `yp` must point into the `y` this was made for.
    #[inline(always)]
    pub(crate) unsafe fn byte(&self, yp: *const f32) -> *mut u8 {
        self.q.offset(yp.offset_from(self.y0))
    }
}

/// `y[m, n] = epilogue(x[m, k] · W)`, `x` and `y` row-major. Splits output panels over the
/// rayon pool when there is enough work.
pub fn matmul(x: &[f32], m: usize, w: &PackedWeights, y: &mut [f32], ep: Epilogue<'_>) {
    matmul_with(x, m, w, y, ep, F32Kernel::detect())
}

/// As [`matmul`], with the kernel chosen by the caller (tests run every entry).
pub fn matmul_with(
    x: &[f32],
    m: usize,
    w: &PackedWeights,
    y: &mut [f32],
    ep: Epilogue<'_>,
    kernel: &F32Kernel,
) {
    assert!(
        kernel.supported(),
        "f32 kernel {} is not supported here",
        kernel.name
    );
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
    // Below ~64k multiply-adds per thread the fork costs more than it saves.
    split_panels(
        y,
        m * n * k,
        64 * 1024,
        w.panels(),
        kernel.np,
        |y, panels| {
            // SAFETY: each call writes only the columns of its panels (clipped to n) of y; the
            // ranges are disjoint and y holds m*n floats (asserted above).
            unsafe { panels_range(x, m, w, y, ep, panels, kernel) }
        },
    );
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
    kernel: &F32Kernel,
) {
    let (k, n, mr, np) = (w.k, w.n, kernel.mr, kernel.np);
    // Keep the block of `x` (`mc × k` floats) within ~256 KiB of L2.
    let mc = row_block(k, mr, 64 * 1024);
    #[cfg(target_arch = "x86_64")]
    if let Some(fused) = kernel.fused {
        fused_tiles(m, n, (mc, mr, np), panels, |t| {
            // SAFETY: the kernel's features were detected (asserted in `matmul_with`); rows
            // t.r..t.r+t.rows of x hold k floats, panels t.p..t.p+t.gp lie in w, the bias has
            // n values, and this task owns columns t.c0.. (clipped to n) of those rows of y.
            let call = t.call(x.as_ptr(), k, w.panel(t.p).as_ptr(), y, n);
            fused(&call, &FloatEp::at(&ep, t.c0))
        });
        return;
    }
    // The row block of x, re-laid as micro-panels: for each mr-row tile, k steps of mr floats.
    let mut apack = vec![0.0f32; mc.min(m).div_ceil(mr) * mr * k];
    let mut acc: Vec<[f32; NR]> = Vec::new();
    for r0 in (0..m).step_by(mc) {
        let r1 = (r0 + mc).min(m);
        for (t, r) in (r0..r1).step_by(mr).enumerate() {
            let rows = mr.min(r1 - r);
            let tile = &mut apack[t * mr * k..(t + 1) * mr * k];
            for i in 0..rows {
                let src = &x[(r + i) * k..(r + i + 1) * k];
                for (kk, &v) in src.iter().enumerate() {
                    tile[kk * mr + i] = v;
                }
            }
            for i in rows..mr {
                for kk in 0..k {
                    tile[kk * mr + i] = 0.0;
                }
            }
        }
        let tiles = (r1 - r0).div_ceil(mr);
        for p in panels.clone().step_by(np) {
            let gp = np.min(panels.end - p);
            let b = w.panel(p).as_ptr();
            // Accumulators of every micro-tile of the block, kept across depth passes so that
            // a kc-deep slice of the panel group stays in L1 while all tiles pass over it.
            acc.clear();
            acc.resize(tiles * np * mr, [0.0f32; NR]);
            for k0 in (0..k).step_by(kernel.kc) {
                let kc = kernel.kc.min(k - k0);
                for t in 0..tiles {
                    let rows = mr.min(r1 - r0 - t * mr);
                    // SAFETY: the row tile holds k steps of mr floats, the panels p..p+gp lie
                    // in w (gp ≤ panels.end - p), and tile t's accumulators are np × mr rows.
                    (kernel.tile)(&TileCall {
                        rows,
                        np: gp,
                        kc,
                        a: apack.as_ptr().add(t * mr * k + k0 * mr),
                        lda: 0,
                        b: b.add(k0 * NR),
                        bstride: k * NR,
                        acc: acc.as_mut_ptr().add(t * np * mr),
                    });
                }
            }
            for q in 0..gp {
                let c0 = (p + q) * NR;
                let cols = NR.min(n - c0);
                for t in 0..tiles {
                    let r = r0 + t * mr;
                    let rows = mr.min(r1 - r);
                    let tile = &acc[(t * np + q) * mr..(t * np + q) * mr + rows];
                    // SAFETY: rows r..r+rows < m and columns c0..c0+cols < n lie inside y;
                    // this task owns these columns.
                    unsafe { finish(y.add(r * n + c0), n, tile, cols, ep, c0, kernel.isa) };
                }
            }
        }
    }
}

/// Apply the epilogue to one micro-tile and write it to `y` (row stride `ldy`).
///
/// # Safety
/// `y` must address `tile.len()` rows of `cols` writable floats at stride `ldy`; `isa` must be
/// one this CPU runs.
pub(super) unsafe fn finish(
    y: *mut f32,
    ldy: usize,
    tile: &[[f32; NR]],
    cols: usize,
    ep: Epilogue<'_>,
    c0: usize,
    isa: Isa,
) {
    match isa {
        // SAFETY (both): the ISA was detected at run time; the caller vouches for `y`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => avx512::finish(AccRows::tile(tile), &FloatEp::at(&ep, c0), y, ldy, cols),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => finish_avx2(y, ldy, tile, cols, ep, c0),
        _ => finish_impl::<false>(y, ldy, tile, cols, ep, c0),
    }
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
    if cols == NR {
        return avx2::finish_rows(y, ldy, AccRows::tile(tile), ep, c0);
    }
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
        match ep.to_int8 {
            None => out.copy_from_slice(&v[..cols]),
            Some(t) => {
                let q = std::slice::from_raw_parts_mut(t.byte(out.as_ptr()), cols);
                crate::kernels::int8::quantize_into(&v[..cols], q, t.inv);
            }
        }
    }
}

const PORTABLE_MR: usize = 6;

/// The portable entry: plain loops over the same layout.
///
/// # Safety
/// As [`F32Tile`].
unsafe fn portable_tile(c: &TileCall<f32, f32, f32>) {
    let (rows, np, kc, a, _, b, bstride, acc) = c.parts();
    for q in 0..np {
        // SAFETY: the caller vouches for a, b and acc as described by `F32Tile`.
        let b = std::slice::from_raw_parts(b.add(q * bstride), kc * NR);
        let a = std::slice::from_raw_parts(a, kc * PORTABLE_MR);
        let tile = std::slice::from_raw_parts_mut(acc.add(q * PORTABLE_MR), rows);
        for kk in 0..kc {
            let brow = &b[kk * NR..(kk + 1) * NR];
            for (i, t) in tile.iter_mut().enumerate() {
                let av = a[kk * PORTABLE_MR + i];
                for (acc, &bv) in t.iter_mut().zip(brow) {
                    *acc += av * bv;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;

mod on_onednn;
pub(super) use on_onednn::{finish_block, onednn_agrees};
pub use on_onednn::{matmul_onednn, onednn_gemm};

#[cfg(test)]
mod tests;
