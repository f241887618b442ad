//! The gRPC server end to end, in-process on 127.0.0.1:0 with the real models: every RPC, the
//! error codes, no cross-talk under concurrency, overload, deadlines, health, reflection,
//! metrics and graceful shutdown.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{max_abs_diff, model_dir, start};
use samp::config::{ModelEntry, ServeConfig};
use samp::model::{EmbedOptions, LoadOptions, Model};
use samp::server::proto;
use samp::server::proto::samp_client::SampClient;
use samp::tokenize::Input;
use tonic::Code;

fn config(models: &[&str]) -> ServeConfig {
    let mut c = ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    };
    c.models = models
        .iter()
        .map(|m| ModelEntry {
            name: m.to_string(),
            path: model_dir(m),
            plan: None,
            variants: Default::default(),
            device: None,
        })
        .collect();
    c.shutdown_grace_seconds = 20;
    c.validate().unwrap()
}

fn embed_req(texts: &[&str]) -> proto::EmbedRequest {
    proto::EmbedRequest {
        texts: texts.iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    }
}

fn library_embedding(text: &str) -> Vec<f32> {
    static M: std::sync::OnceLock<Model> = std::sync::OnceLock::new();
    let m = M.get_or_init(|| {
        Model::load(&model_dir("all-MiniLM-L6-v2"), &LoadOptions::default()).unwrap()
    });
    m.embed(&[Input::from(text)], &EmbedOptions::default())
        .unwrap()
        .remove(0)
        .embedding
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_like_the_library() {
    let s = start(config(&[
        "all-MiniLM-L6-v2",
        "minilm-sentiment",
        "rampart-pii",
    ]))
    .await;
    let mut c = s.client().await;

    let mut req = embed_req(&["hello world", "a second, longer sentence about serving"]);
    req.model = "all-MiniLM-L6-v2".into();
    let r = c.embed(req).await.unwrap().into_inner();
    assert_eq!(r.embeddings.len(), 2);
    assert!(max_abs_diff(&r.embeddings[0].values, &library_embedding("hello world")) < 1e-6);
    let served = r.served.unwrap();
    assert_eq!(
        (served.model.as_str(), served.variant.as_str()),
        ("all-MiniLM-L6-v2", "float32")
    );
    assert_eq!(
        served.tokens,
        r.embeddings.iter().map(|e| e.tokens).sum::<u32>()
    );
    assert!(served.inference_seconds > 0.0);

    // Model name optional when one model does the task.
    let r = c
        .classify(proto::ClassifyRequest {
            inputs: vec![
                proto::ClassifyInput {
                    input: Some(proto::classify_input::Input::Text(
                        "I loved this film".into(),
                    )),
                },
                proto::ClassifyInput {
                    input: Some(proto::classify_input::Input::Pair(proto::TextPair {
                        a: "The plot was dull.".into(),
                        b: "I fell asleep.".into(),
                    })),
                },
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results[0].label, "POSITIVE");
    assert_eq!(r.results[0].scores.len(), 2);
    assert_eq!(r.served.unwrap().model, "minilm-sentiment");

    let r = c
        .tag(proto::TagRequest {
            texts: vec!["My name is John Smith".into()],
            aggregation: proto::Aggregation::First as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let e = &r.results[0].entities;
    assert_eq!(
        e.iter().map(|e| e.text.as_str()).collect::<Vec<_>>(),
        ["John", "Smith"]
    );
    assert_eq!((e[0].start, e[0].end), (11, 15));

    let models = c
        .list_models(proto::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    assert_eq!(models.len(), 3);
    let info = c
        .get_model(proto::GetModelRequest {
            model: "rampart-pii".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (info.task.as_str(), info.labels.len(), info.max_tokens),
        ("tag", 35, 512)
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_map_to_the_right_codes() {
    let mut cfg = config(&["all-MiniLM-L6-v2"]);
    cfg.limits.max_inputs = 4;
    let s = start(cfg).await;
    let mut c = s.client().await;
    let code = |r: Result<tonic::Response<proto::EmbedResponse>, tonic::Status>| {
        let st = r.unwrap_err();
        (st.code(), st.message().to_string())
    };
    let (k, msg) = code(c.embed(embed_req(&[])).await);
    assert_eq!(k, Code::InvalidArgument);
    assert!(msg.contains("inputs") && msg.contains("empty"), "{msg}");
    let (k, msg) = code(c.embed(embed_req(&["ok", ""])).await);
    assert_eq!(k, Code::InvalidArgument);
    assert!(msg.contains("texts[1]"), "{msg}");
    let (k, _) = code(c.embed(embed_req(&["a", "b", "c", "d", "e"])).await);
    assert_eq!(k, Code::InvalidArgument);
    let mut r = embed_req(&["x"]);
    r.model = "nope".into();
    assert_eq!(code(c.embed(r).await).0, Code::NotFound);
    let mut r = embed_req(&["x"]);
    r.variant = "int8".into();
    assert_eq!(code(c.embed(r).await).0, Code::NotFound);
    let mut r = embed_req(&[&"long text ".repeat(300)]);
    r.truncation = proto::Truncation::Error as i32;
    let (k, msg) = code(c.embed(r).await);
    assert_eq!(k, Code::InvalidArgument);
    assert!(msg.contains("texts[0]"), "{msg}");
    let mut r = embed_req(&["x"]);
    r.truncation = 99;
    assert_eq!(code(c.embed(r).await).0, Code::InvalidArgument);
    let mut r = embed_req(&["x"]);
    r.dimensions = 1000;
    assert_eq!(code(c.embed(r).await).0, Code::InvalidArgument);
    // A task the model doesn't have.
    let st = c
        .classify(proto::ClassifyRequest {
            inputs: vec![proto::ClassifyInput {
                input: Some(proto::classify_input::Input::Text("x".into())),
            }],
            model: "all-MiniLM-L6-v2".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::FailedPrecondition);
    let st = c
        .tag(proto::TagRequest {
            texts: vec!["x".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::FailedPrecondition, "no loaded model tags");
    // The server still answers after all that.
    assert!(c.embed(embed_req(&["still alive"])).await.is_ok());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_get_exactly_their_own_results() {
    let s = start(config(&["all-MiniLM-L6-v2"])).await;
    let words = [
        "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta",
    ];
    let mut tasks = Vec::new();
    for i in 0..64usize {
        let addr = s.addr;
        // Mixed lengths: 1 to ~60 words, distinct per client.
        let text = (0..(1 + (i * 7) % 60))
            .map(|j| words[(i + j) % 8])
            .collect::<Vec<_>>()
            .join(" ");
        let text = format!("client {i}: {text}");
        tasks.push(tokio::spawn(async move {
            let mut c = SampClient::connect(format!("http://{addr}")).await.unwrap();
            let other = format!("second input of client {i}");
            let r = c
                .embed(embed_req(&[&text, &other]))
                .await
                .unwrap()
                .into_inner();
            (text, other, r)
        }));
    }
    for t in tasks {
        let (text, other, r) = t.await.unwrap();
        assert!(
            max_abs_diff(&r.embeddings[0].values, &library_embedding(&text)) < 1e-5,
            "{text}"
        );
        assert!(
            max_abs_diff(&r.embeddings[1].values, &library_embedding(&other)) < 1e-5,
            "{other}"
        );
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_at_once_and_admitted_requests_succeed() {
    let mut cfg = config(&["all-MiniLM-L6-v2"]);
    cfg.batching.queue_capacity = 2;
    cfg.batching.max_batch_size = 8;
    let s = start(cfg).await;
    let long = "a fairly long sentence that keeps the encoder busy for a while ".repeat(3);
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let addr = s.addr;
        let texts: Vec<String> = (0..8).map(|i| format!("{i} {long}")).collect();
        tasks.push(tokio::spawn(async move {
            let mut c = SampClient::connect(format!("http://{addr}")).await.unwrap();
            c.embed(proto::EmbedRequest {
                texts,
                ..Default::default()
            })
            .await
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => {
                assert_eq!(r.into_inner().embeddings.len(), 8);
                ok += 1;
            }
            Err(st) => {
                assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
                refused += 1;
            }
        }
    }
    assert!(
        refused > 0,
        "a queue of 2 must refuse some of 40 concurrent requests"
    );
    assert!(ok > 0);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_the_queue_cannot_meet_is_refused_at_once() {
    let s = start(config(&["all-MiniLM-L6-v2"])).await;
    let addr = s.addr;
    // Keep the compute thread busy with a large request...
    let busy = tokio::spawn(async move {
        let mut c = SampClient::connect(format!("http://{addr}")).await.unwrap();
        let texts: Vec<String> = (0..256)
            .map(|i| format!("{i} {}", "busy words ".repeat(60)))
            .collect();
        c.embed(proto::EmbedRequest {
            texts,
            ..Default::default()
        })
        .await
    });
    // Until the busy request is computing: its tokens are counted once it is admitted.
    tokio::time::sleep(Duration::from_millis(400)).await;
    // ...then ask for an answer within 50 ms (grpc-timeout, as a client deadline sends it).
    // Seconds of work are ahead of it: refused at once, not left to expire in the queue.
    let mut c = s.client().await;
    let mut req = tonic::Request::new(embed_req(&["too late"]));
    req.metadata_mut()
        .insert("grpc-timeout", "50m".parse().unwrap());
    let t0 = std::time::Instant::now();
    let st = c.embed(req).await.unwrap_err();
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    assert!(st.message().contains("deadline"), "{st:?}");
    // The code proves the refusal beat the 50 ms deadline on the server (tonic's own timer
    // would have answered CANCELLED). The client's clock also counts the trip back, which took
    // 52 ms once in CI while the busy request held both cores: so the bound here only rules out
    // waiting on the queue, which holds seconds of work.
    assert!(
        t0.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t0.elapsed()
    );
    // A deadline already gone when the call arrives (samp keeps a 2 ms margin, so 2 ms is gone)
    // is DEADLINE_EXCEEDED from samp, busy server or not. tonic's own timer for the same header
    // answers CANCELLED when it fires first: with "1m" that happened once on this 2-core VM
    // while the busy request held both cores; "2m" leaves the handler the whole margin.
    let mut req = tonic::Request::new(embed_req(&["far too late"]));
    req.metadata_mut()
        .insert("grpc-timeout", "2m".parse().unwrap());
    let st = c.embed(req).await.unwrap_err();
    assert_eq!(st.code(), Code::DeadlineExceeded, "{st:?}");
    assert!(
        busy.await.unwrap().is_ok(),
        "the long request still completes"
    );
    let body = scrape(s.metrics).await;
    let refused: f64 = body
        .lines()
        .filter(|l| {
            l.starts_with("samp_refused_total{")
                && l.contains("model=\"all-MiniLM-L6-v2\"")
                && l.contains("reason=\"deadline\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(refused >= 1.0, "the refusal is counted:\n{body}");
    s.shutdown().await;
}

#[test]
fn compute_thread_answers_deadline_exceeded_for_expired_jobs() {
    use samp::backend::{HeadWork, Job, JobError, ModelWorker};
    use std::sync::Arc;
    let model =
        Arc::new(Model::load(&model_dir("all-MiniLM-L6-v2"), &LoadOptions::default()).unwrap());
    let worker = ModelWorker::spawn(model.clone(), "float32", Default::default()).unwrap();
    let texts: Vec<Input> = (0..100)
        .map(|i| Input::from(format!("{i} {}", "busy ".repeat(50)).as_str()))
        .collect();
    let (busy, busy_rx) = Job::new(
        model.tokenize(&texts, Default::default()).unwrap(),
        HeadWork::Embed(Default::default()),
        None,
    );
    worker.submit(busy).unwrap();
    let past = std::time::Instant::now();
    let (late, late_rx) = Job::new(
        model
            .tokenize(&[Input::from("late")], Default::default())
            .unwrap(),
        HeadWork::Embed(Default::default()),
        Some(past),
    );
    worker.submit(late).unwrap();
    assert!(busy_rx.blocking_recv().unwrap().is_ok());
    assert!(matches!(
        late_rx.blocking_recv().unwrap(),
        Err(JobError::DeadlineExceeded)
    ));
    worker.drain();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_metrics() {
    let s = start(config(&["all-MiniLM-L6-v2"])).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", s.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "samp.v1.Samp"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }

    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("no service list")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.contains(&"samp.v1.Samp") && names.contains(&"grpc.health.v1.Health"),
        "{names:?}"
    );

    let mut c = s.client().await;
    c.embed(embed_req(&["count me"])).await.unwrap();
    let _ = c.embed(embed_req(&[""])).await;
    let body = scrape(s.metrics).await;
    let line = |prefix: &str| {
        body.lines()
            .find(|l| l.starts_with(prefix))
            .map(str::to_string)
    };
    let ok = line("samp_requests_total{rpc=\"embed\",api=\"grpc\",model=\"all-MiniLM-L6-v2\",variant=\"float32\",outcome=\"ok\"}")
        .unwrap_or_else(|| panic!("no ok counter in:\n{body}"));
    assert!(ok.rsplit(' ').next().unwrap().parse::<f64>().unwrap() >= 1.0);
    assert!(line("samp_requests_total{rpc=\"embed\",api=\"grpc\",model=\"all-MiniLM-L6-v2\",variant=\"float32\",outcome=\"invalid_argument\"}").is_some());
    assert!(
        body.contains("samp_inference_seconds_bucket"),
        "histograms exported"
    );
    // Every sample line parses as `name{labels} value`.
    for l in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let v = l.rsplit(' ').next().unwrap();
        assert!(
            v.parse::<f64>().is_ok() || v == "+Inf" || v == "NaN",
            "unparsable sample {l:?}"
        );
    }
    s.shutdown().await;
}

async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    sock.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// One HTTP/1.1 call on its own connection: (status, body).
async fn http(addr: SocketAddr, head: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{head} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    sock.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    (status, out.split_once("\r\n\r\n").unwrap().1.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_door_runs_the_grpc_handlers() {
    use base64::Engine as _;
    let s = start(config(&["all-MiniLM-L6-v2"])).await;
    // The metrics recorder is the process's: other tests' HTTP requests count there too, so
    // this test's requests are what the count grows by at least.
    let http_ok = r#"samp_requests_total{rpc="embed",api="http",model="all-MiniLM-L6-v2",variant="float32",outcome="ok"} "#;
    let count = |body: &str| -> u64 {
        body.lines()
            .find_map(|l| l.strip_prefix(http_ok))
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    let before = count(&scrape(s.metrics).await);
    let want = s
        .client()
        .await
        .embed(embed_req(&["hello there", "second"]))
        .await
        .unwrap()
        .into_inner();
    let want: Vec<Vec<f32>> = want.embeddings.into_iter().map(|e| e.values).collect();
    // TEI /embed: the same numbers as gRPC.
    let (status, body) = http(
        s.http,
        "POST /embed",
        r#"{"inputs": ["hello there", "second"]}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let got: Vec<Vec<f32>> = serde_json::from_str(&body).unwrap();
    assert_eq!(got, want);
    // OpenAI /v1/embeddings, base64: little-endian float32.
    let (status, body) = http(
        s.http,
        "POST /v1/embeddings",
        r#"{"model": "all-MiniLM-L6-v2", "input": "hello there", "encoding_format": "base64"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let floats: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(floats, want[0]);
    assert_eq!(v["usage"]["prompt_tokens"], 4, "{body}");
    // Errors keep the gRPC code, as an HTTP status and JSON.
    let (status, body) = http(s.http, "POST /embed", r#"{"inputs": []}"#).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("INVALID_ARGUMENT"), "{body}");
    let (status, body) = http(s.http, "POST /embed", r#"{"inputs": "x", "model": "nope"}"#).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = http(s.http, "POST /embed", "{not json").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = http(s.http, "POST /predict", r#"{"inputs": "x"}"#).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("FAILED_PRECONDITION"), "{body}");
    // Too many inputs: counted before any text is allocated.
    let many = format!(r#"{{"inputs": [{}"a"]}}"#, "\"a\",".repeat(300));
    let (status, body) = http(s.http, "POST /embed", &many).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("301 inputs"), "{body}");
    // A body announced past the message limit is refused before it is read.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(s.http).await.unwrap();
    sock.write_all(b"POST /embed HTTP/1.1\r\nhost: x\r\ncontent-length: 999999999\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    sock.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 429");
    let (status, _) = http(s.http, "GET /health", "").await;
    assert_eq!(status, 200);
    // The same request metrics, under api="http": this test's two embeddings at least.
    let body = scrape(s.metrics).await;
    assert!(count(&body) >= before + 2, "{before} before:\n{body}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_load_answers_every_admitted_request() {
    let s = start(config(&["all-MiniLM-L6-v2"])).await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let addr = s.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = SampClient::connect(format!("http://{addr}")).await.unwrap();
            let texts: Vec<String> = (0..16)
                .map(|j| format!("request {i} text {j} {}", "words ".repeat(20)))
                .collect();
            c.embed(proto::EmbedRequest {
                texts,
                ..Default::default()
            })
            .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    s.shutdown().await;
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => {
                assert_eq!(r.into_inner().embeddings.len(), 16);
                ok += 1;
            }
            // Not yet admitted when shutdown began: refused cleanly, never dropped mid-way.
            Err(st) => assert_eq!(st.code(), Code::Unavailable, "{st:?}"),
        }
    }
    assert!(ok > 0, "requests admitted before shutdown are answered");
}

/// A quantized plan served as a second variant of the same model, beside the float default; a
/// report beside the plan feeds GetModel and the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quantized_variant_serves_beside_the_float_default() {
    use samp::quant::plan::{ActMode, LayerMode, Plan};
    let dir = tempfile::tempdir().unwrap();
    let plan_path = dir.path().join("fq.json");
    let mut m = Model::load(&model_dir("all-MiniLM-L6-v2"), &LoadOptions::default()).unwrap();
    let calib: Vec<Input> = ["a short sentence", "another one, a little longer than that"]
        .map(Input::from)
        .to_vec();
    let obs = m
        .calibrate(&calib, samp::tokenize::Truncation::Truncate)
        .unwrap();
    let scales: Vec<[f32; 4]> = obs
        .iter()
        .map(|l| [0, 1, 2, 3].map(|g| l[g].scale(samp::quant::observer::Calibration::Max)))
        .collect();
    let mut plan = Plan::from_modes(
        "fully-quant",
        &[LayerMode::Full; 6],
        &scales,
        ActMode::Static,
        None,
    );
    plan.name = "fully-quant".into();
    plan.write(&plan_path).unwrap();
    std::fs::write(
        dir.path().join("report.json"),
        r#"{"metric": "spearman", "float_score": 0.8, "chosen": 0,
            "trials": [{"name": "fully-quant", "score": 0.78}]}"#,
    )
    .unwrap();

    let mut cfg = config(&["all-MiniLM-L6-v2"]);
    cfg.models[0]
        .variants
        .insert("int8".into(), plan_path.clone());
    cfg.fidelity_sample_rate = 1.0;
    let s = start(cfg).await;
    let mut c = s.client().await;

    let mut req = embed_req(&["hello world"]);
    req.variant = "int8".into();
    let r = c.embed(req).await.unwrap().into_inner();
    assert_eq!(r.served.unwrap().variant, "int8");
    let float = library_embedding("hello world");
    let cos = common::cosine(&r.embeddings[0].values, &float);
    assert!(
        cos > 0.95 && cos < 0.999999,
        "int8 variant cosine to float {cos}"
    );
    let r = c
        .embed(embed_req(&["hello world"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.served.unwrap().variant, "float32");
    assert!(max_abs_diff(&r.embeddings[0].values, &float) < 1e-6);

    let info = c
        .get_model(proto::GetModelRequest {
            model: "all-MiniLM-L6-v2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<(&str, bool)> = info
        .variants
        .iter()
        .map(|v| (v.name.as_str(), v.is_default))
        .collect();
    assert_eq!(names, [("float32", true), ("int8", false)]);
    let v = &info.variants[1];
    assert!(v.precision.contains("int8 GEMMs 24/24"), "{}", v.precision);
    assert_eq!((v.metric.as_str(), v.score), ("spearman", Some(0.78)));
    assert!((v.drop.unwrap() - 0.02).abs() < 1e-9);
    // Online fidelity: the int8 request was shadowed through the float variant.
    let mut text = String::new();
    for _ in 0..50 {
        text = scrape(s.metrics).await;
        if text.contains("samp_fidelity_cosine_count") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let count = text
        .lines()
        .find(|l| l.starts_with("samp_fidelity_cosine_count") && l.contains("variant=\"int8\""))
        .unwrap_or_else(|| panic!("no fidelity metric: {text}"));
    assert!(count.ends_with(" 1"), "{count}");
    let sum: f64 = text
        .lines()
        .find(|l| l.starts_with("samp_fidelity_cosine_sum"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!((sum - cos).abs() < 1e-3, "shadow cosine {sum} vs {cos}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("samp_variant_score{") && l.contains("variant=\"int8\"")),
        "{text}"
    );
    let mut req = embed_req(&["x"]);
    req.variant = "bf16".into();
    let e = c.embed(req).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("float32, int8"), "{}", e.message());
    s.shutdown().await;
}

/// Streaming: pipelined requests on one stream come back in order, each equal to its unary
/// answer; a bad request ends the stream with its status after the earlier answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_answer_in_order_and_end_on_the_first_error() {
    let s = start(config(&["all-MiniLM-L6-v2"])).await;
    let mut c = s.client().await;
    let texts: Vec<String> = (0..12)
        .map(|i| format!("sentence number {i} about {}", "streams ".repeat(i % 5)))
        .collect();
    let reqs: Vec<proto::EmbedRequest> = texts.iter().map(|t| embed_req(&[t])).collect();
    let mut answers = c
        .embed_stream(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(r) = answers.message().await.unwrap() {
        let want = library_embedding(&texts[n]);
        assert!(
            max_abs_diff(&r.embeddings[0].values, &want) < 1e-6,
            "answer {n}"
        );
        n += 1;
    }
    assert_eq!(n, texts.len());

    let reqs = vec![
        embed_req(&["fine"]),
        embed_req(&[""]),
        embed_req(&["never answered"]),
    ];
    let mut answers = c
        .embed_stream(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    assert!(answers.message().await.unwrap().is_some());
    let e = answers.message().await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("texts[0]"), "{}", e.message());
    s.shutdown().await;
}

/// Whether the server closes `sock` within `within` (the peer's end of input, or a reset).
async fn closed_within(sock: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let t0 = tokio::time::Instant::now();
    loop {
        let left = within.saturating_sub(t0.elapsed());
        match tokio::time::timeout(left, sock.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // the server's HTTP/2 preface and settings
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_calls_in_progress_are_not() {
    use tokio::io::AsyncWriteExt;
    let mut cfg = config(&["all-MiniLM-L6-v2"]);
    cfg.connections.idle_timeout_seconds = 1;
    let s = start(cfg).await;
    let t0 = std::time::Instant::now();
    // A gRPC connection that never calls; an HTTP request whose headers never end.
    let mut grpc = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    grpc.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut http = tokio::net::TcpStream::connect(s.http).await.unwrap();
    http.write_all(b"POST /embed HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    assert!(closed_within(&mut grpc, Duration::from_secs(5)).await);
    assert!(closed_within(&mut http, Duration::from_secs(5)).await);
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "closed after the idle timeout, not before: {:?}",
        t0.elapsed()
    );

    // A stream open past the timeout is a call in progress: its connection stays.
    let mut c = s.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut answers = c
        .embed_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(embed_req(&["first"])).await.unwrap();
    assert!(answers.message().await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    tx.send(embed_req(&["after a pause longer than the idle timeout"]))
        .await
        .unwrap();
    assert!(answers.message().await.unwrap().is_some());
    drop(tx);
    assert!(answers.message().await.unwrap().is_none());
    // On the HTTP door, a request whose body arrives slowly is a call in progress too.
    let body = r#"{"inputs": "a slow upload"}"#;
    let mut slow = tokio::net::TcpStream::connect(s.http).await.unwrap();
    let head = format!(
        "POST /embed HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&body.as_bytes()[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    slow.write_all(&body.as_bytes()[10..]).await.unwrap();
    let mut out = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut slow, &mut out)
        .await
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");

    // The client's connection is closed once idle; its next call connects again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = c.embed(embed_req(&["again"])).await.unwrap().into_inner();
    assert_eq!(r.embeddings.len(), 1);
    s.shutdown().await;
}
