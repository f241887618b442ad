//! The client side of samp.v1: `samp client` (calls a running server and prints one JSON
//! object per input), the load generator and its ghz config reader.

pub mod ghz;
pub mod loadgen;

use serde_json::json;

use crate::server::proto;
use crate::server::proto::samp_client::SampClient;

/// What to call.
pub enum Call {
    Embed { texts: Vec<String>, dims: u32 },
    Classify { texts: Vec<String>, pairs: bool },
    Tag { texts: Vec<String> },
    Models,
    Health { service: String },
}

/// Connect to `addr` (e.g. `http://127.0.0.1:50051`), make the call, return JSON lines.
pub async fn call(addr: &str, model: &str, call: Call) -> anyhow::Result<Vec<serde_json::Value>> {
    let channel = tonic::transport::Endpoint::from_shared(addr.to_string())
        .map_err(|e| anyhow::anyhow!("bad address {addr}: {e}"))?
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {addr}: {e}"))?;
    let status = |s: tonic::Status| anyhow::anyhow!("{:?}: {}", s.code(), s.message());
    if let Call::Health { service } = &call {
        use tonic_health::pb::health_check_response::ServingStatus;
        let r = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.clone(),
            })
            .await
            .map_err(status)?
            .into_inner();
        let st = ServingStatus::try_from(r.status).unwrap_or(ServingStatus::Unknown);
        if st != ServingStatus::Serving {
            anyhow::bail!("service {service:?} is {}", st.as_str_name());
        }
        return Ok(vec![
            json!({"service": service, "status": st.as_str_name()}),
        ]);
    }
    let mut c = SampClient::new(channel);
    Ok(match call {
        Call::Embed { texts, dims } => {
            let r = c
                .embed(proto::EmbedRequest {
                    texts,
                    model: model.into(),
                    dimensions: dims,
                    ..Default::default()
                })
                .await
                .map_err(status)?
                .into_inner();
            let served = r.served.unwrap_or_default();
            r.embeddings
                .into_iter()
                .map(|e| {
                    json!({"embedding": e.values, "tokens": e.tokens, "truncated": e.truncated,
                                "model": served.model, "variant": served.variant})
                })
                .collect()
        }
        Call::Classify { texts, pairs } => {
            let inputs = if pairs {
                texts
                    .chunks(2)
                    .map(|p| proto::ClassifyInput {
                        input: Some(proto::classify_input::Input::Pair(proto::TextPair {
                            a: p[0].clone(),
                            b: p.get(1).cloned().unwrap_or_default(),
                        })),
                    })
                    .collect()
            } else {
                texts
                    .into_iter()
                    .map(|t| proto::ClassifyInput {
                        input: Some(proto::classify_input::Input::Text(t)),
                    })
                    .collect()
            };
            let r = c
                .classify(proto::ClassifyRequest {
                    inputs,
                    model: model.into(),
                    ..Default::default()
                })
                .await
                .map_err(status)?
                .into_inner();
            r.results
                .into_iter()
                .map(|x| {
                    let scores: serde_json::Map<_, _> = x
                        .scores
                        .into_iter()
                        .map(|s| (s.label, json!(s.score)))
                        .collect();
                    json!({"label": x.label, "score": x.score, "scores": scores,
                           "tokens": x.tokens, "truncated": x.truncated})
                })
                .collect()
        }
        Call::Tag { texts } => {
            let r = c
                .tag(proto::TagRequest {
                    texts,
                    model: model.into(),
                    ..Default::default()
                })
                .await
                .map_err(status)?
                .into_inner();
            r.results
                .into_iter()
                .map(|t| {
                    let ents: Vec<_> = t
                        .entities
                        .into_iter()
                        .map(|e| {
                            json!({"label": e.label, "score": e.score, "start": e.start,
                                        "end": e.end, "text": e.text})
                        })
                        .collect();
                    json!({"entities": ents, "tokens": t.tokens, "truncated": t.truncated})
                })
                .collect()
        }
        Call::Models => {
            let r = c
                .list_models(proto::ListModelsRequest {})
                .await
                .map_err(status)?
                .into_inner();
            r.models
                .into_iter()
                .map(|m| {
                    json!({"name": m.name, "task": m.task, "architecture": m.architecture,
                                "labels": m.labels, "max_tokens": m.max_tokens,
                                "variants": m.variants.iter().map(|v| &v.name).collect::<Vec<_>>()})
                })
                .collect()
        }
        Call::Health { .. } => unreachable!("answered above"),
    })
}
