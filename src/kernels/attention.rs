//! Multi-head self-attention over packed sequences (no padding): one task per (sequence, head),
//! two small GEMMs with the vectorised softmax between them.

use rayon::prelude::*;

use super::{gemm, softmax_scaled, SharedOut, View};

/// Multi-head self-attention over packed sequences, no padding: `qkv` is `[T, 3H]` (Q, K, V
/// blocks side by side), `seqs` the cumulative sequence starts (`[0, l0, l0+l1, ..., T]`);
/// writes `ctx` `[T, H]`. Each token attends to its own sequence only.
///
/// One task per (sequence, head): scores and the weighted sum as two small GEMMs, the softmax
/// vectorised in between. (A hand-written AVX-512 core with transposed keys measured 2× slower
/// than the `gemm` crate's micro-kernels here and was dropped.)
pub fn attention(qkv: &[f32], ctx: &mut [f32], seqs: &[usize], heads: usize, head_dim: usize) {
    let h = heads * head_dim;
    let t = *seqs.last().unwrap_or(&0);
    assert!(
        qkv.len() >= t * 3 * h && ctx.len() >= t * h,
        "attention: buffers too small"
    );
    let out = SharedOut(ctx.as_mut_ptr());
    let tasks = (seqs.len().saturating_sub(1)) * heads;
    #[cfg(target_arch = "x86_64")]
    let direct = super::Isa::detect() == super::Isa::Avx512 && avx512::takes(head_dim);
    (0..tasks)
        .into_par_iter()
        .for_each_init(AttnScratch::default, |scratch, task| {
            let (s, hd) = (task / heads, task % heads);
            let (start, len) = (seqs[s], seqs[s + 1] - seqs[s]);
            if len == 0 {
                return;
            }
            let head = AttnHead {
                qkv,
                start,
                len,
                col: hd * head_dim,
                d: head_dim,
                h,
            };
            // SAFETY: rows start..start+len and columns hd*d..(hd+1)*d of ctx belong to this
            // task alone (tasks are distinct (sequence, head) pairs; the asserted sizes bound
            // them).
            unsafe {
                let ctx = out.ptr();
                #[cfg(target_arch = "x86_64")]
                if direct && len <= avx512::LONGEST {
                    let s = &mut *scratch;
                    return avx512::attend(&head, &mut s.keys_t, &mut s.scores, ctx);
                }
                attend_gemm(&head, scratch, ctx)
            }
        });
}

/// One (sequence, head) of [`attention`].
struct AttnHead<'a> {
    qkv: &'a [f32],
    start: usize,
    len: usize,
    /// First column of this head inside each of the Q, K and V blocks.
    col: usize,
    d: usize,
    h: usize,
}

#[derive(Default)]
struct AttnScratch {
    scores: Vec<f32>,
    /// Keys transposed (the AVX-512 path).
    keys_t: Vec<f32>,
}

#[cfg(target_arch = "x86_64")]
mod avx512;

/// Scores and the weighted sum of one (sequence, head) as two small GEMMs (the `gemm` crate).
///
/// # Safety
/// `ctx` must address `[T, H]` floats of which this call alone writes rows
/// `start..start+len`, columns `col..col+d`.
unsafe fn attend_gemm(a: &AttnHead<'_>, s: &mut AttnScratch, ctx: *mut f32) {
    let (len, d, h) = (a.len, a.d, a.h);
    s.scores.clear();
    s.scores.resize(len * len, 0.0);
    let q = View {
        offset: a.start * 3 * h + a.col,
        rs: 3 * h,
        cs: 1,
    };
    let k_t = View {
        offset: a.start * 3 * h + h + a.col,
        rs: 1,
        cs: 3 * h,
    };
    gemm(
        len,
        len,
        d,
        a.qkv,
        q,
        a.qkv,
        k_t,
        &mut s.scores,
        View::row_major(len),
        false,
        1,
    );
    let scale = 1.0 / (d as f32).sqrt();
    s.scores
        .chunks_exact_mut(len)
        .for_each(|r| softmax_scaled(r, scale));
    // SAFETY: the caller vouches for rows start..start+len, columns col..col+d of ctx; the
    // asserts of `attention` bound the V block inside qkv.
    gemm::gemm(
        len,
        d,
        len,
        ctx.add(a.start * h + a.col),
        1,
        h as isize,
        false,
        s.scores.as_ptr(),
        1,
        len as isize,
        a.qkv.as_ptr().add(a.start * 3 * h + 2 * h + a.col),
        1,
        (3 * h) as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_over_packed_sequences_matches_naive() {
        // Head widths 4 (the gemm path only), 32 and 64 (the AVX-512 direct path where the CPU
        // has it); lengths 1, 5, 0, 7, 9 (a partial row block), 64 (the direct path's longest)
        // and 70 (the gemm path).
        for (heads, d) in [(3, 4), (2, 32), (1, 64)] {
            check_against_naive(heads, d, &[0usize, 1, 6, 6, 13, 22, 86, 156]);
        }
    }

    fn check_against_naive(heads: usize, d: usize, starts: &[usize]) {
        let h = heads * d;
        let t = *starts.last().unwrap();
        let qkv: Vec<f32> = (0..t * 3 * h)
            .map(|i| ((i * 37 % 29) as f32 - 14.0) * 0.07)
            .collect();
        let mut ctx = vec![0.0f32; t * h];
        attention(&qkv, &mut ctx, starts, heads, d);
        for s in 0..starts.len() - 1 {
            for hd in 0..heads {
                for i in starts[s]..starts[s + 1] {
                    let q = |j: usize, c: usize| qkv[j * 3 * h + hd * d + c] as f64;
                    let k = |j: usize, c: usize| qkv[j * 3 * h + h + hd * d + c] as f64;
                    let v = |j: usize, c: usize| qkv[j * 3 * h + 2 * h + hd * d + c] as f64;
                    let scores: Vec<f64> = (starts[s]..starts[s + 1])
                        .map(|j| (0..d).map(|c| q(i, c) * k(j, c)).sum::<f64>() / (d as f64).sqrt())
                        .collect();
                    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = scores.iter().map(|x| (x - max).exp()).sum();
                    for c in 0..d {
                        let want: f64 = (starts[s]..starts[s + 1])
                            .zip(&scores)
                            .map(|(j, x)| (x - max).exp() / z * v(j, c))
                            .sum();
                        let got = ctx[i * h + hd * d + c] as f64;
                        assert!(
                            (got - want).abs() < 1e-5,
                            "seq {s} head {hd} token {i} dim {c}"
                        );
                    }
                }
            }
        }
    }
}
