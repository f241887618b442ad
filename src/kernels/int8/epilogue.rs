//! The dequantizing epilogue of the INT8 paths that keep their accumulators in memory (the
//! tile path and the AMX task): `y = act((acc + offset) · sa · ws + bias [+ y])`.

#[cfg(target_arch = "x86_64")]
use super::avx512;
use super::{finish, AccRows, Epilogue, Isa, QActs, QWeights, MAX_MR, NR};

/// The dequantizing epilogue of one accumulator tile: rows `r..r + tile.len()` of the product,
/// the panel at column `c0`, written to `y` (the tile's first output, rows `w.n` apart).
///
/// # Safety
/// `tile.len()` rows of the panel's columns (clipped to `w.n`) from `y` must be writable and
/// this caller's; `isa` must be one this CPU runs.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn epilogue(
    tile: &[[i32; NR]],
    x: &QActs,
    w: &QWeights,
    ep: Epilogue<'_>,
    y: *mut f32,
    r: usize,
    c0: usize,
    isa: Isa,
    tile_f: &mut [[f32; NR]; MAX_MR],
) {
    let n = w.n;
    let (rows, cols) = (tile.len(), NR.min(n - c0));
    let offset = &w.offset[c0..c0 + NR];
    let ws = &w.scales_pad[c0..c0 + NR];
    let sa = &x.scales[r..r + rows];
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: AVX-512 was detected (the kernel's ISA); the caller vouches for y.
        avx512::finish(
            AccRows::tile(tile),
            sa,
            offset,
            ws,
            ep.bias.map(|b| &b[c0..]),
            y,
            n,
            cols,
            ep.accumulate,
            ep.act,
            ep.to_int8,
        );
        return;
    }
    for (tile, (sa, i)) in tile
        .chunks(MAX_MR)
        .zip(sa.chunks(MAX_MR).zip((0..).step_by(MAX_MR)))
    {
        let out = &mut tile_f[..tile.len()];
        match isa {
            // SAFETY (both): the kernel's ISA was detected at run time.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => dequant_avx512(tile, sa, offset, ws, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => dequant_avx2(tile, sa, offset, ws, out),
            _ => dequant(tile, sa, offset, ws, out),
        }
        // SAFETY: the caller vouches for these rows and columns of y.
        finish(y.add(i * n), n, out, cols, ep, c0, isa);
    }
}

/// `out = (acc + offset) · sa[row] · ws[col]`, row by row.
#[inline(always)]
fn dequant(acc: &[[i32; NR]], sa: &[f32], offset: &[i32], ws: &[f32], out: &mut [[f32; NR]]) {
    let (offset, ws): (&[i32; NR], &[f32; NR]) = (
        offset.try_into().expect("NR offsets"),
        ws.try_into().expect("NR scales"),
    );
    for ((acc, o), &s) in acc.iter().zip(out.iter_mut()).zip(sa) {
        for j in 0..NR {
            o[j] = (acc[j] + offset[j]) as f32 * (s * ws[j]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dequant_avx2(
    acc: &[[i32; NR]],
    sa: &[f32],
    offset: &[i32],
    ws: &[f32],
    out: &mut [[f32; NR]],
) {
    dequant(acc, sa, offset, ws, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn dequant_avx512(
    acc: &[[i32; NR]],
    sa: &[f32],
    offset: &[i32],
    ws: &[f32],
    out: &mut [[f32; NR]],
) {
    dequant(acc, sa, offset, ws, out)
}
