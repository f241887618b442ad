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

impl FusedTile {
    /// This tile's operands for row-major `x` (`kp` elements per row), the packed weights whose
    /// panel `p` starts at `panel` (`kp × NR` per panel), and row-major `y` (`n` per row).
    pub(crate) fn call<A, B>(
        &self,
        x: *const A,
        kp: usize,
        panel: *const B,
        y: *mut f32,
        n: usize,
    ) -> FusedCall<A, B> {
        FusedCall {
            rows: self.rows,
            np: self.gp,
            k: kp,
            a: x.wrapping_add(self.r * kp),
            lda: kp,
            b: panel,
            bstride: kp * NR,
            y: y.wrapping_add(self.r * n + self.c0),
            ldy: n,
            cols_last: self.cols_last,
        }
    }
}

/// One micro-kernel call of the tile path, what every precision's `tile` entry takes:
/// `acc += a · b` for `rows` rows and `np` adjacent panels over `kc` steps of depth.
///
/// - `a`: `rows` rows at stride `lda` from the current depth (the f32 entries read a packed row
///   tile instead, where step `kk` holds `mr` values, and `lda` is unused);
/// - `b`: the first panel at the current depth; panel `q` starts `q * bstride` later;
/// - `acc`: `np × mr` rows of `NR` accumulators, panel-major (`acc[q * mr + i]`).
pub struct TileCall<A, B, C> {
    pub rows: usize,
    pub np: usize,
    pub kc: usize,
    pub a: *const A,
    pub lda: usize,
    pub b: *const B,
    pub bstride: usize,
    pub acc: *mut [C; NR],
}

// Raw pointers and sizes: copyable whatever the element types (a derive would ask A, B, C).
impl<A, B, C> Clone for TileCall<A, B, C> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A, B, C> Copy for TileCall<A, B, C> {}

impl<A, B, C> TileCall<A, B, C> {
    /// The fields in order: `(rows, np, kc, a, lda, b, bstride, acc)`.
    #[allow(clippy::type_complexity)]
    pub fn parts(
        &self,
    ) -> (
        usize,
        usize,
        usize,
        *const A,
        usize,
        *const B,
        usize,
        *mut [C; NR],
    ) {
        let c = *self;
        (c.rows, c.np, c.kc, c.a, c.lda, c.b, c.bstride, c.acc)
    }

    /// `(a, lda)` and `(b, bstride)` in bytes, `elem` bytes per value.
    pub(crate) fn a_bytes(&self, elem: usize) -> (*const u8, usize) {
        (self.a as *const u8, elem * self.lda)
    }
    pub(crate) fn b_bytes(&self, elem: usize) -> (*const u8, usize) {
        (self.b as *const u8, elem * self.bstride)
    }

    /// The same call over bytes, for schedules that count depth and strides in bytes (AMX):
    /// `elem` bytes per value of `a` and `b`.
    pub fn bytes(&self, elem: usize) -> TileCall<u8, u8, u8> {
        TileCall {
            rows: self.rows,
            np: self.np,
            kc: elem * self.kc,
            a: self.a as *const u8,
            lda: elem * self.lda,
            b: self.b as *const u8,
            bstride: elem * self.bstride,
            acc: self.acc as *mut [u8; NR],
        }
    }
}

/// The operands of one whole-depth fused call, what every precision's `fused` entry takes:
/// `rows` rows of `a` (stride `lda`) times `np` adjacent panels of `b` (`bstride` apart) over
/// depth `k`, into `rows` rows of `y` (stride `ldy`) whose last panel is `cols_last` wide.
#[derive(Clone, Copy)]
pub(crate) struct FusedCall<A, B> {
    pub rows: usize,
    pub np: usize,
    pub k: usize,
    pub a: *const A,
    pub lda: usize,
    pub b: *const B,
    pub bstride: usize,
    pub y: *mut f32,
    pub ldy: usize,
    pub cols_last: usize,
}

impl<A, B> FusedCall<A, B> {
    /// As [`TileCall::a_bytes`] and [`TileCall::b_bytes`].
    pub(crate) fn a_bytes(&self, elem: usize) -> (*const u8, usize) {
        (self.a as *const u8, elem * self.lda)
    }
    pub(crate) fn b_bytes(&self, elem: usize) -> (*const u8, usize) {
        (self.b as *const u8, elem * self.bstride)
    }
}

/// The float epilogue of a fused call: bias (at the call's first column), residual, activation.
#[derive(Clone, Copy)]
pub(crate) struct FloatEp {
    pub bias: Option<*const f32>,
    pub accumulate: bool,
    pub act: Option<crate::kernels::Activation>,
    pub to_int8: Option<super::packed::ToInt8>,
}

impl FloatEp {
    /// `ep` for the columns from `c0`.
    pub(crate) fn at(ep: &super::packed::Epilogue<'_>, c0: usize) -> Self {
        FloatEp {
            bias: ep.bias.map(|b| b[c0..].as_ptr()),
            accumulate: ep.accumulate,
            act: ep.act,
            to_int8: ep.to_int8,
        }
    }
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

/// A packed-weights GEMM `y[m, n] = x · W` (depth `k`; `x_kp`, `w_kp` the padded depths of the
/// two operands), from the entry point: checks the shapes (the caller asserted the kernel's
/// support), then runs `range(y, panels)` over the thread split of the output panels
/// ([`split_panels`] with `min_work`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn drive(
    what: &str,
    (m, n, k): (usize, usize, usize),
    (x_kp, w_kp): (usize, usize),
    y: &mut [f32],
    bias: Option<&[f32]>,
    min_work: usize,
    (panels, np): (usize, usize),
    range: impl Fn(*mut f32, Range<usize>) + Sync,
) {
    assert_eq!(x_kp, w_kp, "{what} matmul: depth mismatch");
    assert!(y.len() >= m * n, "{what} matmul: output too small");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "{what} matmul: bias length");
    }
    if m == 0 || n == 0 {
        return;
    }
    split_panels(y, m * n * k, min_work, panels, np, range);
}

/// Rows per block: the block's activations (`mc × kp` elements) stay within `budget` elements
/// of L2 while every panel group of the task passes over them.
pub(crate) fn row_block(kp: usize, mr: usize, budget: usize) -> usize {
    ((budget / kp.max(1)) / mr * mr).max(mr)
}

/// Where one tile-path call lands: rows `r..r+rows`, panels `p..p+gp`, depth `k0..k0+kc`.
#[derive(Clone, Copy)]
pub(crate) struct TileSlot {
    pub rows: usize,
    pub gp: usize,
    pub k0: usize,
    pub kc: usize,
    pub r: usize,
    pub p: usize,
}

/// The tile path's loop nest: per block of `mc` rows and group of `np` panels, the
/// accumulators of every `mr`-row micro-tile are kept across depth passes of `kc` (so a slice
/// of the panel group stays in L1 while all tiles pass over it), then finished tile by tile.
///
/// `tile(slot, acc)` adds the slot's depth of its rows times its panels into `acc` (`np × mr`
/// rows); `finish(acc_rows, r, c0)` applies the epilogue to one
/// tile's rows of one panel starting at column `c0`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn tiled<A: Copy + Default>(
    m: usize,
    kp: usize,
    (mc, mr, np, kc): (usize, usize, usize, usize),
    panels: Range<usize>,
    acc: &mut Vec<[A; NR]>,
    mut tile: impl FnMut(TileSlot, *mut [A; NR]),
    mut finish: impl FnMut(&[[A; NR]], usize, usize),
) {
    for r0 in (0..m).step_by(mc) {
        let r1 = (r0 + mc).min(m);
        let tiles = (r1 - r0).div_ceil(mr);
        for p in panels.clone().step_by(np) {
            let gp = np.min(panels.end - p);
            acc.clear();
            acc.resize(tiles * np * mr, [A::default(); NR]);
            for k0 in (0..kp).step_by(kc) {
                let kc = kc.min(kp - k0);
                for t in 0..tiles {
                    let r = r0 + t * mr;
                    let rows = mr.min(r1 - r);
                    let slot = TileSlot {
                        rows,
                        gp,
                        k0,
                        kc,
                        r,
                        p,
                    };
                    tile(slot, acc[t * np * mr..].as_mut_ptr());
                }
            }
            for q in 0..gp {
                for t in 0..tiles {
                    let r = r0 + t * mr;
                    let rows = mr.min(r1 - r);
                    let at = (t * np + q) * mr;
                    finish(&acc[at..at + rows], r, (p + q) * NR);
                }
            }
        }
    }
}

/// A GEMM's operands and the entry that computes it, bound for the driver.
pub(crate) struct Bound<'a, X, W, K> {
    pub x: &'a X,
    pub w: &'a W,
    pub ep: super::packed::Epilogue<'a>,
    pub kernel: &'a K,
}

/// One precision's packed-weights GEMM with its entry chosen and its operands bound, as
/// [`run`] drives it: a whole-task path (AMX) where the entry has one, else whole-depth fused
/// calls where it has those, else the tile path. bf16 and int8 implement it.
pub(crate) trait PanelGemm: Sync {
    /// Accumulator lanes of the tile path (f32 or i32).
    type Acc: Copy + Default;
    /// For messages: `bf16`, `int8`.
    const NAME: &'static str;
    /// Multiply-adds per thread below which the product runs on the caller's thread.
    const MIN_WORK: usize;
    /// Activation elements a row block keeps in L2.
    const L2_ELEMS: usize;
    /// `(m, n, k)` and the two operands' padded depths `(x_kp, w_kp)`.
    fn dims(&self) -> ((usize, usize, usize), (usize, usize));
    /// The weights' panel count, the bias (checked against `n`).
    fn panels(&self) -> usize;
    fn bias(&self) -> Option<&[f32]>;
    /// The entry's `(mr, np, kc)`.
    fn blocking(&self) -> (usize, usize, usize);
    /// # Safety
    /// As [`run`]'s: this task owns the columns of `panels` of `y`.
    unsafe fn task(&self, y: *mut f32, panels: Range<usize>) -> bool;
    fn has_fused(&self) -> bool;
    /// # Safety
    /// As [`run`]'s, for the tile's rows and panels.
    unsafe fn fused(&self, t: &FusedTile, y: *mut f32);
    /// # Safety
    /// As [`run`]'s; `acc` holds the tile's `np × mr` accumulator rows.
    unsafe fn tile(&self, slot: TileSlot, acc: *mut [Self::Acc; NR]);
    /// # Safety
    /// As [`run`]'s, for rows `r..r + tile.len()` and the panel at column `c0`.
    unsafe fn finish(&self, tile: &[[Self::Acc; NR]], r: usize, c0: usize, y: *mut f32);
}

/// The [`PanelGemm`] constants (accumulator lanes, name, the thread split's minimum work, the
/// activations a row block keeps in L2) and the methods every bound GEMM shares, for an impl on
/// a struct with fields `x`
/// (activations: `m`, `kp`, `data`), `w` (weights: `n`, `k`, `kp`, `panels()`, `panel(p)`),
/// `ep` (`Epilogue`) and `kernel` (an entry: `mr`, `np`, `kc`, `isa`, `tile`, `task`, `fused`).
macro_rules! panel_gemm_shared {
    ($acc:ty, $name:literal, min_work $min:expr, l2 $l2:expr) => {
        type Acc = $acc;
        const NAME: &'static str = $name;
        const MIN_WORK: usize = $min;
        const L2_ELEMS: usize = $l2;

        fn dims(&self) -> ((usize, usize, usize), (usize, usize)) {
            ((self.x.m, self.w.n, self.w.k), (self.x.kp, self.w.kp))
        }
        fn panels(&self) -> usize {
            self.w.panels()
        }
        fn bias(&self) -> Option<&[f32]> {
            self.ep.bias
        }
        fn blocking(&self) -> (usize, usize, usize) {
            (self.kernel.mr, self.kernel.np, self.kernel.kc)
        }
        unsafe fn task(&self, y: *mut f32, panels: std::ops::Range<usize>) -> bool {
            let (x, w, k) = (self.x, self.w, self.kernel);
            k.task
                .is_some_and(|task| task(x, w, y, self.ep, panels, k.isa))
        }
        fn has_fused(&self) -> bool {
            #[cfg(target_arch = "x86_64")]
            return self.kernel.fused.is_some();
            #[cfg(not(target_arch = "x86_64"))]
            false
        }
        unsafe fn tile(&self, s: $crate::kernels::driver::TileSlot, acc: *mut [Self::Acc; NR]) {
            let (x, w) = (self.x, self.w);
            let $crate::kernels::driver::TileSlot {
                rows,
                gp,
                k0,
                kc,
                r,
                p,
            } = s;
            (self.kernel.tile)(&TileCall {
                rows,
                np: gp,
                kc,
                a: x.data.as_ptr().add(r * w.kp + k0),
                lda: w.kp,
                b: w.panel(p).as_ptr().add(k0 * NR),
                bstride: w.kp * NR,
                acc,
            })
        }
    };
}
pub(crate) use panel_gemm_shared;

/// `y = epilogue(x · W)` for a bound [`PanelGemm`]: the shape checks, the thread split, and in
/// each task the entry's fastest path.
pub(crate) fn run<G: PanelGemm>(g: &G, y: &mut [f32]) {
    let ((m, n, k), depths) = g.dims();
    let (_, np, _) = g.blocking();
    let split = (g.panels(), np);
    drive(
        G::NAME,
        (m, n, k),
        depths,
        y,
        g.bias(),
        G::MIN_WORK,
        split,
        |y, panels| {
            // SAFETY: each call writes only the columns of its panels (clipped to n) of y; the
            // ranges are disjoint and y holds m*n floats (checked by `drive`).
            unsafe { run_panels(g, y, panels) }
        },
    );
}

/// # Safety
/// `y` must point to `m × n` writable floats that no one else touches in the columns of
/// `panels`; the entry's features were detected.
unsafe fn run_panels<G: PanelGemm>(g: &G, y: *mut f32, panels: Range<usize>) {
    let ((m, n, _), (kp, _)) = g.dims();
    let (mr, np, kc) = g.blocking();
    let mc = row_block(kp, mr, G::L2_ELEMS);
    if g.task(y, panels.clone()) {
        return;
    }
    if g.has_fused() {
        fused_tiles(m, n, (mc, mr, np), panels, |t| g.fused(&t, y));
        return;
    }
    let mut acc = Vec::new();
    tiled(
        m,
        kp,
        (mc, mr, np, kc),
        panels,
        &mut acc,
        |slot, acc| g.tile(slot, acc),
        |tile, r, c0| g.finish(tile, r, c0, y),
    );
}

/// The fastest entry of `table` (fastest first) that `usable` accepts and whose self-check
/// (`check`) passes, else the last one (the portable entry, which never fails).
pub(crate) fn best<K: Named>(
    table: &'static [K],
    what: &str,
    usable: impl Fn(&K) -> bool,
    check: impl Fn(&K) -> bool,
) -> &'static K {
    let name = |k: &K| k.name();
    first_passing(table, what, name, usable, check)
        .unwrap_or_else(|| table.last().expect("a portable entry"))
}

/// A kernel table entry's name (for logs and `samp kernels`).
pub(crate) trait Named {
    fn name(&self) -> &'static str;
}

/// A whole-task path (AMX): its own loop nest over a task's panels and every row; it answers
/// false for a problem it does not take.
pub(crate) type TaskFn<X, W> =
    unsafe fn(&X, &W, *mut f32, super::packed::Epilogue<'_>, Range<usize>, super::Isa) -> bool;

/// `Named`, `Debug` (the name) and `PartialEq` (by name) for kernel table entries.
macro_rules! entry_by_name {
    ($($t:ty),*) => {$(
        impl $crate::kernels::driver::Named for $t {
            fn name(&self) -> &'static str {
                self.name
            }
        }
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}", self.name)
            }
        }
        impl PartialEq for $t {
            fn eq(&self, other: &Self) -> bool {
                self.name == other.name
            }
        }
    )*};
}
pub(crate) use entry_by_name;

/// For the tests: `tile_path()`, the entry without its fused path (so that its tile path runs),
/// if it has one.
#[cfg(test)]
macro_rules! tile_path {
    ($t:ty) => {
        impl $t {
            pub(crate) fn tile_path(&self) -> Option<Self> {
                #[cfg(target_arch = "x86_64")]
                let fused = self.fused.is_some();
                #[cfg(not(target_arch = "x86_64"))]
                let fused = false;
                fused.then(|| Self {
                    #[cfg(target_arch = "x86_64")]
                    fused: None,
                    ..self.clone()
                })
            }
        }
    };
}
#[cfg(test)]
pub(crate) use tile_path;

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
