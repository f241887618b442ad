//! bf16 layers on oneDNN's f32 matmul, for hosts without a bf16 instruction (the AVX2 tier, and
//! AVX-512 CPUs without AVX512_BF16). There samp's bf16 entry widens every pair to f32 in
//! registers and multiplies with FMA anyway, and oneDNN has no bf16 matmul below AVX-512. So
//! the weights, rounded to bf16 as [`Bf16Weights`](super::Bf16Weights) rounds them, are held as
//! the f32 of each rounded value, and each input is rounded the same way into f32
//! ([`round_widened`]). The products are those of two bf16, exact in f32, as on every bf16
//! path; only the order of the f32 sums differs (bound-checked, as for every bf16 kernel).
//! The layer then runs at the speed of the f32 layers on oneDNN, at the price of 4 bytes per
//! weight instead of 2.

use std::cell::RefCell;

use rayon::prelude::*;

use super::{round, widen, Bf16Kernel};
use crate::kernels::onednn::{self, Kind};
use crate::kernels::packed::{self, Epilogue};
use crate::kernels::Isa;

/// Whether a bf16 product of this shape (`k → n`, `rows` rows) runs here: this CPU has no bf16
/// instruction ([`Bf16Kernel::accelerated`]) and the f32 layers of the shape run on oneDNN
/// ([`onednn::prefer`]).
pub fn serves(k: usize, n: usize, rows: usize) -> bool {
    !Bf16Kernel::accelerated() && onednn::prefer(Kind::F32, k, n, rows, 0)
}

/// oneDNN's f32 matmul over the float weights `[n, k]` rounded to bf16.
pub fn gemm(w: &[f32], n: usize, k: usize) -> Result<onednn::Gemm, String> {
    assert_eq!(w.len(), n * k, "weight size");
    let mut rows = vec![0.0f32; n * k];
    round_widened(w, &mut rows);
    onednn::Gemm::f32(&rows, n, k)
}

thread_local! {
    /// The rounded input, reused across calls on the compute thread.
    static WIDE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `y[m, n] = epilogue(bf16(x) · W)`, `g` made by [`gemm`] from weights `[n, k]`.
pub fn matmul(x: &[f32], m: usize, g: &onednn::Gemm, y: &mut [f32], ep: Epilogue<'_>) {
    let (k, _) = g.dims();
    assert!(x.len() >= m * k, "bf16 matmul: input too small");
    WIDE.with_borrow_mut(|wide| {
        wide.resize(m * k, 0.0);
        round_widened(&x[..m * k], wide);
        packed::matmul_onednn(wide, m, g, y, ep)
    })
}

/// `dst[i] = widen(round(src[i]))`: the f32 of each value rounded to bf16 (bit for bit what
/// [`round`] then [`widen`] give), on the rayon pool for large inputs.
pub fn round_widened(src: &[f32], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "bf16 round: lengths");
    let isa = Isa::detect();
    let body = |(s, d): (&[f32], &mut [f32])| match isa {
        // SAFETY: AVX2 was detected at run time (`Isa::Avx512` is detected only with it).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => unsafe { super::avx2::round_wide_row(s, d) },
        _ => d.iter_mut().zip(s).for_each(|(d, &v)| *d = widen(round(v))),
    };
    const CHUNK: usize = 64 * 1024;
    if src.len() >= 4 * CHUNK {
        src.par_chunks(CHUNK)
            .zip(dst.par_chunks_mut(CHUNK))
            .for_each(body);
    } else {
        body((src, dst));
    }
}
