//! f32 GEMM kernels at MiniLM's real shapes, weights cold in cache as in a forward pass (24
//! distinct weight matrices, one per GEMM of the 6 layers): the packed-weight kernel samp uses
//! against the `gemm` crate (which re-packs weights per call). Throughput in FLOP/s.
//! Run: `cargo bench --bench gemm`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use samp::kernels::int8::{self, ActScale, QActs, QWeights};
use samp::kernels::packed::{matmul, Epilogue, PackedWeights};
use samp::kernels::{gemm, View};

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

/// The INT8 kernel against samp's f32 kernel at the shapes (1024 tokens; MiniLM's FFN
/// up and down, BERT-base's FFN up and down). Throughput in multiply-adds × 2 (ops/s).
fn int8_vs_f32(c: &mut Criterion) {
    let m = 1024;
    let mut g = c.benchmark_group("gemm_int8_vs_f32");
    g.sample_size(10);
    for (k, n) in [(384usize, 1536usize), (1536, 384), (768, 3072), (3072, 768)] {
        let w: Vec<f32> = (0..k * n)
            .map(|j| ((j * 31) % 97) as f32 * 1e-3 - 0.05)
            .collect();
        let x: Vec<f32> = (0..m * k).map(|j| (j % 13) as f32 * 0.1 - 0.6).collect();
        let mut y = vec![0.0f32; m * n];
        let pf = PackedWeights::from_rows(&w, n, k);
        let pq = QWeights::quantize(&w, n, k, 8);
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        let shape = format!("{m}x{k}x{n}");
        g.bench_function(BenchmarkId::new("f32", &shape), |b| {
            b.iter(|| matmul(&x, m, &pf, &mut y, Epilogue::default()))
        });
        let mut q = QActs::new();
        q.quantize(&x, m, k, ActScale::Static(0.01));
        g.bench_function(BenchmarkId::new("int8", &shape), |b| {
            b.iter(|| int8::matmul(&q, &pq, &mut y, Epilogue::default()))
        });
        g.bench_function(BenchmarkId::new("int8+quantize", &shape), |b| {
            b.iter(|| {
                q.quantize(&x, m, k, ActScale::Static(0.01));
                int8::matmul(&q, &pq, &mut y, Epilogue::default())
            })
        });
    }
    g.finish();
}

/// An INT8 FFN-up product (bias, GELU) whose outputs go to the next INT8 layer with dynamic
/// scales: written as floats and quantized afterwards (`matmul`, then `QActs::quantize`: what
/// runs with few rows) against finished and quantized row block by row block while in cache
/// (`matmul_dynamic`). 4,096 tokens (a batch of 32 × 128); MiniLM's and BERT-base's FFN up.
fn int8_dynamic_next_layer(c: &mut Criterion) {
    let m = 4096;
    let mut g = c.benchmark_group("gemm_int8_dynamic_next_layer");
    g.sample_size(10);
    for (k, n) in [(384usize, 1536usize), (768, 3072)] {
        let w: Vec<f32> = (0..k * n)
            .map(|j| ((j * 31) % 97) as f32 * 1e-3 - 0.05)
            .collect();
        let x: Vec<f32> = (0..m * k).map(|j| (j % 13) as f32 * 0.1 - 0.6).collect();
        let bias: Vec<f32> = (0..n).map(|j| (j % 7) as f32 * 0.1 - 0.3).collect();
        let pq = QWeights::quantize(&w, n, k, 8);
        let mut q = QActs::new();
        q.quantize(&x, m, k, ActScale::Dynamic);
        let ep = Epilogue {
            bias: Some(&bias),
            act: Some(samp::kernels::Activation::Gelu),
            ..Default::default()
        };
        let (mut y, mut next) = (vec![0.0f32; m * n], QActs::new());
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        let shape = format!("{m}x{k}x{n}");
        g.bench_function(BenchmarkId::new("floats_then_quantize", &shape), |b| {
            b.iter(|| {
                int8::matmul(&q, &pq, &mut y, ep);
                next.quantize(&y, m, n, ActScale::Dynamic)
            })
        });
        if int8::matmul_dynamic(&q, &pq, ep, &mut next) {
            g.bench_function(BenchmarkId::new("row_blocks", &shape), |b| {
                b.iter(|| int8::matmul_dynamic(&q, &pq, ep, &mut next))
            });
        }
    }
    g.finish();
}

/// Attention over a packed batch like MiniLM's at batch 32 (32 sequences of 13-40 tokens,
/// 12 heads of 32), and over 32 sequences of 128 tokens with MiniLM's heads and BERT-base's
/// (12 of 64).
fn attention(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention_batch32");
    g.sample_size(20);
    // Natural lengths (13-40 tokens) and fixed 128-token sequences.
    for (fixed, heads, d) in [
        (None, 12usize, 32usize),
        (Some(128usize), 12, 32),
        (Some(128), 12, 64),
    ] {
        let mut starts = vec![0usize];
        for i in 0..32 {
            starts.push(starts[i] + fixed.unwrap_or(13 + (i * 7) % 28));
        }
        let t = *starts.last().unwrap();
        let h = heads * d;
        let qkv: Vec<f32> = (0..t * 3 * h)
            .map(|j| ((j * 37) % 101) as f32 * 0.01 - 0.5)
            .collect();
        let mut ctx = vec![0.0f32; t * h];
        g.throughput(Throughput::Elements(t as u64));
        let name = if d == 32 {
            format!("{t}_tokens")
        } else {
            format!("{t}_tokens_d{d}")
        };
        g.bench_function(name, |b| {
            b.iter(|| samp::kernels::attention(&qkv, &mut ctx, &starts, heads, d))
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    kernels,
    int8_vs_f32,
    int8_dynamic_next_layer,
    attention
);
criterion_main!(benches);
