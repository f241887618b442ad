//! Float kernels of the encoder: the f32 GEMM (the `gemm` crate, AVX-512 when the CPU has it,
//! chosen at run time), LayerNorm, GELU and softmax. Pure functions over slices; no model
//! knowledge. `unsafe` lives only here.

/// Calls `$f::<R, P> $args` with `R = $rows` and `P = $np` as const generics, from the values
/// each micro-kernel is compiled for (rows, then panels); other values are a caller's bug.
#[cfg(target_arch = "x86_64")]
macro_rules! dispatch_tile {
    ($f:ident $args:tt, rows $rows:expr => $rl:tt, panels $np:expr => [$($p:literal),+]) => {
        match $np {
            $($p => dispatch_tile!(@rows $f $args, $rows, $p, $rl),)+
            _ => unreachable!("panels out of range"),
        }
    };
    (@rows $f:ident $args:tt, $rows:expr, $p:literal, [$($r:literal),+]) => {
        match $rows {
            $($r => $f::<$r, $p> $args,)+
            _ => unreachable!("rows out of range"),
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod aligned;
mod amx;
mod attention;
pub mod bf16;
mod driver;
pub mod int8;
pub mod isa;
pub mod onednn;
pub mod packed;
pub mod peak;

pub use attention::attention;
pub use driver::TileCall;
pub use isa::Isa;
#[cfg(target_arch = "x86_64")]
pub(crate) use isa::{has_avx2_fma, has_avx512, has_avx_vnni};

use rayon::prelude::*;

/// Hidden activation of the FFN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact (erf) GELU, `gelu` in transformers.
    Gelu,
    /// tanh approximation, `gelu_new` / `gelu_pytorch_tanh`.
    GeluTanh,
    Relu,
}

/// A strided 2-D view for the GEMM: element (r, c) lives at `ptr[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub struct View {
    pub offset: usize,
    pub rs: usize,
    pub cs: usize,
}

impl View {
    pub const fn row_major(cols: usize) -> Self {
        View {
            offset: 0,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose of a row-major matrix with `cols` columns.
    pub const fn transposed(cols: usize) -> Self {
        View {
            offset: 0,
            rs: 1,
            cs: cols,
        }
    }
    pub const fn at(self, offset: usize) -> Self {
        View { offset, ..self }
    }
    fn last(self, rows: usize, cols: usize) -> usize {
        self.offset + (rows.max(1) - 1) * self.rs + (cols.max(1) - 1) * self.cs
    }
}

/// `c[m×n] (+)= a[m×k] · b[k×n]` over strided views, `threads` > 1 to split the work.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    av: View,
    b: &[f32],
    bv: View,
    c: &mut [f32],
    cv: View,
    accumulate: bool,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(av.last(m, k) < a.len() || k == 0, "gemm: a out of bounds");
    assert!(bv.last(k, n) < b.len() || k == 0, "gemm: b out of bounds");
    assert!(cv.last(m, n) < c.len(), "gemm: c out of bounds");
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above bound every element the views address inside the slices; `c`
    // is borrowed mutably and does not alias `a` or `b` (Rust's borrow rules guarantee it).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr().add(cv.offset),
            cv.cs as isize,
            cv.rs as isize,
            accumulate,
            a.as_ptr().add(av.offset),
            av.cs as isize,
            av.rs as isize,
            b.as_ptr().add(bv.offset),
            bv.cs as isize,
            bv.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// Rows per parallel chunk for the element-wise kernels: small inputs stay on one thread.
fn chunk_rows(rows: usize, cols: usize) -> usize {
    const MIN_ELEMS: usize = 16 * 1024;
    let threads = rayon::current_num_threads().max(1);
    let per_thread = rows.div_ceil(threads);
    per_thread.max(MIN_ELEMS.div_ceil(cols.max(1))).max(1)
}

/// In place, row by row: `x = LayerNorm(x + bias) * gamma + beta` (`bias` optional). A residual
/// is added before this by accumulating the GEMM into a copy of it.
pub fn layer_norm(x: &mut [f32], bias: Option<&[f32]>, gamma: &[f32], beta: &[f32], eps: f32) {
    let cols = gamma.len();
    let rows = x.len() / cols;
    let chunk = chunk_rows(rows, cols) * cols;
    let isa = Isa::detect();
    let body = |xs: &mut [f32]| match isa {
        // SAFETY (both): the ISA was detected at run time.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { layer_norm_avx512(xs, bias, gamma, beta, eps) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { layer_norm_avx2(xs, bias, gamma, beta, eps) },
        _ => layer_norm_rows::<false>(xs, bias, gamma, beta, eps),
    };
    if chunk >= x.len() {
        body(x);
    } else {
        x.par_chunks_mut(chunk).for_each(body);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn layer_norm_avx512(
    xs: &mut [f32],
    bias: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    layer_norm_rows::<true>(xs, bias, gamma, beta, eps)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn layer_norm_avx2(
    xs: &mut [f32],
    bias: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    layer_norm_rows::<true>(xs, bias, gamma, beta, eps)
}

/// Lanes of the element-wise reductions: independent partial sums the compiler keeps in one
/// vector register (a single running sum would not vectorise: f32 addition is not
/// associative).
const LANES: usize = 16;

/// The largest |v| (NaNs ignored, as `f32::max` does), vectorised on AVX-512/AVX2. Exact: the
/// same value as a scalar fold.
pub(crate) fn abs_max(v: &[f32]) -> f32 {
    match Isa::detect() {
        // SAFETY (both): the ISA was detected at run time.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { abs_max_avx512(v) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { abs_max_avx2(v) },
        _ => abs_max_impl(v),
    }
}

/// [`abs_max_impl`] in intrinsics (the compiler vectorises the portable loop only 4 wide):
/// and, compare, masked unsigned max, 32 values per step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn abs_max_avx512(v: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let body = v.len() / 32 * 32;
    let (abs, inf) = (
        _mm512_set1_epi32(0x7fff_ffff),
        _mm512_set1_epi32(0x7f80_0000),
    );
    let (mut m0, mut m1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
    let p = v.as_ptr();
    for i in (0..body).step_by(32) {
        // SAFETY: i + 32 <= body <= v.len().
        let b0 = _mm512_and_si512(_mm512_loadu_si512(p.add(i) as *const _), abs);
        let b1 = _mm512_and_si512(_mm512_loadu_si512(p.add(i + 16) as *const _), abs);
        m0 = _mm512_mask_max_epu32(m0, _mm512_cmple_epu32_mask(b0, inf), m0, b0);
        m1 = _mm512_mask_max_epu32(m1, _mm512_cmple_epu32_mask(b1, inf), m1, b1);
    }
    let head = _mm512_reduce_max_epu32(_mm512_max_epu32(m0, m1));
    f32::from_bits(head.max(abs_max_impl(&v[body..]).to_bits()))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn abs_max_avx2(v: &[f32]) -> f32 {
    abs_max_impl(v)
}

/// On the bit patterns: for |v| (sign bit cleared) the integer order is the numeric order, and
/// a NaN (above infinity's pattern) counts as 0, so the loop is integer and-compare-max, which
/// vectorises without the NaN handling of a float max.
#[inline(always)]
fn abs_max_impl(v: &[f32]) -> f32 {
    const INF: u32 = 0x7f80_0000;
    let key = |x: f32| {
        let b = x.to_bits() & 0x7fff_ffff;
        if b > INF {
            0
        } else {
            b
        }
    };
    let mut m = [0u32; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            m[l] = m[l].max(key(c[l]));
        }
    }
    f32::from_bits(rest.iter().map(|&x| key(x)).chain(m).fold(0, u32::max))
}

/// Sum of `v` in [`LANES`] partial sums.
#[inline(always)]
fn lane_sum(v: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += f(c[l]);
        }
    }
    acc.iter().sum::<f32>() + rest.iter().map(|&x| f(x)).sum::<f32>()
}

#[inline(always)]
fn layer_norm_rows<const FMA: bool>(
    xs: &mut [f32],
    bias: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    let cols = gamma.len();
    for row in xs.chunks_exact_mut(cols) {
        if let Some(b) = bias {
            row.iter_mut().zip(b).for_each(|(v, &b)| *v += b);
        }
        let mean = lane_sum(row, |v| v) / cols as f32;
        let var = lane_sum(row, |v| (v - mean) * (v - mean)) / cols as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, &g), &b) in row.iter_mut().zip(gamma).zip(beta) {
            *v = madd::<FMA>((*v - mean) * inv, g, b);
        }
    }
}

/// A raw pointer that tasks writing disjoint parts of one buffer may share.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub(crate) *mut f32);
// SAFETY: only used by `attention` (tasks write disjoint rows-of-one-sequence x
// columns-of-one-head blocks) and `driver::split_panels` (tasks write disjoint column ranges).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    // A method, not a field access, so closures capture the whole (Sync) wrapper.
    pub(crate) fn ptr(&self) -> *mut f32 {
        self.0
    }
}

/// Adds `bias` to every row of `x` and applies `act` (None = identity).
pub fn bias_act(x: &mut [f32], bias: &[f32], act: Option<Activation>) {
    let cols = bias.len();
    let rows = x.len() / cols;
    let chunk = chunk_rows(rows, cols) * cols;
    let body = |xs: &mut [f32]| {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time just above).
            return unsafe { bias_act_avx2(xs, bias, act) };
        }
        bias_act_rows::<false>(xs, bias, act)
    };
    if chunk >= x.len() {
        body(x);
    } else {
        x.par_chunks_mut(chunk).for_each(body);
    }
}

/// The same loop compiled for AVX2 + FMA, so it vectorises 8-wide with fused multiply-adds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn bias_act_avx2(xs: &mut [f32], bias: &[f32], act: Option<Activation>) {
    bias_act_rows::<true>(xs, bias, act)
}

#[inline(always)]
fn bias_act_rows<const FMA: bool>(xs: &mut [f32], bias: &[f32], act: Option<Activation>) {
    for row in xs.chunks_exact_mut(bias.len()) {
        match act {
            None => row.iter_mut().zip(bias).for_each(|(v, &b)| *v += b),
            Some(Activation::Gelu) => row
                .iter_mut()
                .zip(bias)
                .for_each(|(v, &b)| *v = gelu_erf_impl::<FMA>(*v + b)),
            Some(Activation::GeluTanh) => row
                .iter_mut()
                .zip(bias)
                .for_each(|(v, &b)| *v = gelu_tanh(*v + b)),
            Some(Activation::Relu) => row
                .iter_mut()
                .zip(bias)
                .for_each(|(v, &b)| *v = (*v + b).max(0.0)),
        }
    }
}

/// `a * b + c`, fused where the caller is compiled with FMA (a libm call otherwise, so never).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// erf for f32 as a rational function of x (odd numerator, even denominator) on [-4, 4]; beyond
/// that erf is ±1 in single precision. Branch-free, so the loops above vectorise.
#[inline(always)]
fn erf_impl<const FMA: bool>(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = madd::<FMA>(x2, -2.726_142_3e-10, 2.770_681_4e-8);
    p = madd::<FMA>(x2, p, -2.101_024e-6);
    p = madd::<FMA>(x2, p, -5.692_506_4e-5);
    p = madd::<FMA>(x2, p, -7.349_906e-4);
    p = madd::<FMA>(x2, p, -2.954_600_1e-3);
    p = madd::<FMA>(x2, p, -1.609_603_3e-2);
    p *= x;
    let mut q = madd::<FMA>(x2, -1.456_607_2e-5, -2.133_740_6e-4);
    q = madd::<FMA>(x2, q, -1.682_827e-3);
    q = madd::<FMA>(x2, q, -7.373_329e-3);
    q = madd::<FMA>(x2, q, -1.426_474e-2);
    p / q
}

#[inline(always)]
pub(crate) fn gelu_erf_impl<const FMA: bool>(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_impl::<FMA>(x * std::f32::consts::FRAC_1_SQRT_2))
}

pub fn erf(x: f32) -> f32 {
    erf_impl::<false>(x)
}

pub fn gelu_erf(x: f32) -> f32 {
    gelu_erf_impl::<false>(x)
}

#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // sqrt(2/pi)
    0.5 * x * (1.0 + (C * (x + 0.044_715 * x * x * x)).tanh())
}

/// Softmax of one row, in place, after multiplying by `scale` (≥ 0).
#[inline]
pub fn softmax_scaled(row: &mut [f32], scale: f32) {
    match Isa::detect() {
        // SAFETY (both): the ISA was detected at run time.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { softmax_avx512(row, scale) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { softmax_avx2(row, scale) },
        _ => softmax_impl::<false>(row, scale),
    }
}

/// [`softmax_impl`] in intrinsics, the last partial 16 lanes masked: attention rows at natural
/// lengths are 10-60 long, and the compiled portable loop ran their tails one lane at a time.
/// The same exp polynomial and reduction steps; only the order of the final sum differs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn softmax_avx512(row: &mut [f32], scale: f32) {
    use std::arch::x86_64::*;
    let n = row.len();
    if n == 0 {
        return;
    }
    let p = row.as_mut_ptr();
    // The chunks: whole 16-lane ones, then the masked rest.
    let chunks = n.div_ceil(16);
    let mask = |c: usize| -> __mmask16 {
        let left = n - 16 * c;
        if left >= 16 {
            0xffff
        } else {
            (1u16 << left) - 1
        }
    };
    let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
    for c in 0..chunks {
        // SAFETY (loops): the mask keeps every access inside the row.
        m = _mm512_mask_max_ps(m, mask(c), m, _mm512_maskz_loadu_ps(mask(c), p.add(16 * c)));
    }
    let (max, vscale) = (
        _mm512_set1_ps(_mm512_reduce_max_ps(m)),
        _mm512_set1_ps(scale),
    );
    let mut sum = _mm512_setzero_ps();
    for c in 0..chunks {
        let x = _mm512_maskz_loadu_ps(mask(c), p.add(16 * c));
        let e = exp_avx512(_mm512_mul_ps(_mm512_sub_ps(x, max), vscale));
        _mm512_mask_storeu_ps(p.add(16 * c), mask(c), e);
        sum = _mm512_mask_add_ps(sum, mask(c), sum, e);
    }
    let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
    for c in 0..chunks {
        let x = _mm512_maskz_loadu_ps(mask(c), p.add(16 * c));
        _mm512_mask_storeu_ps(p.add(16 * c), mask(c), _mm512_mul_ps(x, inv));
    }
}

/// [`exp_impl`] on 16 lanes, step for step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
pub(crate) unsafe fn exp_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let f = _mm512_set1_ps;
    let x = _mm512_min_ps(_mm512_max_ps(x, f(-87.3)), f(88.7));
    // Round to nearest even, exceptions suppressed.
    let n = _mm512_roundscale_ps::<0x08>(_mm512_mul_ps(x, f(std::f32::consts::LOG2_E)));
    let r = _mm512_fmadd_ps(n, f(-0.693_359_4), x);
    let r = _mm512_fmadd_ps(n, f(2.121_944_4e-4), r);
    let mut q = _mm512_fmadd_ps(f(1.987_569_1e-4), r, f(1.398_2e-3));
    q = _mm512_fmadd_ps(q, r, f(8.333_452e-3));
    q = _mm512_fmadd_ps(q, r, f(4.166_579_6e-2));
    q = _mm512_fmadd_ps(q, r, f(1.666_666_5e-1));
    q = _mm512_fmadd_ps(q, r, f(0.5));
    let e = _mm512_add_ps(_mm512_fmadd_ps(q, _mm512_mul_ps(r, r), r), f(1.0));
    let two_n = _mm512_slli_epi32::<23>(_mm512_add_epi32(
        _mm512_cvtps_epi32(n),
        _mm512_set1_epi32(127),
    ));
    _mm512_mul_ps(e, _mm512_castsi512_ps(two_n))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_avx2(row: &mut [f32], scale: f32) {
    softmax_impl::<true>(row, scale)
}

#[inline(always)]
fn softmax_impl<const FMA: bool>(row: &mut [f32], scale: f32) {
    let mut m = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            m[l] = m[l].max(c[l]);
        }
    }
    let max = rest
        .iter()
        .chain(&m)
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut sums = [0.0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            c[l] = exp_impl::<FMA>((c[l] - max) * scale);
            sums[l] += c[l];
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp_impl::<FMA>((*v - max) * scale);
        sum += *v;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// e^x in f32, branch-free so that loops over it vectorise: `x = n·ln2 + r` with `n` an
/// integer and |r| ≤ ln2/2 (ln2 split in two for an exact reduction), e^r by the Cephes
/// polynomial, and 2^n built in the exponent bits. Relative error below 2e-7 (tested against
/// f64); below about -87.3 the result is 0's neighbourhood (clamped to e^-87.3), above 88.7
/// infinity.
#[inline(always)]
fn exp_impl<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.7);
    let n = (x * LOG2E).round_ties_even();
    let r = madd::<FMA>(n, -LN2_LO, madd::<FMA>(n, -LN2_HI, x));
    let mut p = madd::<FMA>(1.987_569_1e-4, r, 1.398_2e-3);
    p = madd::<FMA>(p, r, 8.333_452e-3);
    p = madd::<FMA>(p, r, 4.166_579_6e-2);
    p = madd::<FMA>(p, r, 1.666_666_5e-1);
    p = madd::<FMA>(p, r, 0.5);
    let e = madd::<FMA>(p, r * r, r) + 1.0;
    // n ∈ [-126, 128]: 2^n's bits; 128 gives the infinity pattern.
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// e^x through the same routine the softmax uses (for tests and callers that want it).
pub fn exp(x: f32) -> f32 {
    exp_impl::<false>(x)
}

#[cfg(test)]
mod tests;
