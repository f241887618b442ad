//! The search's report as files: report.json (everything), report.md (tables for people) and
//! report.svg (speed against score, the frontier and the chosen plan).

use std::path::Path;

use serde::Serialize;

use super::search::{Requirement, SearchMode, Trial, MODES};
use crate::quant::observer::Calibration;
use crate::quant::plan::ActMode;

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
    /// Width of the chosen plan's INT8 weights.
    pub weight_bits: u32,
    /// Width of each layer's INT8 weights in the chosen plan: `weight_bits`, or narrower
    /// where the search narrowed that layer (`samp quantize`'s last step).
    pub layer_weight_bits: Vec<u32>,
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

/// report.json, report.md and report.svg in `dir`.
pub fn write_report(dir: &Path, report: &Report) -> std::io::Result<()> {
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(report).expect("report serializes") + "\n",
    )?;
    std::fs::write(dir.join("report.md"), markdown(report))?;
    std::fs::write(dir.join("report.svg"), svg(report))?;
    Ok(())
}

pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let req = match r.requirement {
        Requirement::MaxDrop(d) => format!(
            "at most {d} below float, with a margin of {} bootstrap standard errors of the drop",
            r.margin_se
        ),
        Requirement::MinScore(m) => format!(
            "at least {m}, with a margin of {} bootstrap standard errors",
            r.margin_se
        ),
        Requirement::Knee => "none (knee of the frontier)".into(),
    };
    s += &format!("# samp quantize: {}\n\n", r.model);
    s += &format!(
        "Task {}, metric **{}** on {} evaluation examples; calibration on {} texts ({}; activations {:?}).\n",
        r.task,
        r.metric,
        r.eval_examples,
        r.calib_texts,
        r.calibration.map_or("none".into(), |c| c.to_string()),
        r.activations
    );
    let narrowed: Vec<String> = (r.layer_weight_bits.iter().enumerate())
        .filter(|(_, &b)| b != r.weight_bits)
        .map(|(i, b)| format!("layer {i}: {b}"))
        .collect();
    s += &format!(
        "Requirement: {req}. Search mode {:?}; INT8 weights {} bits{}. Took {:.0} s.\n\n",
        r.mode,
        r.weight_bits,
        if narrowed.is_empty() {
            String::new()
        } else {
            format!(" ({})", narrowed.join(", "))
        },
        r.seconds
    );
    let c = &r.trials[r.chosen];
    s += &format!(
        "**Chosen: {}** ({}), {} {:.4} (float {:.4}, drop {:+.4}){}.\n\n",
        c.name,
        c.layers,
        r.metric,
        c.score,
        r.float_score,
        r.float_score - c.score,
        if r.met {
            ""
        } else {
            " — NO plan met the requirement; this is the float plan"
        }
    );
    s += "Layers: F float32, q Quant-FFN-Only, Q Fully-Quant (INT8).\n\n";
    s += "## Measured end to end (one batch of the calibration texts)\n\n| plan | layers | texts/s | × float32 |\n|---|---|---:|---:|\n";
    for m in &r.measured {
        s += &format!(
            "| {} | {} | {:.0} | {:.2} |\n",
            m.name, m.layers, m.texts_per_s, m.ratio_to_float
        );
    }
    s += &format!(
        "\n## Every plan tried\n\nThroughput estimated from per-layer latencies measured here ({} texts, {} tokens per batch).\n\n| plan | kind | layers | {} | drop | drop s.e. | est. texts/s |\n|---|---|---|---:|---:|---:|---:|\n",
        r.timing_batch, r.timing_tokens, r.metric
    );
    for (i, t) in r.trials.iter().enumerate() {
        let mark = if i == r.chosen { " **(chosen)**" } else { "" };
        s += &format!(
            "| {}{mark} | {} | {} | {:.4} | {:+.4} | {:.4} | {:.0} |\n",
            t.name,
            t.kind,
            t.layers,
            t.score,
            r.float_score - t.score,
            t.drop_se,
            t.est_texts_per_s
        );
    }
    s += "\n## Layer latency (ms per batch; F float32, b bf16, q ffn-only, p ffn-only with bf16 attention, Q fully-quant; - not timed on this CPU)\n\n| layer | F | b | q | p | Q |\n|---:|---:|---:|---:|---:|---:|\n";
    let ms = |v: f64| {
        if v.is_finite() {
            format!("{v:.2}")
        } else {
            "-".into()
        }
    };
    for (i, l) in r.layer_ms.iter().enumerate() {
        let cells: Vec<String> = l.iter().map(|&v| ms(v)).collect();
        s += &format!("| {i} | {} |\n", cells.join(" | "));
    }
    s += &format!("| other | {:.2} | | | | |\n", r.other_ms);
    s
}

/// Accuracy against estimated throughput: every plan a dot, the frontier a line, the choice
/// ringed.
pub fn svg(r: &Report) -> String {
    let (w, h, m) = (720.0, 440.0, 60.0);
    let xs: Vec<f64> = r.trials.iter().map(|t| t.est_texts_per_s).collect();
    let ys: Vec<f64> = r
        .trials
        .iter()
        .map(|t| t.score)
        .filter(|v| v.is_finite())
        .collect();
    let (x0, x1) = (
        xs.iter().cloned().fold(f64::MAX, f64::min),
        xs.iter().cloned().fold(f64::MIN, f64::max),
    );
    let (y0, y1) = (
        ys.iter().cloned().fold(f64::MAX, f64::min),
        ys.iter().cloned().fold(f64::MIN, f64::max),
    );
    let pad = |a: f64, b: f64| {
        if b - a < 1e-9 {
            (a - 0.5, b + 0.5)
        } else {
            (a - (b - a) * 0.05, b + (b - a) * 0.05)
        }
    };
    let ((x0, x1), (y0, y1)) = (pad(x0, x1), pad(y0, y1));
    let px = |x: f64| m + (x - x0) / (x1 - x0) * (w - 2.0 * m);
    let py = |y: f64| h - m - (y - y0) / (y1 - y0) * (h - 2.0 * m);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    s += &format!(
        "<text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"14\">{}: {} vs estimated throughput</text>\n",
        w / 2.0,
        r.model,
        r.metric
    );
    s += &format!(
        "<line x1=\"{m}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - m,
        w - m,
        h - m
    );
    s += &format!(
        "<line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - m
    );
    for i in 0..=4 {
        let xv = x0 + (x1 - x0) * i as f64 / 4.0;
        let yv = y0 + (y1 - y0) * i as f64 / 4.0;
        s += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{xv:.0}</text>\n",
            px(xv),
            h - m + 18.0
        );
        s += &format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{yv:.3}</text>\n",
            m - 6.0,
            py(yv) + 4.0
        );
    }
    s += &format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">texts/s (estimated)</text>\n",
        w / 2.0,
        h - 16.0
    );
    let line: Vec<String> = r
        .frontier
        .iter()
        .map(|&i| {
            format!(
                "{:.1},{:.1}",
                px(r.trials[i].est_texts_per_s),
                py(r.trials[i].score)
            )
        })
        .collect();
    s += &format!(
        "<polyline points=\"{}\" fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\"/>\n",
        line.join(" ")
    );
    for (i, t) in r.trials.iter().enumerate() {
        if !t.score.is_finite() {
            continue;
        }
        let color = match t.kind {
            "frontier" => "#1f77b4",
            "preset" => "#d62728",
            "calibration" => "#9467bd",
            _ => "#999999",
        };
        s += &format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{color}\"><title>{} {} {:.4}</title></circle>\n",
            px(t.est_texts_per_s),
            py(t.score),
            t.name,
            t.layers,
            t.score
        );
        if t.kind == "preset" || i == r.chosen {
            s += &format!(
                "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n",
                px(t.est_texts_per_s) + 7.0,
                py(t.score) - 7.0,
                if i == r.chosen {
                    format!("chosen {}", t.layers)
                } else {
                    t.name.clone()
                }
            );
        }
    }
    let c = &r.trials[r.chosen];
    s += &format!(
        "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"9\" fill=\"none\" stroke=\"#2ca02c\" stroke-width=\"2.5\"/>\n",
        px(c.est_texts_per_s),
        py(c.score)
    );
    s += "</svg>\n";
    s
}
