//! gRPC serving: the samp.v1 service, health (per service, NOT_SERVING until warm-up ends and
//! again during shutdown), reflection (v1 and v1alpha), metrics endpoint, graceful shutdown.
//! The only module that sees proto types.

mod convert;
pub mod deadline;
mod fidelity;
pub mod gate;
pub mod http;
mod idle;
mod observe;
mod registry;
mod scrape;
pub mod service;
pub mod status;
mod stream;
pub mod validate;
pub mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::backend::ModelWorker;
use crate::config::ServeConfig;
use crate::model::{LoadOptions, Model};
use crate::tokenize::Input;

/// Generated code of proto/samp/v1/samp.proto.
pub mod proto {
    tonic::include_proto!("samp.v1");
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("samp_descriptor");
}

/// Addresses a started server is bound to.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
}

/// What `prepare` made ready: the warmed-up models and the bound ports.
pub struct Prepared {
    pub workers: Vec<ModelWorker>,
    pub grpc: TcpListener,
    pub metrics: TcpListener,
    /// The HTTP/JSON door, unless it is off.
    pub http: Option<TcpListener>,
}

/// Load every model, warm each up, bind the ports. Errors here are start-up errors.
pub async fn prepare(cfg: &ServeConfig) -> anyhow::Result<Prepared> {
    let mut workers = Vec::new();
    for (i, entry) in cfg.models.iter().enumerate() {
        // The default variant (the directory's own plan, or the one named), then the others.
        let mut plans: Vec<(Option<String>, Option<PathBuf>)> = vec![(
            None,
            crate::quant::plan::resolve(
                &entry.path,
                entry.plan.as_ref().map(|p| p.to_string_lossy()).as_deref(),
            ),
        )];
        for (v, p) in &entry.variants {
            plans.push((
                Some(v.clone()),
                crate::quant::plan::resolve(&entry.path, Some(&p.to_string_lossy())),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (variant, plan) in plans {
            let (name, path) = (entry.name.clone(), entry.path.clone());
            tracing::info!(model = %name, path = %path.display(), plan = ?plan, "loading");
            let plan2 = plan.clone();
            let device = entry.device.unwrap_or(cfg.device);
            let lib_dirs = crate::backend::device::lib_dirs(cfg.cuda_lib_dir.as_deref());
            let (model, engine, rate) =
                tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                    let opts = LoadOptions {
                        plan: plan2,
                        ..Default::default()
                    };
                    let mut m = Model::load(&path, &opts)
                        .map_err(|e| anyhow::anyhow!("model {name}: {e:#}"))?;
                    m.name = name;
                    let m = Arc::new(m);
                    let (engine, _) = crate::backend::device::place(&m, device, &lib_dirs);
                    // Warm-up: a pass so the first request doesn't pay for page faults, then one
                    // timed pass over ordinary sentences to seed the throughput admission plans with.
                    let texts: Vec<Input> = (0..16)
                        .map(|i| Input::Single(format!("{i}: {WARM_UP_SENTENCE}")))
                        .collect();
                    let rate = crate::backend::engine::warm_up(&m, &*engine, &texts)?;
                    Ok((m, engine, rate))
                })
                .await??;
            let variant = variant.unwrap_or_else(|| model.plan().name.clone());
            if !names.insert(variant.clone()) {
                anyhow::bail!(
                    "models[{i}] ({}): two variants are named {variant:?} (the default variant \
                     is named after its plan)",
                    entry.name
                );
            }
            let quality = plan.as_deref().and_then(|p| quality(p, &model.plan().name));
            match &quality {
                Some(q) => tracing::info!(model = %entry.name, %variant,
                    precision = %convert::precision_summary(model.plan()), metric = %q.metric,
                    score = q.value, drop = q.drop, "variant ready (score and drop measured by samp quantize)"),
                None => tracing::info!(model = %entry.name, %variant,
                    precision = %convert::precision_summary(model.plan()), "variant ready"),
            }
            let mut w = ModelWorker::spawn_on(model, engine, &variant, cfg.batching)?;
            w.seed_rate(rate.0, rate.1);
            w.quality = quality;
            workers.push(w);
        }
    }
    let grpc = TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("listen {}: {e}", cfg.listen))?;
    let metrics = scrape::bind(cfg.metrics_listen)
        .await
        .map_err(|e| anyhow::anyhow!("metrics_listen {}: {e}", cfg.metrics_listen))?;
    let http = match cfg.http_listen {
        Some(addr) if cfg.tls_pem.is_some() => {
            tracing::warn!(%addr, "TLS is configured: the HTTP door (plain HTTP) stays off");
            None
        }
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("http_listen {addr}: {e}"))?,
        ),
        None => None,
    };
    Ok(Prepared {
        workers,
        grpc,
        metrics,
        http,
    })
}

/// A sentence of ordinary length for the start-up throughput measurement.
const WARM_UP_SENTENCE: &str = "the quick brown fox jumps over the lazy dog while the server \
     measures how many tokens per second this model computes on this machine";

/// Serve until `shutdown` resolves, then: health NOT_SERVING, stop accepting, finish admitted
/// work (at most the grace period), return.
pub async fn serve(
    cfg: ServeConfig,
    prepared: Prepared,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Prepared {
        workers,
        grpc,
        metrics: metrics_listener,
        http,
    } = prepared;
    let handle = crate::metrics::handle();
    let metrics_task = tokio::spawn(scrape::serve(
        metrics_listener,
        handle,
        cfg.auth_token.clone(),
    ));
    let models = publish(workers);
    wire::raise_limits(&cfg.limits);
    let svc = service::SampService::new(models.clone(), cfg.limits, cfg.fidelity_sample_rate)?;
    let grace = derived_grace(&cfg, &models);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    // Models are loaded and warmed up by `prepare`: SERVING from here on.
    health_reporter
        .set_serving::<proto::samp_server::SampServer<service::SampService>>()
        .await;
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (http_stop_tx, mut http_stop_rx) = tokio::sync::watch::channel(false);
    let http_task = http.map(|listener| {
        let router = http::router(svc.clone(), cfg.auth_token.clone());
        let conns = cfg.connections;
        tokio::spawn(async move {
            http::serve(listener, &conns, router, async move {
                let _ = http_stop_rx.wait_for(|stop| *stop).await;
            })
            .await
        })
    });
    let (began_tx, began_rx) = tokio::sync::oneshot::channel::<()>();
    let reporter = health_reporter.clone();
    let svc_state = svc.state();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: health NOT_SERVING, finishing admitted requests");
        svc_state.stop_admitting();
        reporter
            .set_not_serving::<proto::samp_server::SampServer<service::SampService>>()
            .await;
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let _ = stop_tx.send(());
        let _ = http_stop_tx.send(true);
        let _ = began_tx.send(());
    });

    let watch = tokio::spawn(watch_workers(models.clone(), health_reporter.clone()));
    let server = serve_grpc(&cfg, svc, health_service, grpc, async {
        let _ = stop_rx.await;
    });
    // Serve; once shutdown starts, tonic stops accepting and waits for in-flight calls, for at
    // most the grace period (which the queues' budgets fit in: `derived_grace`).
    tokio::select! {
        r = server => r?,
        _ = async {
            if began_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => tracing::warn!(?grace, "grace period over; abandoning unfinished requests"),
    }
    if let Some(task) = http_task {
        // The HTTP door stopped accepting with the gRPC port; its calls in flight are admitted
        // work like any other and finish within what is left of the grace.
        match tokio::time::timeout(grace, task).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP door"),
            Err(_) => tracing::warn!("grace period over; abandoning unfinished HTTP requests"),
            _ => {}
        }
    }
    watch.abort();
    metrics_task.abort();
    drain(models).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Export each variant's info, device and quality gauges; group the variants by model, in
/// load order (the default first).
fn publish(workers: Vec<ModelWorker>) -> BTreeMap<String, Vec<Arc<ModelWorker>>> {
    for w in &workers {
        metrics::gauge!(crate::metrics::MODEL_INFO, "model" => w.model.name.clone(),
            "task" => w.model.task.name(), "variant" => w.variant.clone())
        .set(1.0);
        let device = w.device.clone();
        let device = device
            .split_whitespace()
            .next()
            .unwrap_or("cpu")
            .to_string();
        metrics::gauge!(crate::metrics::MODEL_DEVICE, "model" => w.model.name.clone(),
            "variant" => w.variant.clone(), "device" => device)
        .set(1.0);
    }
    // Per model, its variants in load order: the default first.
    let mut models: BTreeMap<String, Vec<Arc<ModelWorker>>> = BTreeMap::new();
    for w in workers {
        if let Some(q) = &w.quality {
            let labels = [
                ("model", w.model.name.clone()),
                ("variant", w.variant.clone()),
                ("metric", q.metric.clone()),
            ];
            metrics::gauge!(crate::metrics::VARIANT_SCORE, &labels).set(q.value);
            metrics::gauge!(crate::metrics::VARIANT_SCORE_DROP, &labels).set(q.drop);
        }
        models
            .entry(w.model.name.clone())
            .or_default()
            .push(Arc::new(w));
    }
    models
}

/// Close the queues; each compute thread answers what was admitted, then exits.
async fn drain(models: BTreeMap<String, Vec<Arc<ModelWorker>>>) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        for w in models.into_values().flatten() {
            if let Ok(w) = Arc::try_unwrap(w) {
                w.drain();
            }
        }
    })
    .await?;
    Ok(())
}

/// The gRPC port: samp.v1, health and reflection behind the gate (token, byte budget, call
/// counting for the idle timeout), with TLS when configured; until `stop` resolves, then
/// until the calls in flight end.
async fn serve_grpc(
    cfg: &ServeConfig,
    svc: service::SampService,
    health_service: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    grpc: TcpListener,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let gate = gate::Gate::new(cfg.auth_token.clone());
    let conns = &cfg.connections;
    let mut server = tonic::transport::Server::builder();
    if let Some(pem) = &cfg.tls_pem {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(&pem.cert, &pem.key));
        if let Some(ca) = &pem.client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(ca));
        }
        server = server
            .tls_config(tls)
            .map_err(|e| anyhow::anyhow!("tls: {e:#}"))?;
    }
    let server = server
        .max_concurrent_streams(conns.max_concurrent_streams)
        .http2_keepalive_interval(conns.keepalive_interval())
        .http2_keepalive_timeout(conns.keepalive_timeout())
        .tcp_keepalive(Some(std::time::Duration::from_secs(60)))
        .tcp_nodelay(true);
    let server = match conns.max_connection_age() {
        Some(age) => server.max_connection_age(age),
        None => server,
    };
    let mut server = server
        .layer(gate::ByteBudget::new(
            cfg.limits.max_inflight_request_bytes,
            cfg.limits.max_message_bytes,
        ))
        .layer(idle::CountCalls);
    server
        .add_service(health_service)
        .add_service(tonic::service::interceptor::InterceptedService::new(
            reflection_v1,
            gate.clone(),
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            reflection_v1alpha,
            gate.clone(),
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            proto::samp_server::SampServer::new(svc)
                .max_decoding_message_size(cfg.limits.max_message_bytes),
            gate,
        ))
        .serve_with_incoming_shutdown(
            gate::incoming(grpc, conns.max_connections, conns.idle_timeout()),
            stop,
        )
        .await?;
    Ok(())
}

/// The shutdown grace: the configured one, or longer when a full queue would take longer to
/// drain at the measured rates (the queues are drained one model after another in the worst
/// case, as they share the CPU). Logged, so that the orchestrator's own grace
/// (`terminationGracePeriodSeconds`) can be set above it.
fn derived_grace(
    cfg: &ServeConfig,
    models: &BTreeMap<String, Vec<Arc<ModelWorker>>>,
) -> std::time::Duration {
    let drain: f64 = models
        .values()
        .flatten()
        .filter_map(|w| w.stats.tokens_per_second())
        .map(|rate| cfg.batching.max_queue_tokens as f64 / rate)
        .sum();
    let needed = std::time::Duration::from_secs_f64((drain * 1.5 + 1.0).min(86_400.0));
    let grace = cfg.grace().max(needed);
    if grace > cfg.grace() {
        tracing::warn!(
            configured_seconds = cfg.shutdown_grace_seconds,
            grace_seconds = grace.as_secs_f64().ceil(),
            "full queues would take longer than shutdown_grace_seconds to drain; the grace is \
             raised to fit (set the orchestrator's grace above it, or lower max_queue_tokens)"
        );
    }
    grace
}

/// Health follows the compute threads: NOT_SERVING while a model has none.
async fn watch_workers(
    models: BTreeMap<String, Vec<Arc<ModelWorker>>>,
    reporter: tonic_health::server::HealthReporter,
) {
    let mut was_ok = true;
    loop {
        // Often enough to see a compute thread's restart pause (200 ms at least).
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let ok = models.values().flatten().all(|w| w.alive());
        if ok != was_ok {
            let status = if ok {
                tonic_health::ServingStatus::Serving
            } else {
                tracing::error!("a model's compute thread is gone: health NOT_SERVING");
                tonic_health::ServingStatus::NotServing
            };
            reporter.set_service_status("samp.v1.Samp", status).await;
            reporter.set_service_status("", status).await;
            was_ok = ok;
        }
    }
}

/// The score of the plan named `plan_name` in the quantization report beside `plan`
/// (`report.json`, written by `samp quantize`), if there is one.
fn quality(plan: &std::path::Path, plan_name: &str) -> Option<crate::backend::Quality> {
    let text = std::fs::read(plan.with_file_name("report.json")).ok()?;
    let r: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let trials = r["trials"].as_array()?;
    let trial = if plan_name == "samp" {
        trials.get(r["chosen"].as_u64()? as usize)?
    } else {
        trials.iter().find(|t| t["name"] == plan_name)?
    };
    let float = r["float_score"].as_f64()?;
    let value = trial["score"].as_f64()?;
    Some(crate::backend::Quality {
        metric: r["metric"].as_str()?.to_string(),
        value,
        drop: float - value,
    })
}

/// Resolves on SIGTERM or SIGINT.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_health::pb::health_server::Health;
    use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};

    #[tokio::test]
    async fn health_is_not_serving_while_a_compute_thread_restarts() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tiny-bert-multilabel");
        let model = Arc::new(crate::model::Model::load(&dir, &Default::default()).unwrap());
        let run: Box<crate::backend::RunBatch> = Box::new(|_, _, _, _| panic!("injected fault"));
        let w = ModelWorker::spawn_with(model.clone(), "v", Default::default(), run).unwrap();
        let w = Arc::new(w);
        let models = BTreeMap::from([("tiny".to_string(), vec![w.clone()])]);
        let (reporter, _) = tonic_health::server::health_reporter();
        let health = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
        reporter
            .set_service_status("samp.v1.Samp", tonic_health::ServingStatus::Serving)
            .await;
        let watcher = tokio::spawn(watch_workers(models, reporter));
        let status = || async {
            let req = tonic::Request::new(HealthCheckRequest {
                service: "samp.v1.Samp".into(),
            });
            health.check(req).await.unwrap().into_inner().status()
        };
        let texts = [crate::tokenize::Input::Single("a fault".into())];
        let (job, reply) = crate::backend::Job::new(
            model.tokenize(&texts, Default::default()).unwrap(),
            crate::backend::HeadWork::Embed(Default::default()),
            None,
        );
        w.submit(job).unwrap();
        assert!(reply.await.is_err(), "the panicked batch fails");
        let mut seen = Vec::new();
        let t0 = std::time::Instant::now();
        while t0.elapsed() < std::time::Duration::from_secs(5) {
            let s = status().await;
            if seen.last() != Some(&s) {
                seen.push(s);
            }
            if seen.len() == 3 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            seen,
            [
                ServingStatus::Serving,
                ServingStatus::NotServing,
                ServingStatus::Serving
            ],
            "health goes NOT_SERVING during the restart pause and back after"
        );
        assert_eq!(
            w.stats.restarts.load(std::sync::atomic::Ordering::SeqCst),
            1
        );
        watcher.abort();
    }
}
