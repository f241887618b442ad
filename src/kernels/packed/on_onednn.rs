//! The f32 product on oneDNN ([`onednn`]): its weights, the call, the start-up self-check, and
//! samp's epilogue walked over each block of products oneDNN wrote.

use super::{agrees_with_portable, finish, Epilogue, Isa, PackedWeights, NR};
#[cfg(target_arch = "x86_64")]
use super::{avx2, avx512, FloatEp};
use crate::kernels::onednn;

/// oneDNN's matmul over these weights (see [`onednn`]).
pub fn onednn_gemm(w: &PackedWeights) -> Result<onednn::Gemm, String> {
    onednn::Gemm::f32(&w.to_rows(), w.n, w.k)
}

/// As [`matmul`], on oneDNN: `g` was made from the same weights by [`onednn_gemm`].
pub fn matmul_onednn(x: &[f32], m: usize, g: &onednn::Gemm, y: &mut [f32], ep: Epilogue<'_>) {
    let (k, _) = g.dims();
    assert!(x.len() >= m * k, "matmul: input too small");
    g.run_float(onednn::bytes_of(&x[..m * k]), m, y, ep)
}

/// The start-up self-check of oneDNN's f32 matmul.
pub(in crate::kernels) fn onednn_agrees() -> onednn::Check {
    let attempt = onednn::Attempt::default();
    let agreed = agrees_with_portable(|x, m, w, y| {
        attempt.run(onednn_gemm(w), |g| {
            matmul_onednn(x, m, g, y, Epilogue::default())
        })
    });
    attempt.check(agreed)
}

/// `y = epilogue(product)` for a row-major block of `rows × cols` products (oneDNN's) of the
/// output columns from `c0`, `y` at its first output (row stride `ldy`); in place on AVX-512 and
/// AVX2.
///
/// # Safety
/// `y` must address `rows` × `cols` writable floats (stride `ldy`), its own; `isa` detected.
pub(in crate::kernels) unsafe fn finish_block(
    product: &[f32],
    (rows, cols): (usize, usize),
    (y, ldy): (*mut f32, usize),
    ep: Epilogue<'_>,
    c0: usize,
    isa: Isa,
) {
    assert!(product.len() >= rows * cols);
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        return onednn::strips(product, rows, cols, |r, c, acc| {
            let ep = FloatEp::at(&ep, c0 + c);
            avx512::finish(acc, &ep, y.add(r * ldy + c), ldy, NR.min(cols - c));
        });
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        // In place too: whole panels straight from the product's rows; a partial last one
        // through a copy (`finish` takes a tile).
        return onednn::strips(product, rows, cols, |r, c, acc| {
            let (y, w) = (y.add(r * ldy + c), NR.min(cols - c));
            match w == NR {
                true => avx2::finish_rows(y, ldy, acc, ep, c0 + c),
                false => finish(
                    y,
                    ldy,
                    &onednn::strip_tile(acc, w)[..acc.rows],
                    w,
                    ep,
                    c0 + c,
                    isa,
                ),
            }
        });
    }
    onednn::tiles(product, rows, cols, |tile, r, c| {
        finish(
            y.add(r * ldy + c),
            ldy,
            tile,
            NR.min(cols - c),
            ep,
            c0 + c,
            isa,
        )
    })
}
