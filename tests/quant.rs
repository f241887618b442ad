//! Precision plans on real models: a plan without INT8 layers is the float model exactly,
//! quantized plans stay close to float and finite on adversarial inputs, saved INT8 weights
//! give the same outputs as weights quantized at load, and `samp quantize` / `samp eval` run end
//! to end (on a tiny fixture, to keep the test fast).

mod common;

use std::process::Command;

use common::{cosine, model_dir, root};
use samp::model::{EmbedOptions, LoadOptions, Model};
use samp::quant::plan::{ActMode, LayerMode, Plan};
use samp::tokenize::{Input, Truncation};

fn sentences() -> Vec<Input> {
    [
        "The quick brown fox jumps over the lazy dog.",
        "A thoroughly enjoyable film with a weak ending.",
        "Stocks fell sharply on Monday after the central bank raised rates.",
        "hello",
        "Je pense, donc je suis.",
    ]
    .map(Input::from)
    .to_vec()
}

/// Very long, repeated-token, unusual-script and symbol-only inputs.
fn adversarial() -> Vec<Input> {
    vec![
        Input::from("word ".repeat(5000).as_str()),
        Input::from(
            "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
                .to_string()
                .as_str(),
        ),
        Input::from(
            "the the the the the the the the the the the the the the the the the the"
                .to_string()
                .as_str(),
        ),
        Input::from("ᚠᛇᚻ᛫ᛒᛦᚦ ∮ E⋅da = Q 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ꧁꧂ ﷽ \u{200b}\u{200d} 🧑‍🚀🏳️‍🌈"),
        Input::from("中文字符测试 العربية हिन्दी Ελληνικά 한국어 日本語のテキスト"),
        Input::from("0 1 2 3 4 5 6 7 8 9 ".repeat(60).as_str()),
    ]
}

fn embed(m: &Model, inputs: &[Input]) -> Vec<Vec<f32>> {
    let opts = EmbedOptions {
        truncation: Truncation::Truncate,
        ..Default::default()
    };
    m.embed(inputs, &opts)
        .unwrap()
        .into_iter()
        .map(|e| e.embedding)
        .collect()
}

fn calibrated(m: &mut Model, mode: LayerMode, act: ActMode) -> Plan {
    let obs = m.calibrate(&sentences(), Truncation::Truncate).unwrap();
    let c = samp::quant::observer::Calibration::Percentile { percentile: 99.99 };
    let scales: Vec<[f32; 4]> = obs
        .iter()
        .map(|l| [0, 1, 2, 3].map(|g| l[g].scale(c)))
        .collect();
    Plan::from_modes("t", &vec![mode; m.cfg.layers], &scales, act, Some(c))
}

#[test]
fn float_plan_is_exactly_the_float_model_and_int8_plans_stay_close_and_finite() {
    let mut m = Model::load(&model_dir("all-MiniLM-L6-v2"), &LoadOptions::default()).unwrap();
    let float = embed(&m, &sentences());
    let float_adv = embed(&m, &adversarial());
    // The weight width this host prefers, then 6 bits (the AVX2 6-bit kernel where that is
    // the host's fastest).
    let host = samp::quant::plan::preferred_weight_bits();
    for (mode, act, min_cos, bits) in [
        (LayerMode::FfnOnly, ActMode::Static, 0.97, host),
        (LayerMode::Full, ActMode::Static, 0.95, host),
        (LayerMode::Full, ActMode::Dynamic, 0.95, host),
        (LayerMode::Full, ActMode::Dynamic, 0.95, 6),
    ] {
        let plan = calibrated(&mut m, mode, act).with_weight_bits(bits);
        m.apply_plan(&plan).unwrap();
        let w = m.encoder().layers()[0]
            .linear(samp::quant::plan::Gemm::FfnUp)
            .qweights();
        assert_eq!(w.bits, bits);
        let q = embed(&m, &sentences());
        for (a, b) in q.iter().zip(&float) {
            let c = cosine(a, b);
            assert!(c >= min_cos, "{mode:?} {act:?}: cosine {c}");
            assert!(
                c < 0.999999,
                "{mode:?} {act:?}: INT8 output identical to float"
            );
        }
        for (i, e) in embed(&m, &adversarial()).iter().enumerate() {
            assert!(
                e.iter().all(|v| v.is_finite()),
                "{mode:?} {act:?}: adversarial {i}"
            );
            assert!(
                cosine(e, &float_adv[i]) > 0.8,
                "{mode:?} {act:?}: adversarial {i}"
            );
        }
    }
    // Back to a plan with no INT8 layer: bit-identical to the float model.
    m.apply_plan(&Plan::float(m.cfg.layers)).unwrap();
    assert_eq!(embed(&m, &sentences()), float);
    assert_eq!(embed(&m, &adversarial()), float_adv);
}

#[test]
fn saved_int8_weights_match_load_time_quantization() {
    let dir = fixture_copy();
    let mut m = Model::load(dir.path(), &LoadOptions::default()).unwrap();
    let plan = calibrated(&mut m, LayerMode::Full, ActMode::Static);
    let plan_path = dir.path().join("samp-plan.json");
    plan.write(&plan_path).unwrap();
    // Without the artifact: weights quantized at load.
    let a = Model::load(
        dir.path(),
        &LoadOptions {
            plan: Some(plan_path.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    // With it.
    let tensors = int8_tensors(&m);
    let refs: Vec<_> = tensors
        .iter()
        .map(|(n, q)| (n.clone(), q.as_ref()))
        .collect();
    samp::quant::artifact::write(&dir.path().join(samp::quant::artifact::INT8_FILE), &refs)
        .unwrap();
    let b = Model::load(
        dir.path(),
        &LoadOptions {
            plan: Some(plan_path),
            ..Default::default()
        },
    )
    .unwrap();
    let x = a.classify(&sentences(), Truncation::Truncate).unwrap();
    let y = b.classify(&sentences(), Truncation::Truncate).unwrap();
    assert_eq!(x, y);
    assert_eq!(b.plan().summary(), "Q".repeat(b.cfg.layers));
    // An entry for a layer the model does not have: the file is not this model's.
    let mut extra = refs.clone();
    extra.push((samp::quant::artifact::tensor_name(99, "qkv"), refs[0].1));
    samp::quant::artifact::write(&dir.path().join(samp::quant::artifact::INT8_FILE), &extra)
        .unwrap();
    let e = Model::load(
        dir.path(),
        &LoadOptions {
            plan: Some(dir.path().join("samp-plan.json")),
            ..Default::default()
        },
    )
    .err()
    .expect("an artifact entry matching no layer is an error")
    .to_string();
    assert!(
        e.contains("layers.99.qkv") && e.contains(samp::quant::artifact::INT8_FILE),
        "{e}"
    );

    // A plan that does not fit the model is refused with the entry named.
    let mut bad = plan.clone();
    bad.layers.pop();
    let p = dir.path().join("bad.json");
    bad.write(&p).unwrap();
    let e = Model::load(
        dir.path(),
        &LoadOptions {
            plan: Some(p.clone()),
            ..Default::default()
        },
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("layers has"), "{e}");
    std::fs::write(&p, "{\"format\": \"samp-plan/1\", \"name\": 3}").unwrap();
    let e = Model::load(
        dir.path(),
        &LoadOptions {
            plan: Some(p),
            ..Default::default()
        },
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("bad.json"), "{e}");
}

/// The tiny classifier fixture, copied into a temporary directory.
fn fixture_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = root().join("tests/fixtures/tiny-roberta-cls");
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dir.path().join(f.file_name())).unwrap();
    }
    dir
}

/// The INT8 weights of every GEMM as the model holds them now, named as the artifact names them.
fn int8_tensors(m: &Model) -> Vec<(String, std::sync::Arc<samp::kernels::int8::QWeights>)> {
    use samp::quant::{artifact, plan::Gemm};
    let layers = m.encoder().layers().iter().enumerate();
    layers
        .flat_map(|(i, l)| {
            Gemm::ALL.map(|g| (artifact::tensor_name(i, g.name()), l.linear(g).qweights()))
        })
        .collect()
}

/// The INT8 weights of every GEMM as the model holds them now, written as the artifact.
fn write_artifact(m: &Model, dir: &std::path::Path) {
    let tensors = int8_tensors(m);
    let refs: Vec<_> = tensors
        .iter()
        .map(|(n, q)| (n.clone(), q.as_ref()))
        .collect();
    let path = dir.join(samp::quant::artifact::INT8_FILE);
    samp::quant::artifact::write(&path, &refs).unwrap();
}

/// A plan with one layer's weights narrowed (as `samp quantize` writes it) runs the same from
/// its artifact as quantized at load, and a preset of one width beside that artifact still
/// gets that width everywhere (its other-width GEMMs made from the float weights).
#[test]
fn per_layer_weight_widths_load_from_a_mixed_artifact() {
    use samp::quant::plan::Gemm;
    let dir = fixture_copy();
    let load = |plan: &std::path::Path| {
        let opts = LoadOptions {
            plan: Some(plan.to_path_buf()),
            ..Default::default()
        };
        Model::load(dir.path(), &opts).unwrap()
    };
    let mut m = Model::load(dir.path(), &LoadOptions::default()).unwrap();
    let pure = calibrated(&mut m, LayerMode::Full, ActMode::Dynamic).with_weight_bits(7);
    let mixed = pure.clone().with_layer_bits(&[0], 6);
    assert_eq!(mixed.own_widths(), vec![(6, 4)]);
    let (pure_path, mixed_path) = (dir.path().join("pure.json"), dir.path().join("mixed.json"));
    pure.write(&pure_path).unwrap();
    mixed.write(&mixed_path).unwrap();
    // Quantized at load, no artifact yet.
    let (a_mixed, a_pure) = (load(&mixed_path), load(&pure_path));
    m.apply_plan(&mixed).unwrap();
    write_artifact(&m, dir.path());
    let (b_mixed, b_pure) = (load(&mixed_path), load(&pure_path));
    for (with, without, plan) in [(&b_mixed, &a_mixed, &mixed), (&b_pure, &a_pure, &pure)] {
        for i in 0..2 {
            for g in Gemm::ALL {
                let bits = with.encoder().layers()[i].linear(g).qweights().bits;
                assert_eq!(bits, plan.bits(i, g), "layer {i} {}", g.name());
            }
        }
        let x = with.classify(&sentences(), Truncation::Truncate).unwrap();
        let y = without
            .classify(&sentences(), Truncation::Truncate)
            .unwrap();
        assert_eq!(x, y);
    }
    // The narrowed layer changes the outputs: the widths are not ignored.
    let x = b_mixed
        .classify(&sentences(), Truncation::Truncate)
        .unwrap();
    let y = b_pure.classify(&sentences(), Truncation::Truncate).unwrap();
    assert_ne!(x, y);
}

/// Where this host runs 6-bit weights faster (AVX2 without VNNI, or under `SAMP_MAX_ISA=avx2`)
/// the search tries them on the mode's most quantized plan (`tried`: its name; `None`: a width
/// was given, so never), and the plan has them exactly when that trial met the requirement
/// (`--max-drop`, the default margin of 2 standard errors); elsewhere it never tries them.
/// Where the trial missed, the chosen plan's INT8 layers may be narrowed one by one: the plan's
/// widths are then exactly the chosen trial's, which met the requirement, as did every narrowing
/// step before the last.
fn narrower_weights_only_where_faster_and_met(
    out: &std::path::Path,
    tried_as: Option<&str>,
    max_drop: f64,
) {
    use samp::quant::plan::{narrower_weight_bits, preferred_weight_bits};
    let read = |f: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(out.join(f)).unwrap()).unwrap()
    };
    let (report, plan) = (read("report.json"), read("samp-plan.json"));
    assert_eq!(plan["weight_bits"], report["weight_bits"]);
    let bits = plan["weight_bits"].as_u64().unwrap() as u32;
    let trials = report["trials"].as_array().unwrap();
    let tried = trials.iter().find(|t| t["kind"] == "weights");
    let host = preferred_weight_bits();
    assert_eq!(
        tried.is_some(),
        tried_as.is_some() && narrower_weight_bits(host).is_some()
    );
    let meets = |t: &serde_json::Value| {
        let drop = report["float_score"].as_f64().unwrap() - t["score"].as_f64().unwrap();
        drop + 2.0 * t["drop_se"].as_f64().unwrap() <= max_drop + 1e-12
    };
    let steps: Vec<&serde_json::Value> =
        trials.iter().filter(|t| t["kind"] == "narrowing").collect();
    let per_layer = trials.iter().any(|t| t["narrowed"].is_array());
    match tried {
        Some(t) if meets(t) => {
            let name = tried_as.unwrap_or_default();
            assert_eq!(t["name"], format!("{name} (6-bit weights)").as_str());
            assert_eq!(bits, 6, "6-bit trial {t}");
            assert!(
                !per_layer,
                "narrowed layers after the whole plan met at 6 bits"
            );
        }
        Some(_) => {
            let chosen = &trials[report["chosen"].as_u64().unwrap() as usize];
            let narrowed: Vec<u64> = chosen["narrowed"]
                .as_array()
                .map_or(vec![], |a| a.iter().map(|v| v.as_u64().unwrap()).collect());
            assert!(narrowed.is_empty() || meets(chosen), "{chosen}");
            for (i, layer) in plan["layers"].as_array().unwrap().iter().enumerate() {
                for g in layer.as_object().unwrap().values() {
                    if g["precision"] != "int8" {
                        continue;
                    }
                    let own = g["weight_bits"].as_u64().map_or(bits, |b| b as u32);
                    let want = if narrowed.contains(&(i as u64)) {
                        6
                    } else {
                        host
                    };
                    assert_eq!(own, want, "layer {i}: {g} (chosen {chosen})");
                }
            }
            if let Some((last, before)) = steps.split_last() {
                assert!(
                    before.iter().all(|t| meets(t)),
                    "a narrowing step past a miss"
                );
                assert!(meets(last) || !meets(chosen) || chosen != *last);
            }
        }
        None => {
            assert!(bits == host || tried_as.is_none());
            assert!(
                !per_layer,
                "narrowed layers without a narrower width to try"
            );
        }
    }
}

#[test]
fn quantize_tries_narrower_weights_on_the_modes_plan_and_never_past_a_given_width() {
    let dir = tempfile::tempdir().unwrap();
    let calib = dir.path().join("calib.jsonl");
    let texts: Vec<String> = (0..24)
        .map(|i| format!("{{\"text\": \"text {i} says {} things\"}}", i % 5))
        .collect();
    std::fs::write(&calib, texts.join("\n")).unwrap();
    let model = root().join("tests/fixtures/tiny-roberta-cls");
    for (extra, tried_as, layers) in [
        (["--mode", "ffn-only"], Some("ffn-only"), "qq"),
        (["--weight-bits", "7"], None, ""),
    ] {
        let out = dir.path().join(extra[1]);
        let mut args = vec!["quantize", "--model", model.to_str().unwrap()];
        args.extend(["--calib", calib.to_str().unwrap(), "--max-drop", "0.05"]);
        args.extend(["--timing-batch", "8", "--out", out.to_str().unwrap()]);
        args.extend(extra);
        let o = samp(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        narrower_weights_only_where_faster_and_met(&out, tried_as, 0.05);
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
        for t in report["trials"].as_array().unwrap() {
            assert!(t["kind"] != "weights" || t["layers"] == layers, "{t}");
        }
        if tried_as.is_none() {
            let plan = std::fs::read_to_string(out.join("samp-plan.json")).unwrap();
            assert!(plan.contains("\"weight_bits\": 7"), "{plan}");
        }
    }
}

/// Where 6-bit weights run faster, a requirement just tighter than what the whole model at
/// 6 bits achieved (taken from a first search) makes the search narrow layer by layer instead:
/// the invariants above hold, and the mixed-width plan and its presets load and run.
#[test]
fn quantize_narrows_layer_by_layer_where_the_whole_model_misses_at_6_bits() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_dir("all-MiniLM-L6-v2");
    let calib = root().join("data/eval/sentiment-calib.jsonl");
    let run = |max_drop: f64, out: &std::path::Path| -> serde_json::Value {
        let (model, calib) = (model.to_str().unwrap(), calib.to_str().unwrap());
        let md = max_drop.to_string();
        let o = samp(&[
            "quantize",
            "--model",
            model,
            "--calib",
            calib,
            "--calib-limit",
            "48",
            "--mode",
            "fully-quant",
            "--activations",
            "dynamic",
            "--timing-batch",
            "8",
            "--max-drop",
            &md,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        narrower_weights_only_where_faster_and_met(out, Some("fully-quant"), max_drop);
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap()
    };
    let first = run(0.05, &dir.path().join("first"));
    let trials = first["trials"].as_array().unwrap().clone();
    let Some(six) = trials.iter().find(|t| t["kind"] == "weights") else {
        return; // No faster narrower width on this host: nothing to narrow (checked above).
    };
    let threshold = first["float_score"].as_f64().unwrap() - six["score"].as_f64().unwrap()
        + 2.0 * six["drop_se"].as_f64().unwrap();
    let out = dir.path().join("forced");
    let forced = run(threshold - 0.001, &out);
    let kinds: Vec<&str> = forced["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"weights"));
    // Narrowing runs on the chosen plan's INT8 layers; a float choice (timings so disturbed that
    // float estimated fastest) has none.
    let chosen = &forced["trials"][forced["chosen"].as_u64().unwrap() as usize];
    if chosen["layers"].as_str().unwrap().contains(['q', 'Q']) {
        assert!(
            kinds.contains(&"width sensitivity") || kinds.contains(&"narrowing"),
            "{kinds:?}"
        );
    }
    for plan in [
        "samp-plan.json",
        "samp-plan.fully-quant.json",
        "samp-plan.ffn-only.json",
    ] {
        let opts = LoadOptions {
            plan: Some(out.join(plan)),
            ..Default::default()
        };
        let m = Model::load(&out, &opts).unwrap();
        for e in embed(&m, &sentences()) {
            assert!(e.iter().all(|v| v.is_finite()), "{plan}");
        }
    }
}

fn samp(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_samp"))
        .args(args)
        .env("SAMP_THREADS", "2")
        .output()
        .unwrap()
}

#[test]
fn quantize_then_eval_end_to_end_on_a_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let calib = dir.path().join("calib.jsonl");
    let texts: Vec<String> = (0..40)
        .map(|i| {
            format!(
                "{{\"text\": \"sentence number {i} is about {} things\"}}",
                ["good", "bad", "odd", "plain"][i % 4]
            )
        })
        .collect();
    std::fs::write(&calib, texts.join("\n")).unwrap();
    let out = dir.path().join("out");
    let model = root().join("tests/fixtures/tiny-roberta-cls");
    let o = samp(&[
        "quantize",
        "--model",
        model.to_str().unwrap(),
        "--calib",
        calib.to_str().unwrap(),
        "--max-drop",
        "0.05",
        "--timing-batch",
        "8",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("] ") && stderr.contains("frontier"),
        "no progress output: {stderr}"
    );
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["met"], true);
    assert!(summary["score"].as_f64().unwrap() >= summary["float_score"].as_f64().unwrap() - 0.05);
    for f in [
        "samp-plan.json",
        "samp-plan.ffn-only.json",
        "samp-plan.fully-quant.json",
        "samp-int8.safetensors",
        "report.json",
        "report.md",
        "report.svg",
        "config.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    narrower_weights_only_where_faster_and_met(&out, Some("fully-quant"), 0.05);
    let svg = std::fs::read_to_string(out.join("report.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("chosen"));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("(chosen)"));

    // eval prints the metrics of a plan; the one-shot commands pick the plan up.
    let o = samp(&[
        "eval",
        "--model",
        out.to_str().unwrap(),
        "--plan",
        out.join("samp-plan.fully-quant.json").to_str().unwrap(),
        "--data",
        calib.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ev: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ev["metric"], "agreement");
    assert_eq!(ev["layers"], "QQ");
    assert!(ev["value"].as_f64().unwrap() > 0.5);
    let o = samp(&["classify", "--model", out.to_str().unwrap(), "a fine day"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Refusals: non-empty --out, malformed calibration line.
    let o = samp(&[
        "quantize",
        "--model",
        model.to_str().unwrap(),
        "--calib",
        calib.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("not empty"));
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"ok\", \"label\": \"x\"}\n{\"text\": \n").unwrap();
    let o = samp(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        bad.to_str().unwrap(),
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("line 2"), "{e}");
}
