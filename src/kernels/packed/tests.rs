use super::*;

fn naive(x: &[f32], w_rows: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut y = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            y[i * n + j] = (0..k)
                .map(|p| x[i * k + p] as f64 * w_rows[j * k + p] as f64)
                .sum();
        }
    }
    y
}

#[test]
fn every_kernel_matches_f64_reference_on_ragged_shapes() {
    // Each entry, and an entry with a fused whole-depth path also on its tile path.
    let mut kernels: Vec<F32Kernel> = Vec::new();
    for k in F32Kernel::available() {
        kernels.extend(std::iter::once(k.clone()).chain(k.tile_path()));
    }
    for kernel in &kernels {
        for (m, n, k) in [
            (1, 1, 1),
            (5, 17, 3),
            (6, 16, 8),
            (7, 33, 70),
            (13, 40, 64),
            (25, 80, 300),
            (64, 48, 384),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.05)
                .collect();
            let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.01).collect();
            let packed = PackedWeights::from_rows(&w, n, k);
            let want = naive(&x, &w, m, n, k);
            let mut y = vec![1.0f32; m * n];
            let ep = Epilogue {
                bias: Some(&bias),
                accumulate: true,
                act: None,
                ..Default::default()
            };
            matmul_with(&x, m, &packed, &mut y, ep, kernel);
            for i in 0..m * n {
                let expect = want[i] + bias[i % n] as f64 + 1.0;
                assert!(
                    (y[i] as f64 - expect).abs() < 1e-4,
                    "{kernel:?} {m}x{n}x{k} at {i}"
                );
            }
            let mut g = vec![0.0f32; m * n];
            let ep = Epilogue {
                bias: None,
                accumulate: false,
                act: Some(Activation::Gelu),
                ..Default::default()
            };
            matmul_with(&x, m, &packed, &mut g, ep, kernel);
            for i in 0..m * n {
                let v = want[i];
                let gelu = 0.5 * v * (1.0 + erf64(v / std::f64::consts::SQRT_2));
                assert!((g[i] as f64 - gelu).abs() < 1e-5, "gelu {kernel:?} at {i}");
            }
        }
    }
}

fn erf64(x: f64) -> f64 {
    let mut sum = 0.0;
    let mut term = x;
    let mut n = 0.0;
    while term.abs() > 1e-17 {
        sum += term / (2.0 * n + 1.0);
        n += 1.0;
        term *= -x * x / n;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

#[test]
fn every_supported_kernel_passes_its_self_check() {
    let names: Vec<_> = F32Kernel::available().iter().map(|k| k.name).collect();
    eprintln!(
        "f32 kernels on this CPU: {names:?}; detected {:?}",
        F32Kernel::detect()
    );
    for k in F32Kernel::available() {
        assert!(k.self_check(), "{k:?}");
    }
    for k in F32_KERNELS.iter().filter(|k| !k.supported()) {
        eprintln!("SKIPPED: {k:?} not testable here (CPU lacks the feature)");
    }
}

#[test]
fn large_matmul_splits_over_threads_without_overlap() {
    let (m, n, k) = (50, 200, 96);
    let x: Vec<f32> = (0..m * k).map(|i| (i % 17) as f32 * 0.01).collect();
    let w: Vec<f32> = (0..n * k).map(|i| (i % 23) as f32 * 0.01).collect();
    let packed = PackedWeights::from_rows(&w, n, k);
    let mut y = vec![0.0f32; m * n];
    matmul(&x, m, &packed, &mut y, Epilogue::default());
    let want = naive(&x, &w, m, n, k);
    for i in 0..m * n {
        assert!((y[i] as f64 - want[i]).abs() < 1e-3);
    }
}

#[test]
fn every_kernel_quantizes_in_its_epilogue_as_afterwards() {
    let (m, n, k) = (37, 5 * NR + 4, 70);
    let (x, w, bias) = crate::kernels::tests::float_problem(m, n, k);
    let packed = PackedWeights::from_rows(&w, n, k);
    for k in F32Kernel::available() {
        for kernel in std::iter::once(k.clone()).chain(k.tile_path()) {
            crate::kernels::tests::check_fused_quantization(
                &format!("{kernel:?}"),
                m,
                n,
                &bias,
                |y, ep| matmul_with(&x, m, &packed, y, ep, &kernel),
            );
        }
    }
}
