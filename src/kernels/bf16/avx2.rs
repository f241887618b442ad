//! The AVX2+FMA BF16 micro-kernel, for hosts without a bf16 instruction (the AVX2-only tier,
//! and AVX-512 CPUs without AVX512_BF16): 6 rows × one 16-column panel, 12 ymm f32
//! accumulators. A bf16 value is the top half of an f32, so widening is one integer operation:
//! `vpand` with `0xffff0000` keeps the odd value of a pair, `vpslld 16` moves the even one up.
//! Products of two bf16 are exact in f32, so each `vfmadd231ps` adds exactly the product the
//! portable kernel adds; per pair the odd product goes first, as there. With the same depth per
//! pass the two kernels give the same floats (bit for bit, where no product is subnormal).
//! Also the AVX2 row rounding (integer arithmetic, the same as [`super::round`]), to bf16 and
//! to the f32 of the rounded value.

use super::KG;
use crate::kernels::packed::NR;
use crate::kernels::TileCall;
use std::arch::x86_64::*;

pub const MR: usize = 6;
/// Groups ahead (one cache line of weights per group) to prefetch.
const PREFETCH: usize = 8;

pub fn supported() -> bool {
    crate::kernels::has_avx2_fma()
}

/// `dst[i] = round(src[i])`, 16 per step: `(b + 0x7fff + ((b >> 16) & 1)) >> 16`, NaN → quiet.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn round_row(src: &[f32], dst: &mut [u16]) {
    let n = src.len().min(dst.len());
    let body = n / 16 * 16;
    for i in (0..body).step_by(16) {
        // SAFETY: i + 16 <= body <= both lengths.
        let lo = round8(_mm256_loadu_ps(src.as_ptr().add(i)));
        let hi = round8(_mm256_loadu_ps(src.as_ptr().add(i + 8)));
        // `packus` works per 128-bit lane: [lo 0-3, hi 0-3, lo 4-7, hi 4-7] → in order.
        let packed = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi32(lo, hi));
        _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, packed);
    }
    for (d, &v) in dst[body..n].iter_mut().zip(&src[body..n]) {
        *d = super::round(v);
    }
}

/// `dst[i] = widen(round(src[i]))`, 8 per step: the f32 of the rounded bf16, as oneDNN's f32
/// matmul multiplies it for bf16 layers on hosts without a bf16 instruction.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn round_wide_row(src: &[f32], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let body = n / 8 * 8;
    for i in (0..body).step_by(8) {
        // SAFETY: i + 8 <= body <= both lengths.
        let r = _mm256_slli_epi32::<16>(round8(_mm256_loadu_ps(src.as_ptr().add(i))));
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_castsi256_ps(r));
    }
    for (d, &v) in dst[body..n].iter_mut().zip(&src[body..n]) {
        *d = super::widen(super::round(v));
    }
}

/// Eight values rounded, each bf16 pattern in the low half of its 32-bit lane.
#[inline(always)]
unsafe fn round8(v: __m256) -> __m256i {
    let b = _mm256_castps_si256(v);
    let odd = _mm256_and_si256(_mm256_srli_epi32::<16>(b), _mm256_set1_epi32(1));
    let r = _mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7fff)), odd);
    let r = _mm256_srli_epi32::<16>(r);
    let quiet = _mm256_or_si256(_mm256_srli_epi32::<16>(b), _mm256_set1_epi32(0x40));
    let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
    _mm256_blendv_epi8(r, quiet, nan)
}

/// The table entry (`np` is always 1 here).
///
/// # Safety
/// The CPU must support AVX2 and FMA; the pointers as [`super::Bf16Tile`] describes.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn tile(c: &TileCall<u16, u16, f32>) {
    let (rows, _, kc, a, lda, b, _, acc) = c.parts();
    match rows {
        6 => kernel::<6>(kc / KG, a, lda, b, acc),
        5 => kernel::<5>(kc / KG, a, lda, b, acc),
        4 => kernel::<4>(kc / KG, a, lda, b, acc),
        3 => kernel::<3>(kc / KG, a, lda, b, acc),
        2 => kernel::<2>(kc / KG, a, lda, b, acc),
        _ => kernel::<1>(kc / KG, a, lda, b, acc),
    }
}

#[inline(always)]
unsafe fn kernel<const R: usize>(
    groups: usize,
    a: *const u16,
    lda: usize,
    b: *const u16,
    tile: *mut [f32; NR],
) {
    // SAFETY (whole function): the caller vouches for R rows of accumulators, R rows of
    // `2 × groups` values at stride `lda` from `a`, and `groups` groups of NR pairs at `b`.
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for (i, acc) in acc.iter_mut().enumerate() {
        let t = (*tile.add(i)).as_ptr();
        acc[0] = _mm256_loadu_ps(t);
        acc[1] = _mm256_loadu_ps(t.add(8));
    }
    let high = _mm256_set1_epi32(0xffff_0000u32 as i32);
    for g in 0..groups {
        let bg = b.add(g * NR * KG);
        // Weights stream from memory at small batches: ask for them early. A prefetch past
        // the end of the panel is harmless (it never faults).
        _mm_prefetch::<_MM_HINT_T0>(bg.wrapping_add(PREFETCH * NR * KG) as *const i8);
        let pairs = || [load(bg), load(bg.add(8 * KG))];
        let row = |i: usize| broadcast(a.add(i * lda + g * KG));
        let odd = pairs().map(|p| _mm256_castsi256_ps(_mm256_and_si256(p, high)));
        for (i, acc) in acc.iter_mut().enumerate() {
            let x = _mm256_castsi256_ps(_mm256_and_si256(row(i), high));
            acc[0] = _mm256_fmadd_ps(x, odd[0], acc[0]);
            acc[1] = _mm256_fmadd_ps(x, odd[1], acc[1]);
        }
        let even = pairs().map(|p| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(p)));
        for (i, acc) in acc.iter_mut().enumerate() {
            let x = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(row(i)));
            acc[0] = _mm256_fmadd_ps(x, even[0], acc[0]);
            acc[1] = _mm256_fmadd_ps(x, even[1], acc[1]);
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        let t = (*tile.add(i)).as_mut_ptr();
        _mm256_storeu_ps(t, acc[0]);
        _mm256_storeu_ps(t.add(8), acc[1]);
    }
}

// The loads below are `asm!` so that each stays one instruction where it is written. As
// intrinsics, LLVM turned the masked broadcast into a scalar load, `vmovd`, `vpblendw` and
// `vpbroadcastd` (three vector operations for one), and kept each group's weights in registers
// across both halves of the pair, spilling accumulators at 6 rows. Reloading them from L1 is
// cheaper than either.

/// The 32 bits at `p` (a pair of bf16) in all eight lanes: one `vpbroadcastd` from memory.
///
/// # Safety
/// `p` must address 4 readable bytes; the CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn broadcast(p: *const u16) -> __m256i {
    let x: __m256i;
    // SAFETY: a load of 4 bytes the caller vouches for; no other effect.
    std::arch::asm!(
        "vpbroadcastd {x}, dword ptr [{p}]",
        x = out(ymm_reg) x,
        p = in(reg) p,
        options(readonly, nostack, preserves_flags)
    );
    x
}

/// The 32 bytes at `p`: one `vmovdqu`.
///
/// # Safety
/// `p` must address 32 readable bytes; the CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load(p: *const u16) -> __m256i {
    let x: __m256i;
    // SAFETY: a load of 32 bytes the caller vouches for; no other effect.
    std::arch::asm!(
        "vmovdqu {x}, ymmword ptr [{p}]",
        x = out(ymm_reg) x,
        p = in(reg) p,
        options(readonly, nostack, preserves_flags)
    );
    x
}
