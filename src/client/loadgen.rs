//! `samp loadgen`: a gRPC load generator in the spirit of ghz, for samp's own RPCs. Closed loop
//! (each of `concurrency` workers sends its next request when the last one answered) or, with a
//! rate, open loop (request i is due at start + i/rate; its latency counts from when it was due,
//! so a server that falls behind is not flattered by the client waiting). Stops by itself after
//! a number of requests or a duration. Reports throughput, latency percentiles, a histogram and
//! a count per status code.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::server::proto;
use crate::server::proto::samp_client::SampClient;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Rpc {
    Embed,
    Classify,
    Tag,
}

/// A request sent as it is (from a ghz config's data), instead of one built from `texts`.
#[derive(Debug, Clone)]
pub enum Message {
    Embed(proto::EmbedRequest),
    Classify(proto::ClassifyRequest),
    Tag(proto::TagRequest),
}

impl Message {
    fn inputs(&self) -> usize {
        match self {
            Message::Embed(r) => r.texts.len(),
            Message::Classify(r) => r.inputs.len(),
            Message::Tag(r) => r.texts.len(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub addr: String,
    pub rpc: Rpc,
    pub model: String,
    pub variant: String,
    pub texts: Vec<String>,
    pub inputs_per_request: usize,
    /// When not empty, request i is `messages[i % len]` as it is (`texts`, `model` and
    /// `variant` unused).
    pub messages: Vec<Message>,
    pub concurrency: usize,
    pub connections: usize,
    /// Stop after this many requests...
    pub requests: Option<usize>,
    /// ...or after this long (whichever comes first).
    pub duration: Option<Duration>,
    /// Requests per second (open loop); None: as fast as the workers go (closed loop).
    pub rate: Option<f64>,
    /// Per-request deadline, sent as grpc-timeout.
    pub timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    /// Upper bound in milliseconds.
    pub le_ms: f64,
    pub count: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub rpc: Rpc,
    pub concurrency: usize,
    pub connections: usize,
    pub inputs_per_request: usize,
    pub rate: Option<f64>,
    pub requests: usize,
    pub ok: usize,
    pub seconds: f64,
    pub requests_per_s: f64,
    /// Texts in successful requests per second.
    pub texts_per_s: f64,
    /// Latency of successful requests, milliseconds (open loop: from when each was due).
    pub latency_ms: Latency,
    /// How long the server took to refuse (RESOURCE_EXHAUSTED), from sending, milliseconds.
    pub refused_ms: Latency,
    pub histogram: Vec<Bucket>,
    /// Count per gRPC status code name (OK, RESOURCE_EXHAUSTED, ...).
    pub status: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

fn code_name(c: tonic::Code) -> String {
    format!("{c:?}")
        .chars()
        .enumerate()
        .flat_map(|(i, ch)| {
            let sep = (i > 0 && ch.is_uppercase()).then_some('_');
            sep.into_iter().chain(ch.to_uppercase())
        })
        .collect()
}

fn request_texts(texts: &[String], i: usize, n: usize) -> Vec<String> {
    (0..n)
        .map(|j| texts[(i * n + j) % texts.len()].clone())
        .collect()
}

fn with_timeout<T>(m: T, t: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.set_timeout(t);
    r
}

async fn one(
    client: &mut SampClient<tonic::transport::Channel>,
    o: &Options,
    i: usize,
) -> Result<usize, tonic::Status> {
    if !o.messages.is_empty() {
        let m = o.messages[i % o.messages.len()].clone();
        let n = m.inputs();
        match m {
            Message::Embed(r) => drop(client.embed(with_timeout(r, o.timeout)).await?),
            Message::Classify(r) => drop(client.classify(with_timeout(r, o.timeout)).await?),
            Message::Tag(r) => drop(client.tag(with_timeout(r, o.timeout)).await?),
        }
        return Ok(n);
    }
    let texts = request_texts(&o.texts, i, o.inputs_per_request);
    let n = texts.len();
    match o.rpc {
        Rpc::Embed => {
            let req = proto::EmbedRequest {
                texts,
                model: o.model.clone(),
                variant: o.variant.clone(),
                ..Default::default()
            };
            client.embed(with_timeout(req, o.timeout)).await?;
        }
        Rpc::Classify => {
            let req = proto::ClassifyRequest {
                inputs: texts
                    .into_iter()
                    .map(|t| proto::ClassifyInput {
                        input: Some(proto::classify_input::Input::Text(t)),
                    })
                    .collect(),
                model: o.model.clone(),
                variant: o.variant.clone(),
                ..Default::default()
            };
            client.classify(with_timeout(req, o.timeout)).await?;
        }
        Rpc::Tag => {
            let req = proto::TagRequest {
                texts,
                model: o.model.clone(),
                variant: o.variant.clone(),
                ..Default::default()
            };
            client.tag(with_timeout(req, o.timeout)).await?;
        }
    }
    Ok(n)
}

/// Run the load and report. Errors only when the server cannot be reached at all.
pub async fn run(o: Options) -> anyhow::Result<Report> {
    anyhow::ensure!(
        !o.texts.is_empty() || !o.messages.is_empty(),
        "no texts to send"
    );
    anyhow::ensure!(
        o.requests.is_some() || o.duration.is_some(),
        "give --requests or --duration (the load generator must stop by itself)"
    );
    let endpoint = tonic::transport::Endpoint::from_shared(o.addr.clone())
        .map_err(|e| anyhow::anyhow!("bad address {}: {e}", o.addr))?
        .connect_timeout(Duration::from_secs(10));
    let mut channels = Vec::new();
    for _ in 0..o.connections.max(1) {
        channels.push(
            endpoint
                .connect()
                .await
                .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", o.addr))?,
        );
    }
    let o = Arc::new(o);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let stop_at = o.duration.map(|d| start + d);
    let mut tasks = Vec::new();
    for w in 0..o.concurrency.max(1) {
        let (o, next) = (o.clone(), next.clone());
        let mut client = SampClient::new(channels[w % channels.len()].clone())
            .max_decoding_message_size(64 * 1024 * 1024);
        tasks.push(tokio::spawn(async move {
            let mut seen: Vec<(Duration, Duration, Result<usize, tonic::Code>)> = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if o.requests.is_some_and(|n| i >= n) {
                    break;
                }
                let due = match o.rate {
                    Some(r) => start + Duration::from_secs_f64(i as f64 / r),
                    None => Instant::now(),
                };
                if stop_at.is_some_and(|s| due >= s) {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                let sent = Instant::now();
                let r = one(&mut client, &o, i).await.map_err(|s| s.code());
                seen.push((due.elapsed(), sent.elapsed(), r));
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let seconds = start.elapsed().as_secs_f64();
    let mut status: BTreeMap<String, usize> = BTreeMap::new();
    let mut lat: Vec<f64> = Vec::new();
    let mut refused: Vec<f64> = Vec::new();
    let mut texts_ok = 0;
    for (due, sent, r) in &all {
        match r {
            Ok(n) => {
                *status.entry("OK".into()).or_default() += 1;
                lat.push(due.as_secs_f64() * 1000.0);
                texts_ok += n;
            }
            Err(c) => {
                *status.entry(code_name(*c)).or_default() += 1;
                if *c == tonic::Code::ResourceExhausted {
                    refused.push(sent.as_secs_f64() * 1000.0);
                }
            }
        }
    }
    let latency = Latency::of(&mut lat);
    let refused_ms = Latency::of(&mut refused);
    // Log-spaced buckets: 0.5 ms · 2^k up to past the slowest request.
    let mut histogram = Vec::new();
    let mut le = 0.5;
    let mut idx = 0;
    while idx < lat.len() {
        let count = lat[idx..].iter().take_while(|&&v| v <= le).count();
        histogram.push(Bucket { le_ms: le, count });
        idx += count;
        le *= 2.0;
    }
    Ok(Report {
        rpc: o.rpc,
        concurrency: o.concurrency,
        connections: o.connections,
        inputs_per_request: o.inputs_per_request,
        rate: o.rate,
        requests: all.len(),
        ok: lat.len(),
        seconds,
        requests_per_s: all.len() as f64 / seconds,
        texts_per_s: texts_ok as f64 / seconds,
        latency_ms: latency,
        refused_ms,
        histogram,
        status,
    })
}

impl Latency {
    /// Percentiles of `v` (sorted here).
    fn of(v: &mut [f64]) -> Latency {
        v.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            if v.is_empty() {
                0.0
            } else {
                v[((v.len() - 1) as f64 * p).round() as usize]
            }
        };
        Latency {
            min: pct(0.0),
            mean: v.iter().sum::<f64>() / v.len().max(1) as f64,
            p50: pct(0.5),
            p90: pct(0.9),
            p99: pct(0.99),
            max: pct(1.0),
        }
    }
}

/// A human-readable summary, like ghz's.
pub fn summary(r: &Report) -> String {
    let mut s = format!(
        "Summary:\n  Requests:  {} ({} OK) in {:.2} s\n  Rate:      {:.1} requests/s, {:.1} texts/s\n  \
         Latency:   min {:.2}  mean {:.2}  p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2} ms\n\nHistogram (ms):\n",
        r.requests,
        r.ok,
        r.seconds,
        r.requests_per_s,
        r.texts_per_s,
        r.latency_ms.min,
        r.latency_ms.mean,
        r.latency_ms.p50,
        r.latency_ms.p90,
        r.latency_ms.p99,
        r.latency_ms.max
    );
    let most = r
        .histogram
        .iter()
        .map(|b| b.count)
        .max()
        .unwrap_or(1)
        .max(1);
    for b in &r.histogram {
        s += &format!(
            "  <= {:>9.1} [{:>7}] {}\n",
            b.le_ms,
            b.count,
            "∎".repeat(b.count * 40 / most)
        );
    }
    s += "\nStatus codes:\n";
    for (c, n) in &r.status {
        s += &format!("  {c:<20} {n}\n");
    }
    if r.status.contains_key("RESOURCE_EXHAUSTED") {
        s += &format!(
            "\nRefusals answered in: p50 {:.2}  p99 {:.2}  max {:.2} ms (from sending)\n",
            r.refused_ms.p50, r.refused_ms.p99, r.refused_ms.max
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_are_grpc_style() {
        assert_eq!(
            code_name(tonic::Code::ResourceExhausted),
            "RESOURCE_EXHAUSTED"
        );
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(
            code_name(tonic::Code::DeadlineExceeded),
            "DEADLINE_EXCEEDED"
        );
    }

    #[test]
    fn requests_cycle_through_the_texts() {
        let t: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert_eq!(request_texts(&t, 0, 2), ["a", "b"]);
        assert_eq!(request_texts(&t, 1, 2), ["c", "a"]);
    }
}
