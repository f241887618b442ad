//! The AVX-512 f32 micro-kernel: 12 rows × two adjacent 16-column panels, one zmm accumulator
//! per row and panel (24 of the 32 registers), two weight loads and 12 broadcasts per 24 FMAs.

use super::NR;
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
pub unsafe fn tile(
    rows: usize,
    np: usize,
    kc: usize,
    a: *const f32,
    b: *const f32,
    bstride: usize,
    acc: *mut [f32; NR],
) {
    if np >= 2 {
        by_rows::<2>(rows, kc, a, b, bstride, acc)
    } else {
        by_rows::<1>(rows, kc, a, b, bstride, acc)
    }
}

#[inline(always)]
unsafe fn by_rows<const P: usize>(
    rows: usize,
    kc: usize,
    a: *const f32,
    b: *const f32,
    bstride: usize,
    acc: *mut [f32; NR],
) {
    match rows {
        12 => kernel::<12, P>(kc, a, b, bstride, acc),
        11 => kernel::<11, P>(kc, a, b, bstride, acc),
        10 => kernel::<10, P>(kc, a, b, bstride, acc),
        9 => kernel::<9, P>(kc, a, b, bstride, acc),
        8 => kernel::<8, P>(kc, a, b, bstride, acc),
        7 => kernel::<7, P>(kc, a, b, bstride, acc),
        6 => kernel::<6, P>(kc, a, b, bstride, acc),
        5 => kernel::<5, P>(kc, a, b, bstride, acc),
        4 => kernel::<4, P>(kc, a, b, bstride, acc),
        3 => kernel::<3, P>(kc, a, b, bstride, acc),
        2 => kernel::<2, P>(kc, a, b, bstride, acc),
        _ => kernel::<1, P>(kc, a, b, bstride, acc),
    }
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
/// The CPU must support AVX-512 F/BW/DQ/VL; `bias`, when given, must hold `cols` values; `y`
/// must address `tile.len()` rows of `cols` (≤ 16) writable floats at stride `ldy`.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
pub unsafe fn finish(
    tile: &[[f32; NR]],
    bias: Option<&[f32]>,
    y: *mut f32,
    ldy: usize,
    cols: usize,
    accumulate: bool,
    act: Option<crate::kernels::Activation>,
) {
    let mask = col_mask(cols);
    let b = match bias {
        Some(b) => {
            assert!(b.len() >= cols);
            _mm512_maskz_loadu_ps(mask, b.as_ptr())
        }
        None => _mm512_setzero_ps(),
    };
    for (i, row) in tile.iter().enumerate() {
        // SAFETY: the caller vouches for row i of y (cols floats, masked).
        let v = _mm512_add_ps(_mm512_loadu_ps(row.as_ptr()), b);
        store_row(v, y.add(i * ldy), mask, accumulate, act);
    }
}

/// The whole depth and the epilogue in one call, reading the activations in place (row `i` at
/// `a + i * lda`; no packing): accumulators start at zero and stay in registers through
/// `y = act(acc + bias [+ y])` for `rows` (≤ 12) rows and `np` (≤ 2) panels, `cols_last`
/// columns in the last. The epilogue's operations are those of [`finish`], in its order.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/DQ/VL; `a` must hold `rows` rows of `k` floats at stride
/// `lda`; `b` `k × NR` floats per panel at stride `bstride`; `bias` (when given) the group's
/// columns; `y` `rows` rows (stride `ldy`) of the group's columns.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn fused(
    rows: usize,
    np: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    bstride: usize,
    y: *mut f32,
    ldy: usize,
    cols_last: usize,
    bias: Option<*const f32>,
    accumulate: bool,
    act: Option<crate::kernels::Activation>,
) {
    let ep = FusedEp {
        bias,
        accumulate,
        act,
        y,
        ldy,
        cols_last,
    };
    if np >= 2 {
        fused_rows::<2>(rows, k, a, lda, b, bstride, &ep)
    } else {
        fused_rows::<1>(rows, k, a, lda, b, bstride, &ep)
    }
}

struct FusedEp {
    bias: Option<*const f32>,
    accumulate: bool,
    act: Option<crate::kernels::Activation>,
    y: *mut f32,
    ldy: usize,
    cols_last: usize,
}

#[inline(always)]
unsafe fn fused_rows<const P: usize>(
    rows: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    bstride: usize,
    ep: &FusedEp,
) {
    macro_rules! go {
        ($($r:literal),*) => {
            match rows {
                $($r => fused_kernel::<$r, P>(k, a, lda, b, bstride, ep),)*
                _ => unreachable!("1..=12 rows"),
            }
        };
    }
    go!(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)
}

#[inline(always)]
unsafe fn fused_kernel<const R: usize, const P: usize>(
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    bstride: usize,
    ep: &FusedEp,
) {
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    for kk in 0..k {
        // SAFETY (whole function): the caller vouches for the extents (see `fused`).
        let mut bv = [_mm512_setzero_ps(); P];
        for (q, v) in bv.iter_mut().enumerate() {
            let bq = b.add(q * bstride + kk * NR);
            _mm_prefetch::<_MM_HINT_T0>(bq.wrapping_add(PREFETCH * NR) as *const i8);
            *v = _mm512_loadu_ps(bq);
        }
        for (i, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*a.add(i * lda + kk));
            for (q, v) in row.iter_mut().enumerate() {
                *v = _mm512_fmadd_ps(av, bv[q], *v);
            }
        }
    }
    for q in 0..P {
        let mask = col_mask(if q + 1 == P { ep.cols_last } else { NR });
        let bias = match ep.bias {
            Some(bp) => _mm512_maskz_loadu_ps(mask, bp.add(q * NR)),
            None => _mm512_setzero_ps(),
        };
        for (i, row) in acc.iter().enumerate() {
            let v = _mm512_add_ps(row[q], bias);
            store_row(
                v,
                ep.y.add(i * ep.ldy + q * NR),
                mask,
                ep.accumulate,
                ep.act,
            );
        }
    }
}

/// The tail of every AVX-512 epilogue for one row of one panel: `v [+ y]`, the activation, and
/// the masked store — the order of the portable epilogue.
///
/// # Safety
/// Called from code compiled with AVX-512 F/BW/DQ/VL; `yp` must address the `mask`ed floats.
#[inline(always)]
pub(crate) unsafe fn store_row(
    mut v: __m512,
    yp: *mut f32,
    mask: __mmask16,
    accumulate: bool,
    act: Option<crate::kernels::Activation>,
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
    _mm512_mask_storeu_ps(yp, mask, v);
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
