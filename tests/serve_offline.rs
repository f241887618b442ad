//! The gRPC server end to end on the committed tiny fixtures (tests/fixtures, made by
//! scripts/tiny_fixtures.py): runs with a plain `cargo test`, offline, without
//! scripts/fetch_models.sh. The server's behaviour — every RPC against the library, the error
//! codes, streams, the HTTP door, shutdown — does not depend on what the model knows; the
//! tests against the real models (tests/serve.rs) check the rest.

mod common;

use samp::config::{ModelEntry, ServeConfig};
use samp::model::heads::tag::Aggregation;
use samp::model::{EmbedOptions, LoadOptions, Model};
use samp::server::proto;
use samp::tokenize::{Input, Truncation};
use tonic::Code;

const CLASSIFY: &str = "tiny-roberta-cls";
const TAG: &str = "tiny-distilbert-tag";

fn fixture(name: &str) -> std::path::PathBuf {
    common::root().join("tests/fixtures").join(name)
}

/// The two tiny fixtures served in-process on 127.0.0.1:0.
async fn start() -> common::Running {
    let mut cfg = ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    };
    cfg.models = [CLASSIFY, TAG]
        .iter()
        .map(|m| ModelEntry {
            name: m.to_string(),
            path: fixture(m),
            plan: None,
            variants: Default::default(),
            device: None,
        })
        .collect();
    cfg.shutdown_grace_seconds = 10;
    common::start(cfg.validate().unwrap()).await
}

fn load(name: &str) -> Model {
    Model::load(&fixture(name), &LoadOptions::default()).unwrap()
}

fn text(t: &str) -> proto::ClassifyInput {
    proto::ClassifyInput {
        input: Some(proto::classify_input::Input::Text(t.into())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_like_the_library_on_the_tiny_fixtures() {
    let s = start().await;
    let mut c = s.client().await;
    let texts = [
        "hello world",
        "a second sentence, a little longer than the first",
    ];

    // Classify: the only classifier is picked without a name.
    let r = c
        .classify(proto::ClassifyRequest {
            inputs: texts.iter().map(|t| text(t)).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let inputs: Vec<Input> = texts.iter().map(|t| Input::from(*t)).collect();
    let want = load(CLASSIFY)
        .classify(&inputs, Truncation::Truncate)
        .unwrap();
    assert_eq!(r.results.len(), want.len());
    for (got, want) in r.results.iter().zip(&want) {
        assert_eq!(got.label, want.label);
        assert!((got.score - want.score).abs() < 1e-6);
        assert_eq!(got.tokens as usize, want.tokens);
    }
    assert_eq!(r.served.unwrap().model, CLASSIFY);

    // Tag: entities as the library finds them (whatever a random tiny model finds).
    let r = c
        .tag(proto::TagRequest {
            texts: texts.iter().map(|t| t.to_string()).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        r.results.iter().any(|t| !t.entities.is_empty()),
        "the tiny tagger finds entities, so the comparison means something"
    );
    let owned: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
    let want = load(TAG)
        .tag(&owned, Aggregation::Simple, Truncation::Truncate)
        .unwrap();
    for (got, want) in r.results.iter().zip(&want) {
        let got: Vec<(&str, u32, u32)> = got
            .entities
            .iter()
            .map(|e| (e.label.as_str(), e.start, e.end))
            .collect();
        let want: Vec<(&str, u32, u32)> = want
            .entities
            .iter()
            .map(|e| (e.label.as_str(), e.start as u32, e.end as u32))
            .collect();
        assert_eq!(got, want);
    }

    // Embed works on any model, named.
    let r = c
        .embed(proto::EmbedRequest {
            texts: vec![texts[0].into()],
            model: TAG.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let want = load(TAG)
        .embed(&[Input::from(texts[0])], &EmbedOptions::default())
        .unwrap();
    let diff = r.embeddings[0]
        .values
        .iter()
        .zip(&want[0].embedding)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-6, "{diff}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_streams_and_the_http_door_on_the_tiny_fixtures() {
    let s = start().await;
    let mut c = s.client().await;
    let classify = |inputs: Vec<proto::ClassifyInput>, model: &str| proto::ClassifyRequest {
        inputs,
        model: model.into(),
        ..Default::default()
    };
    let code =
        |r: Result<tonic::Response<proto::ClassifyResponse>, tonic::Status>| r.unwrap_err().code();
    assert_eq!(
        code(c.classify(classify(vec![], CLASSIFY)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.classify(classify(vec![text("")], CLASSIFY)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.classify(classify(vec![text("x")], "nope")).await),
        Code::NotFound
    );
    assert_eq!(
        code(c.classify(classify(vec![text("x")], TAG)).await),
        Code::FailedPrecondition,
        "the tagger has no classify head"
    );
    // Two models embed: a request must name one.
    let st = c
        .embed(proto::EmbedRequest {
            texts: vec!["x".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::FailedPrecondition, "{}", st.message());

    // A stream: answers in order, the first error ends it.
    let reqs = vec![
        classify(vec![text("first")], CLASSIFY),
        classify(vec![text("second")], CLASSIFY),
        classify(vec![text("")], CLASSIFY),
        classify(vec![text("never answered")], CLASSIFY),
    ];
    let mut answers = c
        .classify_stream(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..2 {
        assert!(answers.message().await.unwrap().is_some());
    }
    let e = answers.message().await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // The HTTP door runs the same handler.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = r#"{"inputs": "hello world"}"#;
    let mut sock = tokio::net::TcpStream::connect(s.http).await.unwrap();
    let req = format!(
        "POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    sock.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(out.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let labels = load(CLASSIFY).labels.clone();
    assert_eq!(json.as_array().unwrap().len(), labels.len(), "{json}");
    s.shutdown().await;
}
