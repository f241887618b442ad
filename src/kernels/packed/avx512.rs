//! The AVX-512 f32 micro-kernel: 12 rows × two adjacent 16-column panels, one zmm accumulator
//! per row and panel (24 of the 32 registers), two weight loads and 12 broadcasts per 24 FMAs.

use super::{AccRows, ToInt8, NR};
use crate::kernels::driver::{FloatEp, FusedCall};
use crate::kernels::TileCall;
use std::arch::x86_64::*;

pub const MR: usize = 12;
pub const NP: usize = 2;
/// Steps ahead (one cache line of weights per step and panel) to prefetch.
const PREFETCH: usize = 8;

/// The table entry: `rows` 1..=12, `np` 1 or 2.
///
/// # Safety
/// The CPU must support AVX-512 F; the pointers as [`super::F32Tile`] describes.
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn tile(c: &TileCall<f32, f32, f32>) {
    let (rows, np, kc, a, _, b, bstride, acc) = c.parts();
    dispatch_tile!(kernel(kc, a, b, bstride, acc), rows rows => [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], panels np => [1, 2])
}

#[inline(always)]
unsafe fn kernel<const R: usize, const P: usize>(
    k: usize,
    a: *const f32,
    b: *const f32,
    bstride: usize,
    tile: *mut [f32; NR],
) {
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    for (i, row) in acc.iter_mut().enumerate() {
        for (q, v) in row.iter_mut().enumerate() {
            // SAFETY (whole function): the caller vouches for P × MR rows of accumulators, k
            // steps of MR floats at `a`, and k × NR floats at b + q * bstride for q < P.
            *v = _mm512_loadu_ps((*tile.add(q * MR + i)).as_ptr());
        }
    }
    for kk in 0..k {
        let mut bv = [_mm512_setzero_ps(); P];
        for (q, v) in bv.iter_mut().enumerate() {
            let bq = b.add(q * bstride + kk * NR);
            _mm_prefetch::<_MM_HINT_T0>(bq.wrapping_add(PREFETCH * NR) as *const i8);
            *v = _mm512_loadu_ps(bq);
        }
        for (i, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*a.add(kk * MR + i));
            for (q, v) in row.iter_mut().enumerate() {
                *v = _mm512_fmadd_ps(av, bv[q], *v);
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (q, v) in row.iter().enumerate() {
            _mm512_storeu_ps((*tile.add(q * MR + i)).as_mut_ptr(), *v);
        }
    }
}

/// The epilogue of one micro-tile's panel in one pass over zmm registers:
/// `y = act(acc + bias [+ y])`, stored under a column mask, in the order of the portable
/// epilogue (so without GELU the results are the same floats).
///
/// # Safety
/// The CPU must support AVX-512 F/BW/DQ/VL; `acc` must address its rows' first `cols` values,
/// `ep.bias`, when given, `cols` values; `y` `acc.rows` rows of `cols` (≤ 16) writable floats
/// at stride `ldy`.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
pub unsafe fn finish(acc: AccRows<f32>, ep: &FloatEp, y: *mut f32, ldy: usize, cols: usize) {
    let mask = col_mask(cols);
    let b = match ep.bias {
        Some(bp) => _mm512_maskz_loadu_ps(mask, bp),
        None => _mm512_setzero_ps(),
    };
    for i in 0..acc.rows {
        // SAFETY: the caller vouches for row i of acc and of y (cols values, masked).
        let v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, acc.row(i)), b);
        store_row(v, y.add(i * ldy), mask, ep.accumulate, ep.act, ep.to_int8);
    }
}

/// The whole depth and the epilogue in one call, reading the activations in place (row `i` at
/// `a + i * lda`; no packing): accumulators start at zero and stay in registers through
/// `y = act(acc + bias [+ y])` for `rows` (≤ 12) rows and `np` (≤ 2) panels, `cols_last`
/// columns in the last. The epilogue's operations are those of [`finish`], in its order.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/DQ/VL; `c.a` must hold `c.rows` rows of `c.k` floats at
/// stride `c.lda`; `c.b` `k × NR` floats per panel at stride `c.bstride`; `ep.bias` (when given)
/// the group's columns; `c.y` `rows` rows (stride `c.ldy`) of the group's columns.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
pub unsafe fn fused(c: &FusedCall<f32, f32>, ep: &FloatEp) {
    let (rows, np) = (c.rows, c.np);
    dispatch_tile!(fused_kernel(c, ep), rows rows => [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], panels np => [1, 2])
}

#[inline(always)]
unsafe fn fused_kernel<const R: usize, const P: usize>(c: &FusedCall<f32, f32>, ep: &FloatEp) {
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    // SAFETY (whole function): the caller vouches for the extents (see `fused`).
    prefetch_tile_out::<R, P>(c);
    for kk in 0..c.k {
        let mut bv = [_mm512_setzero_ps(); P];
        for (q, v) in bv.iter_mut().enumerate() {
            let bq = c.b.add(q * c.bstride + kk * NR);
            _mm_prefetch::<_MM_HINT_T0>(bq.wrapping_add(PREFETCH * NR) as *const i8);
            *v = _mm512_loadu_ps(bq);
        }
        for (i, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*c.a.add(i * c.lda + kk));
            for (q, v) in row.iter_mut().enumerate() {
                *v = _mm512_fmadd_ps(av, bv[q], *v);
            }
        }
    }
    store_float_tile(&spill(acc), c, ep);
}

/// The float epilogue of a fused tile held in registers: `y = act(acc + bias [+ y])`, panel
/// by panel, the last under its column mask.
///
/// # Safety
/// Called from code compiled with AVX-512 F/BW/DQ/VL; `c` and `ep` as the fused entries'.
#[inline(always)]
pub(crate) unsafe fn store_float_tile<const R: usize, const P: usize>(
    acc: &[[__m512; P]; R],
    c: &FusedCall<impl Sized, impl Sized>,
    ep: &FloatEp,
) {
    for q in 0..P {
        let mask = col_mask(if q + 1 == P { c.cols_last } else { NR });
        let bias = match ep.bias {
            Some(bp) => _mm512_maskz_loadu_ps(mask, bp.add(q * NR)),
            None => _mm512_setzero_ps(),
        };
        for (i, row) in acc.iter().enumerate() {
            let v = _mm512_add_ps(row[q], bias);
            let yp = c.y.add(i * c.ldy + q * NR);
            store_row(v, yp, mask, ep.accumulate, ep.act, ep.to_int8);
        }
    }
}

/// Ask for the output lines of the block at rows `r..r + rows`, columns `c0..c0 + cols` of a
/// row-major `ldy`-float output with intent to write (`prefetchw`), so that their
/// read-for-ownership from L2/L3 is under way before an epilogue stores to them: the AMX task
/// asks for the next block's lines while the tile unit computes, a fused tile for its own
/// before its depth loop.
///
/// # Safety
/// The CPU must have PREFETCHW (every AVX-512 host does). Prefetches never fault; the addresses
/// must only stay within the allocation of `y` for the arithmetic to be defined.
pub unsafe fn prefetch_out(
    y: *const f32,
    ldy: usize,
    r: usize,
    rows: usize,
    c0: usize,
    cols: usize,
) {
    for i in r..r + rows {
        let row = y.add(i * ldy + c0) as *const u8;
        for line in (0..cols * 4).step_by(64) {
            std::arch::asm!("prefetchw [{}]", in(reg) row.add(line), options(nostack, readonly, preserves_flags));
        }
    }
}

/// [`prefetch_out`] for the output lines of a fused tile of `R` rows and `P` panels, before its
/// depth loop. Wide outputs (1024 × 3072 floats) miss every cache, and their stores stalled the
/// epilogue: asked for early, the INT8 fused kernel ran 1024-row products with 2,304 and 3,072
/// columns 3–6% faster on Zen 4 (medians of paired rounds; BENCHMARKS.md).
///
/// # Safety
/// As [`prefetch_out`]; `c.y` as the fused entries take it.
#[inline(always)]
pub(crate) unsafe fn prefetch_tile_out<const R: usize, const P: usize>(
    c: &FusedCall<impl Sized, impl Sized>,
) {
    prefetch_out(c.y, c.ldy, 0, R, 0, (P - 1) * NR + c.cols_last);
}

/// The accumulators of a fused tile handed from its depth loop to its epilogue as a copy. The
/// epilogue's row loop indexes them at run time, so they live in memory there; without the copy
/// the depth loop's own array did too, and every call began with a `memset` of it (5% of the
/// INT8 fused kernel's samples at 1024 × 768 → 3072 on Zen 4).
#[inline(always)]
pub(crate) fn spill<T: Copy, const P: usize, const R: usize>(acc: [[T; P]; R]) -> [[T; P]; R] {
    acc
}

/// The dot-product instruction of a 4-byte group (two bf16 or four u8·s8), accumulated into a
/// zmm of 16 lanes: what distinguishes the bf16 and the INT8 inner loops.
pub(crate) trait Dot4 {
    type Acc: Copy;
    /// # Safety
    /// Called from code compiled with the instruction's features.
    unsafe fn dot(acc: Self::Acc, a: __m512i, b: __m512i) -> Self::Acc;
}

/// `acc += a · b` over `groups` 4-byte groups of depth: R rows of `a` at `lda` bytes apart,
/// P panels of `b` (64 bytes per group) `bstride` bytes apart. The one inner loop of the bf16
/// and INT8 tile and fused entries.
///
/// # Safety
/// Called from code compiled with AVX-512 F and `D`'s features; the caller vouches for the
/// extents.
#[inline(always)]
pub(crate) unsafe fn dots<D: Dot4, const R: usize, const P: usize>(
    acc: &mut [[D::Acc; P]; R],
    groups: usize,
    (a, lda): (*const u8, usize),
    (b, bstride): (*const u8, usize),
) {
    for g in 0..groups {
        let mut bv = [_mm512_setzero_si512(); P];
        for (q, v) in bv.iter_mut().enumerate() {
            let bq = b.add(q * bstride + g * 64);
            _mm_prefetch::<_MM_HINT_T0>(bq.wrapping_add(8 * 64) as *const i8);
            *v = _mm512_loadu_si512(bq as *const _);
        }
        for (i, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_epi32((a.add(i * lda + g * 4) as *const i32).read_unaligned());
            for (q, v) in row.iter_mut().enumerate() {
                *v = D::dot(*v, av, bv[q]);
            }
        }
    }
}

/// A tile call's accumulators (`P` panels × `mr` rows of 16 lanes, f32 or i32) into registers,
/// as their bits.
///
/// # Safety
/// Called from code compiled with AVX-512 F; `acc` must hold `P × mr` rows, `R ≤ mr`.
#[inline(always)]
pub(crate) unsafe fn load_acc<const R: usize, const P: usize, C>(
    acc: *mut [C; NR],
    mr: usize,
) -> [[__m512i; P]; R] {
    let mut v = [[_mm512_setzero_si512(); P]; R];
    for (i, row) in v.iter_mut().enumerate() {
        for (q, r) in row.iter_mut().enumerate() {
            *r = _mm512_loadu_si512(acc.add(q * mr + i) as *const _);
        }
    }
    v
}

/// The registers back into the accumulators [`load_acc`] read.
///
/// # Safety
/// As [`load_acc`].
#[inline(always)]
pub(crate) unsafe fn store_acc<const R: usize, const P: usize, C>(
    v: &[[__m512i; P]; R],
    acc: *mut [C; NR],
    mr: usize,
) {
    for (i, row) in v.iter().enumerate() {
        for (q, r) in row.iter().enumerate() {
            _mm512_storeu_si512(acc.add(q * mr + i) as *mut _, *r);
        }
    }
}

/// The tail of every AVX-512 epilogue for one row of one panel: `v [+ y]`, the activation, and
/// the masked store — the order of the portable epilogue — of the floats, or of their bytes
/// for the next INT8 layer (`to_int8`: the operations of `quantize_row_avx512`, in its order).
///
/// # Safety
/// Called from code compiled with AVX-512 F/BW/DQ/VL; `yp` must address the `mask`ed floats
/// (and `to_int8`, when given, be made for the `y` that holds them).
#[inline(always)]
pub(crate) unsafe fn store_row(
    mut v: __m512,
    yp: *mut f32,
    mask: __mmask16,
    accumulate: bool,
    act: Option<crate::kernels::Activation>,
    to_int8: Option<ToInt8>,
) {
    use crate::kernels::Activation;
    use crate::kernels::{gelu_erf_impl, gelu_tanh};
    if accumulate {
        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, yp));
    }
    match act {
        None => {}
        Some(Activation::Relu) => v = _mm512_max_ps(v, _mm512_setzero_ps()),
        Some(a) => {
            let mut t = [0.0f32; NR];
            _mm512_storeu_ps(t.as_mut_ptr(), v);
            if a == Activation::Gelu {
                t.iter_mut().for_each(|x| *x = gelu_erf_impl::<true>(*x));
            } else {
                t.iter_mut().for_each(|x| *x = gelu_tanh(*x));
            }
            v = _mm512_loadu_ps(t.as_ptr());
        }
    }
    match to_int8 {
        None => _mm512_mask_storeu_ps(yp, mask, v),
        Some(t) => {
            let max = crate::kernels::int8::ACT_MAX as f32;
            let v = _mm512_mul_ps(v, _mm512_set1_ps(t.inv));
            let v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-max)), _mm512_set1_ps(max));
            let bytes = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(v));
            let bytes = _mm_xor_si128(bytes, _mm_set1_epi8(-128));
            let q = t.byte(yp);
            if mask == 0xffff {
                _mm_storeu_si128(q as *mut __m128i, bytes);
            } else {
                _mm_mask_storeu_epi8(q as *mut i8, mask, bytes);
            }
        }
    }
}

/// The column mask of a panel with `cols` (≤ 16) valid columns.
#[inline(always)]
pub(crate) fn col_mask(cols: usize) -> __mmask16 {
    if cols >= NR {
        0xffff
    } else {
        (1u16 << cols) - 1
    }
}
