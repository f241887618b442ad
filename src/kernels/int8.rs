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
//! Weight width is a property of the weights ([`QWeights::bits`], recorded in the plan and the
//! artifact), never of the host. `vpdpbusd` (AVX-512 VNNI, AVX-VNNI) sums four u8·s8 products
//! into i32 without saturation, so it is exact for full 8-bit weights (±127). AVX2's
//! `vpmaddubsw` adds two products into a saturating i16: with activations up to 255 the weights
//! must stay within ±63 for that to be exact (255·63·2 = 32130), the 7-bit "reduced range" that
//! FBGEMM also uses on CPUs without VNNI. An AVX2 host given 8-bit weights runs an exact, slower
//! kernel that widens both operands to i16 (`vpmaddwd`). Every kernel therefore computes the
//! same integers for the same weights, and they agree bit for bit.
//!
//! The micro-kernels are a table ([`INT8_KERNELS`]): tile shape (`mr` rows × `np` adjacent
//! panels), the widest weights each computes exactly, `supported()`, a self-check against the
//! portable kernel, and the tile function; one driver ([`matmul_with`]) serves them all.

#[cfg(target_arch = "x86_64")]
use super::driver::FusedCall;
use super::driver::{
    best, entry_by_name, panel_gemm_shared, run, Bound, FusedTile, PanelGemm, TaskFn,
};
use super::packed::{finish, AccRows, Epilogue, NR};
use super::{onednn, Isa};

/// Largest activation magnitude after quantization.
pub const ACT_MAX: i32 = 127;
/// Depth of one group: four bytes of a row are broadcast as one 32-bit lane.
const KG: usize = 4;
/// Most rows of any entry's micro-tile.
const MAX_MR: usize = 16;

/// Largest weight magnitude for `bits`-bit weights (6 → 31, 7 → 63, 8 → 127).
pub fn weight_max(bits: u32) -> i32 {
    (1 << (bits.clamp(2, 8) - 1)) - 1
}

/// The weight widths a plan may ask for.
pub const WEIGHT_BITS: [u32; 3] = [6, 7, 8];

use crate::kernels::TileCall;
pub(crate) use acts::quantize_into;
#[cfg(test)]
use acts::quantize_row;
#[cfg(all(test, target_arch = "x86_64"))]
use acts::{quantize_row_avx2, quantize_row_avx512};
pub use acts::{ActScale, QActs};
pub use dynamic::{matmul_dynamic, matmul_onednn_dynamic};

/// One micro-kernel call: `acc += a · b` for `rows` (≤ `mr`) rows and `np` (≤ the entry's `np`)
/// adjacent panels over `kc` bytes of depth (a multiple of 4).
///
/// - `a`: row `i` at `a + i * lda`, `kc` bytes (`q + 128`).
/// - `b`: panel `p` at depth `k0`: `kc / 4` groups of `NR × 4` bytes; panel `p + q` starts
///   `q * bstride` bytes later.
/// - `acc`: `np × mr` rows of `NR` i32, panel-major (`acc[q * mr + i]`).
///
/// # Safety
/// The CPU must have the entry's features; every pointer must address what is described above.
pub type Int8Tile = unsafe fn(&TileCall<u8, i8, i32>);

/// An entry of the INT8 kernel table.
#[derive(Clone)]
pub struct Int8Kernel {
    pub name: &'static str,
    pub mr: usize,
    pub np: usize,
    /// The widest weights this kernel computes exactly.
    pub max_bits: u32,
    /// Depth per pass, in bytes (a multiple of 4).
    kc: usize,
    /// The ISA the dequantizing epilogue runs with.
    pub isa: Isa,
    supported: fn() -> bool,
    tile: Int8Tile,
    /// A whole-depth call with the epilogue in registers, where the entry has one (then `tile`
    /// serves only the tests' schedule checks).
    #[cfg(target_arch = "x86_64")]
    fused: Option<Int8Fused>,
    /// A whole task (its panels, every row) with its own loop nest, where the entry has one;
    /// it answers false for a problem it does not take (then `tile` serves).
    task: Option<Int8Task>,
}

/// See `amx::task`.
type Int8Task = TaskFn<QActs, QWeights>;

/// See `avx512::fused`.
#[cfg(target_arch = "x86_64")]
type Int8Fused = unsafe fn(&FusedCall<u8, i8>, &avx512::FusedEp);

entry_by_name!(Int8Kernel);

/// Every INT8 micro-kernel, fastest first.
pub static INT8_KERNELS: &[Int8Kernel] = &[
    // Used only after its self-check passes (first run on hardware on a Sapphire Rapids-class
    // host; see amx.rs).
    #[cfg(target_arch = "x86_64")]
    Int8Kernel {
        name: "int8-amx-32x32",
        mr: tiles::MR,
        np: tiles::NP,
        max_bits: 8,
        kc: 1024,
        isa: Isa::Avx512,
        supported: tiles::supported_int8,
        tile: tiles::int8,
        fused: None,
        task: Some(amx::task::<tiles::Hardware>),
    },
    #[cfg(target_arch = "x86_64")]
    Int8Kernel {
        name: "int8-avx512vnni-8x48",
        mr: avx512::MR,
        np: avx512::NP,
        max_bits: 8,
        kc: 512,
        isa: Isa::Avx512,
        supported: avx512::supported,
        tile: avx512::tile,
        fused: Some(avx512::fused),
        task: None,
    },
    #[cfg(target_arch = "x86_64")]
    Int8Kernel {
        name: "int8-avxvnni-6x16",
        mr: avx2::MR,
        np: 1,
        max_bits: 8,
        kc: 512,
        isa: Isa::Avx2,
        supported: avx2::supported_vnni,
        tile: avx2::tile_vnni,
        fused: Some(avx2::fused_vnni),
        task: None,
    },
    #[cfg(target_arch = "x86_64")]
    Int8Kernel {
        name: "int8-avx2-6bit-4x16",
        mr: avx2::PAIRS_MR,
        np: 1,
        max_bits: 6,
        kc: 512,
        isa: Isa::Avx2,
        supported: super::has_avx2_fma,
        tile: avx2::tile_pairs,
        fused: Some(avx2::fused_pairs),
        task: None,
    },
    #[cfg(target_arch = "x86_64")]
    Int8Kernel {
        name: "int8-avx2-6x16",
        mr: avx2::MR,
        np: 1,
        max_bits: 7,
        kc: 512,
        isa: Isa::Avx2,
        supported: super::has_avx2_fma,
        tile: avx2::tile,
        fused: Some(avx2::fused),
        task: None,
    },
    #[cfg(target_arch = "x86_64")]
    Int8Kernel {
        name: "int8-avx2-wide-6x16",
        mr: avx2::MR,
        np: 1,
        max_bits: 8,
        kc: 512,
        isa: Isa::Avx2,
        supported: super::has_avx2_fma,
        tile: avx2::tile_wide,
        fused: Some(avx2::fused_wide),
        task: None,
    },
    Int8Kernel {
        name: "int8-portable",
        mr: PORTABLE_MR,
        np: 1,
        max_bits: 8,
        kc: 512,
        isa: Isa::Portable,
        supported: || true,
        tile: portable_tile,
        #[cfg(target_arch = "x86_64")]
        fused: None,
        task: None,
    },
];

impl Int8Kernel {
    /// Whether this CPU can run the kernel.
    pub fn supported(&self) -> bool {
        (self.supported)()
    }

    pub fn portable() -> &'static Int8Kernel {
        INT8_KERNELS.last().expect("the portable kernel")
    }

    /// The fastest entry this CPU runs exactly for `bits`-bit weights that also passes its
    /// self-check. Kernels written without hardware to test on are only used after they
    /// reproduce the portable kernel exactly; a failure is logged and the next entry used.
    /// Decided once per process and width.
    pub fn detect(bits: u32) -> &'static Int8Kernel {
        static BEST: [std::sync::OnceLock<&'static Int8Kernel>; 3] = [
            std::sync::OnceLock::new(),
            std::sync::OnceLock::new(),
            std::sync::OnceLock::new(),
        ];
        BEST[bits.clamp(6, 8) as usize - 6].get_or_init(|| {
            let usable = |k: &Int8Kernel| k.supported() && k.max_bits >= bits;
            best(INT8_KERNELS, "int8", usable, |k| k.self_check(bits))
        })
    }

    /// Every entry this CPU can run for `bits`-bit weights (tests compare them).
    pub fn available(bits: u32) -> Vec<&'static Int8Kernel> {
        INT8_KERNELS
            .iter()
            .filter(|k| k.supported() && k.max_bits >= bits)
            .collect()
    }

    /// Exact agreement with the portable kernel on two ragged problems with extreme values
    /// (every row count of a tile, a partial panel group, more than one depth pass; a depth of
    /// whole 64-byte steps, which the AMX task takes, and one that is not).
    pub fn self_check(&self, bits: u32) -> bool {
        if !self.supported() || self.max_bits < bits {
            return false;
        }
        [(2 * MAX_MR + 7, 3 * 203), (3 * MAX_MR + 1, 320)]
            .into_iter()
            .all(|(m, k)| self.agrees_on(bits, m, 5 * NR + 5, k))
    }

    fn agrees_on(&self, bits: u32, m: usize, n: usize, k: usize) -> bool {
        agrees_with_portable(bits, m, n, k, |q, w, y| {
            matmul_with(q, w, y, Epilogue::default(), self);
            true
        })
    }
}

/// Whether `f` (computing `y = x · W`, or answering false when it cannot) gives exactly the
/// portable kernel's outputs on an `m × k × n` problem with extreme values.
fn agrees_with_portable(
    bits: u32,
    m: usize,
    n: usize,
    k: usize,
    f: impl Fn(&QActs, &QWeights, &mut [f32]) -> bool,
) -> bool {
    let x: Vec<f32> = (0..m * k)
        .map(|i| (((i * 7919) % 255) as f32 - 127.0) / 127.0)
        .collect();
    let w: Vec<f32> = (0..n * k)
        .map(|i| (((i * 104_729) % 255) as f32 - 127.0) / 127.0)
        .collect();
    let w = QWeights::quantize(&w, n, k, bits);
    let mut q = QActs::new();
    q.quantize(&x, m, k, ActScale::Static(1.0 / 127.0));
    let (mut a, mut b) = (vec![0.0f32; m * n], vec![0.0f32; m * n]);
    matmul_with(&q, &w, &mut a, Epilogue::default(), Int8Kernel::portable());
    f(&q, &w, &mut b) && a == b
}

/// oneDNN's matmul over these weights (see [`onednn`]): u8 × s8 → s32 over the padded depth.
pub fn onednn_gemm(w: &QWeights) -> Result<onednn::Gemm, String> {
    let (k, kp) = (w.k, w.kp);
    let mut rows = vec![0i8; w.n * kp];
    for (dst, src) in rows
        .chunks_exact_mut(kp)
        .zip(w.rows().chunks_exact(k.max(1)))
    {
        dst[..k].copy_from_slice(src);
    }
    onednn::Gemm::int8(&rows, w.n, kp)
}

/// As [`matmul`], on oneDNN: `g` was made from `w` by [`onednn_gemm`]. oneDNN sums the
/// products; samp's epilogue dequantizes them, so the outputs are those of samp's kernels.
pub fn matmul_onednn(x: &QActs, w: &QWeights, g: &onednn::Gemm, y: &mut [f32], ep: Epilogue<'_>) {
    let (m, n) = (x.m, w.n);
    check_onednn(x, w, g, ep);
    assert!(y.len() >= m * n, "int8 matmul: output too small");
    let isa = Isa::detect();
    let yp = y.as_mut_ptr() as usize;
    g.run::<i32>(&x.data[..m * x.kp], m, |r0, rows, product| {
        // SAFETY: rows r0.. of y exist (asserted above) and this block owns them; the ISA
        // was detected.
        unsafe {
            let y = (yp as *mut f32).add(r0 * n);
            finish_block(isa, x, w, ep, product, r0, rows, y)
        }
    });
}

/// The epilogue of one oneDNN block on `isa`: `rows` rows of sums (the GEMM's row `r0` first)
/// into `y` (the block's first output row, stride `w.n`).
///
/// # Safety
/// `isa` must have been detected; `y` must address `rows × w.n` writable floats of this
/// caller's, and `product` hold `rows × w.n` sums.
#[allow(clippy::too_many_arguments)]
unsafe fn finish_block(
    isa: Isa,
    x: &QActs,
    w: &QWeights,
    ep: Epilogue<'_>,
    product: &[i32],
    r0: usize,
    rows: usize,
    y: *mut f32,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => finish_block_avx512(x, w, ep, product, r0, rows, y),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => finish_block_avx2(x, w, ep, product, r0, rows, y),
        _ => {
            let (n, mut tile_f) = (w.n, [[0.0f32; NR]; MAX_MR]);
            onednn::tiles(product, rows, n, |tile, r, c0| {
                let yt = y.add(r * n + c0);
                epilogue(tile, x, w, ep, yt, r0 + r, c0, isa, &mut tile_f)
            })
        }
    }
}

/// The operands of an INT8 product on oneDNN fit together: `g` made from `w`, the activations'
/// depth and the bias' width theirs.
fn check_onednn(x: &QActs, w: &QWeights, g: &onednn::Gemm, ep: Epilogue<'_>) {
    assert_eq!(
        g.dims(),
        (w.kp, w.n),
        "int8 matmul: oneDNN gemm of other weights"
    );
    assert_eq!(x.kp, w.kp, "int8 matmul: depth");
    if let Some(b) = ep.bias {
        assert_eq!(b.len(), w.n, "int8 matmul: bias length");
    }
}

/// The AVX-512 epilogue of one oneDNN block: `rows` rows of sums (the GEMM's row `r0` first)
/// into `y` (the block's first output row, stride `n`), 8-row strips across the whole width
/// ([`onednn::strips`]).
///
/// # Safety
/// AVX-512 must have been detected; `y` must address `rows × n` writable floats of this
/// caller's, and `product` hold `rows × n` sums.
#[cfg(target_arch = "x86_64")]
unsafe fn finish_block_avx512(
    x: &QActs,
    w: &QWeights,
    ep: Epilogue<'_>,
    product: &[i32],
    r0: usize,
    rows: usize,
    y: *mut f32,
) {
    let n = w.n;
    onednn::strips(product, rows, n, |r, c0, acc| {
        avx512::finish(
            acc,
            &x.scales[r0 + r..],
            &w.offset[c0..],
            &w.scales_pad[c0..],
            ep.bias.map(|b| &b[c0..]),
            y.add(r * n + c0),
            n,
            NR.min(n - c0),
            ep.accumulate,
            ep.act,
            ep.to_int8,
        )
    })
}

/// The AVX2 epilogue of one oneDNN block, as [`finish_block_avx512`]: whole panels in place
/// (`avx2::finish`), a partial last one through a copy into the portable walk's tile.
///
/// # Safety
/// AVX2 and FMA must have been detected; `y` and `product` as [`finish_block_avx512`]'s.
#[cfg(target_arch = "x86_64")]
unsafe fn finish_block_avx2(
    x: &QActs,
    w: &QWeights,
    ep: Epilogue<'_>,
    product: &[i32],
    r0: usize,
    rows: usize,
    y: *mut f32,
) {
    let n = w.n;
    let mut tile_f = [[0.0f32; NR]; MAX_MR];
    onednn::strips(product, rows, n, |r, c0, acc| {
        let cols = NR.min(n - c0);
        if cols < NR {
            let tile = onednn::strip_tile(acc, cols);
            return epilogue(
                &tile[..acc.rows],
                x,
                w,
                ep,
                y.add(r * n + c0),
                r0 + r,
                c0,
                Isa::Avx2,
                &mut tile_f,
            );
        }
        let scales = (&x.scales[r0 + r..], &w.offset[c0..], &w.scales_pad[c0..]);
        avx2::finish(acc, scales, y.add(r * n + c0), n, ep, c0)
    })
}

/// Seconds of samp's INT8 kernel and of oneDNN's at `m × k → n` (`bits`-bit weights), quantizing
/// the input included and, for [`onednn::Output::DynamicInt8`], the outputs for a next layer
/// with dynamic scales as each path does it in a layer (samp's by row blocks where it can, see
/// [`matmul_dynamic`]; oneDNN's by its blocks) (see [`onednn::prefer_for`]).
pub(super) fn onednn_race(
    k: usize,
    n: usize,
    m: usize,
    bits: u32,
    out: onednn::Output,
) -> Result<(f64, f64), String> {
    let (x, w) = onednn::race_data(m, k, n);
    let w = QWeights::quantize(&w, n, k, bits);
    let g = onednn_gemm(&w)?;
    let (mut a, mut b) = (vec![0.0f32; m * n], vec![0.0f32; m * n]);
    let (mut qa, mut qb) = (QActs::new(), QActs::new());
    let (mut na, mut nb) = (QActs::new(), QActs::new());
    let scale = ActScale::Static(1.0 / 127.0);
    let ep = Epilogue::default();
    let dynamic = out == onednn::Output::DynamicInt8;
    Ok(onednn::race(
        || {
            qa.quantize(&x, m, k, scale);
            if !dynamic {
                matmul(&qa, &w, &mut a, ep)
            } else if !matmul_dynamic(&qa, &w, ep, &mut na) {
                matmul(&qa, &w, &mut a, ep);
                na.quantize(&a, m, n, ActScale::Dynamic)
            }
        },
        || {
            qb.quantize(&x, m, k, scale);
            if !dynamic {
                matmul_onednn(&qb, &w, &g, &mut b, ep)
            } else if !matmul_onednn_dynamic(&qb, &w, &g, ep, &mut nb) {
                matmul_onednn(&qb, &w, &g, &mut b, ep);
                nb.quantize(&b, m, n, ActScale::Dynamic)
            }
        },
    ))
}

/// The start-up self-check of oneDNN's INT8 matmul for `bits`-bit weights: exact agreement on
/// the kernels' own problems (with 8 bits, sums that would saturate a 16-bit intermediate).
pub(super) fn onednn_agrees(bits: u32) -> onednn::Check {
    let attempt = onednn::Attempt::default();
    let agreed = [(2 * MAX_MR + 7, 3 * 203), (3 * MAX_MR + 1, 320)]
        .into_iter()
        .all(|(m, k)| {
            agrees_with_portable(bits, m, 5 * NR + 5, k, |q, w, y| {
                attempt.run(onednn_gemm(w), |g| {
                    matmul_onednn(q, w, g, y, Epilogue::default())
                })
            })
        });
    attempt.check(agreed)
}

/// `y[m, n] = epilogue(x · W)` with `x` already quantized.
pub fn matmul(x: &QActs, w: &QWeights, y: &mut [f32], ep: Epilogue<'_>) {
    matmul_with(x, w, y, ep, Int8Kernel::detect(w.bits))
}

/// As [`matmul`], with the kernel chosen by the caller.
pub fn matmul_with(x: &QActs, w: &QWeights, y: &mut [f32], ep: Epilogue<'_>, kernel: &Int8Kernel) {
    assert!(
        kernel.supported(),
        "int8 kernel {kernel:?} is not supported by this CPU"
    );
    assert!(
        kernel.max_bits >= w.bits,
        "int8 kernel {kernel:?} is not exact for {}-bit weights",
        w.bits
    );
    run(&Bound { x, w, ep, kernel }, y)
}

// SAFETY of the driver's calls below (once): the entry's features were detected (asserted in
// `matmul_with`); the driver passes rows of x (kp bytes each) and panels of w that exist
// (offsets and scales padded to whole panels), and columns of y that its task owns.
impl PanelGemm for Bound<'_, QActs, QWeights, Int8Kernel> {
    // The block of activations (`mc × kp` bytes) stays in L2.
    panel_gemm_shared!(i32, "int8", min_work 128 * 1024, l2 128 * 1024);

    unsafe fn fused(&self, t: &FusedTile, y: *mut f32) {
        #[cfg(target_arch = "x86_64")]
        if let Some(fused) = self.kernel.fused {
            let (x, w, ep) = (self.x, self.w, &self.ep);
            let fep = avx512::FusedEp {
                offset: w.offset[t.c0..].as_ptr(),
                ws: w.scales_pad[t.c0..].as_ptr(),
                bias: ep.bias.map(|b| b[t.c0..].as_ptr()),
                sa: x.scales[t.r..].as_ptr(),
                accumulate: ep.accumulate,
                act: ep.act,
                to_int8: ep.to_int8,
            };
            fused(
                &t.call(x.data.as_ptr(), w.kp, w.panel(t.p).as_ptr(), y, w.n),
                &fep,
            )
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (t, y);
    }
    unsafe fn finish(&self, tile: &[[i32; NR]], r: usize, c0: usize, y: *mut f32) {
        let mut tile_f = [[0.0f32; NR]; MAX_MR];
        let (x, w, ep, isa) = (self.x, self.w, self.ep, self.kernel.isa);
        epilogue(tile, x, w, ep, y.add(r * w.n + c0), r, c0, isa, &mut tile_f)
    }
}

const PORTABLE_MR: usize = 6;

/// The portable entry: the plain sum of products, the reference every other entry must match.
///
/// # Safety
/// As [`Int8Tile`].
unsafe fn portable_tile(c: &TileCall<u8, i8, i32>) {
    let (rows, np, kc, a, lda, b, bstride, acc) = c.parts();
    for q in 0..np {
        // SAFETY: the caller vouches for a, b and acc as described by `Int8Tile`.
        let b = std::slice::from_raw_parts(b.add(q * bstride), kc * NR);
        let tile = std::slice::from_raw_parts_mut(acc.add(q * PORTABLE_MR), rows);
        for (i, t) in tile.iter_mut().enumerate() {
            let a = std::slice::from_raw_parts(a.add(i * lda), kc);
            for g in 0..kc / KG {
                let bg = &b[g * NR * KG..(g + 1) * NR * KG];
                let av = &a[g * KG..g * KG + KG];
                for (j, acc) in t.iter_mut().enumerate() {
                    let bj = &bg[j * KG..j * KG + KG];
                    *acc += (0..KG).map(|q| av[q] as i32 * bj[q] as i32).sum::<i32>();
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
use super::amx as tiles;

#[cfg(target_arch = "x86_64")]
mod amx;

mod acts;
mod dynamic;
mod epilogue;
mod weights;
use epilogue::epilogue;
pub use weights::QWeights;

#[cfg(target_arch = "x86_64")]
mod avx2;

#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(test)]
mod tests;
