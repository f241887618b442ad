//! The float pipeline against golden outputs of transformers/PyTorch (scripts/golden.py), on
//! the three real models fetched by scripts/fetch_models.sh.

mod common;

use common::*;
use samp::model::heads::tag::Aggregation;
use samp::model::{EmbedOptions, LoadOptions, Model};
use samp::tokenize::{Input, Truncation};
use std::sync::OnceLock;

fn minilm() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::load(&model_dir("all-MiniLM-L6-v2"), &LoadOptions::default()).unwrap())
}

fn sentiment() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::load(&model_dir("minilm-sentiment"), &LoadOptions::default()).unwrap())
}

fn rampart() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::load(&model_dir("rampart-pii"), &LoadOptions::default()).unwrap())
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn input_of(case: &serde_json::Value) -> Input {
    let a = case["text"].as_str().unwrap().to_string();
    match case.get("text_pair").and_then(|b| b.as_str()) {
        Some(b) => Input::Pair(a, b.to_string()),
        None => Input::Single(a),
    }
}

#[test]
fn embed_minilm_matches_reference() {
    let g = golden("embed_minilm.json");
    let m = minilm();
    assert_eq!(m.max_len(), g["max_len"].as_u64().unwrap() as usize);
    let cases = g["cases"].as_array().unwrap();
    let inputs: Vec<Input> = cases.iter().map(input_of).collect();
    // Token ids first: a tokenization difference would otherwise show up as a numeric one.
    for (i, c) in cases.iter().enumerate() {
        let enc = m
            .tokenizer()
            .encode(&inputs[i], i, Truncation::Truncate)
            .unwrap();
        assert_eq!(
            enc.ids(),
            ids(&c["input_ids"]).as_slice(),
            "token ids of case {i} {:?}",
            c["text"]
        );
    }
    // All texts in one batch (mixed lengths); the reference ran each alone.
    let out = m.embed(&inputs, &EmbedOptions::default()).unwrap();
    for (i, (c, e)) in cases.iter().zip(&out).enumerate() {
        let want = floats(&c["embedding"]);
        let cos = cosine(&e.embedding, &want);
        let diff = max_abs_diff(&e.embedding, &want);
        assert!(cos >= 0.99999, "case {i} {:?}: cosine {cos}", c["text"]);
        assert!(
            diff <= 1e-4,
            "case {i} {:?}: max abs diff {diff}",
            c["text"]
        );
        assert_eq!(
            e.truncated,
            c["truncated"].as_bool().unwrap(),
            "truncated flag of case {i}"
        );
        assert_eq!(e.tokens, ids(&c["input_ids"]).len());
    }
    assert!(
        out.iter().any(|e| e.truncated),
        "the golden set must include a truncated text"
    );
}

#[test]
fn classify_sentiment_matches_reference() {
    let g = golden("classify_sentiment.json");
    let m = sentiment();
    let cases = g["cases"].as_array().unwrap();
    let inputs: Vec<Input> = cases.iter().map(input_of).collect();
    for (i, c) in cases.iter().enumerate() {
        let enc = m
            .tokenizer()
            .encode(&inputs[i], i, Truncation::Truncate)
            .unwrap();
        assert_eq!(
            enc.ids(),
            ids(&c["input_ids"]).as_slice(),
            "token ids of case {i}"
        );
        assert_eq!(
            enc.encoding.get_type_ids(),
            ids(&c["token_type_ids"]).as_slice(),
            "token type ids of case {i}"
        );
    }
    let out = m.classify(&inputs, Truncation::Truncate).unwrap();
    for (i, (c, r)) in cases.iter().zip(&out).enumerate() {
        let want = floats(&c["logits"]);
        let diff = max_abs_diff(&r.logits, &want);
        assert!(
            diff <= 1e-3,
            "case {i} {:?}: logits differ by {diff}",
            c["text"]
        );
        assert_eq!(r.label, c["label"].as_str().unwrap(), "label of case {i}");
        assert!((r.score - c["score"].as_f64().unwrap() as f32).abs() < 1e-4);
        assert_eq!(r.truncated, c["truncated"].as_bool().unwrap());
    }
    assert!(inputs.iter().any(|i| matches!(i, Input::Pair(..))));
}

#[test]
fn tag_rampart_matches_reference_for_every_aggregation() {
    let g = golden("tag_rampart.json");
    let m = rampart();
    let cases = g["cases"].as_array().unwrap();
    let texts: Vec<String> = cases
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect();
    let mut spans_seen = 0;
    for agg in ["none", "simple", "first", "average", "max"] {
        let a: Aggregation = agg.parse().unwrap();
        let out = m.tag(&texts, a, Truncation::Truncate).unwrap();
        for (i, (c, r)) in cases.iter().zip(&out).enumerate() {
            let want = c["entities"][agg].as_array().unwrap();
            let got: Vec<(String, usize, usize)> = r
                .entities
                .iter()
                .map(|e| (e.label.clone(), e.start, e.end))
                .collect();
            let exp: Vec<(String, usize, usize)> = want
                .iter()
                .map(|e| {
                    (
                        e["label"].as_str().unwrap().to_string(),
                        e["start"].as_u64().unwrap() as usize,
                        e["end"].as_u64().unwrap() as usize,
                    )
                })
                .collect();
            assert_eq!(got, exp, "aggregation {agg}, case {i} {:?}", texts[i]);
            for (e, w) in r.entities.iter().zip(want) {
                let ds = (e.score - w["score"].as_f64().unwrap() as f32).abs();
                assert!(
                    ds < 1e-3,
                    "aggregation {agg}, case {i}: score differs by {ds}"
                );
            }
            spans_seen += got.len();
        }
    }
    assert!(
        spans_seen > 20,
        "the golden set should exercise real entities"
    );
}

#[test]
fn results_do_not_depend_on_batch_neighbours() {
    let m = minilm();
    let texts = [
        "short",
        "a somewhat longer sentence about the weather in the mountains this week",
        "東京は日本の首都です。",
        &"very long text ".repeat(80),
    ];
    let inputs: Vec<Input> = texts.iter().map(|t| Input::from(*t)).collect();
    let together = m.embed(&inputs, &EmbedOptions::default()).unwrap();
    // Reversed order, and each alone.
    let mut rev = inputs.clone();
    rev.reverse();
    let reversed = m.embed(&rev, &EmbedOptions::default()).unwrap();
    for (i, input) in inputs.iter().enumerate() {
        let alone = m
            .embed(std::slice::from_ref(input), &EmbedOptions::default())
            .unwrap();
        assert!(max_abs_diff(&alone[0].embedding, &together[i].embedding) <= 1e-6);
        assert!(
            max_abs_diff(
                &alone[0].embedding,
                &reversed[texts.len() - 1 - i].embedding
            ) <= 1e-6
        );
    }
}

#[test]
fn embed_options_dims_and_normalisation() {
    let m = minilm();
    let inputs = [Input::from("dimension truncation")];
    let full = m.embed(&inputs, &EmbedOptions::default()).unwrap();
    let raw = m
        .embed(
            &inputs,
            &EmbedOptions {
                normalize: Some(false),
                ..Default::default()
            },
        )
        .unwrap();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm(&full[0].embedding) - 1.0).abs() < 1e-5);
    assert!(
        (norm(&raw[0].embedding) - 1.0).abs() > 1e-3,
        "unnormalised mean pooling has norm != 1"
    );
    let short = m
        .embed(
            &inputs,
            &EmbedOptions {
                dims: Some(64),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(short[0].embedding.len(), 64);
    assert!((norm(&short[0].embedding) - 1.0).abs() < 1e-5);
    assert!(m
        .embed(
            &inputs,
            &EmbedOptions {
                dims: Some(0),
                ..Default::default()
            }
        )
        .is_err());
    assert!(m
        .embed(
            &inputs,
            &EmbedOptions {
                dims: Some(385),
                ..Default::default()
            }
        )
        .is_err());
}

#[test]
fn truncation_error_mode_refuses_long_texts() {
    let m = minilm();
    let long = Input::from("word ".repeat(400).as_str());
    let err = m
        .embed(
            std::slice::from_ref(&long),
            &EmbedOptions {
                truncation: Truncation::Error,
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("texts[0]") && err.contains("256"), "{err}");
    let ok = m.embed(&[long], &EmbedOptions::default()).unwrap();
    assert!(ok[0].truncated);
    assert_eq!(ok[0].tokens, 256);
}

#[test]
fn empty_text_is_a_clear_error() {
    let m = minilm();
    let err = m
        .embed(
            &[Input::from("fine"), Input::from("")],
            &EmbedOptions::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("texts[1]") && err.contains("empty"), "{err}");
}

#[test]
fn wrong_task_is_a_clear_error() {
    let err = minilm()
        .classify(&[Input::from("x")], Truncation::Truncate)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no classify head"), "{err}");
    let err = sentiment()
        .tag(
            &["x".to_string()],
            Aggregation::Simple,
            Truncation::Truncate,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("no tag head"), "{err}");
}
