//! A broken model directory is a clear error naming the file and the problem, never a panic.

mod common;

use std::path::Path;

use common::model_dir;
use samp::model::{LoadOptions, Model};

fn load_err(dir: &Path) -> String {
    match Model::load(dir, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded but should not have", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

/// A copy of the MiniLM directory (weights symlinked) to break one file at a time.
fn copy_minilm() -> tempfile::TempDir {
    let src = model_dir("all-MiniLM-L6-v2");
    let tmp = tempfile::tempdir().unwrap();
    for f in [
        "config.json",
        "tokenizer.json",
        "vocab.txt",
        "tokenizer_config.json",
    ] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    std::os::unix::fs::symlink(
        src.join("model.safetensors"),
        tmp.path().join("model.safetensors"),
    )
    .unwrap();
    tmp
}

#[test]
fn missing_directory() {
    let e = load_err(Path::new("/nonexistent/samp-model"));
    assert!(
        e.contains("/nonexistent/samp-model") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn missing_config() {
    let d = copy_minilm();
    std::fs::remove_file(d.path().join("config.json")).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("config.json") && e.contains("missing"), "{e}");
}

#[test]
fn malformed_config() {
    let d = copy_minilm();
    std::fs::write(d.path().join("config.json"), "{not json").unwrap();
    let e = load_err(d.path());
    assert!(e.contains("config.json") && e.contains("malformed"), "{e}");
}

#[test]
fn invalid_utf8_config() {
    let d = copy_minilm();
    std::fs::write(d.path().join("config.json"), [0xff, 0xfe, b'{', b'}']).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("config.json") && e.contains("malformed"), "{e}");
}

#[test]
fn unknown_architecture() {
    let d = copy_minilm();
    let p = d.path().join("config.json");
    let cfg = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"bert\"", "\"gpt2\"");
    std::fs::write(&p, cfg).unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("config.json") && e.contains("gpt2") && e.contains("unsupported"),
        "{e}"
    );
}

#[test]
fn tokenizer_vocabulary_mismatch() {
    let d = copy_minilm();
    let p = d.path().join("config.json");
    let cfg = std::fs::read_to_string(&p)
        .unwrap()
        .replace("30522", "1000");
    std::fs::write(&p, cfg).unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("tokenizer.json") && e.contains("vocab_size 1000"),
        "{e}"
    );
}

#[test]
fn missing_weights() {
    let d = copy_minilm();
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("model.safetensors") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn corrupt_weights() {
    let d = copy_minilm();
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    std::fs::write(
        d.path().join("model.safetensors"),
        b"garbage bytes, not safetensors",
    )
    .unwrap();
    let e = load_err(d.path());
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn weights_of_the_wrong_shape() {
    let d = copy_minilm();
    let p = d.path().join("config.json");
    let cfg = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"intermediate_size\": 1536", "\"intermediate_size\": 1024");
    std::fs::write(&p, cfg).unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("intermediate.dense.weight") && e.contains("shape"),
        "{e}"
    );
}

#[test]
fn tokenizer_falls_back_to_vocab_txt() {
    let d = copy_minilm();
    std::fs::remove_file(d.path().join("tokenizer.json")).unwrap();
    let m = Model::load(d.path(), &LoadOptions::default()).unwrap();
    let enc = m
        .tokenizer()
        .encode(
            &"Hello, World!".into(),
            0,
            samp::tokenize::Truncation::Truncate,
        )
        .unwrap();
    // [CLS] hello , world ! [SEP] — lower-cased WordPiece, as tokenizer.json does it.
    assert_eq!(enc.ids(), &[101, 7592, 1010, 2088, 999, 102]);
    std::fs::remove_file(d.path().join("vocab.txt")).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("tokenizer") && e.contains("missing"), "{e}");
}

#[test]
fn task_head_without_labels() {
    let d = copy_minilm();
    let e = match Model::load(
        d.path(),
        &LoadOptions {
            task: Some(samp::model::config::Task::Classify),
            ..Default::default()
        },
    ) {
        Ok(_) => panic!("classify head on an embedding model"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("id2label"), "{e}");
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

#[test]
fn pad_token_id_outside_the_vocabulary() {
    let d = copy_minilm();
    edit_json(&d.path().join("config.json"), |v| {
        v["pad_token_id"] = serde_json::json!(u64::MAX)
    });
    let e = load_err(d.path());
    assert!(
        e.contains("config.json") && e.contains("pad_token_id"),
        "{e}"
    );
}

#[test]
fn max_seq_length_below_two() {
    let d = copy_minilm();
    std::fs::write(
        d.path().join("sentence_bert_config.json"),
        r#"{"max_seq_length": 1}"#,
    )
    .unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("sentence_bert_config.json") && e.contains("max_seq_length"),
        "{e}"
    );
}

#[test]
fn modules_json_path_leaving_the_directory() {
    let d = copy_minilm();
    std::fs::write(
        d.path().join("modules.json"),
        r#"[{"idx": 1, "name": "1", "path": "../../etc", "type": "sentence_transformers.models.Pooling"}]"#,
    )
    .unwrap();
    let e = load_err(d.path());
    assert!(e.contains("modules.json") && e.contains("leaves"), "{e}");
}

/// NaN weights load (the file is well-formed) but never produce an answer.
#[test]
fn nan_weights_give_an_error_not_nan_outputs() {
    let src = common::root().join("tests/fixtures/tiny-bert-multilabel");
    let d = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), d.path().join(f.file_name())).unwrap();
    }
    let path = d.path().join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let hlen = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + hlen]).unwrap();
    let (name, t) = header
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.ends_with("attention.output.dense.bias"))
        .unwrap();
    assert_eq!(t["dtype"], "F32", "{name}");
    let start = 8 + hlen + t["data_offsets"][0].as_u64().unwrap() as usize;
    bytes[start..start + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let m = Model::load(d.path(), &LoadOptions::default()).unwrap();
    let e = m
        .embed(&[samp::tokenize::Input::from("hello")], &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("non-finite"), "{e}");
}
