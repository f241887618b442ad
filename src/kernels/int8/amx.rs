//! The AMX-INT8 task: [`tiles::run_task`] over the quantized activations and packed weights,
//! with the dequantizing epilogue for each block.

use std::ops::Range;

use super::{epilogue, Epilogue, Isa, QActs, QWeights, MAX_MR, NR};
use crate::kernels::amx as tiles;
use tiles::{Dot, Tiles};

/// The table entry's task: `task::<tiles::Hardware>` in the table, `task::<tiles::Emulated>`
/// (the software tile model, any CPU) in the tests.
///
/// # Safety
/// As `Int8Task`: with the hardware tiles, AMX-INT8 must be supported
/// ([`tiles::supported_int8`]); `isa` one this CPU runs; `y` must address `m × w.n` writable floats of
/// which this caller owns the columns of `panels`.
pub unsafe fn task<T: Tiles + Default>(
    x: &QActs,
    w: &QWeights,
    y: *mut f32,
    ep: Epilogue<'_>,
    panels: Range<usize>,
    isa: Isa,
) -> bool {
    let (m, kp) = (x.m, w.kp);
    if !kp.is_multiple_of(64) || m == 0 || panels.is_empty() {
        return false;
    }
    let t = &mut T::default();
    let n = w.n;
    let mut tile_f = [[0.0f32; NR]; MAX_MR];
    // SAFETY: x holds m rows of kp bytes; the panels are kp × NR bytes each (kp / 4 rows of
    // 64); tdpbusd accumulates i32.
    tiles::run_task::<T, i32>(
        t,
        Dot::Int8,
        &x.data,
        m,
        kp,
        w.panel(0).as_ptr() as *const u8,
        kp * NR,
        panels,
        |at, acc, next| {
            for q in 0..at.gp {
                let tile = &acc[q * tiles::BLOCK_ROWS..q * tiles::BLOCK_ROWS + at.rows];
                // SAFETY: rows at.r.. < m and panel p+q's columns belong to this task (the
                // caller vouches for y and isa).
                let c0 = (at.p + q) * NR;
                let yt = y.add(at.r * n + c0);
                epilogue(tile, x, w, ep, yt, at.r, c0, isa, &mut tile_f);
            }
            if let Some(nb) = next.filter(|_| T::HARDWARE) {
                let c0 = nb.p * NR;
                // SAFETY: the next block's rows and panels lie inside y (as this block's).
                tiles::prefetch_out(y, n, nb.r, nb.rows, c0, (nb.gp * NR).min(n - c0));
            }
        },
    );
    true
}
