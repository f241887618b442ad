//! The AVX512_BF16 micro-kernel: 8 rows × three adjacent 16-column panels, 24 zmm f32
//! accumulators; per pair of depth steps 3 weight loads and 8 broadcasts feed 24 `vdpbf16ps`.
//! Also the AVX-512 row rounding (integer arithmetic, the same as [`super::round`]).

use super::KG;
use std::arch::x86_64::*;

use crate::kernels::packed::avx512::dots;

use crate::kernels::driver::{FloatEp, FusedCall};
use crate::kernels::TileCall;

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
pub unsafe fn tile(c: &TileCall<u16, u16, f32>) {
    dispatch_tile!(kernel(c), rows c.rows => [1, 2, 3, 4, 5, 6, 7, 8], panels c.np => [1, 2, 3])
}

/// The accumulators of a tile call: loaded, `dots` over its depth, stored back.
#[inline(always)]
unsafe fn kernel<const R: usize, const P: usize>(c: &TileCall<u16, u16, f32>) {
    use crate::kernels::packed::avx512::{load_acc, store_acc};
    // SAFETY: the caller vouches for the call's extents (`TileCall`); f32 lanes as bits.
    let mut acc: [[__m512; P]; R] = std::mem::transmute_copy(&load_acc::<R, P, f32>(c.acc, MR));
    dots::<Bf16Dot, R, P>(&mut acc, c.kc / KG, c.a_bytes(2), c.b_bytes(2));
    store_acc::<R, P, f32>(&std::mem::transmute_copy(&acc), c.acc, MR);
}

/// `vdpbf16ps` / `vpdpbusd` for the shared inner loop.
struct Bf16Dot;

impl crate::kernels::packed::avx512::Dot4 for Bf16Dot {
    type Acc = __m512;
    #[inline(always)]
    unsafe fn dot(acc: __m512, a: __m512i, b: __m512i) -> __m512 {
        _mm512_dpbf16_ps(
            acc,
            std::mem::transmute::<__m512i, __m512bh>(a),
            std::mem::transmute::<__m512i, __m512bh>(b),
        )
    }
}

/// The whole depth and the epilogue in one call: accumulators start at zero and stay in
/// registers through `y = act(acc + bias [+ y])` for `rows` (≤ 8) rows and `np` (≤ 3) panels,
/// `cols_last` columns in the last (the epilogue of the f32 kernels, in the same order).
///
/// # Safety
/// As [`tile`] for `c.a` and `c.b` over `c.k` values; `ep.bias` (when given) the group's
/// columns; `c.y` `rows` rows (stride `c.ldy`) of the group's columns.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma")]
pub unsafe fn fused(c: &FusedCall<u16, u16>, ep: &FloatEp) {
    let (rows, np) = (c.rows, c.np);
    dispatch_tile!(fused_kernel(c, ep), rows rows => [1, 2, 3, 4, 5, 6, 7, 8], panels np => [1, 2, 3])
}

#[inline(always)]
unsafe fn fused_kernel<const R: usize, const P: usize>(c: &FusedCall<u16, u16>, ep: &FloatEp) {
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    // SAFETY: the caller vouches for the extents (see `fused`).
    crate::kernels::packed::avx512::prefetch_tile_out::<R, P>(c);
    dots::<Bf16Dot, R, P>(&mut acc, c.k / KG, c.a_bytes(2), c.b_bytes(2));
    crate::kernels::packed::avx512::store_float_tile(
        &crate::kernels::packed::avx512::spill(acc),
        c,
        ep,
    );
}
