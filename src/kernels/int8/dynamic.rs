//! INT8 products whose outputs go to a next INT8 layer with dynamic (per-row) scales: each
//! task finishes a block of whole rows into a buffer of its own thread's and, while those rows
//! are in cache, quantizes them for the next layer (each row's absolute maximum, then its
//! bytes: what [`QActs::quantize`] with [`super::ActScale::Dynamic`] gives). The `m × n` float output
//! is never written to memory and read back twice (for the maxima, then for the bytes): at
//! BERT-base's FFN (3,072 wide) that was 50 MB per layer for a batch of 32 × 128 tokens.
//!
//! Two producers of the blocks: samp's fused kernel ([`matmul_dynamic`], row blocks spread
//! over the threads) and oneDNN's matmul ([`matmul_onednn_dynamic`], its own row blocks).

#[cfg(target_arch = "x86_64")]
use super::avx512;
use super::{check_onednn, finish_block, onednn, Epilogue, Int8Kernel, Isa, QActs, QWeights};
#[cfg(target_arch = "x86_64")]
use crate::kernels::driver::fused_tiles;

thread_local! {
    /// A block's float outputs on their way to the next layer.
    static FLOATS: std::cell::RefCell<crate::kernels::aligned::Aligned<f32>> =
        std::cell::RefCell::new(Default::default());
}

/// Floats of a block's outputs (256 KiB): they stay in L2 between the epilogue that writes
/// them and the quantization that reads them, beside the weights streaming through. (On Zen 4,
/// blocks of 8 to 64 rows of a 4,096 × 768 → 3,072 product all ran within the noise.)
const BLOCK_FLOATS: usize = 64 * 1024;

/// Rows per block for outputs `n` wide: whole micro-tiles of `mr` rows, at most ~`BLOCK_FLOATS`
/// floats (never fewer than one tile).
fn block_rows(n: usize, mr: usize) -> usize {
    ((BLOCK_FLOATS / n.max(1)) / mr * mr).max(mr)
}

/// As [`super::matmul`] without a residual, the outputs going to `next` (an INT8 layer with
/// dynamic scales) instead of `y`; see the module. Row blocks spread over the threads, each
/// running samp's fused kernel over every panel (so each task reads all the weights, from L3
/// after the first). Only where this CPU's INT8 entry has a fused path and there are at least
/// two blocks per thread (fewer rows keep the split by columns: [`super::matmul`], then
/// [`QActs::quantize`]); returns `false` there (and for an epilogue that accumulates or already
/// quantizes), having done nothing.
pub fn matmul_dynamic(x: &QActs, w: &QWeights, ep: Epilogue<'_>, next: &mut QActs) -> bool {
    let kernel = Int8Kernel::detect(w.bits);
    let rows = block_rows(w.n, kernel.mr);
    let threads = rayon::current_num_threads().max(1);
    x.m >= 2 * threads * rows && matmul_dynamic_with(x, w, ep, next, kernel, rows)
}

/// As [`matmul_dynamic`], with the kernel and the rows per block chosen by the caller (any
/// number of rows).
pub(super) fn matmul_dynamic_with(
    x: &QActs,
    w: &QWeights,
    ep: Epilogue<'_>,
    next: &mut QActs,
    kernel: &Int8Kernel,
    rows: usize,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use rayon::prelude::*;
        let Some(fused) = kernel.fused else {
            return false;
        };
        if ep.accumulate || ep.to_int8.is_some() {
            return false;
        }
        let (m, n) = (x.m, w.n);
        assert!(rows > 0 && rows.is_multiple_of(kernel.mr), "rows per block");
        assert!(kernel.supported() && kernel.max_bits >= w.bits);
        assert_eq!(x.kp, w.kp, "int8 matmul: depth mismatch");
        if let Some(b) = ep.bias {
            assert_eq!(b.len(), n, "int8 matmul: bias length");
        }
        let sink = next.row_sink(m, n);
        let kp = w.kp;
        let block = |b: usize| {
            let r0 = b * rows;
            let rows = rows.min(m - r0);
            FLOATS.with_borrow_mut(|buf| {
                buf.set_len(rows * n);
                let y = buf.as_mut_ptr();
                fused_tiles(rows, n, (rows, kernel.mr, kernel.np), 0..w.panels(), |t| {
                    let fep = avx512::FusedEp {
                        offset: w.offset[t.c0..].as_ptr(),
                        ws: w.scales_pad[t.c0..].as_ptr(),
                        bias: ep.bias.map(|b| b[t.c0..].as_ptr()),
                        sa: x.scales[r0 + t.r..].as_ptr(),
                        accumulate: false,
                        act: ep.act,
                        to_int8: None,
                    };
                    let a = x.data[r0 * kp..].as_ptr();
                    // SAFETY: the entry's features were detected (asserted above); the tile's
                    // rows of this block exist in x (kp bytes each) and in buf (n floats
                    // each), its panels in w (offsets and scales padded to whole panels).
                    unsafe { fused(&t.call(a, kp, w.panel(t.p).as_ptr(), y, n), &fep) }
                });
                for (i, row) in buf[..rows * n].chunks_exact(n).enumerate() {
                    // SAFETY: rows r0.. are this block's alone.
                    unsafe { sink.put(r0 + i, row) };
                }
            })
        };
        (0..m.div_ceil(rows)).into_par_iter().for_each(block);
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        _ = (x, w, ep, next, kernel, rows);
        false
    }
}

/// As [`matmul_onednn`] without a residual, the outputs going to a next INT8 layer with
/// dynamic (per-row) scales: each block's rows are finished into a buffer of this thread's,
/// while they are in cache, and quantized from there into `next` (each row's absolute maximum,
/// then its bytes: what [`QActs::quantize`] with [`ActScale::Dynamic`] gives), instead of
/// written to an `m × n` float output and read back from memory. A block spans whole rows, so
/// every row's maximum is known in its block. Returns `false` for an epilogue that accumulates
/// or already quantizes, having done nothing.
pub fn matmul_onednn_dynamic(
    x: &QActs,
    w: &QWeights,
    g: &onednn::Gemm,
    ep: Epilogue<'_>,
    next: &mut QActs,
) -> bool {
    let (m, n) = (x.m, w.n);
    if ep.accumulate || ep.to_int8.is_some() {
        return false;
    }
    check_onednn(x, w, g, ep);
    let isa = Isa::detect();
    let sink = next.row_sink(m, n);
    // A block of oneDNN's (up to 128 or 1,024 rows) is finished and quantized a strip of rows
    // at a time, so the floats stay in L2 between the two (a whole block's did not on Zen 3).
    let strip = block_rows(n, STRIP);
    g.run::<i32>(&x.data[..m * x.kp], m, |r0, rows, product| {
        FLOATS.with_borrow_mut(|buf| {
            buf.set_len(strip.min(rows) * n);
            for s0 in (0..rows).step_by(strip) {
                let (r, rows) = (r0 + s0, strip.min(rows - s0));
                let product = &product[s0 * n..];
                // SAFETY: the ISA was detected; buf holds the strip's rows × n floats.
                unsafe { finish_block(isa, x, w, ep, product, r, rows, buf.as_mut_ptr()) };
                for (i, row) in buf[..rows * n].chunks_exact(n).enumerate() {
                    // SAFETY: rows r0.. are this block's alone.
                    unsafe { sink.put(r + i, row) };
                }
            }
        })
    });
    true
}

/// The strips of oneDNN's blocks are whole multiples of its epilogue walk's 8-row strips.
const STRIP: usize = 8;
