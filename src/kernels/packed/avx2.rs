//! The AVX2+FMA f32 micro-kernel: 6 rows × one 16-column panel, two ymm accumulators per row.

use super::NR;
use crate::kernels::TileCall;
use std::arch::x86_64::*;

pub const MR: usize = 6;
/// Steps ahead (one cache line of weights per step) to prefetch.
const PREFETCH: usize = 8;

/// The table entry (`np` is always 1 here).
///
/// # Safety
/// The CPU must support AVX2 and FMA; the pointers as [`super::F32Tile`] describes.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn tile(c: &TileCall<f32, f32, f32>) {
    let (rows, _, kc, a, _, b, _, acc) = c.parts();
    match rows {
        6 => kernel::<6>(kc, a, b, acc),
        5 => kernel::<5>(kc, a, b, acc),
        4 => kernel::<4>(kc, a, b, acc),
        3 => kernel::<3>(kc, a, b, acc),
        2 => kernel::<2>(kc, a, b, acc),
        _ => kernel::<1>(kc, a, b, acc),
    }
}

#[inline(always)]
unsafe fn kernel<const R: usize>(k: usize, a: *const f32, b: *const f32, tile: *mut [f32; NR]) {
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for (i, acc) in acc.iter_mut().enumerate() {
        // SAFETY (whole function): the caller vouches for R rows of accumulators, k steps of
        // MR floats at `a` and k × NR floats at `b`.
        let t = (*tile.add(i)).as_ptr();
        acc[0] = _mm256_loadu_ps(t);
        acc[1] = _mm256_loadu_ps(t.add(8));
    }
    for kk in 0..k {
        // Weights stream from memory at small batches: ask for them early. A prefetch past
        // the end of the slice is harmless (it never faults).
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add((kk + PREFETCH) * NR) as *const i8);
        let b0 = _mm256_loadu_ps(b.add(kk * NR));
        let b1 = _mm256_loadu_ps(b.add(kk * NR + 8));
        for (i, acc) in acc.iter_mut().enumerate() {
            let av = _mm256_broadcast_ss(&*a.add(kk * MR + i));
            acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
            acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        let t = (*tile.add(i)).as_mut_ptr();
        _mm256_storeu_ps(t, acc[0]);
        _mm256_storeu_ps(t.add(8), acc[1]);
    }
}

/// The AVX2 epilogue of whole 16-column rows in registers: `v = acc + bias [+ y]`, the
/// activation, then the floats stored or the next INT8 layer's bytes written — the operations
/// of `finish_impl` in its order, so the same floats and bytes. The scalar loop it replaces went
/// through a stack copy of each row that the vector loads could not forward from (84% of its
/// samples at 1024 × 768 → 768 on Zen 4 under `SAMP_MAX_ISA=avx2`). The rows are a micro-tile's
/// or, in place, a strip of oneDNN's product.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `acc` must address its rows of 16 floats, `y` as many
/// rows of 16 writable floats at stride `ldy`; the bias, when given, 16 values from `c0`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn finish_rows(
    y: *mut f32,
    ldy: usize,
    acc: super::AccRows<f32>,
    ep: super::Epilogue<'_>,
    c0: usize,
) {
    let (b0, b1) = match ep.bias {
        Some(b) => {
            let b = b[c0..c0 + NR].as_ptr();
            (_mm256_loadu_ps(b), _mm256_loadu_ps(b.add(8)))
        }
        None => (_mm256_setzero_ps(), _mm256_setzero_ps()),
    };
    for i in 0..acc.rows {
        let a = acc.row(i);
        let v = [
            _mm256_add_ps(_mm256_loadu_ps(a), b0),
            _mm256_add_ps(_mm256_loadu_ps(a.add(8)), b1),
        ];
        store_row(v, y.add(i * ldy), ep.accumulate, ep.act, ep.to_int8);
    }
}

/// Ask for the lines a fused tile's epilogue will store to, before its depth loop: `rows` rows
/// of `cols` floats at stride `ldy` from `y`, or their bytes where the epilogue writes the next
/// INT8 layer's input instead. Wide outputs (1024 × 2304 floats) miss every cache, and the
/// stores of a tile whose lines were not asked for waited on them: on the Zen 3 the INT8
/// kernels ran the 1024-row QKV and FFN-up products 1.2-1.3× faster with them asked for
/// (BENCHMARKS.md). `prefetcht0` (SSE, every x86-64) rather than `prefetchw`, which not every
/// AVX2 CPU has.
///
/// # Safety
/// With `to_int8`, the `rows` rows from `y` must lie in the output it was made for (its byte
/// address is an offset from that output's start). Otherwise none: prefetches never fault.
#[inline(always)]
pub(crate) unsafe fn prefetch_out(
    y: *const f32,
    ldy: usize,
    rows: usize,
    cols: usize,
    to_int8: Option<super::ToInt8>,
) {
    for i in 0..rows {
        let yp = y.wrapping_add(i * ldy);
        let (first, bytes) = match to_int8 {
            Some(t) => (t.byte(yp) as *const i8, cols),
            None => (yp as *const i8, 4 * cols),
        };
        _mm_prefetch::<_MM_HINT_T0>(first);
        _mm_prefetch::<_MM_HINT_T0>(first.wrapping_add(bytes - 1));
    }
}

/// The rest of the AVX2 epilogue for one row of 16 values (bias added): the residual, the
/// activation, then the floats stored or the next INT8 layer's bytes written.
///
/// # Safety
/// Called from code compiled with AVX2 and FMA; `yp` must address 16 writable floats (and
/// `to_int8`, when given, be made for the `y` that holds them).
#[inline(always)]
pub(crate) unsafe fn store_row(
    mut v: [__m256; 2],
    yp: *mut f32,
    accumulate: bool,
    act: Option<crate::kernels::Activation>,
    to_int8: Option<super::ToInt8>,
) {
    use crate::kernels::{gelu_erf_impl, gelu_tanh, Activation};
    if accumulate {
        v[0] = _mm256_add_ps(v[0], _mm256_loadu_ps(yp));
        v[1] = _mm256_add_ps(v[1], _mm256_loadu_ps(yp.add(8)));
    }
    match act {
        None => {}
        // `f32::max(x, 0.0)`: NaN becomes 0, as `vmaxps` gives its second operand.
        Some(Activation::Relu) => {
            v[0] = _mm256_max_ps(v[0], _mm256_setzero_ps());
            v[1] = _mm256_max_ps(v[1], _mm256_setzero_ps());
        }
        Some(act) => {
            let mut t = [0.0f32; NR];
            _mm256_storeu_ps(t.as_mut_ptr(), v[0]);
            _mm256_storeu_ps(t.as_mut_ptr().add(8), v[1]);
            if act == Activation::Gelu {
                t.iter_mut().for_each(|x| *x = gelu_erf_impl::<true>(*x));
            } else {
                t.iter_mut().for_each(|x| *x = gelu_tanh(*x));
            }
            v = [
                _mm256_loadu_ps(t.as_ptr()),
                _mm256_loadu_ps(t.as_ptr().add(8)),
            ];
        }
    }
    match to_int8 {
        None => {
            _mm256_storeu_ps(yp, v[0]);
            _mm256_storeu_ps(yp.add(8), v[1]);
        }
        Some(t) => {
            let bytes = quantize16(v, t.inv);
            _mm_storeu_si128(t.byte(yp) as *mut __m128i, bytes);
        }
    }
}

/// 16 floats as INT8 input bytes (`q + 128`): the operations of `quantize_row_avx2`.
#[inline(always)]
unsafe fn quantize16(v: [__m256; 2], inv: f32) -> __m128i {
    let max = crate::kernels::int8::ACT_MAX as f32;
    let (vinv, lo, hi) = (
        _mm256_set1_ps(inv),
        _mm256_set1_ps(-max),
        _mm256_set1_ps(max),
    );
    let conv = |x: __m256| {
        _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(x, vinv), lo), hi))
    };
    // packs interleave 128-bit lanes: [a0-3 b0-3 | a4-7 b4-7] as i16, then as bytes dwords
    // [a0-3 b0-3 a0-3 b0-3 | a4-7 b4-7 a4-7 b4-7]: dwords 0, 4, 1, 5 are the 16 in order.
    let words = _mm256_packs_epi32(conv(v[0]), conv(v[1]));
    let bytes = _mm256_packs_epi16(words, words);
    let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 0, 0, 0, 0));
    _mm_xor_si128(_mm256_castsi256_si128(bytes), _mm_set1_epi8(-128))
}
