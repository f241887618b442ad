//! The fast path's loop over one thread task: 32 × 32 blocks, each the whole depth in the tile
//! registers (four C tiles from zero, two A and two B tiles per 64-byte step, so each tile load
//! feeds two dot products), the tiles configured once for the task. The epilogue of a block
//! runs on the vector units while the tile unit computes the next one: block i+1's dot products
//! are issued before block i's accumulators are read, and block i+1's are stored after, into
//! the other of two accumulator buffers. The epilogue is told block i+1, so that it can ask for
//! that block's output lines (`prefetchw`, [`super::prefetch_out`]) a block ahead: a block
//! writes 32 rows a whole output row apart, and their read-for-ownership stalled the epilogue's
//! stores. The INT8 task does (BENCHMARKS.md: 1.0–1.2× per shape, BERT-base all-INT8 end to end
//! ahead in 5 of 6 paired rounds); the BF16 task does not (ahead per shape on MiniLM, but BERT-base
//! bf16 end to end fell behind in 8 of 9 paired rounds at 128 tokens).

use std::ops::Range;

use super::{Dot, Tiles, B, BLOCK_A, BLOCK_C, BLOCK_ROWS, KB, MR, NP};
use crate::kernels::aligned::Aligned;
use crate::kernels::packed::NR;

/// Where a block's results go: rows `r..r + rows`, panels `p..p + gp`.
#[derive(Clone, Copy, Debug)]
pub struct BlockAt {
    pub r: usize,
    pub rows: usize,
    pub p: usize,
    pub gp: usize,
}

/// The accumulators of one block, panel-major (`q * 32 + row`), on a cache line.
#[repr(C, align(64))]
struct AccBlock<E>([[E; NR]; NP * BLOCK_ROWS]);

/// One thread task on the fast path. `a`: `m` rows of `lda` bytes (the depth, a multiple of
/// 64); `b`: panel 0 of the packed weights, panel `p` at `b + p * bstride`; `panels` the task's
/// panels. `epilogue(at, acc, next)` gets each block's accumulators (`gp × 32` rows,
/// panel-major; only `at.rows` of each panel's 32 are real), in order, on this thread, with the
/// block whose products the tile unit is computing meanwhile (its epilogue is the next call).
///
/// # Safety
/// `t` must be usable (hardware: AMX enabled for this process); `b` must address the panels as
/// described, `lda × 16` bytes each (`lda / 4` rows of 64); `E` must be the dot product's
/// accumulator type (i32 for INT8, f32 for BF16).
#[allow(clippy::too_many_arguments)]
pub unsafe fn run_task<T: Tiles, E: Copy + Default>(
    t: &mut T,
    dot: Dot,
    a: &[u8],
    m: usize,
    lda: usize,
    b: *const u8,
    bstride: usize,
    panels: Range<usize>,
    mut epilogue: impl FnMut(BlockAt, &[[E; NR]], Option<BlockAt>),
) {
    assert!(lda.is_multiple_of(KB) && a.len() >= m * lda);
    // An A tile reads 16 whole rows: the rows after the last whole 16 are copied into a tile's
    // worth of their own (the rows past m are never written out).
    let whole = m / MR * MR;
    let mut tail = Aligned::<u8>::default();
    if m > whole {
        tail.resize(MR * lda, 0);
        tail[..(m - whole) * lda].copy_from_slice(&a[whole * lda..m * lda]);
    }
    let rows_at = |r: usize| {
        if r < whole {
            a[r * lda..].as_ptr()
        } else {
            tail.as_ptr()
        }
    };
    let mut accs = [
        AccBlock([[E::default(); NR]; NP * BLOCK_ROWS]),
        AccBlock([[E::default(); NR]; NP * BLOCK_ROWS]),
    ];
    let accs = accs.as_mut_ptr();
    let mut pending: Option<(BlockAt, usize)> = None;
    let mut which = 0;
    t.config(MR, KB);
    // The tests take small groups everywhere, so that the grouped loop runs on small shapes
    // (the result does not depend on the grouping: each block is whole in its tiles).
    let group = if cfg!(test) {
        2 * NP
    } else {
        panel_group(panels.len(), bstride, lda)
    };
    for g in panels.clone().step_by(group) {
        let g_end = (g + group).min(panels.end);
        for r in (0..m).step_by(BLOCK_ROWS) {
            let rows = BLOCK_ROWS.min(m - r);
            let halves = rows.div_ceil(MR);
            let second = rows_at(if halves == 2 { r + MR } else { r });
            for p in (g..g_end).step_by(NP) {
                let at = BlockAt {
                    r,
                    rows,
                    p,
                    gp: NP.min(g_end - p),
                };
                // SAFETY: both A halves address 16 rows of lda bytes (a's rows or the tail copy;
                // r and r + 16 are multiples of 16); panels p..p+gp lie behind b.
                let a_halves = [rows_at(r), second];
                compute(
                    t,
                    dot,
                    halves,
                    at.gp,
                    lda,
                    a_halves,
                    lda,
                    b.add(p * bstride),
                    bstride,
                );
                if let Some((done, i)) = pending.take() {
                    finish(&*accs.add(i), done, Some(at), &mut epilogue);
                }
                store(
                    t,
                    halves,
                    at.gp,
                    (*accs.add(which)).0.as_mut_ptr() as *mut u8,
                );
                pending = Some((at, which));
                which ^= 1;
            }
        }
    }
    if let Some((done, i)) = pending {
        finish(&*accs.add(i), done, None, &mut epilogue);
    }
    t.release();
}

fn finish<E>(
    acc: &AccBlock<E>,
    at: BlockAt,
    next: Option<BlockAt>,
    epilogue: &mut impl FnMut(BlockAt, &[[E; NR]], Option<BlockAt>),
) {
    epilogue(at, &acc.0[..at.gp * BLOCK_ROWS], next);
}

/// Panels per group of a task with `panels` panels of `bstride` bytes and activation rows of
/// `lda` bytes. Where the task's weights outgrow L2 and a 32-row block of activations fits L1,
/// panels go in groups of about 256 KB of weights that stay in L2 while every block passes over
/// them (BERT-base FFN-up and QKV in BF16: +7-20%); elsewhere one group (grouping cost 13-15%
/// where the blocks do not fit L1, e.g. FFN-down). Measured with `samp kernels` on a Sapphire
/// Rapids-class host (2 MB L2, 48 KB L1).
fn panel_group(panels: usize, bstride: usize, lda: usize) -> usize {
    if panels * bstride > 1 << 20 && BLOCK_ROWS * lda <= 48 << 10 {
        ((256 << 10) / (NP * bstride)).max(1) * NP
    } else {
        panels.max(1)
    }
}

/// Zero the block's C tiles and issue its dot products over `kc` bytes of depth.
///
/// # Safety
/// As [`run_task`]: `a[h]` 16 rows at stride `lda`, `b` `np` panels at stride `bstride`.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn compute<T: Tiles>(
    t: &mut T,
    dot: Dot,
    halves: usize,
    np: usize,
    kc: usize,
    a: [*const u8; 2],
    lda: usize,
    b: *const u8,
    bstride: usize,
) {
    for h in 0..halves {
        for q in 0..np {
            t.zero(BLOCK_C[h][q]);
        }
    }
    let mut k = 0;
    while k < kc {
        // SAFETY (loop): within the extents the caller vouches for.
        if halves == 2 && np == 2 {
            let (a, b) = (
                [a[0].add(k), a[1].add(k)],
                [b.add(k * 16), b.add(bstride + k * 16)],
            );
            t.step_2x2(dot, a, lda, b);
            k += KB;
            continue;
        }
        for h in 0..halves {
            t.load(BLOCK_A[h], a[h].add(k), lda);
        }
        for q in 0..np {
            t.load(B[q], b.add(q * bstride + k * 16), 64);
            for h in 0..halves {
                t.dot(dot, BLOCK_C[h][q], BLOCK_A[h], B[q]);
            }
        }
        k += KB;
    }
}

/// Store the block's C tiles, panel-major: rows `q * 32 + 16 * h ..` of 64 bytes at `acc`.
///
/// # Safety
/// `acc` must address `NP × 32` writable rows of 64 bytes.
#[allow(clippy::needless_range_loop)]
unsafe fn store<T: Tiles>(t: &mut T, halves: usize, np: usize, acc: *mut u8) {
    for h in 0..halves {
        for q in 0..np {
            t.store(BLOCK_C[h][q], acc.add((q * BLOCK_ROWS + h * MR) * 64), 64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_are_grouped_only_where_weights_outgrow_l2_and_activations_fit_l1() {
        // BF16 BERT-base FFN-up, half the panels per thread: 96 panels of 1536 × 16 bytes.
        assert_eq!(panel_group(96, 1536 * 16, 1536), 10);
        // BF16 BERT-base FFN-down: weights large, but a 32-row block is 192 KB.
        assert_eq!(panel_group(24, 6144 * 16, 6144), 24);
        // INT8 MiniLM QKV: 36 panels of 384 × 16 bytes fit L2.
        assert_eq!(panel_group(36, 384 * 16, 384), 36);
        assert_eq!(panel_group(0, 64, 64), 1);
    }
}
