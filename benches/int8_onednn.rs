//! samp's INT8 kernel against oneDNN's on the same quantized operands, taking turns call by
//! call, best of `reps` each: on a shared VM whose speed drifts by tens of percent within
//! minutes, only products timed side by side compare. Prints Gop/s (2 × multiply-adds per
//! second, quantizing the input excluded) and oneDNN's time ÷ samp's (above 1: samp faster).
//! Needs oneDNN (scripts/fetch_models.sh puts it in target/onednn).
//! Run: `cargo bench --bench int8_onednn -- [rows k n [reps [weight bits]]]`
//! (default: BERT-base's four GEMMs at 2,048 rows, 20 turns, the weight width plans use here),
//! or `cargo bench --bench int8_onednn -- model [rows [k n reps [bits]]]`: BERT-base's 48 GEMMs
//! in a row, each with its own weights (cold in cache, as in a forward pass; default 128 rows),
//! or `cargo bench --bench int8_onednn -- widths [rows [reps]]`: samp's fastest kernel for 6-bit
//! weights against its fastest for 7-bit ones, on the same 6-bit weights (exact for both),
//! BERT-base's four GEMMs (default 2,048 rows; no oneDNN involved).

use std::time::Instant;

use samp::kernels::int8::{self, ActScale, Int8Kernel, QActs, QWeights};
use samp::kernels::packed::Epilogue;

fn main() {
    // `cargo bench` passes `--bench`; the numbers are ours.
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let shapes = match args[..] {
        [m, k, n, ..] => vec![(m, k, n)],
        _ => [(768, 2304), (768, 768), (768, 3072), (3072, 768)]
            .map(|(k, n)| (2048, k, n))
            .to_vec(),
    };
    // `cargo test --all-targets` runs this too (without `--bench`): one quick turn there.
    let timing = std::env::args().any(|a| a == "--bench");
    let reps = if timing {
        args.get(3).copied().unwrap_or(20)
    } else {
        1
    };
    let bits = args
        .get(4)
        .map(|&b| b as u32)
        .unwrap_or_else(samp::quant::plan::preferred_weight_bits);
    if std::env::args().any(|a| a == "widths") {
        let m = args.first().copied().unwrap_or(2048);
        let reps = if timing {
            args.get(1).copied().unwrap_or(15)
        } else {
            1
        };
        widths(m, reps);
        return;
    }
    if !samp::kernels::onednn::usable(samp::kernels::onednn::Kind::Int8) {
        eprintln!("oneDNN is not loaded (run scripts/fetch_models.sh): nothing to compare");
        return;
    }
    println!(
        "{bits}-bit weights, {} threads, best of {reps} turns",
        rayon::current_num_threads()
    );
    if std::env::args().any(|a| a == "dynamic") {
        let m = args.first().copied().unwrap_or(128);
        let (k, n) = (768, 3072);
        let [fused, split, dnnl_blocks, dnnl_split] = dynamic_turns(m, k, n, reps, bits);
        println!(
            "{m} x {k} -> {n}, GELU, quantized for a dynamic next layer, ms: samp's kernel by row blocks (matmul_dynamic) {:.3}, by columns then quantized {:.3}; oneDNN by blocks (matmul_onednn_dynamic) {:.3}, written out then quantized {:.3}",
            fused * 1e3,
            split * 1e3,
            dnnl_blocks * 1e3,
            dnnl_split * 1e3
        );
        return;
    }
    if std::env::args().any(|a| a == "model") {
        // BERT-base's 48 GEMMs in a row, each with weights of its own (85 MB: cold in cache, as
        // in a forward pass), at `rows` rows.
        let m = args.first().copied().unwrap_or(128);
        let layers: Vec<(usize, usize)> =
            [(768, 2304), (768, 768), (768, 3072), (3072, 768)].repeat(12);
        let (own, dnnl) = model_turns(m, &layers, reps, bits);
        let macs: usize = layers.iter().map(|(k, n)| m * k * n).sum();
        let gops = |s: f64| 2.0 * macs as f64 / s / 1e9;
        println!(
            "BERT-base's 48 GEMMs at {m} rows, cold weights: samp {:.0} Gop/s, oneDNN {:.0} Gop/s, oneDNN time / samp time {:.3}",
            gops(own),
            gops(dnnl),
            dnnl / own
        );
        return;
    }
    for (m, k, n) in shapes {
        let (own, dnnl) = turns(m, k, n, reps, bits);
        let gops = |s: f64| 2.0 * (m * k * n) as f64 / s / 1e9;
        println!(
            "{m} x {k} -> {n}: samp {:.0} Gop/s, oneDNN {:.0} Gop/s, oneDNN time / samp time {:.3}",
            gops(own),
            gops(dnnl),
            dnnl / own
        );
    }
}

/// Best seconds, `reps` turns each, of a product with GELU quantized for a dynamic next layer:
/// samp's kernel by row blocks (`matmul_dynamic`), samp's by columns then quantized, oneDNN's
/// by its blocks (`matmul_onednn_dynamic`), oneDNN's written out then quantized.
fn dynamic_turns(m: usize, k: usize, n: usize, reps: usize, bits: u32) -> [f64; 4] {
    let (x, w) = (acts(m, k), weights(n, k, bits, 0));
    let bias = vec![0.1f32; n];
    let ep = Epilogue {
        bias: Some(&bias),
        act: Some(samp::kernels::Activation::Gelu),
        ..Default::default()
    };
    let mut q = QActs::new();
    q.quantize(&x, m, k, ActScale::Dynamic);
    let g = int8::onednn_gemm(&w).expect("oneDNN INT8 matmul");
    let (mut next, mut y) = (QActs::new(), vec![0.0f32; m * n]);
    let mut best = [f64::INFINITY; 4];
    for _ in 0..reps {
        for (i, b) in best.iter_mut().enumerate() {
            let t = Instant::now();
            match i {
                0 => assert!(int8::matmul_dynamic(&q, &w, ep, &mut next), "declined"),
                1 => int8::matmul(&q, &w, &mut y, ep),
                2 => {
                    let done = int8::matmul_onednn_dynamic(&q, &w, &g, ep, &mut next);
                    assert!(done, "declined")
                }
                _ => int8::matmul_onednn(&q, &w, &g, &mut y, ep),
            }
            if i % 2 == 1 {
                next.quantize(&y, m, n, ActScale::Dynamic);
            }
            *b = b.min(t.elapsed().as_secs_f64());
        }
    }
    best
}

/// Best seconds of samp's products over `layers` (k, n) — each with weights of its own — and
/// of oneDNN's, `reps` turns each.
fn model_turns(m: usize, layers: &[(usize, usize)], reps: usize, bits: u32) -> (f64, f64) {
    let ws: Vec<(QWeights, samp::kernels::onednn::Gemm)> = layers
        .iter()
        .enumerate()
        .map(|(i, &(k, n))| {
            let w = weights(n, k, bits, i);
            let g = int8::onednn_gemm(&w).expect("oneDNN INT8 matmul");
            (w, g)
        })
        .collect();
    let acts: Vec<QActs> = [768, 3072]
        .iter()
        .map(|&k| {
            let mut q = QActs::new();
            q.quantize(&acts(m, k), m, k, ActScale::Dynamic);
            q
        })
        .collect();
    let mut y = vec![0.0f32; m * 3072];
    let x = |k: usize| &acts[usize::from(k == 3072)];
    let (mut own, mut dnnl) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..reps {
        let t = Instant::now();
        for (w, _) in &ws {
            int8::matmul(x(w.k), w, &mut y, Epilogue::default());
        }
        own = own.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for (w, g) in &ws {
            int8::matmul_onednn(x(w.k), w, g, &mut y, Epilogue::default());
        }
        dnnl = dnnl.min(t.elapsed().as_secs_f64());
    }
    (own, dnnl)
}

/// Best seconds of samp's product and of oneDNN's over `reps` turns each.
fn turns(m: usize, k: usize, n: usize, reps: usize, bits: u32) -> (f64, f64) {
    let (x, w) = (acts(m, k), weights(n, k, bits, 0));
    let g = int8::onednn_gemm(&w).expect("oneDNN INT8 matmul");
    let mut q = QActs::new();
    q.quantize(&x, m, k, ActScale::Dynamic);
    let mut y = vec![0.0f32; m * n];
    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64()
    };
    let (mut own, mut dnnl) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..reps {
        own = own.min(time(&mut || {
            int8::matmul(&q, &w, &mut y, Epilogue::default())
        }));
        dnnl = dnnl.min(time(&mut || {
            int8::matmul_onednn(&q, &w, &g, &mut y, Epilogue::default())
        }));
    }
    (own, dnnl)
}

/// samp's 6-bit kernel against its 7-bit one on BERT-base's four GEMMs, the same 6-bit weights,
/// taking turns call by call.
fn widths(m: usize, reps: usize) {
    let (k6, k7) = (Int8Kernel::detect(6), Int8Kernel::detect(7));
    println!("{m} rows, best of {reps} turns: {k6:?} (6-bit) against {k7:?} (7-bit)");
    for (k, n) in [(768, 2304), (768, 768), (768, 3072), (3072, 768)] {
        let w = weights(n, k, 6, 0);
        let mut q = QActs::new();
        q.quantize(&acts(m, k), m, k, ActScale::Dynamic);
        let mut y = vec![0.0f32; m * n];
        let mut best = [f64::INFINITY; 2];
        for _ in 0..reps {
            for (b, kernel) in best.iter_mut().zip([k6, k7]) {
                let t = Instant::now();
                int8::matmul_with(&q, &w, &mut y, Epilogue::default(), kernel);
                *b = b.min(t.elapsed().as_secs_f64());
            }
        }
        let gops = |s: f64| 2.0 * (m * k * n) as f64 / s / 1e9;
        println!(
            "{m} x {k} -> {n}: 6-bit {:.0} Gop/s, 7-bit {:.0} Gop/s, 7-bit time / 6-bit time {:.3}",
            gops(best[0]),
            gops(best[1]),
            best[1] / best[0]
        );
    }
}

/// `m × k` activations spread over ±1.3.
fn acts(m: usize, k: usize) -> Vec<f32> {
    (0..m * k)
        .map(|j| (((j * 7919) % 255) as f32 - 127.0) * 0.01)
        .collect()
}

/// `n × k` weights of `bits` bits, varied by `salt`.
fn weights(n: usize, k: usize, bits: u32, salt: usize) -> QWeights {
    let w: Vec<f32> = (0..n * k)
        .map(|j| (((j * 104_729 + salt * 7) % 251) as f32 - 125.0) * 0.001)
        .collect();
    QWeights::quantize(&w, n, k, bits)
}
