//! What `samp quantize` leaves in its output directory: the model's files, the chosen plan,
//! the presets (for side-by-side evaluation), the INT8 artifact and the report.

use std::path::Path;
use std::sync::Arc;

use super::search::Report;
use crate::error::{Result, SampError};
use crate::kernels::int8::QWeights;
use crate::model::Model;
use crate::quant::observer::Calibration;
use crate::quant::{artifact, plan};
use crate::tokenize::{Input, Truncation};

fn io(path: &Path, source: std::io::Error) -> SampError {
    SampError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Write the search's outputs for the model in `model_dir` into `out` (created). `model`
/// runs the chosen plan afterwards.
pub fn save(
    model_dir: &Path,
    out: &Path,
    model: &mut Model,
    chosen: &plan::Plan,
    report: &Report,
    calib: &[Input],
) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    copy_model_files(model_dir, out)?;
    chosen.write(&out.join(plan::PLAN_FILE))?;
    let layers = model.cfg.layers;
    // The presets, for side-by-side evaluation: FFN-only and fully-quant with the activation
    // scheme the search chose, and fully-quant with static and with dynamic scales.
    let static_cal = report
        .calibration
        .unwrap_or(Calibration::Percentile { percentile: 99.99 });
    let obs = model.calibrate(calib, Truncation::Truncate)?;
    let static_scales: Vec<[f32; 4]> = obs
        .iter()
        .map(|l| [0, 1, 2, 3].map(|g| l[g].scale(static_cal)))
        .collect();
    let chosen_cal = (report.activations == plan::ActMode::Static).then_some(static_cal);
    for (name, mode, act, cal) in [
        (
            "ffn-only",
            plan::LayerMode::FfnOnly,
            report.activations,
            chosen_cal,
        ),
        (
            "fully-quant",
            plan::LayerMode::Full,
            report.activations,
            chosen_cal,
        ),
        (
            "fully-quant-static",
            plan::LayerMode::Full,
            plan::ActMode::Static,
            Some(static_cal),
        ),
        (
            "fully-quant-dynamic",
            plan::LayerMode::Full,
            plan::ActMode::Dynamic,
            None,
        ),
    ] {
        let p = plan::Plan::from_modes(name, &vec![mode; layers], &static_scales, act, cal)
            .with_weight_bits(chosen.weight_bits);
        p.write(&out.join(format!("samp-plan.{name}.json")))?;
    }
    // INT8 weights of every GEMM (the presets use them all), at the chosen plan's widths (a
    // preset's GEMM of another width makes its own from the float weights on loading).
    model.apply_plan(chosen)?;
    let q: Vec<(String, Arc<QWeights>)> = model
        .encoder()
        .layers()
        .iter()
        .enumerate()
        .flat_map(|(i, l)| {
            plan::Gemm::ALL.map(|g| (artifact::tensor_name(i, g.name()), l.linear(g).qweights()))
        })
        .collect();
    let refs: Vec<(String, &QWeights)> = q.iter().map(|(n, w)| (n.clone(), w.as_ref())).collect();
    artifact::write(&out.join(artifact::INT8_FILE), &refs)?;
    super::report::write_report(out, report).map_err(|e| io(out, e))?;
    Ok(())
}

/// Hard-link (or copy) the model's files into `out`, leaving out any earlier samp outputs.
fn copy_model_files(from: &Path, out: &Path) -> Result<()> {
    for entry in std::fs::read_dir(from).map_err(|e| io(from, e))? {
        let entry = entry.map_err(|e| io(from, e))?;
        let name = entry.file_name();
        let s = name.to_string_lossy();
        if !entry
            .file_type()
            .map_err(|e| io(&entry.path(), e))?
            .is_file()
            || s.starts_with("samp-")
            || s.starts_with("report.")
        {
            continue;
        }
        let dst = out.join(&name);
        if std::fs::hard_link(entry.path(), &dst).is_err() {
            std::fs::copy(entry.path(), &dst).map_err(|e| io(&dst, e))?;
        }
    }
    Ok(())
}
