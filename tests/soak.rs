//! Overload soak against the real binary: measure the server's capacity with the load
//! generator, then offer three times that for a minute. The server must keep answering
//! (OK, or RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED by its admission control and deadlines, and
//! nothing else), keep serving near capacity, count every request it received exactly once
//! (none lost), and hold its memory flat.

mod common;

use std::time::Duration;

use common::{model_dir, ServeProcess};
use samp::client::loadgen::{self, Options, Rpc};

fn start() -> ServeProcess {
    let model = model_dir("all-MiniLM-L6-v2");
    common::serve_process(&[
        "--queue-capacity".as_ref(),
        "32".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
    ])
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Requests the server counted (every outcome), from its metrics.
async fn counted(metrics: &str) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(metrics).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body.lines()
        .filter(|l| l.starts_with("samp_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn texts() -> Vec<String> {
    let raw = std::fs::read(common::root().join("data/vader/movieReviewSnippets_GroundTruth.txt"))
        .expect("run scripts/fetch_models.sh");
    String::from_utf8_lossy(&raw)
        .lines()
        .filter_map(|l| l.splitn(3, '\t').nth(2))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .take(500)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_times_the_capacity_is_refused_cleanly_and_nothing_is_lost() {
    let server = start();
    let pid = server.child.id();
    let base = Options {
        addr: format!("http://{}", server.grpc),
        rpc: Rpc::Embed,
        model: String::new(),
        variant: String::new(),
        texts: texts(),
        inputs_per_request: 4,
        messages: Vec::new(),
        concurrency: 8,
        connections: 2,
        requests: None,
        duration: Some(Duration::from_secs(4)),
        rate: None,
        timeout: Duration::from_secs(10),
    };
    let cap = loadgen::run(base.clone()).await.unwrap();
    assert_eq!(
        cap.status.keys().collect::<Vec<_>>(),
        ["OK"],
        "{:?}",
        cap.status
    );
    let capacity = cap.requests_per_s;
    assert!(capacity > 1.0, "capacity {capacity}");

    let before = counted(&server.metrics).await;
    let soak_secs = 60;
    let sampler = std::thread::spawn(move || {
        let mut v = Vec::new();
        for _ in 0..(soak_secs * 2) {
            std::thread::sleep(Duration::from_millis(500));
            v.push(rss_kib(pid));
        }
        v
    });
    let soak = loadgen::run(Options {
        concurrency: 256,
        duration: Some(Duration::from_secs(soak_secs)),
        rate: Some(3.0 * capacity),
        timeout: Duration::from_secs(2),
        ..base
    })
    .await
    .unwrap();
    let rss = sampler.join().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = counted(&server.metrics).await;

    eprintln!(
        "capacity {capacity:.1} req/s; offered {:.1} req/s for {soak_secs} s: {:?}, ok p99 {:.0} ms, \
         refused p50/p99/max {:.1}/{:.1}/{:.1} ms; RSS MiB {:?}",
        3.0 * capacity,
        soak.status,
        soak.latency_ms.p99,
        soak.refused_ms.p50,
        soak.refused_ms.p99,
        soak.refused_ms.max,
        rss.iter().map(|k| k / 1024).collect::<Vec<_>>()
    );
    // Every answer is one the server gives on purpose under overload.
    for code in soak.status.keys() {
        assert!(
            ["OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"].contains(&code.as_str()),
            "unexpected status {code}: {:?}",
            soak.status
        );
    }
    // Refusals come at once, and admission by deadline works: few admitted requests expire.
    assert!(
        soak.refused_ms.p99 < 50.0,
        "refused p99 {:.1} ms",
        soak.refused_ms.p99
    );
    // Without admission by deadline ~40% expire here; with it, none in a quiet minute, but one
    // slow spell of a shared host expires what the queue holds at that moment (49 against 2184
    // OK once on a Zen 3 host; none in two reruns there), so the bound is 5% of them.
    let expired = soak.status.get("DEADLINE_EXCEEDED").copied().unwrap_or(0);
    assert!(
        expired as f64 <= 0.05 * soak.ok as f64 + 2.0,
        "{expired} admitted requests expired ({} ok)",
        soak.ok
    );
    // It keeps serving near capacity while refusing the excess.
    let ok_rate = soak.ok as f64 / soak.seconds;
    assert!(
        ok_rate >= 0.5 * capacity,
        "ok {ok_rate:.1}/s vs capacity {capacity:.1}/s"
    );
    assert!(
        soak.status.get("RESOURCE_EXHAUSTED").copied().unwrap_or(0) > 0 || soak.status.len() > 1
    );
    // Nothing lost: the server counted every request the generator sent.
    assert_eq!(
        after - before,
        soak.requests as f64,
        "server counted {} of {}",
        after - before,
        soak.requests
    );
    // Memory flat: the last third of the soak holds no more than the first third (+10%, +16 MiB).
    let third = rss.len() / 3;
    let early = *rss[..third].iter().max().unwrap();
    let late = *rss[rss.len() - third..].iter().max().unwrap();
    assert!(
        late as f64 <= early as f64 * 1.10 + 16.0 * 1024.0,
        "RSS grew from {early} KiB to {late} KiB"
    );
}
