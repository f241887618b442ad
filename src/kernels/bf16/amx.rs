//! The AMX-BF16 task: [`tiles::run_task`] over the rounded activations and packed weights, with
//! the epilogue for each block.

use std::ops::Range;

use super::{finish, Bf16Acts, Bf16Weights, Epilogue, Isa, NR};
use crate::kernels::amx as tiles;
use tiles::{Dot, Tiles};

/// The table entry's task: `task::<tiles::Hardware>` in the table, `task::<tiles::Emulated>`
/// (the software tile model, any CPU) in the tests.
///
/// # Safety
/// As `Bf16Task`: with the hardware tiles, AMX-BF16 must be supported
/// ([`tiles::supported_bf16`]); `isa` one this CPU runs; `y` must address `m × w.n` writable floats of
/// which this caller owns the columns of `panels`.
pub unsafe fn task<T: Tiles + Default>(
    x: &Bf16Acts,
    w: &Bf16Weights,
    y: *mut f32,
    ep: Epilogue<'_>,
    panels: Range<usize>,
    isa: Isa,
) -> bool {
    let (m, n, kp) = (x.m, w.n, w.kp);
    // 32 bf16 values per 64-byte step.
    if !kp.is_multiple_of(32) || m == 0 || panels.is_empty() {
        return false;
    }
    let t = &mut T::default();
    // SAFETY: the activations as bytes (u16 has no padding; every byte is initialized).
    let a = std::slice::from_raw_parts(x.data.as_ptr() as *const u8, 2 * x.data.len());
    // SAFETY: m rows of 2·kp bytes; the panels are 2·kp × NR bytes each (kp / 2 rows of 64);
    // tdpbf16ps accumulates f32.
    tiles::run_task::<T, f32>(
        t,
        Dot::Bf16,
        a,
        m,
        2 * kp,
        w.panel(0).as_ptr() as *const u8,
        2 * kp * NR,
        panels,
        |at, acc, _next| {
            for q in 0..at.gp {
                let c0 = (at.p + q) * NR;
                let tile = &acc[q * tiles::BLOCK_ROWS..q * tiles::BLOCK_ROWS + at.rows];
                // SAFETY: rows at.r.. < m and panel p+q's columns belong to this task (the
                // caller vouches for y and isa).
                finish(y.add(at.r * n + c0), n, tile, NR.min(n - c0), ep, c0, isa);
            }
        },
    );
    true
}
