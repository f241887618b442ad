//! How a precision plan maps onto the GPU backend's operations, decided before anything touches
//! a GPU (so it is tested everywhere). The plan means the same on both backends; what differs is
//! the float kernel: on the GPU a `float32` GEMM runs FP16 inputs with FP32 accumulation (the
//! tensor-core path; there is no FP32 tensor-core GEMM, and cuBLASLt's "f32" would be TF32), and
//! `float16` entries run the same way. An `int8` GEMM runs INT8 × INT8 → INT32 with the plan's
//! static input scale, or per-token scales when the plan's activations are dynamic.

use crate::model::config::ModelConfig;
use crate::quant::plan::{ActMode, Gemm, Plan, Precision};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GemmOp {
    /// FP16 × FP16 → FP32.
    Fp16,
    /// INT8 × INT8 → INT32; `None`: per-token input scales at run time.
    Int8 { input_scale: Option<f32> },
}

/// Largest head size the attention kernel handles (two values per lane of a warp).
pub const MAX_HEAD_DIM: usize = 64;

/// `(outputs, inputs)` of a GEMM in a model.
pub fn shape(g: Gemm, cfg: &ModelConfig) -> (usize, usize) {
    let (h, f) = (cfg.hidden, cfg.intermediate);
    match g {
        Gemm::Qkv => (3 * h, h),
        Gemm::AttnOut => (h, h),
        Gemm::FfnUp => (f, h),
        Gemm::FfnDown => (h, f),
    }
}

/// The precisions the GPU backend runs: all of them (float32, bfloat16 and float16 entries as
/// FP16 GEMMs, int8 as INT8).
pub const PRECISIONS: &[Precision] = &[
    Precision::Float32,
    Precision::Bfloat16,
    Precision::Float16,
    Precision::Int8,
];

/// The GPU operation of every GEMM of every layer, in [`Gemm::ALL`] order, or why the plan or
/// model cannot run on the GPU backend (the error names the entry).
pub fn map(plan: &Plan, cfg: &ModelConfig) -> Result<Vec<[GemmOp; 4]>, String> {
    if cfg.head_dim() > MAX_HEAD_DIM || !cfg.hidden.is_multiple_of(cfg.heads) {
        return Err(format!(
            "head size {} (hidden {} / {} heads): the GPU attention kernel handles up to {MAX_HEAD_DIM}",
            cfg.hidden as f64 / cfg.heads as f64,
            cfg.hidden,
            cfg.heads
        ));
    }
    // Every precision runs here (float16 is a GPU precision, and bfloat16 entries run as FP16,
    // the GPU's fast half type): `PRECISIONS`, which the engine reports.
    plan.validate(cfg.layers).map_err(|e| e.to_string())?;
    plan.layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let mut ops = [GemmOp::Fp16; 4];
            for (op, g) in ops.iter_mut().zip(Gemm::ALL) {
                let gp = l.get(g);
                if gp.precision != Precision::Int8 {
                    continue;
                }
                let (n, k) = shape(g, cfg);
                if !n.is_multiple_of(4) || !k.is_multiple_of(4) {
                    return Err(format!(
                        "layers[{i}].{}: INT8 GEMM of [{n}, {k}] needs both sizes divisible by 4 (cuBLASLt)",
                        g.name()
                    ));
                }
                *op = GemmOp::Int8 {
                    input_scale: match plan.activations {
                        ActMode::Static => gp.input_scale,
                        ActMode::Dynamic => None,
                    },
                };
            }
            Ok(ops)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::plan::LayerMode;
    use std::path::Path;

    fn cfg(hidden: usize, heads: usize, layers: usize) -> ModelConfig {
        let v = serde_json::json!({
            "model_type": "bert", "hidden_size": hidden, "num_hidden_layers": layers,
            "num_attention_heads": heads, "intermediate_size": 4 * hidden, "vocab_size": 100,
            "max_position_embeddings": 64, "type_vocab_size": 2
        });
        ModelConfig::from_json(&v, Path::new("config.json")).unwrap()
    }

    fn plan(modes: &[LayerMode], act: ActMode) -> Plan {
        let scales = vec![[0.1, 0.2, 0.3, 0.4]; modes.len()];
        Plan::from_modes("t", modes, &scales, act, None)
    }

    #[test]
    fn float_layers_run_fp16_and_int8_layers_keep_their_scales() {
        use LayerMode::*;
        let ops = map(
            &plan(&[Float, FfnOnly, Full], ActMode::Static),
            &cfg(64, 2, 3),
        )
        .unwrap();
        assert_eq!(ops[0], [GemmOp::Fp16; 4]);
        let q = |s| GemmOp::Int8 {
            input_scale: Some(s),
        };
        assert_eq!(ops[1], [GemmOp::Fp16, GemmOp::Fp16, q(0.3), q(0.4)]);
        assert_eq!(ops[2], [q(0.1), q(0.2), q(0.3), q(0.4)]);
    }

    #[test]
    fn dynamic_activations_have_no_static_scale() {
        let ops = map(&plan(&[LayerMode::Full], ActMode::Dynamic), &cfg(64, 2, 1)).unwrap();
        assert_eq!(ops[0], [GemmOp::Int8 { input_scale: None }; 4]);
    }

    #[test]
    fn float16_and_bfloat16_entries_run_as_fp16() {
        let mut p = plan(&[LayerMode::Float, LayerMode::Float], ActMode::Static);
        p.layers[1].ffn_up.precision = Precision::Float16;
        assert_eq!(map(&p, &cfg(64, 2, 2)).unwrap()[1], [GemmOp::Fp16; 4]);
        p.layers[1].ffn_up.precision = Precision::Bfloat16;
        assert_eq!(map(&p, &cfg(64, 2, 2)).unwrap()[1], [GemmOp::Fp16; 4]);
    }

    #[test]
    fn models_and_plans_the_gpu_cannot_run_are_named() {
        let p = plan(&[LayerMode::Float], ActMode::Static);
        let e = map(&p, &cfg(256, 2, 1)).unwrap_err();
        assert!(e.contains("head size 128"), "{e}");
        let e = map(&p, &cfg(64, 2, 2)).unwrap_err();
        assert!(e.contains("layers has 1 entries"), "{e}");
        let e = map(&plan(&[LayerMode::Full], ActMode::Static), &cfg(66, 3, 1)).unwrap_err();
        assert!(
            e.contains("layers[0].qkv") && e.contains("divisible by 4"),
            "{e}"
        );
        let mut p = plan(&[LayerMode::Full], ActMode::Static);
        p.layers[0].attn_out.input_scale = None;
        let e = map(&p, &cfg(64, 2, 1)).unwrap_err();
        assert!(e.contains("layers[0].attn_out.input_scale"), "{e}");
    }
}
