//! RoBERTa, DistilBERT (from pytorch_model.bin and vocab.txt only) and a multi-label BERT
//! classifier against transformers, on tiny random-weight fixtures made by
//! scripts/tiny_fixtures.py (committed under tests/fixtures/).

mod common;

use common::{floats, max_abs_diff, root};
use samp::model::config::{Arch, Task};
use samp::model::{LoadOptions, Model};
use samp::tokenize::{Input, Truncation};

fn fixture(name: &str) -> (Model, Vec<serde_json::Value>) {
    let dir = root().join("tests/fixtures").join(name);
    let model = Model::load(&dir, &LoadOptions::default()).unwrap();
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    (model, g["cases"].as_array().unwrap().clone())
}

fn inputs_and_ids(m: &Model, cases: &[serde_json::Value]) -> Vec<Input> {
    let inputs: Vec<Input> = cases
        .iter()
        .map(|c| Input::from(c["text"].as_str().unwrap()))
        .collect();
    for (i, c) in cases.iter().enumerate() {
        let want: Vec<u32> = c["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let enc = m
            .tokenizer()
            .encode(&inputs[i], i, Truncation::Truncate)
            .unwrap();
        assert_eq!(enc.ids(), want.as_slice(), "token ids of case {i}");
    }
    inputs
}

#[test]
fn roberta_sequence_classification() {
    let (m, cases) = fixture("tiny-roberta-cls");
    assert_eq!(m.cfg.arch, Arch::Roberta);
    assert_eq!(
        m.max_len(),
        66,
        "68 positions minus RoBERTa's padding offset of 2"
    );
    let inputs = inputs_and_ids(&m, &cases);
    let out = m.classify(&inputs, Truncation::Truncate).unwrap();
    for (i, (c, r)) in cases.iter().zip(&out).enumerate() {
        let d = max_abs_diff(&r.logits, &floats(&c["logits"]));
        assert!(d <= 1e-4, "case {i}: logits differ by {d}");
        let sum: f32 = r.scores.iter().map(|s| s.score).sum();
        assert!((sum - 1.0).abs() < 1e-5, "softmax sums to one");
    }
}

#[test]
fn distilbert_token_classification_from_pytorch_bin_and_vocab_txt() {
    let (m, cases) = fixture("tiny-distilbert-tag");
    assert_eq!(m.cfg.arch, Arch::DistilBert);
    assert_eq!(m.task, Task::Tag);
    assert!(m.tokenizer().path().ends_with("vocab.txt"));
    let inputs = inputs_and_ids(&m, &cases);
    let out = m.token_logits(&inputs, Truncation::Truncate).unwrap();
    for (i, (c, r)) in cases.iter().zip(&out).enumerate() {
        let d = max_abs_diff(r, &floats(&c["logits"]));
        assert!(d <= 1e-4, "case {i}: token logits differ by {d}");
    }
}

#[test]
fn bert_multi_label_uses_sigmoid() {
    let (m, cases) = fixture("tiny-bert-multilabel");
    assert!(m.cfg.multi_label);
    let inputs = inputs_and_ids(&m, &cases);
    let out = m.classify(&inputs, Truncation::Truncate).unwrap();
    for (i, (c, r)) in cases.iter().zip(&out).enumerate() {
        let want = floats(&c["logits"]);
        assert!(max_abs_diff(&r.logits, &want) <= 1e-4, "case {i}");
        for (s, z) in r.scores.iter().zip(&want) {
            assert!(
                (s.score - 1.0 / (1.0 + (-z).exp())).abs() < 1e-5,
                "sigmoid of case {i}"
            );
        }
    }
}
