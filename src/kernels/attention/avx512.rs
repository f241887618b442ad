//! One (sequence, head) of attention on AVX-512 without the `gemm` crate: at natural lengths
//! (10-60 tokens) its per-call cost dominated the two small GEMMs. Keys are transposed once
//! into a zero-padded scratch; scores are computed for 8 query rows at a time over 16-key
//! chunks (8 independent accumulators, each key vector loaded once per 8 multiply-adds), the
//! vectorised softmax runs on each row, and the weighted sum for 4 rows at a time over the
//! head's `d / 16` vectors (4 × `d / 16` accumulators, each value vector loaded once per 4).

use std::arch::x86_64::*;

use super::AttnHead;

/// The longest sequence this path takes: at 128 tokens the `gemm` crate's kernels were faster
/// (4.7 against 5.9 ms for 32 × 128 tokens, 12 heads of 32, on a Sapphire Rapids-class host),
/// at 13-40 tokens this path (395 against 564 µs).
pub const LONGEST: usize = 64;

/// Query rows per scores block.
const R: usize = 8;
/// Query rows per weighted-sum block.
const RV: usize = 4;

/// Whether this path takes a head of width `d`.
pub fn takes(d: usize) -> bool {
    d.is_multiple_of(16) && (16..=64).contains(&d)
}

/// # Safety
/// AVX-512 F must be available; [`takes`]`(a.d)`; `ctx` must address `[T, H]` floats of which
/// this call alone writes rows `start..start+len`, columns `col..col+d`.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
pub unsafe fn attend(
    a: &AttnHead<'_>,
    keys_t: &mut Vec<f32>,
    scores: &mut Vec<f32>,
    ctx: *mut f32,
) {
    match a.d / 16 {
        1 => attend_d::<1>(a, keys_t, scores, ctx),
        2 => attend_d::<2>(a, keys_t, scores, ctx),
        3 => attend_d::<3>(a, keys_t, scores, ctx),
        _ => attend_d::<4>(a, keys_t, scores, ctx),
    }
}

#[inline(always)]
unsafe fn attend_d<const DV: usize>(
    a: &AttnHead<'_>,
    keys_t: &mut Vec<f32>,
    scores: &mut Vec<f32>,
    ctx: *mut f32,
) {
    let (len, d, h) = (a.len, a.d, a.h);
    let width = len.div_ceil(16) * 16;
    let base = a.qkv.as_ptr().add(a.start * 3 * h + a.col);
    // Row j's Q, K, V of this head.
    let q = |j: usize| base.add(j * 3 * h);
    let k = |j: usize| base.add(j * 3 * h + h);
    let v = |j: usize| base.add(j * 3 * h + 2 * h);
    // kt[c][j] = K[j][c]; columns len..width zero (their scores are never read).
    keys_t.clear();
    keys_t.resize(d * width, 0.0);
    for j in 0..len {
        let kj = k(j);
        for c in 0..d {
            *keys_t.get_unchecked_mut(c * width + j) = *kj.add(c);
        }
    }
    scores.clear();
    scores.resize(R * width, 0.0);
    let kt = keys_t.as_ptr();
    let scale = 1.0 / (d as f32).sqrt();
    for i0 in (0..len).step_by(R) {
        let rows = R.min(len - i0);
        // Rows past the sequence repeat its last row (computed, never written).
        let qr: [*const f32; R] = std::array::from_fn(|r| q(i0 + r.min(rows - 1)));
        for j0 in (0..width).step_by(16) {
            let mut acc = [_mm512_setzero_ps(); R];
            for c in 0..d {
                let kv = _mm512_loadu_ps(kt.add(c * width + j0));
                for r in 0..R {
                    acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(*qr[r].add(c)), kv, acc[r]);
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                _mm512_storeu_ps(scores.as_mut_ptr().add(r * width + j0), *acc);
            }
        }
        for r in 0..rows {
            super::super::softmax_scaled(&mut scores[r * width..r * width + len], scale);
        }
        for r0 in (0..rows).step_by(RV) {
            let mut acc = [[_mm512_setzero_ps(); DV]; RV];
            let p = scores.as_ptr().add(r0 * width);
            for j in 0..len {
                let vj = v(j);
                let vv: [__m512; DV] = std::array::from_fn(|t| _mm512_loadu_ps(vj.add(16 * t)));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let pj = _mm512_set1_ps(*p.add(r * width + j));
                    for t in 0..DV {
                        acc[t] = _mm512_fmadd_ps(pj, vv[t], acc[t]);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate().take(rows - r0) {
                let out = ctx.add((a.start + i0 + r0 + r) * h + a.col);
                for (t, acc) in acc.iter().enumerate() {
                    _mm512_storeu_ps(out.add(16 * t), *acc);
                }
            }
        }
    }
}
