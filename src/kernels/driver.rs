//! The parts of the macro-kernel driver every GEMM precision shares: splitting output panels
//! over the thread pool, the loop nest of the whole-depth fused calls, and picking a table
//! entry by its self-check. Pure scheduling: no arithmetic, no ISA.

use std::ops::Range;

use rayon::prelude::*;

use super::packed::NR;
use super::SharedOut;

/// Runs `run(out, panels)` over disjoint ranges of whole `np`-panel groups of an output with
/// `panels` panels, on the rayon pool when there are at least `min_work` multiply-adds per
/// thread (`work` in all), else on the caller's thread.
pub(crate) fn split_panels(
    y: &mut [f32],
    work: usize,
    min_work: usize,
    panels: usize,
    np: usize,
    run: impl Fn(*mut f32, Range<usize>) + Sync,
) {
    let groups = panels.div_ceil(np);
    let threads = rayon::current_num_threads().max(1);
    let tasks = if work < min_work * threads {
        1
    } else {
        threads.min(groups)
    };
    let per_task = groups.div_ceil(tasks) * np;
    let out = SharedOut(y.as_mut_ptr());
    let task = |t: usize| {
        let p0 = (t * per_task).min(panels);
        let p1 = ((t + 1) * per_task).min(panels);
        run(out.ptr(), p0..p1)
    };
    if tasks == 1 {
        task(0);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
}

/// One whole-depth fused call: rows `r..r+rows`, panels `p..p+gp` (columns from `c0`, the last
/// panel `cols_last` wide).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FusedTile {
    pub r: usize,
    pub rows: usize,
    pub p: usize,
    pub gp: usize,
    pub c0: usize,
    pub cols_last: usize,
}

/// The loop nest of the fused paths: row blocks of `mc` rows (kept in L2 while every panel
/// group passes over them), panel groups of `np`, row tiles of `mr`.
pub(crate) fn fused_tiles(
    m: usize,
    n: usize,
    (mc, mr, np): (usize, usize, usize),
    panels: Range<usize>,
    mut call: impl FnMut(FusedTile),
) {
    for r0 in (0..m).step_by(mc) {
        let r1 = (r0 + mc).min(m);
        for p in panels.clone().step_by(np) {
            let gp = np.min(panels.end - p);
            for r in (r0..r1).step_by(mr) {
                call(FusedTile {
                    r,
                    rows: mr.min(r1 - r),
                    p,
                    gp,
                    c0: p * NR,
                    cols_last: NR.min(n - (p + gp - 1) * NR),
                });
            }
        }
    }
}

/// The first entry of a table (fastest first) that this CPU supports and that passes its
/// self-check; an entry that fails is logged and skipped.
pub(crate) fn first_passing<'a, K>(
    table: &'a [K],
    what: &str,
    name: impl Fn(&K) -> &'static str,
    supported: impl Fn(&K) -> bool,
    check: impl Fn(&K) -> bool,
) -> Option<&'a K> {
    for k in table.iter().filter(|k| supported(k)) {
        if check(k) {
            tracing::debug!(kernel = name(k), "{what} GEMM kernel");
            return Some(k);
        }
        tracing::error!(
            kernel = name(k),
            "{what} kernel disagrees with the portable kernel; not using it"
        );
    }
    None
}
