//! f32 GEMM kernels at MiniLM's real shapes, weights cold in cache as in a forward pass (24
//! distinct weight matrices, one per GEMM of the 6 layers): the packed-weight kernel samp uses
//! against the `gemm` crate (which re-packs weights per call). Throughput in FLOP/s.
//! Run: `cargo bench --bench gemm`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use samp::model::kernels::packed::{matmul, Epilogue, PackedWeights};
use samp::model::kernels::{gemm, View};

/// (k, n) of QKV, attention output, FFN up, FFN down.
const SHAPES: [(usize, usize); 4] = [(384, 1152), (384, 384), (384, 1536), (1536, 384)];

fn kernels(c: &mut Criterion) {
    let weights: Vec<Vec<f32>> = (0..24)
        .map(|i| {
            let (k, n) = SHAPES[i % 4];
            (0..k * n)
                .map(|j| ((i * 31 + j) % 97) as f32 * 1e-3)
                .collect()
        })
        .collect();
    let packed: Vec<PackedWeights> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| PackedWeights::from_rows(w, SHAPES[i % 4].1, SHAPES[i % 4].0))
        .collect();
    let threads = rayon::current_num_threads();
    let mut g = c.benchmark_group("gemm_f32_minilm_layers");
    g.sample_size(10);
    for m in [27usize, 216, 870] {
        let x: Vec<f32> = (0..m * 1536).map(|j| (j % 13) as f32 * 0.1).collect();
        let mut y = vec![0.0f32; m * 1536];
        let flops: usize = SHAPES.iter().map(|(k, n)| 2 * m * k * n).sum::<usize>() * 6;
        g.throughput(Throughput::Elements(flops as u64));
        g.bench_with_input(BenchmarkId::new("packed", m), &m, |b, &m| {
            b.iter(|| {
                for p in &packed {
                    matmul(&x, m, p, &mut y, Epilogue::default());
                }
            })
        });
        g.bench_with_input(BenchmarkId::new("gemm_crate", m), &m, |b, &m| {
            b.iter(|| {
                for (i, w) in weights.iter().enumerate() {
                    let (k, n) = SHAPES[i % 4];
                    let (av, bv, cv) =
                        (View::row_major(k), View::transposed(k), View::row_major(n));
                    gemm(m, n, k, &x, av, w, bv, &mut y, cv, false, threads);
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
