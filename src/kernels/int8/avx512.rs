//! The AVX-512 VNNI INT8 micro-kernel: 8 rows × three adjacent 16-column panels, one zmm
//! accumulator per row and panel (24 of 32 registers). Per group of 4 depth steps: 3 weight
//! loads and 8 broadcasts feed 24 `vpdpbusd` (the 6 × 16 tile it replaces needed 7 loads per 6).
//! `vpdpbusd` does not saturate, so any 8-bit weights are exact.

use super::{KG, NR};
use crate::kernels::packed::avx512::{col_mask, store_row};
use std::arch::x86_64::*;

pub const MR: usize = 8;
pub const NP: usize = 3;

pub fn supported() -> bool {
    crate::kernels::has_avx512() && is_x86_feature_detected!("avx512vnni")
}

/// The table entry: `rows` 1..=8, `np` 1..=3.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VNNI; the pointers as [`super::Int8Tile`] describes.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile(
    rows: usize,
    np: usize,
    kc: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    bstride: usize,
    acc: *mut [i32; NR],
) {
    match np {
        3 => by_rows::<3>(rows, kc, a, lda, b, bstride, acc),
        2 => by_rows::<2>(rows, kc, a, lda, b, bstride, acc),
        _ => by_rows::<1>(rows, kc, a, lda, b, bstride, acc),
    }
}

#[inline(always)]
unsafe fn by_rows<const P: usize>(
    rows: usize,
    kc: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    bstride: usize,
    acc: *mut [i32; NR],
) {
    match rows {
        8 => kernel::<8, P>(kc, a, lda, b, bstride, acc),
        7 => kernel::<7, P>(kc, a, lda, b, bstride, acc),
        6 => kernel::<6, P>(kc, a, lda, b, bstride, acc),
        5 => kernel::<5, P>(kc, a, lda, b, bstride, acc),
        4 => kernel::<4, P>(kc, a, lda, b, bstride, acc),
        3 => kernel::<3, P>(kc, a, lda, b, bstride, acc),
        2 => kernel::<2, P>(kc, a, lda, b, bstride, acc),
        _ => kernel::<1, P>(kc, a, lda, b, bstride, acc),
    }
}

#[inline(always)]
unsafe fn kernel<const R: usize, const P: usize>(
    k: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    bstride: usize,
    tile: *mut [i32; NR],
) {
    let mut acc = [[_mm512_setzero_si512(); P]; R];
    for (i, row) in acc.iter_mut().enumerate() {
        for (q, v) in row.iter_mut().enumerate() {
            // SAFETY (whole function): the caller vouches for P × MR accumulator rows, R rows
            // of k bytes at stride lda from `a`, and k / 4 groups of 64 bytes at
            // b + q * bstride for q < P.
            *v = _mm512_loadu_si512((*tile.add(q * MR + i)).as_ptr() as *const _);
        }
    }
    for g in 0..k / KG {
        let mut bv = [_mm512_setzero_si512(); P];
        for (q, v) in bv.iter_mut().enumerate() {
            let bq = b.add(q * bstride + g * NR * KG);
            _mm_prefetch::<_MM_HINT_T0>(bq.wrapping_add(8 * NR * KG));
            *v = _mm512_loadu_si512(bq as *const _);
        }
        for (i, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_epi32((a.add(i * lda + g * KG) as *const i32).read_unaligned());
            for (q, v) in row.iter_mut().enumerate() {
                *v = _mm512_dpbusd_epi32(*v, av, bv[q]);
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (q, v) in row.iter().enumerate() {
            _mm512_storeu_si512((*tile.add(q * MR + i)).as_mut_ptr() as *mut _, *v);
        }
    }
}

/// The dequantizing epilogue of one micro-tile's panel in one pass over zmm registers:
/// `y = act((acc + offset) · (sa[row] · ws) + bias [+ y])`, stored under a column mask. The
/// operations and their order are those of the portable `dequant` + `finish` (a multiply, then
/// an add: no FMA), so the results are the same floats.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/DQ/VL; `offset`, `ws` (and `bias`, when given) must hold
/// 16 values; `y` must address `acc.len()` rows of `cols` (≤ 16) writable floats at stride `ldy`.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn finish(
    acc: &[[i32; NR]],
    sa: &[f32],
    offset: &[i32],
    ws: &[f32],
    bias: Option<&[f32]>,
    y: *mut f32,
    ldy: usize,
    cols: usize,
    accumulate: bool,
    act: Option<crate::kernels::Activation>,
) {
    assert!(offset.len() >= NR && ws.len() >= NR && sa.len() >= acc.len());
    let mask = col_mask(cols);
    let off = _mm512_loadu_si512(offset.as_ptr() as *const _);
    let w = _mm512_loadu_ps(ws.as_ptr());
    let b = match bias {
        Some(b) => {
            assert!(b.len() >= cols);
            _mm512_maskz_loadu_ps(mask, b.as_ptr())
        }
        None => _mm512_setzero_ps(),
    };
    for (i, row) in acc.iter().enumerate() {
        // SAFETY: the caller vouches for row i of y (cols floats, masked).
        let yp = y.add(i * ldy);
        let q = _mm512_add_epi32(_mm512_loadu_si512(row.as_ptr() as *const _), off);
        let scale = _mm512_mul_ps(_mm512_set1_ps(sa[i]), w);
        let v = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(q), scale), b);
        store_row(v, yp, mask, accumulate, act);
    }
}

/// What the fused epilogue needs, for the panel group of one call (pointers at its first
/// column / row).
pub struct FusedEp {
    /// Per column: the unsigned-activation compensation (`np × 16` values).
    pub offset: *const i32,
    /// Per column: weight scales (`np × 16`, zero-padded).
    pub ws: *const f32,
    /// Per column bias (`cols` of the group), if any.
    pub bias: Option<*const f32>,
    /// Per row: activation scales (`rows`).
    pub sa: *const f32,
    pub accumulate: bool,
    pub act: Option<crate::kernels::Activation>,
}

/// The whole depth and the epilogue in one call: accumulators start at zero and never leave the
/// registers; then `y = act((acc + offset) · (sa · ws) + bias [+ y])` for `rows` rows and `np`
/// panels (`cols_last` columns in the last), with the operations of `finish` in its order.
///
/// # Safety
/// As [`tile`] for `a` and `b` over `kp` bytes; `y` must address `rows` rows (stride `ldy`) of
/// the group's columns; the pointers in `ep` as [`FusedEp`] describes.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn fused(
    rows: usize,
    np: usize,
    kp: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    bstride: usize,
    y: *mut f32,
    ldy: usize,
    cols_last: usize,
    ep: &FusedEp,
) {
    match np {
        3 => fused_rows::<3>(rows, kp, a, lda, b, bstride, y, ldy, cols_last, ep),
        2 => fused_rows::<2>(rows, kp, a, lda, b, bstride, y, ldy, cols_last, ep),
        _ => fused_rows::<1>(rows, kp, a, lda, b, bstride, y, ldy, cols_last, ep),
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn fused_rows<const P: usize>(
    rows: usize,
    kp: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    bstride: usize,
    y: *mut f32,
    ldy: usize,
    cols_last: usize,
    ep: &FusedEp,
) {
    macro_rules! go {
        ($($r:literal),*) => {
            match rows {
                $($r => fused_kernel::<$r, P>(kp, a, lda, b, bstride, y, ldy, cols_last, ep),)*
                _ => unreachable!("1..=8 rows"),
            }
        };
    }
    go!(1, 2, 3, 4, 5, 6, 7, 8)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn fused_kernel<const R: usize, const P: usize>(
    k: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    bstride: usize,
    y: *mut f32,
    ldy: usize,
    cols_last: usize,
    ep: &FusedEp,
) {
    let mut acc = [[_mm512_setzero_si512(); P]; R];
    for g in 0..k / KG {
        // SAFETY (whole function): the caller vouches for the extents (see `fused`).
        let mut bv = [_mm512_setzero_si512(); P];
        for (q, v) in bv.iter_mut().enumerate() {
            let bq = b.add(q * bstride + g * NR * KG);
            _mm_prefetch::<_MM_HINT_T0>(bq.wrapping_add(8 * NR * KG));
            *v = _mm512_loadu_si512(bq as *const _);
        }
        for (i, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_epi32((a.add(i * lda + g * KG) as *const i32).read_unaligned());
            for (q, v) in row.iter_mut().enumerate() {
                *v = _mm512_dpbusd_epi32(*v, av, bv[q]);
            }
        }
    }
    for q in 0..P {
        let mask = col_mask(if q + 1 == P { cols_last } else { NR });
        let off = _mm512_loadu_si512(ep.offset.add(q * NR) as *const _);
        let w = _mm512_loadu_ps(ep.ws.add(q * NR));
        let bias = match ep.bias {
            Some(bp) => _mm512_maskz_loadu_ps(mask, bp.add(q * NR)),
            None => _mm512_setzero_ps(),
        };
        for (i, row) in acc.iter().enumerate() {
            let yp = y.add(i * ldy + q * NR);
            let qv = _mm512_add_epi32(row[q], off);
            let scale = _mm512_mul_ps(_mm512_set1_ps(*ep.sa.add(i)), w);
            let v = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(qv), scale), bias);
            store_row(v, yp, mask, ep.accumulate, ep.act);
        }
    }
}
