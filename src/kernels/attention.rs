//! Multi-head self-attention over packed sequences (no padding): one task per (sequence, head),
//! on a hand-written x86 path where there is one, else two small GEMMs with the vectorised
//! softmax between them.

use rayon::prelude::*;

use super::{gemm, softmax_scaled, SharedOut, View};

/// Multi-head self-attention over packed sequences, no padding: `qkv` is `[T, 3H]` (Q, K, V
/// blocks side by side), `seqs` the cumulative sequence starts (`[0, l0, l0+l1, ..., T]`);
/// writes `ctx` `[T, H]`. Each token attends to its own sequence only.
///
/// One task per (sequence, head). On AVX-512 hosts sequences up to `avx512::LONGEST` tokens
/// take the hand-written AVX-512 path and longer ones the `gemm` crate (faster at 128 tokens on
/// a Sapphire Rapids-class host; BENCHMARKS.md); on AVX2-only hosts the hand-written AVX2 path
/// takes sequences up to 128 tokens and, for heads up to 32 wide, every length
/// (`avx2::takes_len`; measured on Zen 4 with AVX-512 off). Elsewhere, or for head widths those
/// paths do not take, the scores and the weighted sum are two small GEMMs of the crate with the
/// vectorised softmax in between (on AVX-512 hosts eight rows side by side, as in the direct
/// path). The paths agree to float rounding: the direct ones and the crate's on AVX-512 scale
/// each weighted sum by `1 / Σ e`, the others every score.
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
    let direct = Direct::pick(head_dim);
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
                match direct {
                    Direct::Avx512 if len <= avx512::LONGEST => {
                        return avx512::attend(&head, scratch, ctx)
                    }
                    Direct::Avx2 if avx2::takes_len(len, head_dim) => {
                        return avx2::attend(&head, scratch, ctx)
                    }
                    _ => {}
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
    /// Keys transposed (the direct paths).
    keys_t: Vec<f32>,
    /// The head's values, contiguous (the AVX2 path past 64 tokens).
    values: Vec<f32>,
    /// Each query row's `1 / Σ e` (the `gemm` crate's path on AVX-512).
    inv: Vec<f32>,
}

/// The hand-written path a head takes, where the CPU and the head width allow one.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
enum Direct {
    Avx512,
    Avx2,
    None,
}

#[cfg(target_arch = "x86_64")]
impl Direct {
    fn pick(d: usize) -> Self {
        match super::Isa::detect() {
            super::Isa::Avx512 if avx512::takes(d) => Direct::Avx512,
            super::Isa::Avx2 if avx2::takes(d) => Direct::Avx2,
            _ => Direct::None,
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

/// Scores and the weighted sum of one (sequence, head) as two small GEMMs (the `gemm` crate).
///
/// # Safety
/// `ctx` must address `[T, H]` floats of which this call alone writes rows
/// `start..start+len`, columns `col..col+d`.
unsafe fn attend_gemm(a: &AttnHead<'_>, s: &mut AttnScratch, ctx: *mut f32) {
    let (len, d, h) = (a.len, a.d, a.h);
    // On AVX-512 the softmax runs 8 rows side by side, on rows padded to 16 floats.
    #[cfg(target_arch = "x86_64")]
    let batched = super::Isa::detect() == super::Isa::Avx512;
    #[cfg(not(target_arch = "x86_64"))]
    let batched = false;
    let (rows, width) = match batched {
        true => (len.div_ceil(8) * 8, len.div_ceil(16) * 16),
        false => (len, len),
    };
    s.scores.clear();
    s.scores.resize(rows * width, 0.0);
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
        View::row_major(width),
        false,
        1,
    );
    let scale = 1.0 / (d as f32).sqrt();
    #[cfg(target_arch = "x86_64")]
    if batched {
        // SAFETY: AVX-512 was detected.
        avx512::numerators(&mut s.scores, len, width, scale, &mut s.inv);
    }
    if !batched {
        s.scores
            .chunks_exact_mut(len)
            .for_each(|r| softmax_scaled(r, scale));
    }
    let out = ctx.add(a.start * h + a.col);
    // SAFETY: the caller vouches for rows start..start+len, columns col..col+d of ctx; the
    // asserts of `attention` bound the V block inside qkv.
    gemm::gemm(
        len,
        d,
        len,
        out,
        1,
        h as isize,
        false,
        s.scores.as_ptr(),
        1,
        width as isize,
        a.qkv.as_ptr().add(a.start * 3 * h + 2 * h + a.col),
        1,
        (3 * h) as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
    if batched {
        for (r, inv) in s.inv.iter().enumerate() {
            std::slice::from_raw_parts_mut(out.add(r * h), d)
                .iter_mut()
                .for_each(|x| *x *= inv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_over_packed_sequences_matches_naive() {
        // Head widths 4 (the gemm path only), 16, 32, 48 and 64 (the direct paths where the CPU
        // has one: every weighted-sum shape of the AVX-512 and AVX2 ones; the lib tests also
        // run under SAMP_MAX_ISA=avx2); lengths 1, 5, 0, 7, 9 (partial key chunks and row
        // blocks), 64 (the AVX-512 path's longest), 70 (the gemm path on AVX-512, AVX2's with
        // its values copied), 20 (a pair of key chunks and a single one on AVX2) and 130 (on
        // AVX2 direct at widths up to 32, the gemm path at 48 and 64).
        let starts = [0usize, 1, 6, 6, 13, 22, 86, 156, 176, 306];
        for (heads, d) in [(3, 4), (2, 16), (2, 32), (1, 48), (1, 64)] {
            check_against_naive(heads, d, &starts);
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
