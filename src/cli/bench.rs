//! `samp bench`: throughput of the in-process pipeline (or the encoder alone) on one device.

use std::path::{Path, PathBuf};

use clap::Args;

use super::{read_texts, DeviceArgs, ModelSource, Placed};
use crate::model::config::Task;
use crate::model::encoder::Batch;
use crate::model::heads::tag::Aggregation;
use crate::model::{EmbedOptions, LoadOptions, Model};
use crate::tokenize::{Input, Truncation};

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub source: ModelSource,
    /// Texts, one per line (or JSON Lines as for --input of the other commands).
    #[arg(long)]
    pub input: PathBuf,
    /// Texts per call.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Use only the first N texts of the file.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Keep running passes over the texts for at least this long.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Pipeline to run (default: the model's own head).
    #[arg(long)]
    pub task: Option<Task>,
    /// Also time each stage of encoder layer 0 on the first batch (GEMMs, attention,
    /// LayerNorm) and report the split (CPU only).
    #[arg(long)]
    pub profile: bool,
    /// Time the encoder alone on sequences of exactly N tokens (each text's own tokens
    /// repeated to length, between its first and last special token), instead of the whole
    /// pipeline on the texts as they are.
    #[arg(long)]
    pub tokens: Option<usize>,
    /// Write the last-layer hidden states of one pass over the texts here (f32 little-endian,
    /// `[tokens, hidden]` row-major) and the token ids to FILE.json, for comparing engines.
    #[arg(long)]
    pub states_out: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// The texts as packed batches of `batch` sequences: as tokenized, or each made exactly
/// `fixed` tokens long.
fn batches(
    model: &Model,
    inputs: &[Input],
    batch: usize,
    fixed: Option<usize>,
) -> anyhow::Result<Vec<Batch>> {
    let encoded = model.tokenize(inputs, Truncation::Truncate)?;
    let mut out = Vec::new();
    for chunk in encoded.chunks(batch) {
        let mut b = Batch::new();
        for e in chunk {
            let ids = e.encoding.get_ids();
            match fixed {
                None => b.push(ids, e.encoding.get_type_ids()),
                Some(n) => {
                    let (first, last) = (ids[0], ids[ids.len() - 1]);
                    let middle = if ids.len() > 2 {
                        &ids[1..ids.len() - 1]
                    } else {
                        &ids[..1]
                    };
                    let mut v = vec![first];
                    v.extend(middle.iter().cycle().take(n - 2));
                    v.push(last);
                    b.push(&v, &vec![0; n]);
                }
            }
        }
        out.push(b);
    }
    Ok(out)
}

/// Write every batch's hidden states (one pass) and the ids that produced them.
fn write_states(placed: &Placed, batches: &[Batch], path: &Path) -> anyhow::Result<()> {
    let model = &placed.model;
    let mut bytes = Vec::new();
    let mut ids = Vec::new();
    for b in batches {
        for v in placed.forward(b)? {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        ids.extend((0..b.len()).map(|s| b.ids[b.seq(s)].to_vec()));
    }
    std::fs::write(path, bytes)?;
    let meta = serde_json::json!({ "hidden": model.cfg.hidden, "ids": ids, "device": placed.engine.device() });
    std::fs::write(path.with_extension("json"), meta.to_string())?;
    Ok(())
}

/// Time each stage of layer 0 on one batch: the mean of 20 runs after a warm-up.
fn profile_layer(model: &Model, inputs: &[Input]) -> anyhow::Result<serde_json::Value> {
    let encoded = model.tokenize(inputs, Truncation::Truncate)?;
    let mut batch = crate::model::encoder::Batch::new();
    for e in &encoded {
        batch.push(e.encoding.get_ids(), e.encoding.get_type_ids());
    }
    let x0 = model.encoder().embed(&batch)?;
    let mut sums: Vec<(&str, f64)> = Vec::new();
    let runs = 20;
    for r in 0..=runs {
        let mut x = x0.clone();
        let stages = model.encoder().profile_layer(0, &mut x, &batch);
        if r == 0 {
            sums = stages.iter().map(|(s, _)| (*s, 0.0)).collect();
            continue;
        }
        for ((_, sum), (_, d)) in sums.iter_mut().zip(&stages) {
            *sum += d.as_secs_f64() * 1000.0 / runs as f64;
        }
    }
    let total: f64 = sums.iter().map(|(_, v)| v).sum();
    Ok(serde_json::json!({
        "batch_texts": inputs.len(),
        "batch_tokens": batch.tokens(),
        "total_ms": total,
        "stages": sums.iter().map(|(s, ms)| serde_json::json!({
            "stage": s, "ms": ms, "share": ms / total
        })).collect::<Vec<_>>(),
    }))
}

pub fn run_bench(a: &BenchArgs) -> anyhow::Result<()> {
    let mut inputs = read_texts(&a.input)?;
    if let Some(n) = a.limit {
        inputs.truncate(n);
    }
    if inputs.is_empty() || a.batch == 0 {
        anyhow::bail!("bench needs at least one text and --batch >= 1");
    }
    if let Some(n) = a.tokens {
        if n < 2 {
            anyhow::bail!("--tokens {n}: sequences need at least 2 tokens");
        }
    }
    let placed = a.source.load(
        &a.device,
        LoadOptions {
            task: a.task,
            ..Default::default()
        },
    )?;
    let model = &placed.model;
    if let Some(n) = a.tokens.filter(|&n| n > model.max_len()) {
        anyhow::bail!(
            "--tokens {n}: over the model's limit of {}",
            model.max_len()
        );
    }
    let forward = |b: &Batch| placed.forward(b);
    let packed = batches(model, &inputs, a.batch, a.tokens)?;
    if let Some(path) = &a.states_out {
        write_states(&placed, &packed, path)?;
    }
    let texts: Vec<String> = inputs.iter().map(|i| i.first().to_string()).collect();
    let run_once = |chunk: std::ops::Range<usize>| -> anyhow::Result<usize> {
        if a.tokens.is_some() {
            // Encoder alone on the fixed-length batch of this chunk.
            let b = &packed[chunk.start / a.batch];
            placed.forward(b)?;
            return Ok(b.tokens());
        }
        let part = &inputs[chunk.clone()];
        Ok(match model.task {
            Task::Embed => model
                .embed_on(&forward, part, &EmbedOptions::default())?
                .iter()
                .map(|r| r.tokens)
                .sum(),
            Task::Classify => model
                .classify_on(&forward, part, Truncation::Truncate)?
                .iter()
                .map(|r| r.tokens)
                .sum(),
            Task::Tag => model
                .tag_on(
                    &forward,
                    &texts[chunk],
                    Aggregation::Simple,
                    Truncation::Truncate,
                )?
                .iter()
                .map(|r| r.tokens)
                .sum(),
        })
    };
    let chunks: Vec<_> = (0..inputs.len())
        .step_by(a.batch)
        .map(|s| s..(s + a.batch).min(inputs.len()))
        .collect();
    // One warm-up pass, then whole passes until the time is up.
    for c in &chunks {
        run_once(c.clone())?;
    }
    let start = std::time::Instant::now();
    let (mut n_texts, mut n_tokens, mut passes) = (0usize, 0usize, 0usize);
    while passes == 0 || start.elapsed().as_secs_f64() < a.seconds {
        for c in &chunks {
            n_tokens += run_once(c.clone())?;
            n_texts += c.len();
        }
        passes += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let profile = if a.profile && placed.engine.device() == "cpu" {
        profile_layer(model, &inputs[chunks[0].clone()])?
    } else {
        serde_json::Value::Null
    };
    let report = serde_json::json!({
        "engine": "samp",
        "model": model.name,
        "device": placed.engine.device(),
        "measured": if a.tokens.is_some() { "encoder" } else { "pipeline" },
        "task": model.task.name(),
        "plan": model.plan().name,
        "layers": model.plan().summary(),
        "batch": a.batch,
        "threads": rayon::current_num_threads(),
        "texts": n_texts,
        "passes": passes,
        "seconds": secs,
        "texts_per_s": n_texts as f64 / secs,
        "tokens_per_s": n_tokens as f64 / secs,
        "mean_tokens": n_tokens as f64 / n_texts as f64,
        "layer_profile": profile,
    });
    println!("{report}");
    Ok(())
}
