use super::{KG, MR, NR};
use std::arch::x86_64::*;

/// `tile[..rows] += a · b` for one panel slice.
///
/// # Safety
/// The CPU must support AVX2. `a` must hold `rows` rows of `k` bytes at stride `lda` (the
/// last row may end right after its `k` bytes); `b` must hold `k / 4` groups of 64 bytes.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn tile(
    rows: usize,
    k: usize,
    a: &[u8],
    lda: usize,
    b: &[i8],
    tile: &mut [[i32; NR]; MR],
) {
    assert!((1..=MR).contains(&rows) && k.is_multiple_of(KG));
    assert!(a.len() >= (rows - 1) * lda + k && b.len() >= k * NR);
    match rows {
        6 => kernel::<6, false>(k, a, lda, b, tile),
        5 => kernel::<5, false>(k, a, lda, b, tile),
        4 => kernel::<4, false>(k, a, lda, b, tile),
        3 => kernel::<3, false>(k, a, lda, b, tile),
        2 => kernel::<2, false>(k, a, lda, b, tile),
        _ => kernel::<1, false>(k, a, lda, b, tile),
    }
}

/// As [`tile`], with AVX-VNNI's `vpdpbusd` doing the u8·s8 products and their i32 sums.
///
/// # Safety
/// As [`tile`], and the CPU must support AVX-VNNI.
#[target_feature(enable = "avx2,fma,avxvnni")]
pub unsafe fn tile_vnni(
    rows: usize,
    k: usize,
    a: &[u8],
    lda: usize,
    b: &[i8],
    tile: &mut [[i32; NR]; MR],
) {
    assert!((1..=MR).contains(&rows) && k.is_multiple_of(KG));
    assert!(a.len() >= (rows - 1) * lda + k && b.len() >= k * NR);
    match rows {
        6 => kernel::<6, true>(k, a, lda, b, tile),
        5 => kernel::<5, true>(k, a, lda, b, tile),
        4 => kernel::<4, true>(k, a, lda, b, tile),
        3 => kernel::<3, true>(k, a, lda, b, tile),
        2 => kernel::<2, true>(k, a, lda, b, tile),
        _ => kernel::<1, true>(k, a, lda, b, tile),
    }
}

#[inline(always)]
unsafe fn kernel<const R: usize, const VNNI: bool>(
    k: usize,
    a: &[u8],
    lda: usize,
    b: &[i8],
    tile: &mut [[i32; NR]; MR],
) {
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    for (i, acc) in acc.iter_mut().enumerate() {
        acc[0] = _mm256_loadu_si256(tile[i].as_ptr() as *const __m256i);
        acc[1] = _mm256_loadu_si256(tile[i].as_ptr().add(8) as *const __m256i);
    }
    let ones = _mm256_set1_epi16(1);
    let ap = a.as_ptr();
    let bp = b.as_ptr();
    for g in 0..k / KG {
        // SAFETY (whole loop): g < k/4, so the 64 bytes at b[g*64..] and the 4 bytes at
        // a[i*lda + g*4..] for i < R are in bounds (asserted by `tile`).
        _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add((g + 8) * NR * KG));
        let b0 = _mm256_loadu_si256(bp.add(g * NR * KG) as *const __m256i);
        let b1 = _mm256_loadu_si256(bp.add(g * NR * KG + 32) as *const __m256i);
        for (i, acc) in acc.iter_mut().enumerate() {
            let av = _mm256_set1_epi32((ap.add(i * lda + g * KG) as *const i32).read_unaligned());
            if VNNI {
                acc[0] = _mm256_dpbusd_avx_epi32(acc[0], av, b0);
                acc[1] = _mm256_dpbusd_avx_epi32(acc[1], av, b1);
            } else {
                // u8·s8 pairs → i16 (no saturation: |w| ≤ 63), then pairs of i16 → i32.
                let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(av, b0), ones);
                let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(av, b1), ones);
                acc[0] = _mm256_add_epi32(acc[0], p0);
                acc[1] = _mm256_add_epi32(acc[1], p1);
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        _mm256_storeu_si256(tile[i].as_mut_ptr() as *mut __m256i, acc[0]);
        _mm256_storeu_si256(tile[i].as_mut_ptr().add(8) as *mut __m256i, acc[1]);
    }
}
