//! The CPU-side hot parts around the encoder: tokenization of real movie-review sentences
//! (single-threaded and on the pool, texts/s), packing encoded texts into one padding-free batch
//! (tokens/s), and the batching policy's admission decisions (jobs/s). Needs
//! scripts/fetch_models.sh to have run. Run: `cargo bench --bench pipeline`.

use std::path::PathBuf;

mod common;

use common::sentences;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use samp::batching::{BatchFill, BatchPolicy};
use samp::model::encoder::Batch;
use samp::tokenize::{Tokenizer, Truncation};

fn bench(c: &mut Criterion) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2");
    let tok = Tokenizer::load(&dir, 256, true).expect("run scripts/fetch_models.sh");
    let texts = sentences(256);

    let mut g = c.benchmark_group("tokenize");
    g.throughput(Throughput::Elements(texts.len() as u64));
    g.bench_function("one_thread", |b| {
        b.iter(|| {
            for (i, t) in texts.iter().enumerate() {
                std::hint::black_box(tok.encode(t, i, Truncation::Truncate).unwrap());
            }
        })
    });
    g.bench_function("pool", |b| {
        b.iter(|| std::hint::black_box(tok.encode_all(&texts, Truncation::Truncate).unwrap()))
    });
    g.finish();

    let encoded = tok.encode_all(&texts, Truncation::Truncate).unwrap();
    let tokens: usize = encoded.iter().map(|e| e.len()).sum();
    let mut g = c.benchmark_group("pack");
    g.throughput(Throughput::Elements(tokens as u64));
    for per_batch in [1usize, 32] {
        g.bench_with_input(BenchmarkId::new("batch", per_batch), &per_batch, |b, &n| {
            b.iter(|| {
                for chunk in encoded.chunks(n) {
                    let mut batch = Batch::new();
                    for e in chunk {
                        batch.push(e.encoding.get_ids(), e.encoding.get_type_ids());
                    }
                    std::hint::black_box(batch);
                }
            })
        });
    }
    g.finish();

    let policy = BatchPolicy::default();
    let mut g = c.benchmark_group("batching_policy");
    g.throughput(Throughput::Elements(encoded.len() as u64));
    g.bench_function("admit", |b| {
        b.iter(|| {
            let mut fill = BatchFill::default();
            let mut batches = 0;
            for e in &encoded {
                if !fill.admits(e.len(), 1, &policy) || fill.full(&policy) {
                    fill = BatchFill::default();
                    batches += 1;
                }
                fill.add(e.len(), 1);
            }
            std::hint::black_box(batches)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
