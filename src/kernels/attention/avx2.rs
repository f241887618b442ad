//! One (sequence, head) of attention on AVX2 + FMA without the `gemm` crate, for AVX2-only
//! hosts (lengths in [`takes_len`]), following the steps of `avx512.rs` in 8-lane vectors and
//! 16 registers: keys transposed once in 8 × 8 blocks into a zero-padded scratch (values, past
//! 64 tokens, copied into a contiguous one); per block of 8 query rows, the scores of two halves
//! of 4 rows over pairs of 8-key chunks (8 accumulators; each key vector loaded once per 4
//! multiply-adds, each query element once per 2), each row's maximum kept as they are stored;
//! the exponentials of the 8 rows side by side; then the weighted sums of `RV` rows over groups
//! of `DV` vectors of the head, each scaled once by its row's `1 / Σ e`.

use std::arch::x86_64::*;

use super::{AttnHead, AttnScratch};

/// Query rows per block (scores, softmax, then their weighted sums).
const R: usize = 8;
/// Sequences longer than this have their values copied into a contiguous scratch first.
const COPY_VALUES: usize = 64;
/// Query rows per scores step.
const RS: usize = 4;

/// Whether this path takes a head of width `d`.
pub fn takes(d: usize) -> bool {
    d.is_multiple_of(16) && (16..=64).contains(&d)
}

/// Whether this path takes a sequence of `len` tokens with heads of width `d`: up to 128 tokens
/// it was 1.05-1.9× the `gemm` crate's AVX2 kernels at widths 32 and 64, beyond that only at
/// width 32 (1.2-1.3× to 512 tokens; at 64 wide, 0.91-1.09× from 256 tokens).
pub fn takes_len(len: usize, d: usize) -> bool {
    len <= 128 || d <= 32
}

/// # Safety
/// AVX2 and FMA must be available; [`takes`]`(a.d)`; `ctx` must address `[T, H]` floats of
/// which this call alone writes rows `start..start+len`, columns `col..col+d`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn attend(a: &AttnHead<'_>, sc: &mut AttnScratch, ctx: *mut f32) {
    // Weighted sums: RV rows × DV vectors of 8 accumulators, over d / (8 DV) groups.
    match a.d {
        16 => attend_d::<2, 4>(a, sc, ctx),
        48 => attend_d::<3, 2>(a, sc, ctx),
        _ => attend_d::<4, 2>(a, sc, ctx),
    }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_d<const DV: usize, const RV: usize>(
    a: &AttnHead<'_>,
    sc: &mut AttnScratch,
    ctx: *mut f32,
) {
    let (len, d, h) = (a.len, a.d, a.h);
    let width = len.div_ceil(8) * 8;
    let base = a.qkv.as_ptr().add(a.start * 3 * h + a.col);
    // Row j's Q, K, V of this head.
    let q = |j: usize| base.add(j * 3 * h);
    let k = |j: usize| base.add(j * 3 * h + h);
    let v = |j: usize| base.add(j * 3 * h + 2 * h);
    // kt[c][j] = K[j][c]; columns len..width zero (their scores are never read).
    sc.keys_t.clear();
    sc.keys_t.resize(d * width, 0.0);
    transpose_keys(k, len, d, sc.keys_t.as_mut_ptr(), width);
    // Past COPY_VALUES rows, the values copied to rows d apart (in the packed QKV, 3H floats
    // apart, most of a long head's rows fall into the same few L1 sets).
    let (vals, vstride) = if len > COPY_VALUES {
        sc.values.clear();
        sc.values.resize(len * d, 0.0);
        for j in 0..len {
            for c in (0..d).step_by(8) {
                _mm256_storeu_ps(
                    sc.values.as_mut_ptr().add(j * d + c),
                    _mm256_loadu_ps(v(j).add(c)),
                );
            }
        }
        (sc.values.as_ptr(), d)
    } else {
        (v(0), 3 * h)
    };
    sc.scores.clear();
    sc.scores.resize(R * width, 0.0);
    let keys = Keys {
        kt: sc.keys_t.as_ptr(),
        width,
        len,
        d,
    };
    let scores = sc.scores.as_mut_ptr();
    let scale = _mm256_set1_ps(1.0 / (d as f32).sqrt());
    for i0 in (0..len).step_by(R) {
        let rows = R.min(len - i0);
        // Rows past the sequence repeat its last row (computed, never written).
        let qr: [*const f32; R] = std::array::from_fn(|r| q(i0 + r.min(rows - 1)));
        let mut mx = [_mm256_set1_ps(f32::NEG_INFINITY); R];
        for half in 0..R / RS {
            let (qh, out) = (&qr[half * RS..], scores.add(half * RS * width));
            let mxh = &mut mx[half * RS..];
            let mut j0 = 0;
            while j0 + 16 <= width {
                score_chunks::<2>(&keys, qh, j0, out, mxh);
                j0 += 16;
            }
            if j0 < width {
                score_chunks::<1>(&keys, qh, j0, out, mxh);
            }
        }
        let inv = exponentiate(&keys, scores, &mx, scale);
        for r0 in (0..rows).step_by(RV) {
            let p = scores.add(r0 * width);
            for g in (0..d).step_by(8 * DV) {
                let mut acc = [[_mm256_setzero_ps(); DV]; RV];
                for j in 0..len {
                    let vj = vals.add(j * vstride + g);
                    let vv: [__m256; DV] = std::array::from_fn(|t| _mm256_loadu_ps(vj.add(8 * t)));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let pj = _mm256_set1_ps(*p.add(r * width + j));
                        for t in 0..DV {
                            acc[t] = _mm256_fmadd_ps(pj, vv[t], acc[t]);
                        }
                    }
                }
                for (r, acc) in acc.iter().enumerate().take(rows - r0) {
                    let out = ctx.add((a.start + i0 + r0 + r) * h + a.col + g);
                    for (t, acc) in acc.iter().enumerate() {
                        _mm256_storeu_ps(out.add(8 * t), _mm256_mul_ps(*acc, inv[r0 + r]));
                    }
                }
            }
        }
    }
}

/// One head's transposed keys: `kt[c][j]`, rows `width` floats apart, `len` real keys.
struct Keys {
    kt: *const f32,
    width: usize,
    len: usize,
    d: usize,
}

impl Keys {
    /// All-ones in the lanes of the 8-key chunk at `j0` that hold keys, zero in the rest.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn lanes(&self, j0: usize) -> __m256 {
        let left = _mm256_set1_epi32((self.len - j0).min(8) as i32);
        _mm256_castsi256_ps(_mm256_cmpgt_epi32(
            left,
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        ))
    }
}

/// The scores of RS query rows against J 8-key chunks from key `j0`: RS × J accumulators over
/// the head width; stored to `scores` (rows `width` apart), each row's running maximum (real
/// keys only) kept in `mx`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn score_chunks<const J: usize>(
    k: &Keys,
    qr: &[*const f32],
    j0: usize,
    scores: *mut f32,
    mx: &mut [__m256],
) {
    let mut acc = [[_mm256_setzero_ps(); J]; RS];
    for c in 0..k.d {
        let kv: [__m256; J] =
            std::array::from_fn(|t| _mm256_loadu_ps(k.kt.add(c * k.width + j0 + 8 * t)));
        for r in 0..RS {
            let qc = _mm256_set1_ps(*qr[r].add(c));
            for t in 0..J {
                acc[r][t] = _mm256_fmadd_ps(qc, kv[t], acc[r][t]);
            }
        }
    }
    let low = _mm256_set1_ps(f32::NEG_INFINITY);
    for (r, acc) in acc.iter().enumerate() {
        for (t, acc) in acc.iter().enumerate() {
            _mm256_storeu_ps(scores.add(r * k.width + j0 + 8 * t), *acc);
            let real = _mm256_blendv_ps(low, *acc, k.lanes(j0 + 8 * t));
            mx[r] = _mm256_max_ps(mx[r], real);
        }
    }
}

/// The softmax numerators `e^((x - max) · scale)` of R score rows in place, the rows side by
/// side; returns each row's `1 / Σ e` (real keys only), broadcast.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn exponentiate(k: &Keys, scores: *mut f32, mx: &[__m256; R], scale: __m256) -> [__m256; R] {
    let max: [__m256; R] = std::array::from_fn(|r| _mm256_set1_ps(reduce(mx[r], f32::max)));
    let mut sum = [_mm256_setzero_ps(); R];
    for j0 in (0..k.width).step_by(8) {
        let lanes = k.lanes(j0);
        for r in 0..R {
            let p = scores.add(r * k.width + j0);
            let e = exp(_mm256_mul_ps(
                _mm256_sub_ps(_mm256_loadu_ps(p), max[r]),
                scale,
            ));
            _mm256_storeu_ps(p, e);
            sum[r] = _mm256_add_ps(sum[r], _mm256_and_ps(e, lanes));
        }
    }
    std::array::from_fn(|r| _mm256_set1_ps(1.0 / reduce(sum[r], |a, b| a + b)))
}

/// The 8 lanes of `v` folded with `f`, pairwise (lane l with l + 4, then + 2, then + 1).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn reduce(v: __m256, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut l = [0.0f32; 8];
    _mm256_storeu_ps(l.as_mut_ptr(), v);
    let q: [f32; 4] = std::array::from_fn(|i| f(l[i], l[i + 4]));
    f(f(q[0], q[2]), f(q[1], q[3]))
}

/// The softmax's e^x (`exp_impl` of kernels/mod.rs with fused multiply-adds) on 8 lanes, step
/// for step.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp(x: __m256) -> __m256 {
    let f = _mm256_set1_ps;
    let x = _mm256_min_ps(_mm256_max_ps(x, f(-87.3)), f(88.7));
    // Round to nearest even, exceptions suppressed.
    let n = _mm256_round_ps::<0x08>(_mm256_mul_ps(x, f(std::f32::consts::LOG2_E)));
    let r = _mm256_fmadd_ps(n, f(-0.693_359_4), x);
    let r = _mm256_fmadd_ps(n, f(2.121_944_4e-4), r);
    let mut p = _mm256_fmadd_ps(f(1.987_569_1e-4), r, f(1.398_2e-3));
    p = _mm256_fmadd_ps(p, r, f(8.333_452e-3));
    p = _mm256_fmadd_ps(p, r, f(4.166_579_6e-2));
    p = _mm256_fmadd_ps(p, r, f(1.666_666_5e-1));
    p = _mm256_fmadd_ps(p, r, f(0.5));
    let e = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), f(1.0));
    let two_n = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_mul_ps(e, _mm256_castsi256_ps(two_n))
}

/// `kt[c][j] = K[j][c]` for `len` keys of width `d` (a multiple of 8), `kt` rows `width` apart
/// (columns `len..width` zero), in 8 × 8 blocks transposed in registers.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn transpose_keys(
    k: impl Fn(usize) -> *const f32,
    len: usize,
    d: usize,
    kt: *mut f32,
    width: usize,
) {
    for j0 in (0..len).step_by(8) {
        let keys = 8.min(len - j0);
        for c0 in (0..d).step_by(8) {
            let rows: [__m256; 8] = std::array::from_fn(|r| {
                if r < keys {
                    _mm256_loadu_ps(k(j0 + r).add(c0))
                } else {
                    _mm256_setzero_ps()
                }
            });
            for (c, v) in transpose8(rows).iter().enumerate() {
                _mm256_storeu_ps(kt.add((c0 + c) * width + j0), *v);
            }
        }
    }
}

/// The transpose of an 8 × 8 block of floats held as 8 rows: lane pairs, then 64-bit pairs,
/// then 128-bit halves.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t: [__m256; 8] = std::array::from_fn(|i| {
        let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
        if i % 2 == 0 {
            _mm256_unpacklo_ps(a, b)
        } else {
            _mm256_unpackhi_ps(a, b)
        }
    });
    // u[4g + {0,1,2,3}] from t[4g..4g+4]: columns 0, 1, 2, 3 (and 4-7 in the high halves) of
    // rows 4g..4g+4.
    let u: [__m256; 8] = std::array::from_fn(|i| {
        let g = i / 4 * 4;
        let (a, b) = match i % 4 {
            0 | 1 => (t[g], t[g + 2]),
            _ => (t[g + 1], t[g + 3]),
        };
        if i % 2 == 0 {
            _mm256_shuffle_ps::<0x44>(a, b)
        } else {
            _mm256_shuffle_ps::<0xee>(a, b)
        }
    });
    std::array::from_fn(|i| {
        let (a, b) = (u[i % 4], u[i % 4 + 4]);
        if i < 4 {
            _mm256_permute2f128_ps::<0x20>(a, b)
        } else {
            _mm256_permute2f128_ps::<0x31>(a, b)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_of_8_by_8_comes_back_transposed() {
        if !crate::kernels::isa::has_avx2_fma() {
            eprintln!("SKIPPED: AVX2 transpose not testable here");
            return;
        }
        let m: Vec<f32> = (0..64).map(|i| i as f32).collect();
        let mut out = [0.0f32; 64];
        // SAFETY: AVX2 was detected; the loads and stores stay within m and out.
        unsafe { check(&m, &mut out) };
        for (r, row) in out.chunks_exact(8).enumerate() {
            for (c, &x) in row.iter().enumerate() {
                assert_eq!(x, m[c * 8 + r], "row {r} column {c}");
            }
        }
    }

    #[target_feature(enable = "avx2")]
    unsafe fn check(m: &[f32], out: &mut [f32; 64]) {
        let rows: [__m256; 8] = std::array::from_fn(|r| _mm256_loadu_ps(m.as_ptr().add(8 * r)));
        for (r, v) in transpose8(rows).iter().enumerate() {
            _mm256_storeu_ps(out.as_mut_ptr().add(8 * r), *v);
        }
    }

    #[test]
    fn the_eight_lane_exp_is_within_3e_7_of_f64() {
        if !crate::kernels::isa::has_avx2_fma() {
            eprintln!("SKIPPED: AVX2 exp not testable here");
            return;
        }
        let xs: Vec<f32> = (0..4000).map(|i| -80.0 + i as f32 * 0.0417).collect();
        for x in xs.chunks_exact(8) {
            let mut got = [0.0f32; 8];
            // SAFETY: AVX2 and FMA were detected; 8 lanes in, 8 out.
            unsafe { exp8(x, &mut got) };
            for (x, e) in x.iter().zip(got) {
                let want = (*x as f64).exp();
                assert!(
                    ((e as f64 - want) / want).abs() < 3e-7,
                    "e^{x}: {e} vs {want}"
                );
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp8(x: &[f32], out: &mut [f32; 8]) {
        _mm256_storeu_ps(out.as_mut_ptr(), exp(_mm256_loadu_ps(x.as_ptr())));
    }
}
