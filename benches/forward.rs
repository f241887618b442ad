//! Float forward pass of all-MiniLM-L6-v2 (tokenize → encoder → mean pooling) on real movie-review
//! sentences, at batch 1, 8 and 32: tokens/s (criterion's elements are tokens, special tokens
//! included). Needs scripts/fetch_models.sh to have run.
//! Run: `cargo bench --bench forward`.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use samp::model::{EmbedOptions, LoadOptions, Model};
use samp::tokenize::Input;

fn sentences(n: usize) -> Vec<Input> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let p = root.join("data/vader/movieReviewSnippets_GroundTruth.txt");
    let raw = std::fs::read(&p)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/fetch_models.sh)", p.display()));
    String::from_utf8_lossy(&raw)
        .lines()
        .filter_map(|l| l.splitn(3, '\t').nth(2))
        .map(|t| Input::from(t.trim()))
        .filter(|i| !i.first().is_empty())
        .take(n)
        .collect()
}

fn forward(c: &mut Criterion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model = Model::load(
        &root.join("models/all-MiniLM-L6-v2"),
        &LoadOptions::default(),
    )
    .unwrap();
    let texts = sentences(256);
    let tokens: usize = model
        .tokenizer()
        .encode_all(&texts, samp::tokenize::Truncation::Truncate)
        .unwrap()
        .iter()
        .map(|e| e.len())
        .sum();
    let mut g = c.benchmark_group("minilm_f32_forward");
    g.sample_size(10);
    for batch in [1usize, 8, 32] {
        g.throughput(Throughput::Elements(tokens as u64));
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.iter(|| {
                for chunk in texts.chunks(batch) {
                    std::hint::black_box(model.embed(chunk, &EmbedOptions::default()).unwrap());
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
