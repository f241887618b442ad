//! The dense layer's seams: oneDNN's copy of the weights, the INT8 races prepared, the next
//! layer's input quantized in the epilogue, and which path a bf16 layer runs on.

use super::*;

fn rows(outputs: usize, inputs: usize, seed: usize) -> Vec<f32> {
    (0..outputs * inputs)
        .map(|i| (((i * 7919 + seed) % 2001) as f32 / 1000.0 - 1.0) * 0.1)
        .collect()
}

fn worst_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max)
}

fn layer(outputs: usize, inputs: usize, seed: usize) -> Linear {
    let b = (0..outputs).map(|j| (j % 7) as f32 * 0.1 - 0.3).collect();
    Linear::from_rows(&rows(outputs, inputs, seed), b, outputs, inputs)
}

/// A layer whose every float product runs on oneDNN keeps only oneDNN's copy of its float
/// weights (where the library loaded; `SAMP_REQUIRE_ONEDNN=1` makes the kernel tests fail
/// without it): the same rows come back, the same INT8 and bf16 weights are made from them,
/// and the outputs are oneDNN's. A layer too small for oneDNN keeps samp's packed weights.
#[test]
fn where_onednn_runs_every_float_product_its_copy_is_the_only_one() {
    let (n, k, m) = (300, 256, 5);
    let w = rows(n, k, 3);
    let l = layer(n, k, 3);
    let on = onednn::prefer(Kind::F32, k, n, 1, 0);
    assert_eq!(l.weights.is_none(), on, "only oneDNN's copy where it runs");
    assert_eq!(l.float_rows(), w, "the rows come back exactly");
    let q = QWeights::quantize(&w, n, k, l.weight_bits());
    assert_eq!(l.qweights().rows(), q.rows());
    let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
    let (mut got, mut want) = (vec![0.0f32; m * n], vec![0.0f32; m * n]);
    l.forward(&x, m, &mut got, false, None);
    let packed = PackedWeights::from_rows(&w, n, k);
    packed::matmul(&x, m, &packed, &mut want, l.epilogue(false, None));
    let worst = worst_diff(&got, &want);
    // |x| ≤ 1, |w| ≤ 0.1: k bounds each sum of magnitudes (as the oneDNN tests' bound).
    assert!(worst <= 8.0 * k as f32 * f32::EPSILON, "{worst}");
    let small = layer(2, k, 4);
    assert!(
        small.weights.is_some(),
        "a head's single row stays on samp's kernel"
    );
    assert_eq!(small.float_rows(), rows(2, k, 4));
}

/// Preparing a layer whose outputs go to a dynamic next layer decides both of its INT8
/// races per row bucket (the hand-over's, and the floats' that runs where samp's row
/// blocks decline few rows), so no first request waits for one.
#[test]
fn preparing_for_a_dynamic_next_layer_runs_both_races() {
    if !onednn::usable(Kind::Int8) {
        return;
    }
    let (n, k) = (1000, 136);
    let mut up = layer(n, k, 4);
    up.set_int8(Some(ActScale::Dynamic));
    up.prepare(100, Output::DynamicInt8);
    for rows in [64, 128] {
        for out in [Output::Floats, Output::DynamicInt8] {
            let bits = up.weight_bits;
            assert!(
                onednn::decided(k, n, rows, bits, out),
                "{rows} rows, {out:?}"
            );
        }
    }
}

/// The FFN pair as the encoder runs it: up (GELU) then down (residual), the down input
/// quantized in up's epilogue or afterwards — the same outputs, bit for bit, whatever
/// up's precision; `f` not a multiple of 4 takes the fallback.
#[test]
fn quantizing_the_next_input_in_the_epilogue_changes_no_output() {
    let (t, h) = (45, 24);
    for f in [96, 90] {
        for (up_precision, down_scale) in [
            ("f32", ActScale::Static(0.05)),
            ("bf16", ActScale::Static(0.05)),
            ("int8", ActScale::Static(0.05)),
            ("f32", ActScale::Dynamic),
            ("int8", ActScale::Dynamic),
        ] {
            let mut up = layer(f, h, 1);
            let mut down = layer(h, f, 2);
            match up_precision {
                "bf16" => up.set_bf16(true),
                "int8" => up.set_int8(Some(ActScale::Static(0.02))),
                _ => {}
            }
            down.set_int8(Some(down_scale));
            let x: Vec<f32> = (0..t * h).map(|i| (i as f32 * 0.37).sin()).collect();
            let residual: Vec<f32> = (0..t * h).map(|i| (i as f32 * 0.11).cos()).collect();
            let act = Some(Activation::Gelu);

            let mut mid = vec![0.0f32; t * f];
            up.forward(&x, t, &mut mid, false, act);
            let mut want = residual.clone();
            down.forward(&mid, t, &mut want, true, None);

            let scale = down.fused_input().expect("INT8");
            assert_eq!(scale, down_scale);
            let mut q = QActs::new();
            let mut unused = vec![0.0f32; t * f];
            up.forward_quantized(&x, t, &mut unused, act, scale, &mut q);
            let mut got = residual.clone();
            down.forward_int8(&q, t, &mut got, true, None);
            assert_eq!(got, want, "up in {up_precision}, f = {f}, {down_scale:?}");
            down.observe(true);
            assert_eq!(down.fused_input(), None, "observed inputs stay floats");
        }
    }
}

/// A bf16 layer multiplies the bf16 numbers samp's bf16 kernels multiply, whichever path
/// serves it: on a CPU without a bf16 instruction, oneDNN's f32 matmul over the rounded values
/// where it runs f32 layers of the shape (and then no packed bf16 weights are made), elsewhere
/// the bf16 table entry.
#[test]
fn a_bf16_layer_multiplies_bf16_numbers_on_whichever_path_serves_it() {
    let (n, k) = (300, 256);
    let w = rows(n, k, 5);
    let mut l = layer(n, k, 5);
    l.set_bf16(true);
    let widened = !bf16::Bf16Kernel::accelerated() && onednn::prefer(Kind::F32, k, n, 1, 0);
    assert_eq!(l.widened(1).is_some(), widened);
    assert_eq!(
        l.bweights.get().is_none(),
        widened,
        "bf16 weights only where used"
    );
    for m in [1, 5, 70, 1100] {
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let (mut got, mut want) = (vec![0.0f32; m * n], vec![0.0f32; m * n]);
        l.forward(&x, m, &mut got, false, Some(Activation::Gelu));
        let mut xb = Bf16Acts::new();
        xb.round(&x, m, k);
        let ep = l.epilogue(false, Some(Activation::Gelu));
        bf16::matmul(&xb, &Bf16Weights::from_rows(&w, n, k), &mut want, ep);
        let worst = worst_diff(&got, &want);
        // |x| ≤ 1, |w| ≤ 0.1: k bounds each sum of magnitudes.
        assert!(worst <= 8.0 * k as f32 * f32::EPSILON, "{m} rows: {worst}");
        // Not the f32 product: bf16 rounding moves these sums by far more than f32's.
        let mut f32_out = vec![0.0f32; m * n];
        let packed = PackedWeights::from_rows(&w, n, k);
        packed::matmul(&x, m, &packed, &mut f32_out, ep);
        let apart = worst_diff(&got, &f32_out);
        assert!(apart > 64.0 * k as f32 * f32::EPSILON, "{m} rows: {apart}");
    }
}
