//! `samp quantize` and `samp eval`.

use std::path::{Path, PathBuf};

use clap::Args;

use super::read_texts;
use crate::model::{LoadOptions, Model};
use crate::tokenize::Input;

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// Float model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Calibration texts (JSON Lines: strings or {"text": ..}; or one text per line).
    #[arg(long)]
    pub calib: PathBuf,
    /// Evaluation data (JSON Lines, with "label" or "score" for labelled metrics); without it
    /// the calibration texts are used and the metric is fidelity to the float model.
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Metric to optimise: accuracy, macro_f1, spearman, agreement, entity_f1, mean_cosine or
    /// worst_cosine [default: labelled when the data has labels/scores, else fidelity].
    #[arg(long)]
    pub metric: Option<String>,
    /// Largest acceptable drop from the float model's score (in the metric's units, e.g. 0.01
    /// for one point of accuracy).
    #[arg(long, conflicts_with = "min_score")]
    pub max_drop: Option<f64>,
    /// Lowest acceptable score.
    #[arg(long)]
    pub min_score: Option<f64>,
    /// Layer modes the search may use.
    #[arg(long, value_enum, default_value = "auto")]
    pub mode: crate::tune::search::SearchMode,
    /// Calibration: max, percentile, percentile:P, mse, or auto (the best of the three on the
    /// fully quantized model).
    #[arg(long, default_value = "auto")]
    pub calibration: String,
    /// Activation scales: static (calibrated), dynamic (per token at run time), or auto (the
    /// better of the two on the fully quantized model).
    #[arg(long, default_value = "auto", value_parser = ["auto", "static", "dynamic"])]
    pub activations: String,
    /// A plan meets the requirement only with this many bootstrap standard errors of its drop
    /// to spare (guards against choosing on the noise of a finite evaluation set; 0 = none).
    #[arg(long, default_value_t = 2.0)]
    pub margin_se: f64,
    /// Width of the INT8 weights: 7 runs at full speed on every CPU tier (AVX2's `vpmaddubsw`
    /// needs 7), 8 is a little more accurate and runs at full speed only with VNNI or AMX
    /// (elsewhere on an exact, slower kernel); 6 is less accurate and runs ~10-20% faster per
    /// GEMM on AVX2-only CPUs (at 7-bit speed elsewhere) [default: 8 with VNNI or AMX, else 7;
    /// on AVX2-only CPUs the search also tries 6 and keeps it if the mode's most quantized plan
    /// with it meets the requirement, or else narrows the chosen plan to 6 layer by layer while
    /// it still does]. A width given here is never narrowed.
    #[arg(long, value_parser = clap::value_parser!(u32).range(6..=8))]
    pub weight_bits: Option<u32>,
    /// Use at most this many calibration texts.
    #[arg(long, default_value_t = 512)]
    pub calib_limit: usize,
    /// Texts per batch when timing layers.
    #[arg(long, default_value_t = 32)]
    pub timing_batch: usize,
    /// Output directory: the model files, samp-plan.json (the choice), the presets
    /// samp-plan.{ffn-only,fully-quant,fully-quant-static,fully-quant-dynamic}.json,
    /// samp-int8.safetensors and report.{json,md,svg}.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub source: super::ModelSource,
    /// Data (JSON Lines as for `samp quantize --eval`).
    #[arg(long)]
    pub data: PathBuf,
    /// Metric to report first (all available ones are printed).
    #[arg(long)]
    pub metric: Option<String>,
}

/// Calibration texts: the first `limit` inputs of a file.
fn read_calib(path: &Path, limit: usize) -> anyhow::Result<Vec<Input>> {
    let mut v = read_texts(path)?;
    if v.is_empty() {
        anyhow::bail!("{}: no calibration texts", path.display());
    }
    v.truncate(limit.max(1));
    Ok(v)
}

pub fn run_quantize(a: &QuantizeArgs) -> anyhow::Result<()> {
    use crate::quant::plan;
    use crate::tune::{eval, search};
    let calibration = match a.calibration.as_str() {
        "auto" => None,
        c => Some(crate::quant::observer::Calibration::parse(c).map_err(anyhow::Error::msg)?),
    };
    let activations = match a.activations.as_str() {
        "dynamic" => Some(plan::ActMode::Dynamic),
        "static" => Some(plan::ActMode::Static),
        _ => None,
    };
    anyhow::ensure!(
        a.margin_se.is_finite() && a.margin_se >= 0.0,
        "--margin-se {}: must be a number >= 0",
        a.margin_se
    );
    let requirement = match (a.max_drop, a.min_score) {
        (Some(d), _) if d.is_finite() && d >= 0.0 => search::Requirement::MaxDrop(d),
        (Some(d), _) => anyhow::bail!("--max-drop {d}: must be a number >= 0"),
        (None, Some(s)) => search::Requirement::MinScore(s),
        (None, None) => search::Requirement::Knee,
    };
    if a.out.exists() && std::fs::read_dir(&a.out)?.next().is_some() {
        anyhow::bail!("--out {}: exists and is not empty", a.out.display());
    }
    let calib = read_calib(&a.calib, a.calib_limit)?;
    let examples = match &a.eval {
        Some(p) => eval::read_examples(p)?,
        None => calib
            .iter()
            .map(|i| eval::Example {
                input: i.clone(),
                label: None,
                score: None,
            })
            .collect(),
    };
    eprintln!("loading {}", a.model.display());
    let mut model = Model::load(&a.model, &LoadOptions::default())?;
    let evaluator = eval::Evaluator::new(&model, examples, a.metric.as_deref())?;
    eprintln!(
        "{}: {} layers, task {}; metric {} on {} examples; {} calibration texts",
        model.name,
        model.cfg.layers,
        model.task.name(),
        evaluator.metric(),
        evaluator.len(),
        calib.len()
    );
    let host_bits = crate::quant::plan::preferred_weight_bits();
    let opts = search::SearchOptions {
        calib,
        requirement,
        mode: a.mode,
        calibration,
        activations,
        margin_se: a.margin_se,
        weight_bits: a.weight_bits.unwrap_or(host_bits),
        // Only when the width is the host's choice: a width the user gave is kept.
        narrower_bits: a
            .weight_bits
            .is_none()
            .then(|| crate::quant::plan::narrower_weight_bits(host_bits))
            .flatten(),
        timing_batch: a.timing_batch.max(1),
    };
    let (report, chosen) = search::search(&mut model, &evaluator, &opts)?;

    crate::tune::save::save(&a.model, &a.out, &mut model, &chosen, &report, &opts.calib)?;
    let c = &report.trials[report.chosen];
    let m = report.measured.iter().find(|m| m.name == "samp");
    eprintln!(
        "chosen plan {} ({}): {} {:.4} (float {:.4}); measured {:.2}x float32 throughput{}",
        c.layers,
        c.name,
        report.metric,
        c.score,
        report.float_score,
        m.map_or(f64::NAN, |m| m.ratio_to_float),
        if report.met {
            ""
        } else {
            "; NO plan met the requirement"
        }
    );
    println!(
        "{}",
        serde_json::json!({
            "out": a.out,
            "plan": chosen.summary(),
            "metric": report.metric,
            "score": c.score,
            "float_score": report.float_score,
            "met": report.met,
            "measured": report.measured,
        })
    );
    Ok(())
}

pub fn run_eval(a: &EvalArgs) -> anyhow::Result<()> {
    use crate::tune::eval;
    let examples = eval::read_examples(&a.data)?;
    let mut model = Model::load(&a.source.model, &LoadOptions::default())?;
    // The float model first: it is the reference for fidelity metrics.
    let evaluator = eval::Evaluator::new(&model, examples, a.metric.as_deref())?;
    if let Some(p) = a.source.plan_file() {
        model.load_plan(&p)?;
    }
    let start = std::time::Instant::now();
    let scores = evaluator.evaluate(&model)?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "model": model.name,
            "plan": model.plan().name,
            "layers": model.plan().summary(),
            "examples": evaluator.len(),
            "metric": scores.metric,
            "value": scores.value,
            "metrics": scores.all,
            "seconds": secs,
        })
    );
    Ok(())
}
