//! Tests of the element-wise kernels and the strided GEMM of this module.

use super::*;
use crate::kernels::int8::{ActScale, QActs};
use crate::kernels::packed::Epilogue;

/// A float GEMM problem `m × k → n`: activations, weights in PyTorch layout (`[n, k]`) and a
/// bias, smooth and within ±1 (the float kernels' tests share it).
pub(crate) fn float_problem(m: usize, n: usize, k: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let x = (0..m * k).map(|i| (i as f32 * 0.13).cos()).collect();
    let w = (0..n * k).map(|i| (i as f32 * 0.07).sin() * 0.1).collect();
    let bias = (0..n).map(|j| j as f32 * 0.01).collect();
    (x, w, bias)
}

/// One GEMM's outputs quantized in its epilogue ([`Epilogue::to_int8`]) against its float
/// outputs quantized afterwards ([`QActs::quantize`]), for `run(y, ep)` computing `m × n`
/// outputs: the same bytes and scales, and not one float written — with and without GELU (the
/// FFN up projection's epilogue), at a scale that clips the largest outputs. Each precision's
/// tests call it for each of its paths.
pub(crate) fn check_fused_quantization(
    what: &str,
    m: usize,
    n: usize,
    bias: &[f32],
    run: impl Fn(&mut [f32], Epilogue<'_>),
) {
    for act in [None, Some(Activation::Gelu)] {
        let ep = Epilogue {
            bias: Some(bias),
            act,
            ..Default::default()
        };
        let mut y = vec![0.0f32; m * n];
        run(&mut y, ep);
        let scale = abs_max(&y) / int8::ACT_MAX as f32 * 0.75;
        let mut want = QActs::new();
        want.quantize(&y, m, n, ActScale::Static(scale));
        let mut got = QActs::new();
        let mut unwritten = vec![-7.0f32; m * n];
        let to = got.fused_output(&mut unwritten, m, n, scale);
        let to = to.expect("n is a multiple of 4");
        let fused = Epilogue {
            to_int8: Some(to),
            ..ep
        };
        run(&mut unwritten, fused);
        assert!(
            unwritten.iter().all(|&v| v == -7.0),
            "{what} {m}x{n}: floats were written"
        );
        assert_eq!(got.shape(), want.shape());
        let ((gb, gs), (wb, ws)) = (got.parts(), want.parts());
        let bad = gb.iter().zip(wb).filter(|(a, b)| a != b).count();
        assert_eq!(bad, 0, "{what} {m}x{n} act {act:?}: {bad} bytes differ");
        assert_eq!(gs, ws, "{what}: scales");
    }
}

#[test]
fn fused_quantization_declines_rows_that_would_need_padding() {
    let mut y = vec![0.0f32; 3 * 10];
    assert!(QActs::new().fused_output(&mut y, 3, 10, 0.1).is_none());
    assert!(QActs::new().fused_output(&mut y, 3, 8, 0.1).is_some());
}

/// erf from its Taylor/continued expansions in f64, as the independent reference.
fn erf_f64(x: f64) -> f64 {
    // Abramowitz & Stegun 7.1.5 series converges fast for |x| < 3; beyond, erfc asymptotics.
    if x.abs() < 3.0 {
        let mut sum = 0.0;
        let mut term = x;
        let mut n = 0.0;
        while term.abs() > 1e-17 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        x.signum() * (1.0 - (-x * x).exp() / (x.abs() * std::f64::consts::PI.sqrt()))
    }
}

#[test]
fn erf_is_accurate() {
    let mut worst = 0.0f64;
    for i in -6000..=6000 {
        let x = i as f64 / 1000.0;
        let err = (erf(x as f32) as f64 - erf_f64(x)).abs();
        worst = worst.max(err);
    }
    assert!(worst < 2e-6, "worst erf error {worst}");
}

#[test]
fn gemm_matches_naive_on_strided_views() {
    let (m, n, k) = (5, 7, 9);
    let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
    let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
    let mut c = vec![1.0f32; m * n];
    // c += a · wᵀ, w stored [n, k] row-major
    gemm(
        m,
        n,
        k,
        &a,
        View::row_major(k),
        &w,
        View::transposed(k),
        &mut c,
        View::row_major(n),
        true,
        2,
    );
    for i in 0..m {
        for j in 0..n {
            let want: f32 = 1.0 + (0..k).map(|p| a[i * k + p] * w[j * k + p]).sum::<f32>();
            assert!((c[i * n + j] - want).abs() < 1e-4);
        }
    }
}

#[test]
fn layer_norm_rows_are_standardised() {
    let mut x: Vec<f32> = (0..4 * 8).map(|i| i as f32).collect();
    layer_norm(&mut x, Some(&[3.0; 8]), &[1.0; 8], &[0.0; 8], 1e-12);
    for row in x.chunks(8) {
        let mean: f32 = row.iter().sum::<f32>() / 8.0;
        let var: f32 = row.iter().map(|v| v * v).sum::<f32>() / 8.0;
        assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4);
    }
}

#[test]
fn exp_is_accurate_over_the_whole_range() {
    let mut worst = 0.0f64;
    for i in -87_000..=88_000 {
        let x = i as f32 / 1000.0;
        let want = (x as f64).exp();
        let err = ((exp(x) as f64 - want) / want).abs();
        worst = worst.max(err);
    }
    assert!(worst < 3e-7, "worst relative exp error {worst}");
    assert_eq!(exp(-1000.0), exp(-87.3));
    assert!(exp(100.0).is_infinite());
    assert!(exp(f32::NAN).is_nan());
}

#[test]
fn softmax_matches_f64_on_every_path_and_length() {
    for len in [1usize, 5, 16, 17, 40, 128] {
        let row: Vec<f32> = (0..len)
            .map(|i| ((i * 37 % 29) as f32 - 14.0) * 0.9)
            .collect();
        let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let z: f64 = row.iter().map(|&v| ((v as f64 - max) * 0.125).exp()).sum();
        let mut paths: Vec<Vec<f32>> = Vec::new();
        let mut r = row.clone();
        softmax_impl::<false>(&mut r, 0.125);
        paths.push(r);
        let mut r = row.clone();
        softmax_scaled(&mut r, 0.125);
        paths.push(r);
        for p in &paths {
            for (got, &v) in p.iter().zip(&row) {
                let want = ((v as f64 - max) * 0.125).exp() / z;
                assert!((*got as f64 - want).abs() < 1e-6, "len {len}");
            }
        }
    }
}

/// The AVX2 builds of the element-wise routines, which an AVX-512 host never dispatches to.
#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_element_wise_paths_match_the_portable_ones() {
    if !has_avx2_fma() {
        eprintln!("SKIPPED: no AVX2 on this CPU");
        return;
    }
    let row: Vec<f32> = (0..77)
        .map(|i| ((i * 37 % 29) as f32 - 14.0) * 0.9)
        .collect();
    let (mut a, mut b) = (row.clone(), row.clone());
    softmax_impl::<false>(&mut a, 0.125);
    // SAFETY: AVX2 and FMA were detected above.
    unsafe { softmax_avx2(&mut b, 0.125) };
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-6));
    // SAFETY: as above.
    assert_eq!(unsafe { abs_max_avx2(&row) }, abs_max_impl(&row));
    let (g, be) = (vec![1.5f32; 77], vec![0.25f32; 77]);
    let (mut a, mut b) = (row.repeat(3), row.repeat(3));
    layer_norm_rows::<false>(&mut a, None, &g, &be, 1e-12);
    // SAFETY: as above.
    unsafe { layer_norm_avx2(&mut b, None, &g, &be, 1e-12) };
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5));
}

#[test]
fn abs_max_equals_the_scalar_fold_on_every_path() {
    for len in [0usize, 1, 15, 16, 33, 384] {
        let mut v: Vec<f32> = (0..len)
            .map(|i| ((i * 7919) % 211) as f32 - 105.5)
            .collect();
        if len > 3 {
            v[3] = f32::NAN;
        }
        if len > 20 {
            v[17] = -f32::NAN;
            v[18] = -0.0;
        }
        let want = v.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
        assert_eq!(abs_max(&v), want, "len {len}");
        assert_eq!(abs_max_impl(&v), want, "len {len}");
    }
    let v = [1.0, f32::NAN, -f32::INFINITY, 3.0, -f32::NAN];
    assert_eq!(abs_max(&v), f32::INFINITY);
    assert_eq!(abs_max(&[f32::NAN, -0.0]), 0.0);
}

#[test]
fn softmax_sums_to_one_and_survives_large_inputs() {
    let mut r = vec![1e30, 0.0, -1e30, 5.0];
    softmax_scaled(&mut r, 1.0);
    assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    assert!(r.iter().all(|v| v.is_finite()));
}
