//! The AMX-BF16 task: the loop nest around [`tiles::block`] (32 rows × 32 columns per call, the
//! whole depth in the tile registers) with the epilogue after each block. The tiles are
//! configured once per task and released at its end.

use std::ops::Range;

use super::{finish, Bf16Acts, Bf16Weights, Epilogue, Isa, NR};
use crate::model::kernels::aligned::Aligned;
use crate::model::kernels::amx as tiles;
use tiles::{Dot, Tiles, BLOCK_ROWS};

/// The table entry's task on the hardware tiles.
///
/// # Safety
/// As `Bf16Task`: AMX-BF16 must be supported ([`tiles::supported_bf16`]) and `isa` one this CPU
/// runs; `y` must address `m × w.n` writable floats of which this caller owns the columns of
/// `panels`.
pub unsafe fn task(
    x: &Bf16Acts,
    w: &Bf16Weights,
    y: *mut f32,
    ep: Epilogue<'_>,
    panels: Range<usize>,
    isa: Isa,
) -> bool {
    run(&mut tiles::Hardware::default(), x, w, y, ep, panels, isa)
}

/// The same task on the software tile model (tests, any CPU).
///
/// # Safety
/// As [`task`], less the AMX requirement.
#[cfg(test)]
pub unsafe fn task_emulated(
    x: &Bf16Acts,
    w: &Bf16Weights,
    y: *mut f32,
    ep: Epilogue<'_>,
    panels: Range<usize>,
    isa: Isa,
) -> bool {
    run(&mut tiles::Emulated::default(), x, w, y, ep, panels, isa)
}

/// bf16 values per 64-byte tile step.
const KB: usize = 32;

/// # Safety
/// As [`task`], with `t` usable as its implementation requires.
unsafe fn run<T: Tiles>(
    t: &mut T,
    x: &Bf16Acts,
    w: &Bf16Weights,
    y: *mut f32,
    ep: Epilogue<'_>,
    panels: Range<usize>,
    isa: Isa,
) -> bool {
    let (m, n, kp) = (x.m, w.n, w.kp);
    if !kp.is_multiple_of(KB) || m == 0 {
        return false;
    }
    // An A tile reads 16 whole rows: the rows after the last whole 16 are copied into a tile's
    // worth of their own (the rows past m are never written out).
    let whole = m / tiles::MR * tiles::MR;
    let mut tail = Aligned::default();
    if m > whole {
        tail.resize(tiles::MR * kp, 0u16);
        tail[..(m - whole) * kp].copy_from_slice(&x.data[whole * kp..m * kp]);
    }
    let rows_at = |r: usize| {
        if r < whole {
            x.data[r * kp..].as_ptr() as *const u8
        } else {
            tail.as_ptr() as *const u8
        }
    };
    let mut acc = [[0.0f32; NR]; tiles::NP * BLOCK_ROWS];
    t.config(tiles::MR, 2 * KB);
    for r in (0..m).step_by(BLOCK_ROWS) {
        let rows = BLOCK_ROWS.min(m - r);
        let halves = rows.div_ceil(tiles::MR);
        let second = if halves == 2 {
            rows_at(r + tiles::MR)
        } else {
            rows_at(r)
        };
        for p in panels.clone().step_by(tiles::NP) {
            let gp = tiles::NP.min(panels.end - p);
            // SAFETY: both A halves address 16 rows of kp values (x's rows or the tail copy;
            // r and r + 16 are multiples of 16), panels p..p+gp lie in w, and acc holds
            // NP × 32 rows of 64 bytes.
            tiles::block(
                t,
                Dot::Bf16,
                halves,
                gp,
                2 * kp,
                [rows_at(r), second],
                2 * kp,
                w.panel(p).as_ptr() as *const u8,
                2 * kp * NR,
                acc.as_mut_ptr() as *mut u8,
            );
            for q in 0..gp {
                let c0 = (p + q) * NR;
                let tile = &acc[q * BLOCK_ROWS..q * BLOCK_ROWS + rows];
                // SAFETY: rows r..r+rows < m and panel p+q's columns belong to this task (the
                // caller vouches for y and isa).
                finish(y.add(r * n + c0), n, tile, NR.min(n - c0), ep, c0, isa);
            }
        }
    }
    t.release();
    true
}
