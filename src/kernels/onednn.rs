//! oneDNN's matmul, loaded at run time: the GEMM of the precisions where it measured faster than
//! samp's own kernels (BENCHMARKS.md, "library evaluation"). samp's kernels stay the fallback on
//! every host: without the library, with a version other than 3.x, or when a precision's
//! start-up self-check fails, nothing changes.
//!
//! Which GEMMs it serves ([`prefer`]): f32 wherever it passes its checks (fixed, so float
//! outputs are reproducible); INT8 per shape where it wins a race against samp's kernel on this
//! host at first use; bf16 only when asked (`SAMP_ONEDNN=always`).
//!
//! Where the library comes from: `SAMP_ONEDNN` names `libdnnl.so.3` (or is `0` / `off` to
//! leave it out, `1` / `on` for the default search, `always` to use it for bf16 too and skip
//! the INT8 race); otherwise the system's loader path, then `onednn/lib/` beside a parent of the
//! executable (`target/onednn`, where `scripts/fetch_onednn.sh` puts PyPI's build).
//!
//! Files: `ffi.rs` (the C functions, loading), `gemm.rs` (a layer's matmul and the block
//! driver), this one (which precisions and shapes use it).
//!
//! How it runs: one primitive per layer and precision (per group of output columns for the
//! float kinds, one group per thread, so that a few rows still spread over the threads), with
//! the number of rows left to run time, and the weights reordered once into the layout it
//! picks. samp keeps the threading: rows are cut into blocks (times the column groups) spread
//! over the rayon pool, and each block is one sequential
//! oneDNN call (its OpenMP team is held at one thread) into a per-thread buffer that samp's own
//! epilogue (dequantizing, bias, residual, activation) then writes out while it is in cache.
//! INT8 therefore computes the same integers as samp's kernels (u8 activations `q + 128`,
//! s8 weights, s32 sums; the compensation is samp's) and gives bit-identical outputs.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

#[cfg(test)]
use super::packed::{Epilogue, NR};
use ffi::{api, DT_BF16, DT_F32, DT_S32, DT_S8, DT_U8};
pub(super) use gemm::bytes_of;
pub use gemm::Gemm;
#[cfg(test)]
use gemm::{block_cap, block_rows};
pub(super) use walk::{strip_tile, strips, tiles};

mod ffi;
mod gemm;
mod walk;

/// The precisions oneDNN runs for samp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// f32 × f32 → f32.
    F32,
    /// bf16 × bf16 → f32 (activations rounded by samp, as its own bf16 kernels take them).
    Bf16,
    /// u8 (`q + 128`) × s8 → s32, dequantized by samp's epilogue.
    Int8,
}

/// Where an INT8 product's outputs go, which its race against samp's kernel times ([`prefer`]):
/// floats, or a next INT8 layer with dynamic (per-row) scales — each path quantizing them its
/// own way (samp's kernel in row blocks of a few rows, oneDNN's in its blocks of up to 128 or
/// 1,024 rows: `gemm::block_cap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Output {
    Floats,
    DynamicInt8,
}

impl Kind {
    /// (source, weights, destination) data types, and bytes per source/weight element.
    fn types(self) -> (i32, i32, i32, usize) {
        match self {
            Kind::F32 => (DT_F32, DT_F32, DT_F32, 4),
            Kind::Bf16 => (DT_BF16, DT_BF16, DT_F32, 2),
            Kind::Int8 => (DT_U8, DT_S8, DT_S32, 1),
        }
    }

    /// 0, 1, 2 in declaration order (for per-precision tables).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What a start-up self-check of a oneDNN matmul found.
pub(super) enum Check {
    Agrees,
    Disagrees,
    /// oneDNN has no such matmul on this CPU (e.g. bf16 below AVX-512): why.
    Unavailable(String),
}

/// A self-check's attempt to make oneDNN's primitive: remembers why it could not.
#[derive(Default)]
pub(super) struct Attempt(std::cell::RefCell<Option<String>>);

impl Attempt {
    /// The primitive, or `None` with the reason kept.
    fn made<T>(&self, r: Result<T, String>) -> Option<T> {
        r.map_err(|e| *self.0.borrow_mut() = Some(e)).ok()
    }

    /// Runs `run` on the primitive `made` gave; false (the reason kept) where there is none.
    pub fn run<T>(&self, made: Result<T, String>, run: impl FnOnce(&T)) -> bool {
        self.made(made).map(|g| run(&g)).is_some()
    }

    pub fn check(self, agreed: bool) -> Check {
        match self.0.into_inner() {
            Some(e) => Check::Unavailable(e),
            None if agreed => Check::Agrees,
            None => Check::Disagrees,
        }
    }
}

/// Whether samp runs this precision on oneDNN: the library loaded and the precision's
/// start-up self-check against samp's portable kernel passed (decided once per process; a
/// failure is logged and samp's own kernels serve). INT8: for 7-bit weights at least (see
/// [`int8_bits`]).
pub fn usable(kind: Kind) -> bool {
    outcome(kind) == Outcome::Passed
}

/// How a precision's start-up self-check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed,
    /// oneDNN has no such matmul on this CPU, or the library did not load.
    Unavailable,
}

/// The self-check's outcome for this precision (run once per process, logged).
pub fn outcome(kind: Kind) -> Outcome {
    static OUTCOME: [OnceLock<Outcome>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    *OUTCOME[kind.index()].get_or_init(|| {
        if api().is_none() {
            return Outcome::Unavailable;
        }
        match kind {
            Kind::F32 => logged(kind, super::packed::onednn_agrees()),
            Kind::Bf16 => logged(kind, super::bf16::onednn_agrees()),
            Kind::Int8 => INT8.get_or_init(int8_check).0,
        }
    })
}

/// The INT8 self-check's outcome and the widest weights it passed for.
static INT8: OnceLock<(Outcome, u32)> = OnceLock::new();

/// The widest INT8 weights oneDNN's matmul computes exactly on this CPU (0: not usable). With
/// VNNI or AMX it is 8; on AVX2 (and AVX-512 without VNNI) its u8·s8 products are summed in
/// pairs into a saturating 16-bit value, like `vpmaddubsw`, and only 7-bit weights are exact.
/// Found by the self-check, 8-bit weights first.
pub fn int8_bits() -> u32 {
    if api().is_none() {
        return 0;
    }
    INT8.get_or_init(int8_check).1
}

fn int8_check() -> (Outcome, u32) {
    match super::int8::onednn_agrees(8) {
        Check::Agrees => return (logged(Kind::Int8, Check::Agrees), 8),
        Check::Unavailable(e) => return (logged(Kind::Int8, Check::Unavailable(e)), 0),
        Check::Disagrees => {}
    }
    let outcome = logged(Kind::Int8, super::int8::onednn_agrees(7));
    if outcome == Outcome::Passed {
        tracing::info!(
            "oneDNN INT8 matmul: exact for 7-bit weights only on this CPU (no VNNI); \
             8-bit plans stay on samp's kernels"
        );
        (outcome, 7)
    } else {
        (outcome, 0)
    }
}

/// Logs a self-check's outcome.
fn logged(kind: Kind, check: Check) -> Outcome {
    match check {
        Check::Agrees => {
            tracing::debug!(?kind, "oneDNN matmul passed its self-check");
            Outcome::Passed
        }
        Check::Disagrees => {
            tracing::error!(
                ?kind,
                "oneDNN matmul disagrees with samp's portable kernel; not using it"
            );
            Outcome::Failed
        }
        Check::Unavailable(e) => {
            tracing::info!(
                ?kind,
                "oneDNN has no such matmul on this CPU ({e}); samp's kernels serve"
            );
            Outcome::Unavailable
        }
    }
}

/// Whether a layer of this precision and shape (`k → n`, `rows` rows; INT8 weights of `bits`,
/// which only INT8 reads) runs on oneDNN, where it is usable and, for INT8, exact for `bits`
/// ([`int8_bits`]). f32: always (faster end to end in most paired rounds, BENCHMARKS.md), decided
/// without timing, so that a process's float outputs never depend on a race it ran (they differ
/// from samp's kernels' in the last bits). bf16: only with `SAMP_ONEDNN=always` (no end-to-end
/// difference resolved on this VM's noise). INT8, whose outputs are bit-identical on both
/// paths: where oneDNN wins a race against samp's kernel, run once per (shape, row bucket) on
/// synthetic data of the bucket's rows, alternating the two (best of three each), so a shape
/// where samp's kernel wins keeps it; `SAMP_ONEDNN=always` skips the race.
pub fn prefer(kind: Kind, k: usize, n: usize, rows: usize, bits: u32) -> bool {
    prefer_for(kind, k, n, rows, bits, Output::Floats)
}

/// As [`prefer`], for a product whose outputs go where `out` says: an INT8 race times that
/// (on AVX2 hosts oneDNN's products often win alone and lose once handed to a dynamic next
/// layer, BENCHMARKS.md).
pub fn prefer_for(kind: Kind, k: usize, n: usize, rows: usize, bits: u32, out: Output) -> bool {
    if rows * k * n < MIN_MACS || !usable(kind) || (kind == Kind::Int8 && bits > int8_bits()) {
        return false;
    }
    let always = std::env::var("SAMP_ONEDNN").is_ok_and(|v| v == "always");
    match kind {
        Kind::F32 => return true,
        Kind::Bf16 => return always,
        Kind::Int8 if always => return true,
        Kind::Int8 => {}
    }
    let m = row_bucket(rows);
    let key = (k, n, m, bits, out);
    let mut choices = choices().lock().unwrap_or_else(|e| e.into_inner());
    *choices
        .entry(key)
        .or_insert_with(|| match super::int8::onednn_race(k, n, m, bits, out) {
            Ok((own, dnnl)) => {
                tracing::debug!(
                    ?kind,
                    ?out,
                    k,
                    n,
                    rows = m,
                    own_ms = own * 1e3,
                    onednn_ms = dnnl * 1e3,
                    "GEMM race: {}",
                    if dnnl < own { "oneDNN" } else { "samp" }
                );
                dnnl < own
            }
            Err(e) => {
                tracing::warn!(k, n, "oneDNN INT8 not used for this shape: {e}");
                false
            }
        })
}

/// An INT8 race: (k, n, row bucket, weight bits, where the outputs go).
type RaceKey = (usize, usize, usize, u32, Output);

/// Each INT8 race's outcome: whether oneDNN won.
fn choices() -> &'static Mutex<BTreeMap<RaceKey, bool>> {
    static CHOICES: Mutex<BTreeMap<RaceKey, bool>> = Mutex::new(BTreeMap::new());
    &CHOICES
}

/// Whether [`prefer_for`] has decided this INT8 race (tests of what start-up prepares).
#[cfg(test)]
pub(crate) fn decided(k: usize, n: usize, rows: usize, bits: u32, out: Output) -> bool {
    let key = (k, n, row_bucket(rows), bits, out);
    choices()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(&key)
}

/// The rows an INT8 race of [`prefer`] runs for a product of `rows` rows: one race per power
/// of two from 64 to 2048.
fn row_bucket(rows: usize) -> usize {
    rows.next_power_of_two().clamp(64, 2048)
}

/// Every row bucket ([`prefer`]'s races) that a product of at most `max_rows` rows meets.
pub fn row_buckets(max_rows: usize) -> impl Iterator<Item = usize> {
    let top = row_bucket(max_rows.max(1));
    (6..=11).map(|b| 1usize << b).filter(move |&m| m <= top)
}

/// Best-of-three seconds of `own` and of `dnnl`, taking turns (each run once first, untimed).
pub(super) fn race(mut own: impl FnMut(), mut dnnl: impl FnMut()) -> (f64, f64) {
    own();
    dnnl();
    let (mut a, mut b) = (f64::INFINITY, f64::INFINITY);
    let time = |f: &mut dyn FnMut()| {
        let t = std::time::Instant::now();
        f();
        t.elapsed().as_secs_f64()
    };
    for _ in 0..3 {
        a = a.min(time(&mut own));
        b = b.min(time(&mut dnnl));
    }
    (a, b)
}

/// Synthetic operands for a race: `m × k` activations and `n × k` weights in [-1, 1].
pub(super) fn race_data(m: usize, k: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
    let fill = |len: usize, seed: usize| -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919 + seed) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    };
    (fill(m * k, 1), fill(n * k, 104_729))
}

/// The loaded library's version, if any.
pub fn version() -> Option<&'static str> {
    api().map(|a| a.version.as_str())
}

/// Smallest GEMM (multiply-adds) sent to oneDNN: below it the call's fixed costs outweigh the
/// gain, and samp's kernels serve (the classifier heads' single rows).
pub const MIN_MACS: usize = 64 * 1024;

#[cfg(test)]
mod tests;
