//! 256-bit INT8 micro-kernels, 6 rows × one 16-column panel (two ymm per row): AVX2
//! `vpmaddubsw` (exact for 7-bit weights), the same with two groups' `vpmaddubsw` results added
//! in 16 bits before one `vpmaddwd` (exact for 6-bit weights: a quarter fewer multiplies; 4
//! rows, `PAIRS_MR`), AVX2
//! widened to i16 with `vpmaddwd` (exact for 8-bit weights, about half the speed), and AVX-VNNI
//! `vpdpbusd` (exact for 8-bit weights).

use super::avx512::FusedEp;
use super::{KG, NR};
use crate::kernels::driver::FusedCall;
use crate::kernels::packed::{AccRows, Epilogue};
use std::arch::x86_64::*;

use crate::kernels::TileCall;

pub const MR: usize = 6;
/// Rows of the 6-bit kernel's tile: its four weight vectors per step (two groups) leave no room
/// for six rows' accumulators in 16 registers; six spilled four of them and ran ~8% slower.
pub const PAIRS_MR: usize = 4;

/// How the four u8·s8 products of a group reach the i32 accumulators.
const MADDUBS: u8 = 0;
const WIDE: u8 = 1;
const VNNI: u8 = 2;
const PAIRS: u8 = 3;

pub fn supported_vnni() -> bool {
    crate::kernels::has_avx_vnni()
}

macro_rules! entry {
    ($(#[$doc:meta])* $name:ident, $features:literal, $mode:expr) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// The CPU must have the features named; the pointers as [`super::Int8Tile`] describes
        /// (`np` is always 1 here).
        #[target_feature(enable = $features)]
        pub unsafe fn $name(c: &TileCall<u8, i8, i32>) {
            let TileCall { rows, kc, a, lda, b, acc, .. } = *c;
            match rows {
                6 => kernel::<6, { $mode }>(kc, a, lda, b, acc),
                5 => kernel::<5, { $mode }>(kc, a, lda, b, acc),
                4 => kernel::<4, { $mode }>(kc, a, lda, b, acc),
                3 => kernel::<3, { $mode }>(kc, a, lda, b, acc),
                2 => kernel::<2, { $mode }>(kc, a, lda, b, acc),
                _ => kernel::<1, { $mode }>(kc, a, lda, b, acc),
            }
        }
    };
}

/// A whole-depth call with the epilogue in registers (see `avx512::fused`): the tile's
/// accumulators start at zero and never leave the registers, then
/// `y = act((acc + offset) · (sa · ws) + bias [+ y])` row by row with the operations of the
/// portable `dequant` + `finish` in their order (a multiply, then an add: no FMA). The tile
/// path's accumulator buffer (zeroed for every panel, read and written every depth pass), its
/// float copy and the separate epilogue pass disappear.
macro_rules! fused_entry {
    ($name:ident, $features:literal, $mode:expr) => {
        /// # Safety
        /// The CPU must have the features named; `c` and `ep` as `avx512::fused` takes them
        /// (`np` is always 1 here).
        #[target_feature(enable = $features)]
        pub unsafe fn $name(c: &FusedCall<u8, i8>, ep: &FusedEp) {
            match c.rows {
                6 => fused_kernel::<6, { $mode }>(c, ep),
                5 => fused_kernel::<5, { $mode }>(c, ep),
                4 => fused_kernel::<4, { $mode }>(c, ep),
                3 => fused_kernel::<3, { $mode }>(c, ep),
                2 => fused_kernel::<2, { $mode }>(c, ep),
                _ => fused_kernel::<1, { $mode }>(c, ep),
            }
        }
    };
}

#[inline(always)]
unsafe fn fused_kernel<const R: usize, const MODE: u8>(c: &FusedCall<u8, i8>, ep: &FusedEp) {
    use crate::kernels::packed::avx2::store_row;
    // SAFETY (whole function): the caller vouches for the extents (see `fused`).
    crate::kernels::packed::avx2::prefetch_out(c.y, c.ldy, R, c.cols_last, ep.to_int8);
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    dots::<R, MODE>(&mut acc, c.k, c.a, c.lda, c.b);
    let cols = c.cols_last;
    let half = |p: *const f32| [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))];
    let off = [
        _mm256_loadu_si256(ep.offset as *const __m256i),
        _mm256_loadu_si256(ep.offset.add(8) as *const __m256i),
    ];
    let w = half(ep.ws);
    // The bias holds `cols` values here; the rest of the panel adds zero.
    let mut bias = [0.0f32; NR];
    if let Some(bp) = ep.bias {
        std::ptr::copy_nonoverlapping(bp, bias.as_mut_ptr(), cols);
    }
    let bias = half(bias.as_ptr());
    let mut rows = [[0.0f32; NR]; MR];
    for (i, acc) in acc.iter().enumerate() {
        let v = dequant16(*acc, off, *ep.sa.add(i), w, bias);
        if cols == NR {
            store_row(v, c.y.add(i * c.ldy), ep.accumulate, ep.act, ep.to_int8);
        } else {
            _mm256_storeu_ps(rows[i].as_mut_ptr(), v[0]);
            _mm256_storeu_ps(rows[i].as_mut_ptr().add(8), v[1]);
        }
    }
    if cols < NR {
        // A partial last panel: the portable epilogue's column bound, bias already added.
        let ep = crate::kernels::packed::Epilogue {
            bias: None,
            accumulate: ep.accumulate,
            act: ep.act,
            to_int8: ep.to_int8,
        };
        crate::kernels::packed::finish(
            c.y,
            c.ldy,
            &rows[..R],
            cols,
            ep,
            0,
            crate::kernels::Isa::Avx2,
        );
    }
}

/// One row of 16 sums dequantized, bias added: `(acc + off) · (sa · ws) + bias`, a multiply
/// then an add (no FMA), as the portable `dequant` and `finish` do. (No closure here: a
/// closure's intrinsics do not inherit the caller's features and became calls.)
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dequant16(
    acc: [__m256i; 2],
    off: [__m256i; 2],
    sa: f32,
    ws: [__m256; 2],
    bias: [__m256; 2],
) -> [__m256; 2] {
    let s = _mm256_set1_ps(sa);
    let (q0, q1) = (
        _mm256_cvtepi32_ps(_mm256_add_epi32(acc[0], off[0])),
        _mm256_cvtepi32_ps(_mm256_add_epi32(acc[1], off[1])),
    );
    [
        _mm256_add_ps(_mm256_mul_ps(q0, _mm256_mul_ps(s, ws[0])), bias[0]),
        _mm256_add_ps(_mm256_mul_ps(q1, _mm256_mul_ps(s, ws[1])), bias[1]),
    ]
}

/// The dequantizing epilogue of whole 16-column rows of sums in memory (a strip of oneDNN's
/// product, in place): row by row `dequant16`, then `store_row` — the fused path's epilogue,
/// without the stack copies, the float tile and the second pass of the portable walk.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `acc` must address its rows of 16 sums, `y` as many rows
/// of 16 writable floats at stride `ldy`; `sa` one scale per row, `offset`, `ws` and the bias
/// (when given) 16 values each.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn finish(
    acc: AccRows<i32>,
    (sa, offset, ws): (&[f32], &[i32], &[f32]),
    y: *mut f32,
    ldy: usize,
    ep: Epilogue<'_>,
    c0: usize,
) {
    use crate::kernels::packed::avx2::store_row;
    assert!(offset.len() >= NR && ws.len() >= NR && sa.len() >= acc.rows);
    let off = [
        _mm256_loadu_si256(offset.as_ptr() as *const __m256i),
        _mm256_loadu_si256(offset.as_ptr().add(8) as *const __m256i),
    ];
    let w = [
        _mm256_loadu_ps(ws.as_ptr()),
        _mm256_loadu_ps(ws.as_ptr().add(8)),
    ];
    let bias = match ep.bias {
        Some(b) => {
            let b = b[c0..c0 + NR].as_ptr();
            [_mm256_loadu_ps(b), _mm256_loadu_ps(b.add(8))]
        }
        None => [_mm256_setzero_ps(); 2],
    };
    for (i, &s) in sa[..acc.rows].iter().enumerate() {
        let a = acc.row(i);
        let q = [
            _mm256_loadu_si256(a as *const __m256i),
            _mm256_loadu_si256(a.add(8) as *const __m256i),
        ];
        let v = dequant16(q, off, s, w, bias);
        store_row(v, y.add(i * ldy), ep.accumulate, ep.act, ep.to_int8);
    }
}

entry!(
    /// AVX2 `vpmaddubsw` + `vpmaddwd`: exact for weights within ±63 only.
    tile, "avx2,fma", MADDUBS
);
fused_entry!(fused, "avx2,fma", MADDUBS);
fused_entry!(fused_pairs, "avx2,fma", PAIRS);
fused_entry!(fused_wide, "avx2,fma", WIDE);
fused_entry!(fused_vnni, "avx2,fma,avxvnni", VNNI);
entry!(
    /// AVX2 `vpmaddubsw`, two groups added in 16 bits, then `vpmaddwd`: exact for weights
    /// within ±31 only.
    tile_pairs, "avx2,fma", PAIRS
);
entry!(
    /// AVX2 with both operands widened to i16: exact for any 8-bit weights.
    tile_wide, "avx2,fma", WIDE
);
entry!(
    /// AVX-VNNI `vpdpbusd`.
    tile_vnni, "avx2,fma,avxvnni", VNNI
);

#[inline(always)]
unsafe fn kernel<const R: usize, const MODE: u8>(
    k: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    tile: *mut [i32; NR],
) {
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    for (i, acc) in acc.iter_mut().enumerate() {
        // SAFETY (whole function): the caller vouches for R accumulator rows, R rows of k bytes
        // at stride lda from `a`, and k / 4 groups of 64 bytes at `b`.
        let t = (*tile.add(i)).as_ptr();
        acc[0] = _mm256_loadu_si256(t as *const __m256i);
        acc[1] = _mm256_loadu_si256(t.add(8) as *const __m256i);
    }
    dots::<R, MODE>(&mut acc, k, a, lda, b);
    for (i, acc) in acc.iter().enumerate() {
        let t = (*tile.add(i)).as_mut_ptr();
        _mm256_storeu_si256(t as *mut __m256i, acc[0]);
        _mm256_storeu_si256(t.add(8) as *mut __m256i, acc[1]);
    }
}

/// `acc += a · b` over `k` bytes of depth: R rows of `a` (stride `lda`), one panel of `b`.
///
/// # Safety
/// As [`kernel`]'s operands.
#[inline(always)]
unsafe fn dots<const R: usize, const MODE: u8>(
    acc: &mut [[__m256i; 2]; R],
    k: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
) {
    let ones = _mm256_set1_epi16(1);
    let low_bytes = _mm256_set1_epi16(0x00ff);
    let mut g0 = 0;
    if MODE == PAIRS {
        pairs::<R>(acc, k, a, lda, b);
        // An odd last group goes the 7-bit way (exact for 6-bit weights too).
        g0 = k / KG / 2 * 2;
    }
    for g in g0..k / KG {
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add((g + 8) * NR * KG));
        let b0 = _mm256_loadu_si256(b.add(g * NR * KG) as *const __m256i);
        let b1 = _mm256_loadu_si256(b.add(g * NR * KG + 32) as *const __m256i);
        // Wide mode: each i16 lane's low byte (k = 0, 2) and high byte (k = 1, 3), sign-extended.
        let (b0e, b0o, b1e, b1o) = if MODE == WIDE {
            (
                _mm256_srai_epi16(_mm256_slli_epi16(b0, 8), 8),
                _mm256_srai_epi16(b0, 8),
                _mm256_srai_epi16(_mm256_slli_epi16(b1, 8), 8),
                _mm256_srai_epi16(b1, 8),
            )
        } else {
            (b0, b0, b1, b1)
        };
        for (i, acc) in acc.iter_mut().enumerate() {
            let av = _mm256_set1_epi32((a.add(i * lda + g * KG) as *const i32).read_unaligned());
            match MODE {
                VNNI => {
                    acc[0] = _mm256_dpbusd_avx_epi32(acc[0], av, b0);
                    acc[1] = _mm256_dpbusd_avx_epi32(acc[1], av, b1);
                }
                WIDE => {
                    // Activations are unsigned: zero-extend each byte to its i16 lane.
                    let ae = _mm256_and_si256(av, low_bytes);
                    let ao = _mm256_srli_epi16(av, 8);
                    let p0 =
                        _mm256_add_epi32(_mm256_madd_epi16(ae, b0e), _mm256_madd_epi16(ao, b0o));
                    let p1 =
                        _mm256_add_epi32(_mm256_madd_epi16(ae, b1e), _mm256_madd_epi16(ao, b1o));
                    acc[0] = _mm256_add_epi32(acc[0], p0);
                    acc[1] = _mm256_add_epi32(acc[1], p1);
                }
                // MADDUBS, or PAIRS's odd last group.
                _ => {
                    // u8·s8 pairs → i16 (no saturation: |w| ≤ 63), then pairs of i16 → i32.
                    let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(av, b0), ones);
                    let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(av, b1), ones);
                    acc[0] = _mm256_add_epi32(acc[0], p0);
                    acc[1] = _mm256_add_epi32(acc[1], p1);
                }
            }
        }
    }
}

/// `acc += a · b` over the whole pairs of groups in `k` bytes, for weights within ±31: each
/// `vpmaddubsw` sum of two u8·s8 products lies within ±2 · 255 · 31 = ±15,810, so two groups'
/// sums add in 16 bits without overflow (±31,620) before one `vpmaddwd` widens them — three
/// multiplies per 64 products per column pair instead of four.
///
/// # Safety
/// As [`kernel`]'s operands; every weight within ±31.
#[inline(always)]
unsafe fn pairs<const R: usize>(
    acc: &mut [[__m256i; 2]; R],
    k: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
) {
    let ones = _mm256_set1_epi16(1);
    for g in (0..k / KG / 2).map(|p| 2 * p) {
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add((g + 8) * NR * KG));
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add((g + 9) * NR * KG));
        let b = b.add(g * NR * KG);
        let (b00, b01) = (
            _mm256_loadu_si256(b as *const __m256i),
            _mm256_loadu_si256(b.add(32) as *const __m256i),
        );
        let (b10, b11) = (b.add(NR * KG), b.add(NR * KG + 32));
        for (i, acc) in acc.iter_mut().enumerate() {
            let ap = a.add(i * lda + g * KG) as *const i32;
            let a0 = _mm256_set1_epi32(ap.read_unaligned());
            let a1 = _mm256_set1_epi32(ap.add(1).read_unaligned());
            let s0 = _mm256_add_epi16(_mm256_maddubs_epi16(a0, b00), maddubs_mem(a1, b10));
            let s1 = _mm256_add_epi16(_mm256_maddubs_epi16(a0, b01), maddubs_mem(a1, b11));
            acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(s0, ones));
            acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(s1, ones));
        }
    }
}

/// `vpmaddubsw` with its weights read from memory (the instruction's memory operand), so that
/// they take no register.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn maddubs_mem(a: __m256i, b: *const i8) -> __m256i {
    let r: __m256i;
    std::arch::asm!(
        "vpmaddubsw {r}, {a}, ymmword ptr [{b}]",
        r = lateout(ymm_reg) r,
        a = in(ymm_reg) a,
        b = in(reg) b,
        options(pure, readonly, nostack, preserves_flags)
    );
    r
}
