//! One (sequence, head) of attention on AVX-512 without the `gemm` crate: at natural lengths
//! (10-60 tokens) its per-call cost dominated the two small GEMMs. Keys are transposed once
//! (16 × 16 blocks in registers) into a zero-padded scratch; scores are computed for 8 query rows at a time over 16-key
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
    transpose_keys(k, len, d, keys_t.as_mut_ptr(), width);
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

/// `kt[c][j] = K[j][c]` for `len` keys of width `d` (a multiple of 16), `kt` rows `width` apart
/// (columns `len..width` zero), in 16 × 16 blocks transposed in registers. The element-wise
/// loop it replaces compiled to `vscatterqps`; this made the whole path 1.13–1.14× faster at
/// natural lengths on Zen 4 (same outputs, bit for bit).
#[inline(always)]
unsafe fn transpose_keys(
    k: impl Fn(usize) -> *const f32,
    len: usize,
    d: usize,
    kt: *mut f32,
    width: usize,
) {
    for j0 in (0..len).step_by(16) {
        let keys = 16.min(len - j0);
        for c0 in (0..d).step_by(16) {
            let rows: [__m512; 16] = std::array::from_fn(|r| {
                if r < keys {
                    _mm512_loadu_ps(k(j0 + r).add(c0))
                } else {
                    _mm512_setzero_ps()
                }
            });
            let cols = transpose16(rows);
            for (c, v) in cols.iter().enumerate() {
                _mm512_storeu_ps(kt.add((c0 + c) * width + j0), *v);
            }
        }
    }
}

/// The transpose of a 16 × 16 block of floats held as 16 rows: lane pairs, then 64-bit pairs,
/// then 128-bit quarters twice.
#[inline(always)]
unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    let pd = |v: __m512| _mm512_castps_pd(v);
    let ps = |v: __m512d| _mm512_castpd_ps(v);
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    // u[4g + {0,1,2,3}] from t[4g..4g+4]: lo(t0,t2), hi(t0,t2), lo(t1,t3), hi(t1,t3).
    let u: [__m512; 16] = std::array::from_fn(|i| {
        let g = i / 4 * 4;
        let (a, b) = match i % 4 {
            0 | 1 => (t[g], t[g + 2]),
            _ => (t[g + 1], t[g + 3]),
        };
        if i % 2 == 0 {
            ps(_mm512_unpacklo_pd(pd(a), pd(b)))
        } else {
            ps(_mm512_unpackhi_pd(pd(a), pd(b)))
        }
    });
    // v[8h + j], j < 4: quarters 0 and 2 of u[8h + j] and u[8h + j + 4]; j ≥ 4: quarters 1, 3.
    let v: [__m512; 16] = std::array::from_fn(|i| {
        let (h, j) = (i / 8 * 8, i % 8);
        let (a, b) = (u[h + j % 4], u[h + j % 4 + 4]);
        if j < 4 {
            _mm512_shuffle_f32x4::<0x88>(a, b)
        } else {
            _mm512_shuffle_f32x4::<0xdd>(a, b)
        }
    });
    std::array::from_fn(|i| {
        let (a, b) = (v[i % 8], v[i % 8 + 8]);
        if i < 8 {
            _mm512_shuffle_f32x4::<0x88>(a, b)
        } else {
            _mm512_shuffle_f32x4::<0xdd>(a, b)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_of_16_by_16_comes_back_transposed() {
        if !crate::kernels::has_avx512() {
            eprintln!("SKIPPED: AVX-512 transpose not testable here");
            return;
        }
        let m: Vec<f32> = (0..256).map(|i| i as f32).collect();
        let mut out = [0.0f32; 256];
        // SAFETY: AVX-512 F was detected; the loads and stores stay within m and out.
        unsafe { check(&m, &mut out) };
        for (r, row) in out.chunks_exact(16).enumerate() {
            for (c, &x) in row.iter().enumerate() {
                assert_eq!(x, m[c * 16 + r], "row {r} column {c}");
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn check(m: &[f32], out: &mut [f32; 256]) {
        let rows: [__m512; 16] = std::array::from_fn(|r| _mm512_loadu_ps(m.as_ptr().add(16 * r)));
        for (r, v) in transpose16(rows).iter().enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr().add(16 * r), *v);
        }
    }
}
