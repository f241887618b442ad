//! A hostile client against the real binary serving three models on 127.0.0.1:0: one huge
//! request, a burst far past capacity, one long Tag job, malformed bytes, a wrong token and
//! SIGTERM under a full queue. Each must end in OK, INVALID_ARGUMENT, RESOURCE_EXHAUSTED,
//! DEADLINE_EXCEEDED (or UNAVAILABLE once shutting down), with memory bounded, nothing lost and
//! health right throughout.
//!
//! `SAMP_BIN=path/to/samp cargo test --release --test hostile` attacks another binary instead
//! (see `common::serve_process`): on 92f7000, the main before the hardening, the five attacks
//! of the first paragraph of issue #13 (huge request, malformed bytes, burst, long Tag job,
//! SIGTERM past the grace) all fail.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{model_dir, ServeProcess};
use samp::server::proto;
use samp::server::proto::samp_client::SampClient;
use tonic::Code;

/// One server at a time: the timings and memory bounds below are for a machine that is not
/// also running five other servers.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn start(extra: &[&str]) -> ServeProcess {
    let mut args: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
    for m in ["all-MiniLM-L6-v2", "minilm-sentiment", "rampart-pii"] {
        args.push("--model".into());
        args.push(format!("{m}={}", model_dir(m).display()));
    }
    common::serve_process(&args)
}

/// What the tests ask of a running server.
trait Probe {
    async fn client(&self) -> SampClient<tonic::transport::Channel>;
    fn rss_kib(&self) -> (u64, u64);
    fn reset_peak(&self);
    async fn metrics(&self, token: Option<&str>) -> String;
    async fn counted(&self) -> f64;
    async fn health(&self) -> i32;
}

impl Probe for ServeProcess {
    async fn client(&self) -> SampClient<tonic::transport::Channel> {
        SampClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap()
            .max_encoding_message_size(64 << 20)
    }

    /// (current RSS, peak RSS since the last `reset_peak`) in KiB.
    fn rss_kib(&self) -> (u64, u64) {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| {
            s.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap()
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    fn reset_peak(&self) {
        // "5" resets the peak resident set size (Linux ≥ 4.0).
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5").unwrap();
    }

    async fn metrics(&self, token: Option<&str>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&self.metrics).await.unwrap();
        let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
        s.write_all(format!("GET /metrics HTTP/1.0\r\n{auth}\r\n").as_bytes())
            .await
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        body
    }

    async fn counted(&self) -> f64 {
        sum(&self.metrics(None).await, "samp_requests_total{", &[])
    }

    async fn health(&self) -> i32 {
        let ch = tonic::transport::Channel::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
        tonic_health::pb::health_client::HealthClient::new(ch)
            .check(tonic_health::pb::HealthCheckRequest {
                service: "samp.v1.Samp".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
    }
}

fn sum(body: &str, prefix: &str, with: &[&str]) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(prefix) && with.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;

fn texts(n: usize, words: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "{i} {}",
                "Alice Smith lives in Paris and mails bob@example.com ".repeat(words)
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_request_is_refused_before_it_costs_memory() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = start(&[]);
    let mut c = s.client().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (idle, _) = s.rss_kib();
    s.reset_peak();
    // 2.5 M inputs of "a": 12.5 MB on the wire.
    let req = proto::ClassifyRequest {
        inputs: vec![
            proto::ClassifyInput {
                input: Some(proto::classify_input::Input::Text("a".into())),
            };
            2_500_000
        ],
        ..Default::default()
    };
    use prost::Message;
    let wire = req.encoded_len();
    assert!(wire > 12_000_000, "{wire}");
    let st = c.classify(req).await.unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
    assert!(st.message().contains("inputs"), "{st:?}");
    let (_, peak) = s.rss_kib();
    eprintln!(
        "idle RSS {} MiB, peak during the request {} MiB",
        idle / 1024,
        peak / 1024
    );
    assert!(
        peak <= idle + 64 * 1024,
        "peak RSS {peak} KiB vs idle {idle} KiB"
    );
    // Many pairs are many inputs, not twice as many.
    let pair = proto::ClassifyInput {
        input: Some(proto::classify_input::Input::Pair(proto::TextPair {
            a: "good".into(),
            b: "film".into(),
        })),
    };
    let r = c
        .classify(proto::ClassifyRequest {
            inputs: vec![pair; 200],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.into_inner().results.len(), 200);
    assert_eq!(s.health().await, SERVING);
}

/// Bytes that are not a valid message (invalid UTF-8 in a string field) are the client's
/// fault: INVALID_ARGUMENT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bytes_are_invalid_argument() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = start(&[]);
    let ch = tonic::transport::Channel::from_shared(format!("http://{}", s.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(ch);
    for raw in [
        vec![0x0a, 0x02, 0xc3, 0x28], // texts[0] = invalid UTF-8
        vec![0x0a, 0x7f, 0x61],       // a length past the end
        vec![
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ],
    ] {
        grpc.ready().await.unwrap();
        let path = tonic::codegen::http::uri::PathAndQuery::from_static("/samp.v1.Samp/Embed");
        let st = grpc
            .unary::<Vec<u8>, Vec<u8>, _>(tonic::Request::new(raw.clone()), path, Raw)
            .await
            .unwrap_err();
        assert_eq!(st.code(), Code::InvalidArgument, "{raw:?}: {st:?}");
    }
    assert_eq!(s.health().await, SERVING);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_capacity_is_refused_at_once_and_nothing_is_lost() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = start(&[]);
    let before = s.counted().await;
    let mut tasks = Vec::new();
    let sent = 256;
    for i in 0..sent {
        let addr = s.grpc.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = SampClient::connect(format!("http://{addr}")).await.unwrap();
            let mut req = tonic::Request::new(proto::EmbedRequest {
                texts: texts(32, 3)
                    .into_iter()
                    .map(|t| format!("{i} {t}"))
                    .collect(),
                ..Default::default()
            });
            req.set_timeout(Duration::from_secs(30));
            let t0 = Instant::now();
            let r = c.embed(req).await;
            (r.map(|_| ()).map_err(|s| s.code()), t0.elapsed())
        }));
    }
    let (mut refused, mut admitted) = (Vec::new(), Vec::new());
    for t in tasks {
        let (r, took) = t.await.unwrap();
        match r {
            Ok(()) => admitted.push(took),
            Err(Code::ResourceExhausted) => refused.push(took),
            Err(c) => panic!("unexpected {c:?} after {took:?}"),
        }
    }
    refused.sort();
    admitted.sort();
    let ok = admitted.len();
    eprintln!(
        "{ok} ok (median {:?}), {} refused (median {:?}, max {:?})",
        admitted.get(ok / 2),
        refused.len(),
        refused.get(refused.len() / 2),
        refused.last()
    );
    assert!(
        !refused.is_empty(),
        "a burst of {sent} must be partly refused"
    );
    assert!(ok > 0);
    // Refused at the door, not after waiting in line. The times here include the client's own
    // work for 256 calls on two threads and the cores the encoder is busy on, so they are
    // compared with the admitted calls' (the soak test bounds the server's refusal time under a
    // steady 3x overload in milliseconds).
    let (r50, a50) = (refused[refused.len() / 2], admitted[ok / 2]);
    assert!(r50 * 4 < a50, "refused median {r50:?}, admitted {a50:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s.counted().await - before,
        sent as f64,
        "every request counted once"
    );
    assert_eq!(s.health().await, SERVING);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_tag_job_stops_when_its_client_leaves_or_its_deadline_passes() {
    let _one = ONE_AT_A_TIME.lock().await;
    // Passes of 1,024 tokens: the 131,072-token job below is 128 passes (tens of seconds), and
    // the one in flight when its client leaves is over within a fraction of a second.
    let s = start(&["--max-batch-tokens", "1024"]);
    let mut c = s.client().await;
    let long = || proto::TagRequest {
        texts: texts(256, 40),
        ..Default::default()
    };
    // The client gives up after 300 ms: the server stops computing its job between passes.
    let gone = tokio::time::timeout(Duration::from_millis(300), c.tag(long())).await;
    assert!(gone.is_err(), "256 long texts take longer than 300 ms");
    // (The reset reaches the server's handler task a moment later.)
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    let r = c
        .tag(proto::TagRequest {
            texts: vec!["Alice lives in Paris".into()],
            ..Default::default()
        })
        .await;
    assert!(r.is_ok(), "{r:?}");
    let after_cancel = t0.elapsed();
    // With a deadline: refused at once, or stopped at the deadline — never held for longer.
    let mut req = tonic::Request::new(long());
    req.set_timeout(Duration::from_secs(2));
    let t0 = Instant::now();
    let st = c.tag(req).await.unwrap_err();
    let took = t0.elapsed();
    assert!(
        matches!(st.code(), Code::ResourceExhausted | Code::DeadlineExceeded),
        "{st:?}"
    );
    // 500 ms over the deadline for the trip back on a busy 2-core VM (a client clock that
    // counted 52 ms for a 50 ms refusal once failed CI in tests/serve.rs).
    assert!(took < Duration::from_millis(2500), "{took:?}");
    let t0 = Instant::now();
    c.tag(proto::TagRequest {
        texts: vec!["Bob works in Berlin".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let after_deadline = t0.elapsed();
    eprintln!("next request after a cancelled job: {after_cancel:?}, after a deadline: {after_deadline:?}");
    assert!(after_cancel < Duration::from_secs(2), "{after_cancel:?}");
    assert!(
        after_deadline < Duration::from_secs(2),
        "{after_deadline:?}"
    );
    assert_eq!(s.health().await, SERVING);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_guards_calls_and_metrics_but_not_health() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let s = start(&["--auth-token-file", token.to_str().unwrap()]);
    let mut c = s.client().await;
    let st = c
        .embed(proto::EmbedRequest {
            texts: vec!["hi".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unauthenticated);
    let mut req = tonic::Request::new(proto::EmbedRequest {
        texts: vec!["hi".into()],
        ..Default::default()
    });
    req.metadata_mut()
        .insert("authorization", "Bearer s3cret-token".parse().unwrap());
    assert!(c.embed(req).await.is_ok());
    assert_eq!(s.health().await, SERVING, "probes need no token");
    assert!(s.metrics(None).await.starts_with("HTTP/1.1 401"));
    assert!(s
        .metrics(Some("s3cret-token"))
        .await
        .starts_with("HTTP/1.1 200"));
}

/// A configured grace (1 s) shorter than the queue's drain: the server raises it to fit the
/// token budget, so every admitted request is answered before it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_a_full_queue_answers_every_admitted_request_and_exits_0() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut s = start(&["--shutdown-grace-seconds", "1"]);
    // One connection, open before the burst, so that every request has arrived (admitted or
    // refused) well before SIGTERM: none can be UNAVAILABLE for arriving after it.
    let c = s.client().await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.embed(proto::EmbedRequest {
                texts: texts(16, 8)
                    .into_iter()
                    .map(|t| format!("{i} {t}"))
                    .collect(),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|s| s.code())
        }));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let pid = s.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            // Refused at the door (queue full): never admitted.
            Err(Code::ResourceExhausted) => refused += 1,
            Err(c) => panic!("an admitted request was lost: {c:?} ({ok} answered before it)"),
        }
    }
    eprintln!("after SIGTERM: {ok} answered, {refused} refused at the door");
    assert!(ok > 0);
    let status = s.child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
}

/// Sends and receives raw bytes, for requests no well-behaved client can produce.
#[derive(Clone, Copy)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mutual_tls() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    let _one = ONE_AT_A_TIME.lock().await;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf("localhost");
    let (client_cert, client_key) = leaf("client");
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let (cert, key, ca_file) = (
        file("server.pem", &server_cert),
        file("server.key", &server_key),
        file("ca.pem", &ca.pem()),
    );
    let s = start(&[
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-client-ca-file",
        &ca_file,
    ]);
    let url = format!("https://{}", s.grpc);
    let tls = || {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca.pem()))
            .domain_name("localhost")
    };
    let embed = |ch: Channel| async move {
        SampClient::new(ch)
            .embed(proto::EmbedRequest {
                texts: vec!["over tls".into()],
                ..Default::default()
            })
            .await
    };
    // With a client certificate the CA signed: served.
    let ch = Channel::from_shared(url.clone())
        .unwrap()
        .tls_config(tls().identity(Identity::from_pem(&client_cert, &client_key)))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let r = embed(ch).await.unwrap().into_inner();
    assert_eq!(r.embeddings.len(), 1);
    // Without one: refused (at the handshake, or at the first call under TLS 1.3).
    let refused = match Channel::from_shared(url.clone())
        .unwrap()
        .tls_config(tls())
        .unwrap()
        .connect()
        .await
    {
        Err(_) => true,
        Ok(ch) => embed(ch).await.is_err(),
    };
    assert!(refused, "mTLS must refuse a client without a certificate");
    // Plain HTTP/2 on the TLS port: refused.
    let plain = match Channel::from_shared(format!("http://{}", s.grpc))
        .unwrap()
        .connect()
        .await
    {
        Err(_) => true,
        Ok(ch) => embed(ch).await.is_err(),
    };
    assert!(plain);
}

/// Many large uploads at once: bytes being received count against one budget for the whole
/// process, so a flood of maximal messages is refused rather than buffered into an OOM kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_large_uploads_are_bounded_by_one_byte_budget() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("samp.toml");
    std::fs::write(
        &cfg,
        "[limits]\nmax_message_bytes = 4194304\nmax_inflight_request_bytes = 8388608\n",
    )
    .unwrap();
    let s = start(&["--config", cfg.to_str().unwrap()]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (idle, _) = s.rss_kib();
    s.reset_peak();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let addr = s.grpc.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = SampClient::connect(format!("http://{addr}")).await.unwrap();
            // ~4 MB, and invalid (an empty text last): nothing is computed either way.
            let mut texts = vec![format!("{i} {}", "a ".repeat(25_000)); 80];
            texts.push(String::new());
            let st = c
                .embed(proto::EmbedRequest {
                    texts,
                    ..Default::default()
                })
                .await
                .unwrap_err();
            (st.code(), st.message().to_string())
        }));
    }
    let mut budget = 0;
    for t in tasks {
        let (code, msg) = t.await.unwrap();
        match code {
            Code::InvalidArgument => assert!(msg.contains("empty text"), "{msg}"),
            Code::ResourceExhausted => {
                assert!(msg.contains("budget"), "{msg}");
                budget += 1;
            }
            other => panic!("unexpected {other:?}: {msg}"),
        }
    }
    let (_, peak) = s.rss_kib();
    eprintln!(
        "{budget} of 16 uploads refused by the byte budget; RSS idle {} MiB, peak {} MiB",
        idle / 1024,
        peak / 1024
    );
    assert!(budget > 0, "64 MB offered at once against an 8 MB budget");
    // The budget is released: an ordinary request still goes through.
    let mut c = s.client().await;
    c.embed(proto::EmbedRequest {
        texts: vec!["after the flood".into()],
        ..Default::default()
    })
    .await
    .unwrap();
}
