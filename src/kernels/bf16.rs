//! BF16 GEMM: `y = epilogue(bf16(x) · bf16(W))` with f32 accumulation.
//!
//! Weights are rounded to bfloat16 once and packed like the f32 panels of [`super::packed`]:
//! panels of [`NR`] output columns, the depth in pairs, so one 64-byte group holds 2
//! consecutive k of 16 columns — the operand layout of AVX512_BF16's `vdpbf16ps`, which adds
//! both products of a pair into an f32 lane. Activations are rounded to bfloat16 per call.
//! Rounding is round-to-nearest-even on the bit pattern ([`round`]), done the same way by
//! every path, so every kernel multiplies the same bf16 numbers; only the order and rounding
//! of the f32 sums may differ (`vdpbf16ps` also flushes denormals), hence bound-checked, not
//! bit-exact, agreement.
//!
//! Kernels: AMX-BF16, AVX512_BF16 (8 rows × 3 panels, measured on a Zen 5 host), AVX2+FMA
//! (widens the pairs to f32 in registers, for hosts without a bf16 instruction) and a portable
//! one over the same layout; a table entry per ISA, each with a self-check against the
//! portable kernel. Where there is no bf16 instruction, layers large enough for oneDNN run on
//! its f32 matmul over the rounded values instead ([`widened`]).

use rayon::prelude::*;

use super::aligned::Aligned;
use super::driver::{
    best, entry_by_name, panel_gemm_shared, run, Bound, FusedTile, PanelGemm, TaskFn,
};
#[cfg(target_arch = "x86_64")]
use super::driver::{FloatEp, FusedCall};
use super::packed::{finish, Epilogue, NR};
use super::{onednn, Isa};
use crate::kernels::TileCall;

/// Depth of one group: a pair of bf16 is one 32-bit lane.
const KG: usize = 2;

/// `x` rounded to the nearest bfloat16 (ties to even), as its bit pattern. NaN stays a (quiet)
/// NaN; infinities and overflow to infinity behave as in any IEEE rounding.
#[inline(always)]
pub fn round(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) as u16) | 0x40;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// The f32 value of a bfloat16 bit pattern (exact).
#[inline(always)]
pub fn widen(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Weights `[k, n]` rounded to bfloat16 and packed into panels of `NR` columns.
#[derive(Clone)]
pub struct Bf16Weights {
    /// `panels × (kp / 2) × NR × 2` bf16 bit patterns.
    data: Aligned<u16>,
    pub k: usize,
    pub n: usize,
    /// `k` rounded up to even.
    kp: usize,
}

impl std::fmt::Debug for Bf16Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bf16Weights [{}, {}]", self.n, self.k)
    }
}

impl Bf16Weights {
    /// From float weights in PyTorch layout `[n, k]`.
    pub fn from_rows(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight size");
        let kp = k.div_ceil(KG) * KG;
        let panels = n.div_ceil(NR);
        let mut data = Aligned::zeroed(panels * kp * NR);
        for (o, row) in w.chunks_exact(k.max(1)).enumerate().take(n) {
            let (p, j) = (o / NR, o % NR);
            let panel = &mut data[p * kp * NR..(p + 1) * kp * NR];
            for (i, &v) in row.iter().enumerate() {
                panel[(i / KG) * NR * KG + j * KG + i % KG] = round(v);
            }
        }
        Bf16Weights { data, k, n, kp }
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    fn panel(&self, p: usize) -> &[u16] {
        &self.data[p * self.kp * NR..(p + 1) * self.kp * NR]
    }

    /// Bytes of weight data (for reports).
    pub fn bytes(&self) -> usize {
        self.data.len() * 2
    }
}

/// Activations rounded to bfloat16: `m` rows of `kp` values (the pad is zero).
#[derive(Default)]
pub struct Bf16Acts {
    data: Aligned<u16>,
    m: usize,
    kp: usize,
}

impl Bf16Acts {
    pub fn new() -> Self {
        Self::default()
    }

    /// Round `x` (`m × k`, row-major) into `self`, reusing its buffer.
    pub fn round(&mut self, x: &[f32], m: usize, k: usize) {
        assert!(x.len() >= m * k, "bf16 round: input too small");
        let kp = k.div_ceil(KG) * KG;
        self.m = m;
        self.kp = kp;
        // Every value is written below: the row's k, then a zero pad (it meets zero weights,
        // and must not be a NaN).
        self.data.set_len(m * kp);
        if k == 0 {
            self.data.fill(0);
            return;
        }
        let isa = Isa::detect();
        let body = |(src, dst): (&[f32], &mut [u16])| {
            match isa {
                // SAFETY: AVX-512 was detected at run time.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { avx512::round_row(src, &mut dst[..k]) },
                // SAFETY: AVX2 was detected at run time.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { avx2::round_row(src, &mut dst[..k]) },
                _ => dst.iter_mut().zip(src).for_each(|(d, &v)| *d = round(v)),
            }
            dst[k..].fill(0);
        };
        let rows = x[..m * k]
            .chunks_exact(k)
            .zip(self.data.chunks_exact_mut(kp));
        if m * k >= 256 * 1024 {
            x[..m * k]
                .par_chunks_exact(k)
                .zip(self.data.par_chunks_exact_mut(kp))
                .for_each(body);
        } else {
            rows.for_each(body);
        }
    }
}

/// One micro-kernel call: `acc += a · b` for `rows` (≤ `mr`) rows and `np` (≤ the entry's
/// `np`) adjacent panels over `kc` values of depth (even).
///
/// - `a`: row `i` at `a + i * lda`, `kc` bf16 values.
/// - `b`: panel `p` at depth `k0`: `kc / 2` groups of `NR × 2` values; panel `p + q` starts
///   `q * bstride` values later.
/// - `acc`: `np × mr` rows of `NR` f32, panel-major (`acc[q * mr + i]`).
///
/// # Safety
/// The CPU must have the entry's features; every pointer must address what is described above.
pub type Bf16Tile = unsafe fn(&TileCall<u16, u16, f32>);

/// An entry of the BF16 kernel table.
#[derive(Clone)]
pub struct Bf16Kernel {
    pub name: &'static str,
    pub mr: usize,
    pub np: usize,
    /// Depth per pass (even).
    kc: usize,
    pub isa: Isa,
    /// Whether it multiplies with a bf16 instruction (faster than f32 FMA); the AVX2 entry
    /// widens to f32 in registers instead, so bf16 never pays there.
    dot: bool,
    supported: fn() -> bool,
    tile: Bf16Tile,
    /// A whole-depth call with the epilogue in registers, where the entry has one.
    #[cfg(target_arch = "x86_64")]
    fused: Option<Bf16Fused>,
    /// A whole task (its panels, every row) with its own loop nest, where the entry has one;
    /// it answers false for a problem it does not take (then `tile` serves).
    task: Option<Bf16Task>,
}

/// See `amx::task`.
type Bf16Task = TaskFn<Bf16Acts, Bf16Weights>;

/// See `avx512::fused`.
#[cfg(target_arch = "x86_64")]
type Bf16Fused = unsafe fn(&FusedCall<u16, u16>, &FloatEp);

entry_by_name!(Bf16Kernel);
#[cfg(test)]
super::driver::tile_path!(Bf16Kernel);

/// Every BF16 micro-kernel, fastest first.
pub static BF16_KERNELS: &[Bf16Kernel] = &[
    // Used only after its self-check passes (first run on hardware on a Sapphire Rapids-class
    // host; see amx.rs).
    #[cfg(target_arch = "x86_64")]
    Bf16Kernel {
        name: "bf16-amx-32x32",
        mr: super::amx::MR,
        np: super::amx::NP,
        kc: 512,
        isa: Isa::Avx512,
        dot: true,
        supported: super::amx::supported_bf16,
        tile: super::amx::bf16,
        fused: None,
        task: Some(amx::task::<super::amx::Hardware>),
    },
    #[cfg(target_arch = "x86_64")]
    Bf16Kernel {
        name: "bf16-avx512bf16-8x48",
        mr: avx512::MR,
        np: avx512::NP,
        kc: 256,
        isa: Isa::Avx512,
        dot: true,
        supported: avx512::supported,
        tile: avx512::tile,
        fused: Some(avx512::fused),
        task: None,
    },
    // Hosts without a bf16 instruction run plans made on hosts with one at f32 FMA speed.
    #[cfg(target_arch = "x86_64")]
    Bf16Kernel {
        name: "bf16-avx2-6x16",
        mr: avx2::MR,
        np: 1,
        kc: 256,
        isa: Isa::Avx2,
        dot: false,
        supported: avx2::supported,
        tile: avx2::tile,
        fused: None,
        task: None,
    },
    Bf16Kernel {
        name: "bf16-portable",
        mr: PORTABLE_MR,
        np: 1,
        kc: 256,
        isa: Isa::Portable,
        dot: false,
        supported: || true,
        tile: portable_tile,
        #[cfg(target_arch = "x86_64")]
        fused: None,
        task: None,
    },
];

impl Bf16Kernel {
    pub fn supported(&self) -> bool {
        (self.supported)()
    }

    pub fn portable() -> &'static Bf16Kernel {
        BF16_KERNELS.last().expect("the portable kernel")
    }

    /// Whether this CPU multiplies bf16 with a bf16 instruction, the only case where a bf16
    /// layer can beat a float32 one (the search times bf16 only there). Elsewhere the AVX2
    /// entry runs plans made on such hosts, at about the speed of samp's own f32 kernel.
    pub fn accelerated() -> bool {
        Self::detect().dot
    }

    /// The fastest entry this CPU runs that passes its self-check; decided once per process.
    pub fn detect() -> &'static Bf16Kernel {
        static BEST: std::sync::OnceLock<&'static Bf16Kernel> = std::sync::OnceLock::new();
        BEST.get_or_init(|| best(BF16_KERNELS, "bf16", Self::supported, Self::self_check))
    }

    pub fn available() -> Vec<&'static Bf16Kernel> {
        BF16_KERNELS.iter().filter(|k| k.supported()).collect()
    }

    /// Agreement with the portable kernel on a ragged problem, within the f32 rounding of sums
    /// of bf16 products (relative to the sum of their magnitudes).
    pub fn self_check(&self) -> bool {
        if !self.supported() {
            return false;
        }
        // A depth that the AMX task takes (whole 64-byte steps) and one that it does not.
        [(23, 2 * 256 + 77), (49, 320)]
            .into_iter()
            .all(|(m, k)| self.agrees_on(m, 5 * NR + 5, k))
    }

    fn agrees_on(&self, m: usize, n: usize, k: usize) -> bool {
        agrees_with_portable(m, n, k, |q, _, w, y| {
            matmul_with(q, w, y, Epilogue::default(), self);
            true
        })
    }
}

/// Whether `f` (computing `y = x · W` from the rounded input, or the float weights `[n, k]`,
/// or answering false when it cannot) agrees with the portable kernel on an `m × k × n`
/// problem, within the f32 rounding of sums of bf16 products.
fn agrees_with_portable(
    m: usize,
    n: usize,
    k: usize,
    f: impl Fn(&Bf16Acts, &[f32], &Bf16Weights, &mut [f32]) -> bool,
) -> bool {
    let x: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7919) % 255) as f32 / 127.0 - 1.0)
        .collect();
    let wf: Vec<f32> = (0..n * k)
        .map(|i| ((i * 104_729) % 251) as f32 / 125.0 - 1.0)
        .collect();
    let w = Bf16Weights::from_rows(&wf, n, k);
    let mut q = Bf16Acts::new();
    q.round(&x, m, k);
    let (mut a, mut b) = (vec![0.0f32; m * n], vec![0.0f32; m * n]);
    matmul_with(&q, &w, &mut a, Epilogue::default(), Bf16Kernel::portable());
    // Each |product| ≤ 1, so k bounds the sum of magnitudes.
    let tol = 4.0 * k as f32 * f32::EPSILON;
    f(&q, &wf, &w, &mut b) && a.iter().zip(&b).all(|(a, b)| (a - b).abs() <= tol)
}

/// oneDNN's matmul over float weights `[n, k]` rounded to bf16 as [`Bf16Weights`] rounds them
/// (see [`onednn`]); the depth is padded as [`Bf16Acts`] pads it.
pub fn onednn_gemm(w: &[f32], n: usize, k: usize) -> Result<onednn::Gemm, String> {
    assert_eq!(w.len(), n * k, "weight size");
    let kp = k.div_ceil(KG) * KG;
    let mut rows = vec![0u16; n * kp];
    for (dst, src) in rows.chunks_exact_mut(kp).zip(w.chunks_exact(k.max(1))) {
        dst.iter_mut().zip(src).for_each(|(d, &v)| *d = round(v));
    }
    onednn::Gemm::bf16(&rows, n, kp)
}

/// As [`matmul`], on oneDNN: `g` was made from the same weights by [`onednn_gemm`].
pub fn matmul_onednn(x: &Bf16Acts, g: &onednn::Gemm, y: &mut [f32], ep: Epilogue<'_>) {
    assert_eq!(g.dims().0, x.kp, "bf16 matmul: depth");
    g.run_float(onednn::bytes_of(&x.data[..x.m * x.kp]), x.m, y, ep)
}

/// The start-up self-check of oneDNN's bf16 matmul, on the problems of the kernels' own.
pub(super) fn onednn_agrees() -> onednn::Check {
    let attempt = onednn::Attempt::default();
    let agreed = [(23, 2 * 256 + 77), (49, 320)].into_iter().all(|(m, k)| {
        agrees_with_portable(m, 5 * NR + 5, k, |q, wf, _, y| {
            let made = onednn_gemm(wf, 5 * NR + 5, k);
            attempt.run(made, |g| matmul_onednn(q, g, y, Epilogue::default()))
        })
    });
    attempt.check(agreed)
}

/// `y[m, n] = epilogue(x · W)` with `x` already rounded.
pub fn matmul(x: &Bf16Acts, w: &Bf16Weights, y: &mut [f32], ep: Epilogue<'_>) {
    matmul_with(x, w, y, ep, Bf16Kernel::detect())
}

/// As [`matmul`], with the kernel chosen by the caller.
pub fn matmul_with(
    x: &Bf16Acts,
    w: &Bf16Weights,
    y: &mut [f32],
    ep: Epilogue<'_>,
    kernel: &Bf16Kernel,
) {
    assert!(
        kernel.supported(),
        "bf16 kernel {kernel:?} is not supported here"
    );
    run(&Bound { x, w, ep, kernel }, y)
}

// SAFETY of the driver's calls below (once): the entry's features were detected (asserted in
// `matmul_with`); the driver passes rows of x (kp values each) and panels of w that exist, and
// columns of y that its task owns.
impl PanelGemm for Bound<'_, Bf16Acts, Bf16Weights, Bf16Kernel> {
    // The block of activations (`mc × kp` bf16 values) stays in L2.
    panel_gemm_shared!(f32, "bf16", min_work 64 * 1024, l2 64 * 1024);

    unsafe fn fused(&self, t: &FusedTile, y: *mut f32) {
        #[cfg(target_arch = "x86_64")]
        if let Some(fused) = self.kernel.fused {
            let (x, w) = (self.x, self.w);
            let call = t.call(x.data.as_ptr(), w.kp, w.panel(t.p).as_ptr(), y, w.n);
            fused(&call, &FloatEp::at(&self.ep, t.c0))
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (t, y);
    }
    unsafe fn finish(&self, tile: &[[f32; NR]], r: usize, c0: usize, y: *mut f32) {
        let n = self.w.n;
        finish(
            y.add(r * n + c0),
            n,
            tile,
            NR.min(n - c0),
            self.ep,
            c0,
            self.kernel.isa,
        )
    }
}

const PORTABLE_MR: usize = 6;

/// The portable entry: per pair, the odd product then the even one added to the f32 lane (the
/// order `vdpbf16ps` documents); products of two bf16 are exact in f32.
///
/// # Safety
/// As [`Bf16Tile`].
unsafe fn portable_tile(c: &TileCall<u16, u16, f32>) {
    let (rows, np, kc, a, lda, b, bstride, acc) = c.parts();
    for q in 0..np {
        // SAFETY: the caller vouches for a, b and acc as described by `Bf16Tile`.
        let b = std::slice::from_raw_parts(b.add(q * bstride), kc * NR);
        let tile = std::slice::from_raw_parts_mut(acc.add(q * PORTABLE_MR), rows);
        for (i, t) in tile.iter_mut().enumerate() {
            let a = std::slice::from_raw_parts(a.add(i * lda), kc);
            for g in 0..kc / KG {
                let (a0, a1) = (widen(a[g * KG]), widen(a[g * KG + 1]));
                let bg = &b[g * NR * KG..(g + 1) * NR * KG];
                for (j, acc) in t.iter_mut().enumerate() {
                    *acc += a1 * widen(bg[j * KG + 1]);
                    *acc += a0 * widen(bg[j * KG]);
                }
            }
        }
    }
}

pub mod widened;

#[cfg(target_arch = "x86_64")]
mod avx2;

#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(target_arch = "x86_64")]
mod amx;

#[cfg(test)]
mod tests;
