//! The walks of samp's epilogues over a row-major block of products that oneDNN wrote: strips
//! of rows in place (AVX-512, AVX2), or copies into the micro-tiles the portable epilogues take.

use crate::kernels::packed::{AccRows, NR};

/// Rows per strip when an epilogue walks a row-major block of products (oneDNN's) panel by
/// panel: a few rows at a time, so that it streams along rows rather than striding down a whole
/// block's columns (128 rows × 12 KB apart at n = 3,072: a page per access, out of the
/// prefetchers' reach).
pub(in crate::kernels) const EPILOGUE_STRIP: usize = 8;

/// The walk of an epilogue over a row-major block of `rows × n` products: strips of
/// [`EPILOGUE_STRIP`] rows, each across the whole width one panel at a time, `f(first row,
/// first column, the strip's accumulator rows of that panel)`.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(in crate::kernels) fn strips<T>(
    product: &[T],
    rows: usize,
    n: usize,
    mut f: impl FnMut(usize, usize, AccRows<T>),
) {
    assert!(product.len() >= rows * n, "strips: product too small");
    for r in (0..rows).step_by(EPILOGUE_STRIP) {
        for c0 in (0..n).step_by(NR) {
            let acc = AccRows {
                ptr: product[r * n + c0..].as_ptr(),
                stride: n,
                rows: EPILOGUE_STRIP.min(rows - r),
            };
            f(r, c0, acc);
        }
    }
}

/// A strip's rows of a partial last panel (`cols < NR` columns) as a tile of the portable
/// epilogues, zero past `cols`: the first `acc.rows` rows of the result are the strip's.
///
/// # Safety
/// `acc` must address `acc.rows` rows of at least `cols` values.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(in crate::kernels) unsafe fn strip_tile<T: Copy + Default>(
    acc: AccRows<T>,
    cols: usize,
) -> [[T; NR]; EPILOGUE_STRIP] {
    let mut tile = [[T::default(); NR]; EPILOGUE_STRIP];
    for (i, t) in tile[..acc.rows].iter_mut().enumerate() {
        t[..cols].copy_from_slice(std::slice::from_raw_parts(acc.row(i), cols));
    }
    tile
}

/// Walks a row-major `rows × n` product block as the `[[T; NR]]` tiles samp's epilogues take:
/// up to 16 rows of one panel of `NR` columns (zero past `n`), calling `f(tile, first_row,
/// first_col)`.
pub(in crate::kernels) fn tiles<T: Copy + Default>(
    product: &[T],
    rows: usize,
    n: usize,
    mut f: impl FnMut(&[[T; NR]], usize, usize),
) {
    const TILE_ROWS: usize = 16;
    let mut tile = [[T::default(); NR]; TILE_ROWS];
    for r in (0..rows).step_by(TILE_ROWS) {
        let h = TILE_ROWS.min(rows - r);
        for c0 in (0..n).step_by(NR) {
            let cols = NR.min(n - c0);
            for (i, t) in tile[..h].iter_mut().enumerate() {
                let row = &product[(r + i) * n + c0..][..cols];
                t[..cols].copy_from_slice(row);
                t[cols..].fill(T::default());
            }
            f(&tile[..h], r, c0);
        }
    }
}
