//! The self-adaptive search behind `samp quantize`: calibrate, measure each layer's latency in
//! each precision on this machine, measure each layer's sensitivity, then walk a greedy
//! frontier from float to fully quantized — the upgrade with the most speed per accuracy lost
//! first, the whole plan re-evaluated at every step — and pick the fastest plan that meets the
//! requirement (without one, the knee of the frontier).

use crate::kernels::bf16::Bf16Kernel;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::eval::{Evaluator, Scores};
use super::timing::{throughput, time_layers};
use crate::error::Result;
use crate::model::Model;
use crate::quant::observer::{Calibration, Observer};
use crate::quant::plan::{ActMode, LayerMode, Plan};
use crate::tokenize::{Input, Truncation};

/// What the chosen plan must achieve on the evaluation data.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Requirement {
    /// At most this much below the float model's score (in the metric's units).
    MaxDrop(f64),
    /// At least this score.
    MinScore(f64),
    /// None: take the knee of the frontier.
    Knee,
}

/// Which layer modes the search may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SearchMode {
    /// Each layer float, Quant-FFN-Only or Fully-Quant; where this CPU has a fast bf16
    /// kernel also all-bf16 and Quant-FFN-Only with bf16 attention.
    Auto,
    /// Each layer float or Quant-FFN-Only.
    FfnOnly,
    /// Each layer float or Fully-Quant.
    FullyQuant,
    /// Each layer float, Quant-FFN-Only or Fully-Quant on every host (never bf16): for plans
    /// shipped to hosts of every tier, where bf16 may have no fast kernel.
    Int8,
}

impl SearchMode {
    fn modes(self) -> Vec<LayerMode> {
        let bf16 = Bf16Kernel::accelerated();
        match self {
            SearchMode::Auto if bf16 => vec![
                LayerMode::Bf16,
                LayerMode::FfnOnly,
                LayerMode::FfnOnlyBf16,
                LayerMode::Full,
            ],
            SearchMode::Auto | SearchMode::Int8 => vec![LayerMode::FfnOnly, LayerMode::Full],
            SearchMode::FfnOnly => vec![LayerMode::FfnOnly],
            SearchMode::FullyQuant => vec![LayerMode::Full],
        }
    }
}

pub struct SearchOptions {
    pub calib: Vec<Input>,
    pub requirement: Requirement,
    pub mode: SearchMode,
    /// `None`: try max, percentile and MSE on the fully quantized model and keep the best.
    pub calibration: Option<Calibration>,
    /// `None`: try static (each calibration method) and dynamic, keep the best.
    pub activations: Option<ActMode>,
    /// A plan meets a requirement only by this many bootstrap standard errors of its drop.
    pub margin_se: f64,
    /// Width of the plans' INT8 weights (7 runs at full speed on every tier; 8 only where
    /// VNNI or AMX does): see [`crate::quant::plan::preferred_weight_bits`].
    pub weight_bits: u32,
    /// Texts per timing batch (taken from the calibration data).
    pub timing_batch: usize,
}

/// One plan the search evaluated.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    pub name: String,
    /// Why it was evaluated: preset, calibration, sensitivity or frontier.
    pub kind: &'static str,
    /// Layer modes at a glance: F float, q Quant-FFN-Only, Q Fully-Quant.
    pub layers: String,
    pub score: f64,
    /// Bootstrap standard error of the drop from float on the evaluation data.
    pub drop_se: f64,
    pub scores: BTreeMap<String, f64>,
    /// Estimated from the measured per-layer latencies (texts/s at the timing batch).
    pub est_texts_per_s: f64,
    #[serde(skip)]
    pub modes: Vec<LayerMode>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub name: String,
    pub layers: String,
    pub texts_per_s: f64,
    pub ratio_to_float: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub model: String,
    pub task: &'static str,
    pub metric: String,
    pub eval_examples: usize,
    pub calib_texts: usize,
    pub requirement: Requirement,
    pub mode: SearchMode,
    pub activations: ActMode,
    pub calibration: Option<Calibration>,
    /// Bootstrap standard errors a plan's drop had to stay within the requirement by.
    pub margin_se: f64,
    pub float_score: f64,
    /// Milliseconds per timing batch for each layer in each mode of [`MODES`] (float, bf16,
    /// FFN-only, FFN-only with bf16 attention, fully-quant); modes not timed on this host (bf16
    /// without a fast kernel) are infinite (`null` in JSON).
    pub layer_ms: Vec<[f64; MODES.len()]>,
    /// Milliseconds per timing batch outside the encoder layers (tokenizer, embeddings, head).
    pub other_ms: f64,
    pub timing_batch: usize,
    pub timing_tokens: usize,
    pub trials: Vec<Trial>,
    /// Indices into `trials` of the frontier, float first.
    pub frontier: Vec<usize>,
    pub chosen: usize,
    pub met: bool,
    /// End-to-end throughput of the presets and the chosen plan, measured after the search.
    pub measured: Vec<Measured>,
    pub seconds: f64,
}

/// Progress on stderr: a bar, a counter and what is being evaluated.
struct Progress {
    total: usize,
    done: usize,
    start: Instant,
}

impl Progress {
    fn step(&mut self, what: &str) {
        self.done += 1;
        let width = 24;
        let filled = (self.done * width / self.total.max(1)).min(width);
        eprintln!(
            "[{}{}] {:>3}/{} {:>6.1}s  {what}",
            "#".repeat(filled),
            ".".repeat(width - filled),
            self.done,
            self.total,
            self.start.elapsed().as_secs_f64()
        );
    }
}

/// The layer modes the search times, in the order the greedy frontier may move through them
/// (a layer only ever moves to a higher index).
pub const MODES: [LayerMode; 5] = [
    LayerMode::Float,
    LayerMode::Bf16,
    LayerMode::FfnOnly,
    LayerMode::FfnOnlyBf16,
    LayerMode::Full,
];

pub(super) fn mode_index(m: LayerMode) -> usize {
    MODES.iter().position(|&x| x == m).unwrap_or(0)
}

fn summary(modes: &[LayerMode]) -> String {
    modes.iter().map(|m| m.label()).collect()
}

/// The search. `model` runs float on entry and on exit.
pub fn search(model: &mut Model, eval: &Evaluator, opts: &SearchOptions) -> Result<(Report, Plan)> {
    let start = Instant::now();
    let layers = model.cfg.layers;
    let modes = opts.mode.modes();
    // Candidate activation schemes: static scales from each calibration method, and dynamic
    // per-token scales; with more than one, the fully quantized model picks.
    let static_methods: Vec<Calibration> = match opts.calibration {
        Some(c) => vec![c],
        None => vec![
            Calibration::Max,
            Calibration::Percentile { percentile: 99.99 },
            Calibration::Mse,
        ],
    };
    let mut candidates: Vec<(ActMode, Option<Calibration>)> = Vec::new();
    if opts.activations != Some(ActMode::Dynamic) {
        candidates.extend(static_methods.iter().map(|&c| (ActMode::Static, Some(c))));
    }
    if opts.activations != Some(ActMode::Static) && opts.calibration.is_none() {
        candidates.push((ActMode::Dynamic, None));
    }
    let mut progress = Progress {
        // calibration, timing, float, presets + calibration trials, sensitivities, frontier
        total: 2 + 1 + 2 + candidates.len().saturating_sub(1) + 2 * layers * modes.len(),
        done: 0,
        start,
    };

    let float_plan = Plan::float(layers);
    model.apply_plan(&float_plan)?;
    let observers = if candidates.iter().any(|c| c.0 == ActMode::Static) {
        model.calibrate(&opts.calib, Truncation::Truncate)?
    } else {
        Vec::new()
    };
    progress.step(&format!("calibrated on {} texts", opts.calib.len()));

    let timing_inputs: Vec<Input> = opts.calib.iter().take(opts.timing_batch).cloned().collect();
    let (layer_ms, other_ms, timing_tokens) = time_layers(model, &timing_inputs)?;
    progress.step(&format!(
        "timed each layer in each precision on {} texts ({} tokens): float {:.1} ms, fully-quant {:.1} ms per batch",
        timing_inputs.len(),
        timing_tokens,
        layer_ms.iter().map(|l| l[0]).sum::<f64>(),
        layer_ms.iter().map(|l| l[mode_index(LayerMode::Full)]).sum::<f64>()
    ));
    let est = |m: &[LayerMode]| -> f64 {
        let ms = other_ms
            + m.iter()
                .zip(&layer_ms)
                .map(|(&m, l)| l[mode_index(m)])
                .sum::<f64>();
        timing_inputs.len() as f64 / (ms / 1000.0)
    };

    let mut trials: Vec<Trial> = Vec::new();
    let float_scores = eval.evaluate(model)?;
    let float_score = float_scores.value;
    let mk = |name: &str, kind: &'static str, m: &[LayerMode], s: Scores| Trial {
        name: name.into(),
        kind,
        layers: summary(m),
        score: s.value,
        drop_se: s.drop_se,
        scores: s.all,
        est_texts_per_s: est(m),
        modes: m.to_vec(),
    };
    let all_float = vec![LayerMode::Float; layers];
    trials.push(mk("float32", "preset", &all_float, float_scores));
    progress.step(&format!("float32: {} {float_score:.4}", eval.metric()));

    // Activation scheme: the one whose fully quantized model scores best.
    let scales_for = |c: Option<Calibration>| -> Vec<[f32; 4]> {
        match c {
            Some(c) => observers
                .iter()
                .map(|l: &[Observer; 4]| [0, 1, 2, 3].map(|g| l[g].scale(c)))
                .collect(),
            None => vec![[1.0f32 / 127.0; 4]; layers],
        }
    };
    let all_full = vec![LayerMode::Full; layers];
    let (mut act, mut calibration) = candidates[0];
    if candidates.len() > 1 {
        let mut best: Option<(f64, ActMode, Option<Calibration>)> = None;
        for &(a, c) in &candidates {
            let what = c.map_or("dynamic activations".to_string(), |c| {
                format!("{c} calibration")
            });
            let plan = Plan::from_modes("fully-quant", &all_full, &scales_for(c), a, c)
                .with_weight_bits(opts.weight_bits);
            model.apply_plan(&plan)?;
            let s = eval.evaluate(model)?;
            progress.step(&format!(
                "fully-quant, {what}: {} {:.4}",
                eval.metric(),
                s.value
            ));
            if best.is_none_or(|(b, _, _)| s.value > b) {
                best = Some((s.value, a, c));
            }
            trials.push(mk(
                &format!("fully-quant ({what})"),
                "calibration",
                &all_full,
                s,
            ));
        }
        let (_, a, c) = best.expect("at least one candidate");
        (act, calibration) = (a, c);
    }
    let scales = scales_for(calibration);
    let plan_of = |name: &str, m: &[LayerMode]| {
        Plan::from_modes(name, m, &scales, act, calibration).with_weight_bits(opts.weight_bits)
    };

    for (name, m) in [
        ("ffn-only", vec![LayerMode::FfnOnly; layers]),
        ("fully-quant", all_full.clone()),
    ] {
        model.apply_plan(&plan_of(name, &m))?;
        let s = eval.evaluate(model)?;
        progress.step(&format!("{name}: {} {:.4}", eval.metric(), s.value));
        trials.push(mk(name, "preset", &m, s));
    }

    // Sensitivity: each layer alone in each mode.
    let mut drop = vec![[0.0f64; MODES.len()]; layers];
    for i in 0..layers {
        for &mode in &modes {
            let mut m = all_float.clone();
            m[i] = mode;
            model.apply_plan(&plan_of("sensitivity", &m))?;
            let s = eval.evaluate(model)?;
            drop[i][mode_index(mode)] = float_score - s.value;
            progress.step(&format!(
                "layer {i} alone {}: {} {:.4} (drop {:+.4})",
                mode.label(),
                eval.metric(),
                s.value,
                float_score - s.value
            ));
            trials.push(mk(
                &format!("layer {i} {}", mode.label()),
                "sensitivity",
                &m,
                s,
            ));
        }
    }

    // The greedy frontier.
    let mut current = all_float.clone();
    let mut frontier = vec![0usize];
    loop {
        let mut best: Option<(f64, usize, LayerMode)> = None;
        for i in 0..layers {
            let cur = mode_index(current[i]);
            for &next in &modes {
                let n = mode_index(next);
                if n <= cur {
                    continue;
                }
                let gain = layer_ms[i][cur] - layer_ms[i][n];
                if gain <= 0.0 {
                    continue;
                }
                let cost = (drop[i][n] - drop[i][cur]).max(0.0) + 1e-4;
                let ratio = gain / cost;
                if best.is_none_or(|(b, _, _)| ratio > b) {
                    best = Some((ratio, i, next));
                }
            }
        }
        let Some((_, i, next)) = best else { break };
        current[i] = next;
        model.apply_plan(&plan_of("samp", &current))?;
        let s = eval.evaluate(model)?;
        progress.total = progress.total.max(progress.done + 1);
        progress.step(&format!(
            "frontier {}: {} {:.4}, est. {:.0} texts/s",
            summary(&current),
            eval.metric(),
            s.value,
            est(&current)
        ));
        trials.push(mk(
            &format!("frontier {}", summary(&current)),
            "frontier",
            &current,
            s,
        ));
        frontier.push(trials.len() - 1);
    }

    // The choice.
    let z = opts.margin_se;
    let meets = |t: &Trial| match opts.requirement {
        MaxDrop(d) => float_score - t.score + z * t.drop_se <= d + 1e-12,
        MinScore(s) => t.score - z * t.drop_se >= s,
        Knee => true,
    };
    use Requirement::*;
    let (chosen, met) = match opts.requirement {
        Knee => (knee(&trials, &frontier), true),
        _ => {
            // Candidates: the frontier up to (not including) its first step that misses the
            // requirement — a later step that meets it again does so by the luck of the
            // evaluation set more often than not — and the presets (ffn-only, fully-quant:
            // fixed plans, not selected).
            let prefix = frontier.iter().take_while(|&&i| meets(&trials[i])).copied();
            let presets =
                (0..trials.len()).filter(|&i| trials[i].kind == "preset" && meets(&trials[i]));
            let best = prefix.chain(presets).max_by(|&a, &b| {
                trials[a]
                    .est_texts_per_s
                    .total_cmp(&trials[b].est_texts_per_s)
            });
            match best {
                Some(i) => (i, true),
                // Nothing meets it (not even float, for MinScore): the float plan, flagged.
                None => (0, false),
            }
        }
    };
    let chosen_modes = trials[chosen].modes.clone();
    let chosen_plan = if chosen_modes.iter().all(|m| *m == LayerMode::Float) {
        Plan {
            name: "samp".into(),
            ..float_plan.clone()
        }
    } else {
        plan_of("samp", &chosen_modes)
    };

    // Measured end to end, after the search: the presets and the choice.
    let mut measured = Vec::new();
    let mut float_tps = 0.0;
    for (name, plan) in [
        ("float32".to_string(), float_plan.clone()),
        (
            "ffn-only".into(),
            plan_of("ffn-only", &vec![LayerMode::FfnOnly; layers]),
        ),
        ("fully-quant".into(), plan_of("fully-quant", &all_full)),
        ("samp".into(), chosen_plan.clone()),
    ] {
        model.apply_plan(&plan)?;
        let tps = throughput(model, &timing_inputs, Duration::from_millis(1500))?;
        if name == "float32" {
            float_tps = tps;
        }
        measured.push(Measured {
            name,
            layers: plan.summary(),
            texts_per_s: tps,
            ratio_to_float: tps / float_tps,
        });
    }
    model.apply_plan(&float_plan)?;
    eprintln!("search done in {:.1}s", start.elapsed().as_secs_f64());

    let report = Report {
        model: model.name.clone(),
        task: model.task.name(),
        metric: eval.metric().to_string(),
        eval_examples: eval.len(),
        calib_texts: opts.calib.len(),
        requirement: opts.requirement,
        mode: opts.mode,
        activations: act,
        calibration,
        margin_se: opts.margin_se,
        float_score,
        layer_ms,
        other_ms,
        timing_batch: timing_inputs.len(),
        timing_tokens,
        trials,
        frontier,
        chosen,
        met,
        measured,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((report, chosen_plan))
}

/// The frontier point farthest from the straight line between its ends, in coordinates
/// normalised to the frontier's range.
fn knee(trials: &[Trial], frontier: &[usize]) -> usize {
    let pts: Vec<(f64, f64)> = frontier
        .iter()
        .map(|&i| (trials[i].est_texts_per_s, trials[i].score))
        .collect();
    let (Some(first), Some(last)) = (pts.first(), pts.last()) else {
        return 0;
    };
    let span = |a: f64, b: f64| if (b - a).abs() > 1e-12 { b - a } else { 1.0 };
    let (sx, sy) = (span(first.0, last.0), span(last.1, first.1));
    let norm = |p: &(f64, f64)| ((p.0 - first.0) / sx, (p.1 - last.1) / sy);
    // In normalised coordinates the line runs from (0, 1) to (1, 0).
    let best = pts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (x, y) = norm(p);
            (i, x + y - 1.0)
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(0, |(i, _)| i);
    frontier[best]
}
