//! How fast a plan runs on this machine, for the search: each layer timed in each precision,
//! and the model's task end to end.

use std::time::{Duration, Instant};

use super::search::{mode_index, MODES};
use crate::error::Result;
use crate::kernels::bf16::Bf16Kernel;
use crate::model::config::Task;
use crate::model::encoder::Batch;
use crate::model::heads::tag::Aggregation;
use crate::model::{EmbedOptions, Model};
use crate::quant::plan::{ActMode, LayerMode, Plan};
use crate::tokenize::{Input, Truncation};

/// Fastest milliseconds of `f` over a few runs after one warm-up.
fn time_ms(mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut v = Vec::new();
    let begin = Instant::now();
    while v.len() < 3 || (v.len() < 15 && begin.elapsed() < Duration::from_millis(400)) {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(v.iter().cloned().fold(f64::INFINITY, f64::min))
}

/// Per layer, milliseconds in float, FFN-only and fully-quant (static scales of 1/127: timing
/// only; `weight_bits`-bit INT8 weights), and the time outside the layers.
pub(super) fn time_layers(
    model: &mut Model,
    inputs: &[Input],
    weight_bits: u32,
) -> Result<(Vec<[f64; MODES.len()]>, f64, usize)> {
    let layers = model.cfg.layers;
    let before = model.plan().clone();
    let encoded = model.tokenize(inputs, Truncation::Truncate)?;
    let mut batch = Batch::new();
    for e in &encoded {
        batch.push(e.encoding.get_ids(), e.encoding.get_type_ids());
    }
    let x0 = model.encoder().embed(&batch)?;
    // Rounds alternate the precisions and keep each one's fastest time, so that a burst of
    // load from other processes on a shared machine skews no precision more than another.
    // Modes that are not timed stay at infinity: never a gain.
    let mut out = vec![[f64::INFINITY; MODES.len()]; layers];
    let ones = vec![[1.0f32 / 127.0; 4]; layers];
    let timed: Vec<LayerMode> = MODES
        .into_iter()
        .filter(|m| {
            Bf16Kernel::accelerated() || !matches!(m, LayerMode::Bf16 | LayerMode::FfnOnlyBf16)
        })
        .collect();
    for _round in 0..5 {
        for &mode in &timed {
            model.apply_plan(
                &Plan::from_modes("timing", &vec![mode; layers], &ones, ActMode::Static, None)
                    .with_weight_bits(weight_bits),
            )?;
            for (i, o) in out.iter_mut().enumerate() {
                let mut x = x0.clone();
                model.encoder().forward_layer(i, &mut x, &batch);
                let mut x = x0.clone();
                let t = Instant::now();
                model.encoder().forward_layer(i, &mut x, &batch);
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                let slot = &mut o[mode_index(mode)];
                *slot = slot.min(ms);
            }
        }
    }
    model.apply_plan(&Plan::float(layers))?;
    let total = time_ms(|| run_once(model, inputs))?;
    let other = (total - out.iter().map(|l| l[0]).sum::<f64>()).max(0.0);
    model.apply_plan(&before)?;
    Ok((out, other, batch.tokens()))
}

/// One pass of the model's task over `inputs`, the way a request runs.
fn run_once(model: &Model, inputs: &[Input]) -> Result<()> {
    match model.task {
        Task::Classify => model.classify(inputs, Truncation::Truncate).map(drop),
        Task::Tag => {
            let texts: Vec<String> = inputs
                .iter()
                .map(|i| match i {
                    Input::Single(t) => t.clone(),
                    Input::Pair(a, b) => format!("{a} {b}"),
                })
                .collect();
            model
                .tag(&texts, Aggregation::Simple, Truncation::Truncate)
                .map(drop)
        }
        Task::Embed => model
            .embed(
                inputs,
                &EmbedOptions {
                    truncation: Truncation::Truncate,
                    ..Default::default()
                },
            )
            .map(drop),
    }
}

/// Texts per second of the model's task over `inputs` as one batch, for about `budget`.
pub fn throughput(model: &Model, inputs: &[Input], budget: Duration) -> Result<f64> {
    run_once(model, inputs)?;
    let start = Instant::now();
    let mut n = 0usize;
    while n == 0 || start.elapsed() < budget {
        run_once(model, inputs)?;
        n += inputs.len();
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}
