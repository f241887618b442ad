use super::{KG, MR, NR};
use std::arch::x86_64::*;

/// `tile[..rows] += a · b` with AVX-512 VNNI: a 64-byte group (16 columns × 4 k) is one
/// register, so each row needs one broadcast and one `vpdpbusd` per group.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VNNI; `a` and `b` as for the AVX2 kernel.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
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
        6 => kernel::<6>(k, a, lda, b, tile),
        5 => kernel::<5>(k, a, lda, b, tile),
        4 => kernel::<4>(k, a, lda, b, tile),
        3 => kernel::<3>(k, a, lda, b, tile),
        2 => kernel::<2>(k, a, lda, b, tile),
        _ => kernel::<1>(k, a, lda, b, tile),
    }
}

#[inline(always)]
unsafe fn kernel<const R: usize>(
    k: usize,
    a: &[u8],
    lda: usize,
    b: &[i8],
    tile: &mut [[i32; NR]; MR],
) {
    let mut acc = [_mm512_setzero_si512(); R];
    for (i, acc) in acc.iter_mut().enumerate() {
        *acc = _mm512_loadu_si512(tile[i].as_ptr() as *const _);
    }
    let ap = a.as_ptr();
    let bp = b.as_ptr();
    for g in 0..k / KG {
        // SAFETY (whole loop): as in the AVX2 kernel.
        let bv = _mm512_loadu_si512(bp.add(g * NR * KG) as *const _);
        for (i, acc) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_epi32((ap.add(i * lda + g * KG) as *const i32).read_unaligned());
            *acc = _mm512_dpbusd_epi32(*acc, av, bv);
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        _mm512_storeu_si512(tile[i].as_mut_ptr() as *mut _, *acc);
    }
}
