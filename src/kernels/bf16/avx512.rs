//! The AVX512_BF16 micro-kernel: 8 rows × three adjacent 16-column panels, 24 zmm f32
//! accumulators; per pair of depth steps 3 weight loads and 8 broadcasts feed 24 `vdpbf16ps`.
//! Also the AVX-512 row rounding (integer arithmetic, the same as [`super::round`]).

use super::{KG, NR};
use std::arch::x86_64::*;

pub const MR: usize = 8;
pub const NP: usize = 3;

pub fn supported() -> bool {
    crate::kernels::has_avx512() && is_x86_feature_detected!("avx512bf16")
}

/// `dst[i] = round(src[i])`, 16 per step: `(b + 0x7fff + ((b >> 16) & 1)) >> 16`, NaN → quiet.
///
/// # Safety
/// The CPU must support AVX-512 F/BW.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn round_row(src: &[f32], dst: &mut [u16]) {
    let n = src.len().min(dst.len());
    let body = n / 16 * 16;
    let (bias, one, quiet) = (
        _mm512_set1_epi32(0x7fff),
        _mm512_set1_epi32(1),
        _mm512_set1_epi32(0x40),
    );
    for i in (0..body).step_by(16) {
        // SAFETY: i + 16 <= body <= both lengths.
        let v = _mm512_loadu_ps(src.as_ptr().add(i));
        let b = _mm512_castps_si512(v);
        let odd = _mm512_and_si512(_mm512_srli_epi32(b, 16), one);
        let r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(b, bias), odd), 16);
        let nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        let r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(b, 16), quiet);
        _mm256_storeu_si256(
            dst.as_mut_ptr().add(i) as *mut __m256i,
            _mm512_cvtepi32_epi16(r),
        );
    }
    for (d, &v) in dst[body..n].iter_mut().zip(&src[body..n]) {
        *d = super::round(v);
    }
}

/// The table entry: `rows` 1..=8, `np` 1..=3.
///
/// # Safety
/// The CPU must support AVX-512 F and BF16; the pointers as [`super::Bf16Tile`] describes.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile(
    rows: usize,
    np: usize,
    kc: usize,
    a: *const u16,
    lda: usize,
    b: *const u16,
    bstride: usize,
    acc: *mut [f32; NR],
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
    a: *const u16,
    lda: usize,
    b: *const u16,
    bstride: usize,
    acc: *mut [f32; NR],
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
    a: *const u16,
    lda: usize,
    b: *const u16,
    bstride: usize,
    tile: *mut [f32; NR],
) {
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    for (i, row) in acc.iter_mut().enumerate() {
        for (q, v) in row.iter_mut().enumerate() {
            // SAFETY (whole function): the caller vouches for P × MR accumulator rows, R rows
            // of k values at stride lda from `a`, and k / 2 groups of 32 values at
            // b + q * bstride for q < P.
            *v = _mm512_loadu_ps((*tile.add(q * MR + i)).as_ptr());
        }
    }
    for g in 0..k / KG {
        let mut bv = [_mm512_setzero_si512(); P];
        for (q, v) in bv.iter_mut().enumerate() {
            let bq = b.add(q * bstride + g * NR * KG);
            _mm_prefetch::<_MM_HINT_T0>(bq.wrapping_add(8 * NR * KG) as *const i8);
            *v = _mm512_loadu_si512(bq as *const _);
        }
        for (i, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_epi32((a.add(i * lda + g * KG) as *const i32).read_unaligned());
            let av: __m512bh = std::mem::transmute(av);
            for (q, v) in row.iter_mut().enumerate() {
                let bq: __m512bh = std::mem::transmute(bv[q]);
                *v = _mm512_dpbf16_ps(*v, av, bq);
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (q, v) in row.iter().enumerate() {
            _mm512_storeu_ps((*tile.add(q * MR + i)).as_mut_ptr(), *v);
        }
    }
}

/// The whole depth and the epilogue in one call: accumulators start at zero and stay in
/// registers through `y = act(acc + bias [+ y])` for `rows` (≤ 8) rows and `np` (≤ 3) panels,
/// `cols_last` columns in the last (the epilogue of the f32 kernels, in the same order).
///
/// # Safety
/// As [`tile`] for `a` and `b` over `kp` values; `bias` (when given) the group's columns; `y`
/// `rows` rows (stride `ldy`) of the group's columns.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn fused(
    rows: usize,
    np: usize,
    kp: usize,
    a: *const u16,
    lda: usize,
    b: *const u16,
    bstride: usize,
    y: *mut f32,
    ldy: usize,
    cols_last: usize,
    bias: Option<*const f32>,
    accumulate: bool,
    act: Option<crate::kernels::Activation>,
) {
    let ep = Ep {
        y,
        ldy,
        cols_last,
        bias,
        accumulate,
        act,
    };
    match np {
        3 => fused_rows::<3>(rows, kp, a, lda, b, bstride, &ep),
        2 => fused_rows::<2>(rows, kp, a, lda, b, bstride, &ep),
        _ => fused_rows::<1>(rows, kp, a, lda, b, bstride, &ep),
    }
}

struct Ep {
    y: *mut f32,
    ldy: usize,
    cols_last: usize,
    bias: Option<*const f32>,
    accumulate: bool,
    act: Option<crate::kernels::Activation>,
}

#[inline(always)]
unsafe fn fused_rows<const P: usize>(
    rows: usize,
    kp: usize,
    a: *const u16,
    lda: usize,
    b: *const u16,
    bstride: usize,
    ep: &Ep,
) {
    macro_rules! go {
        ($($r:literal),*) => {
            match rows {
                $($r => fused_kernel::<$r, P>(kp, a, lda, b, bstride, ep),)*
                _ => unreachable!("1..=8 rows"),
            }
        };
    }
    go!(1, 2, 3, 4, 5, 6, 7, 8)
}

#[inline(always)]
unsafe fn fused_kernel<const R: usize, const P: usize>(
    k: usize,
    a: *const u16,
    lda: usize,
    b: *const u16,
    bstride: usize,
    ep: &Ep,
) {
    use crate::kernels::packed::avx512::{col_mask, store_row};
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    for g in 0..k / KG {
        // SAFETY (whole function): the caller vouches for the extents (see `fused`).
        let mut bv = [_mm512_setzero_si512(); P];
        for (q, v) in bv.iter_mut().enumerate() {
            let bq = b.add(q * bstride + g * NR * KG);
            _mm_prefetch::<_MM_HINT_T0>(bq.wrapping_add(8 * NR * KG) as *const i8);
            *v = _mm512_loadu_si512(bq as *const _);
        }
        for (i, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_epi32((a.add(i * lda + g * KG) as *const i32).read_unaligned());
            let av: __m512bh = std::mem::transmute(av);
            for (q, v) in row.iter_mut().enumerate() {
                let bq: __m512bh = std::mem::transmute(bv[q]);
                *v = _mm512_dpbf16_ps(*v, av, bq);
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
