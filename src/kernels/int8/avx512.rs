//! The AVX-512 VNNI INT8 micro-kernel: 8 rows × three adjacent 16-column panels, one zmm
//! accumulator per row and panel (24 of 32 registers). Per group of 4 depth steps: 3 weight
//! loads and 8 broadcasts feed 24 `vpdpbusd` (the 6 × 16 tile it replaces needed 7 loads per 6).
//! `vpdpbusd` does not saturate, so any 8-bit weights are exact.

use super::{AccRows, KG, NR};
use crate::kernels::packed::avx512::{col_mask, store_row};
use crate::kernels::packed::ToInt8;
use std::arch::x86_64::*;

use crate::kernels::packed::avx512::{dots, spill};

use crate::kernels::driver::FusedCall;
use crate::kernels::TileCall;

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
pub unsafe fn tile(c: &TileCall<u8, i8, i32>) {
    dispatch_tile!(kernel(c), rows c.rows => [1, 2, 3, 4, 5, 6, 7, 8], panels c.np => [1, 2, 3])
}

/// The accumulators of a tile call: loaded, `dots` over its depth, stored back.
#[inline(always)]
unsafe fn kernel<const R: usize, const P: usize>(c: &TileCall<u8, i8, i32>) {
    use crate::kernels::packed::avx512::{load_acc, store_acc};
    // SAFETY: the caller vouches for the call's extents (`TileCall`).
    let mut acc = load_acc::<R, P, i32>(c.acc, MR);
    dots::<VnniDot, R, P>(&mut acc, c.kc / KG, c.a_bytes(1), c.b_bytes(1));
    store_acc(&acc, c.acc, MR);
}

/// `vdpbf16ps` / `vpdpbusd` for the shared inner loop.
struct VnniDot;

impl crate::kernels::packed::avx512::Dot4 for VnniDot {
    type Acc = __m512i;
    #[inline(always)]
    unsafe fn dot(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
        _mm512_dpbusd_epi32(acc, a, b)
    }
}

/// The dequantizing epilogue of one micro-tile's panel in one pass over zmm registers:
/// `y = act((acc + offset) · (sa[row] · ws) + bias [+ y])`, stored under a column mask. The
/// operations and their order are those of the portable `dequant` + `finish` (a multiply, then
/// an add: no FMA), so the results are the same floats.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/DQ/VL; `offset`, `ws` (and `bias`, when given) must hold
/// 16 values; `acc` its rows' first `cols` values; `y` `acc.rows` rows of `cols` (≤ 16) writable
/// floats at stride `ldy`.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn finish(
    acc: AccRows<i32>,
    sa: &[f32],
    offset: &[i32],
    ws: &[f32],
    bias: Option<&[f32]>,
    y: *mut f32,
    ldy: usize,
    cols: usize,
    accumulate: bool,
    act: Option<crate::kernels::Activation>,
    to_int8: Option<ToInt8>,
) {
    assert!(offset.len() >= NR && ws.len() >= NR && sa.len() >= acc.rows);
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
    for (i, &s) in sa[..acc.rows].iter().enumerate() {
        // SAFETY: the caller vouches for row i of acc and of y (cols values, masked).
        let yp = y.add(i * ldy);
        let q = _mm512_add_epi32(_mm512_maskz_loadu_epi32(mask, acc.row(i)), off);
        let scale = _mm512_mul_ps(_mm512_set1_ps(s), w);
        let v = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(q), scale), b);
        store_row(v, yp, mask, accumulate, act, to_int8);
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
    pub to_int8: Option<ToInt8>,
}

/// The whole depth and the epilogue in one call: accumulators start at zero and never leave the
/// registers; then `y = act((acc + offset) · (sa · ws) + bias [+ y])` for `rows` rows and `np`
/// panels (`cols_last` columns in the last), with the operations of `finish` in its order.
///
/// # Safety
/// As [`tile`] for `c.a` and `c.b` over `c.k` bytes; `c.y` must address `rows` rows (stride
/// `c.ldy`) of the group's columns; the pointers in `ep` as [`FusedEp`] describes.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma")]
pub unsafe fn fused(c: &FusedCall<u8, i8>, ep: &FusedEp) {
    let (rows, np) = (c.rows, c.np);
    dispatch_tile!(fused_kernel(c, ep), rows rows => [1, 2, 3, 4, 5, 6, 7, 8], panels np => [1, 2, 3])
}

#[inline(always)]
unsafe fn fused_kernel<const R: usize, const P: usize>(c: &FusedCall<u8, i8>, ep: &FusedEp) {
    let mut acc = [[_mm512_setzero_si512(); P]; R];
    // SAFETY (whole function): the caller vouches for the extents (see `fused`).
    crate::kernels::packed::avx512::prefetch_tile_out::<R, P>(c);
    dots::<VnniDot, R, P>(&mut acc, c.k / KG, c.a_bytes(1), c.b_bytes(1));
    let acc = spill(acc);
    for q in 0..P {
        let mask = col_mask(if q + 1 == P { c.cols_last } else { NR });
        let off = _mm512_loadu_si512(ep.offset.add(q * NR) as *const _);
        let w = _mm512_loadu_ps(ep.ws.add(q * NR));
        let bias = match ep.bias {
            Some(bp) => _mm512_maskz_loadu_ps(mask, bp.add(q * NR)),
            None => _mm512_setzero_ps(),
        };
        for (i, row) in acc.iter().enumerate() {
            let yp = c.y.add(i * c.ldy + q * NR);
            let qv = _mm512_add_epi32(row[q], off);
            let scale = _mm512_mul_ps(_mm512_set1_ps(*ep.sa.add(i)), w);
            let v = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(qv), scale), bias);
            store_row(v, yp, mask, ep.accumulate, ep.act, ep.to_int8);
        }
    }
}
