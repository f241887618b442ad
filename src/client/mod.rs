//! The client side of samp.v1: `samp client` (calls a running server and prints one JSON
//! object per input), the load generator and its ghz config reader.

pub mod ghz;
pub mod loadgen;

use serde_json::json;

use crate::model::{Classification, Embedding, Tagging};
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

type Lines = Vec<serde_json::Value>;

fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

/// Each result as one JSON line, in the domain type's own shape (the one-shot CLI's).
fn lines<T: serde::Serialize>(items: impl IntoIterator<Item = T>) -> anyhow::Result<Lines> {
    items
        .into_iter()
        .map(|x| serde_json::to_value(x).map_err(anyhow::Error::from))
        .collect()
}

/// Connect to `addr` (e.g. `http://127.0.0.1:50051`), make the call, return JSON lines: per
/// input, the result printed exactly as the one-shot `samp embed|classify|tag` prints it.
pub async fn call(addr: &str, model: &str, call: Call) -> anyhow::Result<Lines> {
    let channel = tonic::transport::Endpoint::from_shared(addr.to_string())
        .map_err(|e| anyhow::anyhow!("bad address {addr}: {e}"))?
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {addr}: {e}"))?;
    let mut c = SampClient::new(channel.clone());
    let model = model.to_string();
    match call {
        Call::Health { service } => health(channel, service).await,
        Call::Embed { texts, dims } => {
            let r = proto::EmbedRequest {
                texts,
                model,
                dimensions: dims,
                ..Default::default()
            };
            let r = c.embed(r).await.map_err(status)?.into_inner();
            lines(r.embeddings.into_iter().map(Embedding::from))
        }
        Call::Classify { texts, pairs } => {
            let inputs = classify_inputs(texts, pairs);
            let r = proto::ClassifyRequest {
                inputs,
                model,
                ..Default::default()
            };
            let r = c.classify(r).await.map_err(status)?.into_inner();
            lines(r.results.into_iter().map(Classification::from))
        }
        Call::Tag { texts } => {
            let r = proto::TagRequest {
                texts,
                model,
                ..Default::default()
            };
            let r = c.tag(r).await.map_err(status)?.into_inner();
            lines(r.results.into_iter().map(Tagging::from))
        }
        Call::Models => {
            let r = c.list_models(proto::ListModelsRequest {});
            let r = r.await.map_err(status)?.into_inner();
            Ok(r.models
                .into_iter()
                .map(|m| {
                    json!({"name": m.name, "task": m.task, "architecture": m.architecture,
                                "labels": m.labels, "max_tokens": m.max_tokens,
                                "variants": m.variants.iter().map(|v| &v.name).collect::<Vec<_>>()})
                })
                .collect())
        }
    }
}

/// Texts as classify inputs: each alone, or `pairs`: consecutive texts as (a, b).
fn classify_inputs(texts: Vec<String>, pairs: bool) -> Vec<proto::ClassifyInput> {
    use proto::classify_input::Input as In;
    if pairs {
        texts
            .chunks(2)
            .map(|p| proto::ClassifyInput {
                input: Some(In::Pair(proto::TextPair {
                    a: p[0].clone(),
                    b: p.get(1).cloned().unwrap_or_default(),
                })),
            })
            .collect()
    } else {
        texts
            .into_iter()
            .map(|t| proto::ClassifyInput {
                input: Some(In::Text(t)),
            })
            .collect()
    }
}

/// The gRPC health check of `service` ("" = the whole server); an error unless SERVING.
async fn health(channel: tonic::transport::Channel, service: String) -> anyhow::Result<Lines> {
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
    Ok(vec![
        json!({"service": service, "status": st.as_str_name()}),
    ])
}
