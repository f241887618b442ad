//! The self-adaptive search behind `samp quantize`: calibrate, measure each layer's latency in
//! each precision on this machine, measure each layer's sensitivity, then walk a greedy
//! frontier from float to fully quantized — the upgrade with the most speed per accuracy lost
//! first, the whole plan re-evaluated at every step — and pick the fastest plan that meets the
//! requirement (without one, the knee of the frontier); last, where this host runs narrower
//! INT8 weights faster and the whole model at that width missed, narrow the chosen plan's
//! layers one by one while it still meets the requirement (`narrow.rs`).

use crate::kernels::bf16::Bf16Kernel;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::eval::{Evaluator, Scores};
use super::knee::knee;
pub use super::report::{Measured, Report};
use super::timing::{throughput, time_layers};
use crate::error::Result;
use crate::model::Model;
use crate::quant::observer::{Calibration, Observer};
use crate::quant::plan::{ActMode, LayerMode, Plan};
use crate::tokenize::{Input, Truncation};
use progress::Progress;

mod narrow;
mod progress;

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
    /// A narrower width to try where this host runs it faster (see
    /// [`crate::quant::plan::narrower_weight_bits`]): the rest of the search uses it when the
    /// mode's most quantized plan with it meets the requirement.
    pub narrower_bits: Option<u32>,
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
    /// Layers whose INT8 weights are at the narrower width ([`SearchOptions::narrower_bits`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub narrowed: Vec<usize>,
    #[serde(skip)]
    pub modes: Vec<LayerMode>,
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

/// Candidate activation schemes: static scales from each calibration method, and dynamic
/// per-token scales; with more than one, the fully quantized model picks.
fn act_candidates(opts: &SearchOptions) -> Vec<(ActMode, Option<Calibration>)> {
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
    candidates
}

/// The search. `model` runs float on entry and on exit.
pub fn search(model: &mut Model, eval: &Evaluator, opts: &SearchOptions) -> Result<(Report, Plan)> {
    let candidates = act_candidates(opts);
    let mut s = Search::start(model, eval, opts, candidates.len())?;
    s.evaluate_float()?;
    s.pick_activations(&candidates)?;
    s.try_narrower_weights()?;
    s.evaluate_presets()?;
    let drop = s.sensitivity()?;
    let frontier = s.frontier(&drop)?;
    let (chosen, met) = s.choose(&frontier);
    let chosen = if met {
        s.narrow_layers(chosen)?
    } else {
        chosen
    };
    let chosen_plan = s.chosen_plan(chosen);
    let measured = s.measure(&chosen_plan)?;
    s.model.apply_plan(&Plan::float(s.layers))?;
    eprintln!("search done in {:.1}s", s.start.elapsed().as_secs_f64());
    let report = Report {
        model: s.model.name.clone(),
        task: s.model.task.name(),
        metric: eval.metric().to_string(),
        eval_examples: eval.len(),
        calib_texts: opts.calib.len(),
        requirement: opts.requirement,
        mode: opts.mode,
        activations: s.act,
        weight_bits: chosen_plan.weight_bits,
        layer_weight_bits: (0..s.layers)
            .map(|i| chosen_plan.bits(i, crate::quant::plan::Gemm::FfnUp))
            .collect(),
        calibration: s.calibration,
        margin_se: opts.margin_se,
        float_score: s.float_score,
        layer_ms: s.layer_ms,
        other_ms: s.other_ms,
        timing_batch: s.timing_inputs.len(),
        timing_tokens: s.timing_tokens,
        trials: s.trials,
        frontier,
        chosen,
        met,
        measured,
        seconds: s.start.elapsed().as_secs_f64(),
    };
    Ok((report, chosen_plan))
}

/// The search's state between its phases.
struct Search<'a> {
    model: &'a mut Model,
    eval: &'a Evaluator,
    opts: &'a SearchOptions,
    start: Instant,
    layers: usize,
    modes: Vec<LayerMode>,
    progress: Progress,
    observers: Vec<[Observer; 4]>,
    timing_inputs: Vec<Input>,
    layer_ms: Vec<[f64; MODES.len()]>,
    other_ms: f64,
    timing_tokens: usize,
    float_score: f64,
    trials: Vec<Trial>,
    /// The activation scheme, once picked, and its scales.
    act: ActMode,
    calibration: Option<Calibration>,
    scales: Vec<[f32; 4]>,
    /// The INT8 weights' width: the option's, or the narrower one once it met the requirement.
    weight_bits: u32,
    /// `layer_ms` at the narrower width, once per-layer narrowing times it.
    narrow_ms: Vec<[f64; MODES.len()]>,
}

impl<'a> Search<'a> {
    /// Calibrate (when a static scheme is a candidate) and time each layer in each mode.
    fn start(
        model: &'a mut Model,
        eval: &'a Evaluator,
        opts: &'a SearchOptions,
        candidates: usize,
    ) -> Result<Self> {
        let start = Instant::now();
        let layers = model.cfg.layers;
        let modes = opts.mode.modes();
        let mut progress = Progress {
            // calibration, timing, float, presets + calibration trials, narrower weights,
            // sensitivities, frontier
            total: 2
                + 1
                + 2
                + candidates.saturating_sub(1)
                + usize::from(narrower(opts).is_some())
                + 2 * layers * modes.len(),
            done: 0,
            start,
        };
        model.apply_plan(&Plan::float(layers))?;
        let observers = if opts.activations != Some(ActMode::Dynamic) {
            model.calibrate(&opts.calib, Truncation::Truncate)?
        } else {
            Vec::new()
        };
        progress.step(&format!("calibrated on {} texts", opts.calib.len()));

        let timing_inputs: Vec<Input> =
            opts.calib.iter().take(opts.timing_batch).cloned().collect();
        let (layer_ms, other_ms, timing_tokens) =
            time_layers(model, &timing_inputs, opts.weight_bits)?;
        progress.step(&format!(
            "timed each layer in each precision on {} texts ({} tokens): float {:.1} ms, fully-quant {:.1} ms per batch",
            timing_inputs.len(),
            timing_tokens,
            layer_ms.iter().map(|l| l[0]).sum::<f64>(),
            layer_ms.iter().map(|l| l[mode_index(LayerMode::Full)]).sum::<f64>()
        ));
        Ok(Search {
            model,
            eval,
            opts,
            start,
            layers,
            modes,
            progress,
            observers,
            timing_inputs,
            layer_ms,
            other_ms,
            timing_tokens,
            float_score: 0.0,
            trials: Vec::new(),
            act: ActMode::Dynamic,
            calibration: None,
            scales: Vec::new(),
            weight_bits: opts.weight_bits,
            narrow_ms: Vec::new(),
        })
    }

    /// Texts per second of a plan, estimated from the measured per-layer latencies.
    fn est(&self, m: &[LayerMode]) -> f64 {
        let ms = self.other_ms
            + m.iter()
                .zip(&self.layer_ms)
                .map(|(&m, l)| l[mode_index(m)])
                .sum::<f64>();
        self.timing_inputs.len() as f64 / (ms / 1000.0)
    }

    /// Evaluate the model as it is (with `m` applied) and record the trial.
    fn trial(&mut self, name: &str, kind: &'static str, m: &[LayerMode]) -> Result<f64> {
        let s: Scores = self.eval.evaluate(self.model)?;
        let value = s.value;
        let t = Trial {
            name: name.into(),
            kind,
            layers: summary(m),
            score: s.value,
            drop_se: s.drop_se,
            scores: s.all,
            est_texts_per_s: self.est(m),
            narrowed: Vec::new(),
            modes: m.to_vec(),
        };
        self.trials.push(t);
        Ok(value)
    }

    fn evaluate_float(&mut self) -> Result<()> {
        let all_float = vec![LayerMode::Float; self.layers];
        self.float_score = self.trial("float32", "preset", &all_float)?;
        let what = format!("float32: {} {:.4}", self.eval.metric(), self.float_score);
        self.progress.step(&what);
        Ok(())
    }

    fn scales_for(&self, c: Option<Calibration>) -> Vec<[f32; 4]> {
        match c {
            Some(c) => self
                .observers
                .iter()
                .map(|l: &[Observer; 4]| [0, 1, 2, 3].map(|g| l[g].scale(c)))
                .collect(),
            None => vec![[1.0f32 / 127.0; 4]; self.layers],
        }
    }

    /// The activation scheme: the one whose fully quantized model scores best.
    fn pick_activations(&mut self, candidates: &[(ActMode, Option<Calibration>)]) -> Result<()> {
        let all_full = vec![LayerMode::Full; self.layers];
        let (mut act, mut calibration) = candidates[0];
        if candidates.len() > 1 {
            let mut best: Option<(f64, ActMode, Option<Calibration>)> = None;
            for &(a, c) in candidates {
                let what = c.map_or("dynamic activations".to_string(), |c| {
                    format!("{c} calibration")
                });
                let plan = Plan::from_modes("fully-quant", &all_full, &self.scales_for(c), a, c)
                    .with_weight_bits(self.weight_bits);
                self.model.apply_plan(&plan)?;
                let name = format!("fully-quant ({what})");
                let v = self.trial(&name, "calibration", &all_full)?;
                let line = format!("fully-quant, {what}: {} {v:.4}", self.eval.metric());
                self.progress.step(&line);
                if best.is_none_or(|(b, _, _)| v > b) {
                    best = Some((v, a, c));
                }
            }
            let (_, a, c) = best.expect("at least one candidate");
            (act, calibration) = (a, c);
        }
        self.scales = self.scales_for(calibration);
        (self.act, self.calibration) = (act, calibration);
        Ok(())
    }

    /// With a narrower weight width to try: the search mode's most quantized model with it
    /// (fully quantized; every FFN in INT8 for `--mode ffn-only`), evaluated; if it meets the
    /// requirement, the rest of the search uses that width, with the layers timed again in it.
    fn try_narrower_weights(&mut self) -> Result<()> {
        let Some(bits) = narrower(self.opts) else {
            return Ok(());
        };
        let mode = *self.modes.last().expect("every search mode has a mode");
        let name = if mode == LayerMode::FfnOnly {
            "ffn-only"
        } else {
            "fully-quant"
        };
        let all = vec![mode; self.layers];
        self.model
            .apply_plan(&self.plan_of(name, &all).with_weight_bits(bits))?;
        let v = self.trial(&format!("{name} ({bits}-bit weights)"), "weights", &all)?;
        let kept = self.trials.last().is_some_and(|t| self.meets(t));
        if kept {
            self.weight_bits = bits;
            (self.layer_ms, self.other_ms, self.timing_tokens) =
                time_layers(self.model, &self.timing_inputs, bits)?;
            let est = self.est(&all);
            if let Some(t) = self.trials.last_mut() {
                t.est_texts_per_s = est;
            }
        }
        let line = format!(
            "{name}, {bits}-bit weights: {} {v:.4}: {}",
            self.eval.metric(),
            if kept {
                format!("meets the requirement; the search goes on with {bits}-bit weights")
            } else {
                format!(
                    "misses the requirement; {}-bit weights kept",
                    self.weight_bits
                )
            }
        );
        self.progress.step(&line);
        Ok(())
    }

    fn plan_of(&self, name: &str, m: &[LayerMode]) -> Plan {
        Plan::from_modes(name, m, &self.scales, self.act, self.calibration)
            .with_weight_bits(self.weight_bits)
    }

    fn presets(&self) -> [(&'static str, Vec<LayerMode>); 2] {
        [
            ("ffn-only", vec![LayerMode::FfnOnly; self.layers]),
            ("fully-quant", vec![LayerMode::Full; self.layers]),
        ]
    }

    fn evaluate_presets(&mut self) -> Result<()> {
        for (name, m) in self.presets() {
            self.model.apply_plan(&self.plan_of(name, &m))?;
            let v = self.trial(name, "preset", &m)?;
            let line = format!("{name}: {} {v:.4}", self.eval.metric());
            self.progress.step(&line);
        }
        Ok(())
    }

    /// Each layer alone in each mode: its drop from float, per layer and mode.
    fn sensitivity(&mut self) -> Result<Vec<[f64; MODES.len()]>> {
        let mut drop = vec![[0.0f64; MODES.len()]; self.layers];
        for i in 0..self.layers {
            for mode in self.modes.clone() {
                let mut m = vec![LayerMode::Float; self.layers];
                m[i] = mode;
                self.model.apply_plan(&self.plan_of("sensitivity", &m))?;
                let name = format!("layer {i} {}", mode.label());
                let v = self.trial(&name, "sensitivity", &m)?;
                drop[i][mode_index(mode)] = self.float_score - v;
                let line = format!(
                    "layer {i} alone {}: {} {v:.4} (drop {:+.4})",
                    mode.label(),
                    self.eval.metric(),
                    self.float_score - v
                );
                self.progress.step(&line);
            }
        }
        Ok(drop)
    }

    /// The upgrade with the most time saved per accuracy lost, from `current`.
    fn best_step(
        &self,
        current: &[LayerMode],
        drop: &[[f64; MODES.len()]],
    ) -> Option<(usize, LayerMode)> {
        let mut best: Option<(f64, usize, LayerMode)> = None;
        for (i, layer) in current.iter().enumerate() {
            let cur = mode_index(*layer);
            for &next in &self.modes {
                let n = mode_index(next);
                if n <= cur {
                    continue;
                }
                let gain = self.layer_ms[i][cur] - self.layer_ms[i][n];
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
        best.map(|(_, i, next)| (i, next))
    }

    /// The greedy frontier from float, the whole plan evaluated at every step; indices into
    /// the trials, float first.
    fn frontier(&mut self, drop: &[[f64; MODES.len()]]) -> Result<Vec<usize>> {
        let mut current = vec![LayerMode::Float; self.layers];
        let mut frontier = vec![0usize];
        while let Some((i, next)) = self.best_step(&current, drop) {
            current[i] = next;
            self.model.apply_plan(&self.plan_of("samp", &current))?;
            let name = format!("frontier {}", summary(&current));
            let v = self.trial(&name, "frontier", &current)?;
            self.progress.total = self.progress.total.max(self.progress.done + 1);
            let line = format!(
                "frontier {}: {} {v:.4}, est. {:.0} texts/s",
                summary(&current),
                self.eval.metric(),
                self.est(&current)
            );
            self.progress.step(&line);
            frontier.push(self.trials.len() - 1);
        }
        if frontier.len() == 1 {
            self.progress
                .note("frontier: no layer timed faster in a narrower precision; float32 stays");
        }
        Ok(frontier)
    }

    /// The trial chosen, and whether it meets the requirement.
    fn choose(&self, frontier: &[usize]) -> (usize, bool) {
        let trials = &self.trials;
        let meets = |t: &Trial| self.meets(t);
        if self.opts.requirement == Requirement::Knee {
            return (knee(trials, frontier), true);
        }
        // Candidates: the frontier up to (not including) its first step that misses the
        // requirement — a later step that meets it again does so by the luck of the evaluation
        // set more often than not — and the presets (ffn-only, fully-quant: fixed plans, not
        // selected).
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

    /// Whether a trial meets the requirement, with the margin (always, for the knee).
    fn meets(&self, t: &Trial) -> bool {
        let z = self.opts.margin_se;
        match self.opts.requirement {
            Requirement::MaxDrop(d) => self.float_score - t.score + z * t.drop_se <= d + 1e-12,
            Requirement::MinScore(s) => t.score - z * t.drop_se >= s,
            Requirement::Knee => true,
        }
    }

    fn chosen_plan(&self, chosen: usize) -> Plan {
        let modes = &self.trials[chosen].modes;
        if modes.iter().all(|m| *m == LayerMode::Float) {
            Plan {
                name: "samp".into(),
                ..Plan::float(self.layers).with_weight_bits(self.weight_bits)
            }
        } else {
            self.narrowed_plan("samp", modes, &self.trials[chosen].narrowed)
        }
    }

    /// Measured end to end, after the search: the presets and the choice.
    fn measure(&mut self, chosen: &Plan) -> Result<Vec<Measured>> {
        let mut plans = vec![("float32".to_string(), Plan::float(self.layers))];
        for (name, m) in self.presets() {
            plans.push((name.to_string(), self.plan_of(name, &m)));
        }
        plans.push(("samp".into(), chosen.clone()));
        let mut measured = Vec::new();
        let mut float_tps = 0.0;
        for (name, plan) in plans {
            self.model.apply_plan(&plan)?;
            let tps = throughput(self.model, &self.timing_inputs, Duration::from_millis(1500))?;
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
        Ok(measured)
    }
}

/// The narrower weight width the search tries: none for the knee (no requirement to check it
/// against).
fn narrower(opts: &SearchOptions) -> Option<u32> {
    opts.narrower_bits
        .filter(|_| opts.requirement != Requirement::Knee)
}
