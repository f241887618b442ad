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
