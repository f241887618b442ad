//! Forward pass of all-MiniLM-L6-v2 (tokenize → encoder → mean pooling) on real movie-review
//! sentences, at batch 1, 8 and 32, in float32 and in the fully-INT8 plan (static scales from
//! 64 other sentences, and dynamic per-token scales): tokens/s (criterion's elements are tokens,
//! special tokens included). Then one encoder layer per precision at batch 32. Needs
//! scripts/fetch_models.sh to have run.
//! Run: `cargo bench --bench forward`.

use std::path::PathBuf;

mod common;

use common::sentences;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use samp::model::encoder::Batch;
use samp::model::{EmbedOptions, LoadOptions, Model};
use samp::quant::observer::Calibration;
use samp::quant::plan::{ActMode, LayerMode, Plan};
use samp::tokenize::{Input, Truncation};

/// The plans compared: float32, fully-quant with static (percentile) scales, fully-quant dynamic.
fn plans(model: &mut Model, calib: &[Input]) -> Vec<(&'static str, Plan)> {
    let layers = model.cfg.layers;
    let obs = model.calibrate(calib, Truncation::Truncate).unwrap();
    let c = Calibration::Percentile { percentile: 99.99 };
    let scales: Vec<[f32; 4]> = obs
        .iter()
        .map(|l| [0, 1, 2, 3].map(|g| l[g].scale(c)))
        .collect();
    let full = vec![LayerMode::Full; layers];
    vec![
        ("float32", Plan::float(layers)),
        (
            "fully-quant",
            Plan::from_modes("fq", &full, &scales, ActMode::Static, Some(c)),
        ),
        (
            "fully-quant-dynamic",
            Plan::from_modes("fqd", &full, &scales, ActMode::Dynamic, None),
        ),
    ]
}

fn forward(c: &mut Criterion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut model = Model::load(
        &root.join("models/all-MiniLM-L6-v2"),
        &LoadOptions::default(),
    )
    .unwrap();
    let all = sentences(320);
    let (texts, calib) = all.split_at(256);
    let tokens: usize = model
        .tokenizer()
        .encode_all(texts, Truncation::Truncate)
        .unwrap()
        .iter()
        .map(|e| e.len())
        .sum();
    let plans = plans(&mut model, calib);
    let mut g = c.benchmark_group("minilm_forward");
    g.sample_size(10);
    for (name, plan) in &plans {
        model.apply_plan(plan).unwrap();
        for batch in [1usize, 8, 32] {
            g.throughput(Throughput::Elements(tokens as u64));
            g.bench_with_input(BenchmarkId::new(*name, batch), &batch, |b, &batch| {
                b.iter(|| {
                    for chunk in texts.chunks(batch) {
                        std::hint::black_box(model.embed(chunk, &EmbedOptions::default()).unwrap());
                    }
                })
            });
        }
    }
    g.finish();

    // One encoder layer (layer 0) at batch 32, per precision.
    let encoded = model
        .tokenizer()
        .encode_all(&texts[..32], Truncation::Truncate)
        .unwrap();
    let mut batch = Batch::new();
    for e in &encoded {
        batch.push(e.encoding.get_ids(), e.encoding.get_type_ids());
    }
    let x0 = model.encoder().embed(&batch).unwrap();
    let mut g = c.benchmark_group("minilm_layer_batch32");
    g.sample_size(20);
    g.throughput(Throughput::Elements(batch.tokens() as u64));
    let ffn = Plan::from_modes(
        "ffn",
        &vec![LayerMode::FfnOnly; model.cfg.layers],
        &vec![[1.0 / 127.0; 4]; model.cfg.layers],
        ActMode::Static,
        None,
    );
    for (name, plan) in plans
        .iter()
        .map(|(n, p)| (*n, p))
        .chain([("ffn-only", &ffn)])
    {
        model.apply_plan(plan).unwrap();
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut x = x0.clone();
                model.encoder().forward_layer(0, &mut x, &batch);
                std::hint::black_box(x)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
