//! The plan format: round trips, validation, widths.

use super::*;

#[test]
fn presets_round_trip_and_validate() {
    let scales = vec![[0.1, 0.2, 0.3, 0.4]; 3];
    let modes = [LayerMode::Full, LayerMode::FfnOnly, LayerMode::Float];
    let p = Plan::from_modes(
        "samp",
        &modes,
        &scales,
        ActMode::Static,
        Some(Calibration::Mse),
    );
    assert_eq!(p.summary(), "QqF");
    assert_eq!(p.int8_gemms(), 6);
    p.validate(3).unwrap();
    let json = serde_json::to_string(&p).unwrap();
    let back: Plan = serde_json::from_str(&json).unwrap();
    assert_eq!(back, p);
    assert!(p.validate(4).unwrap_err().to_string().contains("3 entries"));
}

#[test]
fn bf16_modes_round_trip_and_float16_stays_refused_on_cpu() {
    let modes = [
        LayerMode::Bf16,
        LayerMode::FfnOnlyBf16,
        LayerMode::FfnOnly,
        LayerMode::Float,
    ];
    let p = Plan::from_modes("m", &modes, &[[0.1; 4]; 4], ActMode::Static, None);
    assert_eq!(p.summary(), "bpqF");
    assert_eq!((p.bf16_gemms(), p.int8_gemms()), (6, 4));
    assert_eq!(p.layers[1].qkv.precision, Precision::Bfloat16);
    assert_eq!(p.layers[1].ffn_up.precision, Precision::Int8);
    p.validate(4).unwrap();
    let back: Plan = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    assert_eq!(back, p);
    let mut six = p.clone();
    six.weight_bits = 6;
    six.validate(4).unwrap();
    let mut bad = p.clone();
    bad.weight_bits = 5;
    assert!(bad
        .validate(4)
        .unwrap_err()
        .to_string()
        .contains("weight_bits"));
    // Plans written before the field existed hold 7-bit weights.
    let old: Plan =
        serde_json::from_str(r#"{"format":"samp-plan/1","name":"x","layers":[]}"#).unwrap();
    assert_eq!(old.weight_bits, 7);
}

#[test]
fn a_gemms_own_width_overrides_the_plans_and_is_checked() {
    let modes = [LayerMode::Full, LayerMode::FfnOnly, LayerMode::Float];
    let p = Plan::from_modes("m", &modes, &[[0.1; 4]; 3], ActMode::Dynamic, None)
        .with_weight_bits(7)
        .with_layer_bits(&[1, 2], 6);
    // Layer 1's two INT8 GEMMs narrowed; its float ones and float layer 2 untouched.
    assert_eq!(p.bits(1, Gemm::FfnUp), 6);
    assert_eq!(p.bits(1, Gemm::FfnDown), 6);
    assert_eq!(p.bits(1, Gemm::Qkv), 7);
    assert_eq!(p.bits(0, Gemm::Qkv), 7);
    assert_eq!(p.layers[2].ffn_up.weight_bits, None);
    assert_eq!(p.own_widths(), vec![(6, 2)]);
    p.validate(3).unwrap();
    let json = serde_json::to_string(&p).unwrap();
    assert_eq!(json.matches("\"weight_bits\"").count(), 3, "{json}");
    assert_eq!(serde_json::from_str::<Plan>(&json).unwrap(), p);
    // At the plan's own width the entry is left out.
    assert_eq!(p.clone().with_layer_bits(&[1], 7).own_widths(), vec![]);
    // Every INT8 GEMM narrowed: the plan's own width changes instead.
    let all = p.clone().with_layer_bits(&[0], 6);
    assert_eq!((all.weight_bits, all.own_widths()), (6, vec![]));
    let mut bad = p.clone();
    bad.layers[2].qkv.weight_bits = Some(6);
    let e = bad.validate(3).unwrap_err().to_string();
    assert!(
        e.contains("layers[2].qkv.weight_bits: 6 on a float32 GEMM"),
        "{e}"
    );
    let mut bad = p.clone();
    bad.layers[0].attn_out.weight_bits = Some(4);
    let e = bad.validate(3).unwrap_err().to_string();
    assert!(
        e.contains("layers[0].attn_out.weight_bits: 4; INT8 weights are 6, 7 or 8"),
        "{e}"
    );
}

#[test]
fn bad_entries_are_named() {
    let mut p = Plan::from_modes("x", &[LayerMode::Full], &[[0.1; 4]], ActMode::Static, None);
    p.layers[0].ffn_up.input_scale = None;
    assert!(p
        .validate(1)
        .unwrap_err()
        .to_string()
        .contains("layers[0].ffn_up.input_scale"));
    p.layers[0].ffn_up = GemmPlan {
        precision: Precision::Float16,
        input_scale: None,
        weight_bits: None,
    };
    // Which precisions run is the engine's to say: the CPU's list refuses float16.
    let cpu = [Precision::Float32, Precision::Bfloat16, Precision::Int8];
    p.validate(1).unwrap();
    let e = p.check_precisions("CPU", &cpu).unwrap_err().to_string();
    assert!(e.contains("layers[0].ffn_up.precision"), "{e}");
    assert!(
        e.contains("float16 is not available on the CPU backend (float32, bfloat16 or int8)"),
        "{e}"
    );
    let e = serde_json::from_str::<Plan>(
        r#"{"format":"samp-plan/1","name":"x","layers":[],"extra":1}"#,
    );
    assert!(e.unwrap_err().to_string().contains("extra"));
}
