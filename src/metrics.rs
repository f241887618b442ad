//! Every metric name samp exports and the recorder (the /metrics endpoint that serves it is
//! `server::scrape`). Labels come only from closed sets: RPC, model, variant,
//! outcome — never from request text.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS_TOTAL: &str = "samp_requests_total";
pub const INPUTS_TOTAL: &str = "samp_inputs_total";
pub const TOKENIZE_SECONDS: &str = "samp_tokenize_seconds";
pub const QUEUE_SECONDS: &str = "samp_queue_seconds";
pub const INFERENCE_SECONDS: &str = "samp_inference_seconds";
pub const REQUEST_SECONDS: &str = "samp_request_seconds";
pub const BATCH_INPUTS: &str = "samp_batch_inputs";
/// Tokens in the forward pass that served a request (histogram).
pub const BATCH_TOKENS: &str = "samp_batch_tokens";
pub const QUEUE_DEPTH: &str = "samp_queue_depth";
pub const MODEL_INFO: &str = "samp_model_info";
/// A variant's score on its evaluation data, from its quantization report (labels: model,
/// variant, metric).
pub const VARIANT_SCORE: &str = "samp_variant_score";
/// Online fidelity: a sample of requests to quantized variants also run through the float
/// variant. Embeddings: cosine to float, per input (histogram).
pub const FIDELITY_COSINE: &str = "samp_fidelity_cosine";
/// Tags: entity F1 against the float variant's entities, per input (histogram).
pub const FIDELITY_ENTITY_F1: &str = "samp_fidelity_entity_f1";
/// Classifications compared, and those with the float variant's label (agreement = ratio).
pub const FIDELITY_COMPARED_TOTAL: &str = "samp_fidelity_compared_total";
pub const FIDELITY_AGREED_TOTAL: &str = "samp_fidelity_agreed_total";
/// Sampled requests not shadowed because the float variant's queue was full.
pub const FIDELITY_SKIPPED_TOTAL: &str = "samp_fidelity_skipped_total";
/// How far that score is below the float model's.
pub const VARIANT_SCORE_DROP: &str = "samp_variant_score_drop";
/// Device memory held by a GPU backend (labels: device, kind = weights | activations).
pub const DEVICE_MEMORY_BYTES: &str = "samp_device_memory_bytes";
/// 1 per loaded model variant, labelled with the device it runs on (`cpu`, `cuda:0`).
pub const MODEL_DEVICE: &str = "samp_model_device";
/// Jobs dropped before compute: `reason` is `cancelled` (client gone) or `deadline`.
pub const DROPPED_TOTAL: &str = "samp_dropped_total";
/// Batches whose computation panicked; their requests failed with INTERNAL and the model's
/// compute thread went on (label: model).
pub const WORKER_RESTARTS_TOTAL: &str = "samp_worker_restarts_total";
/// Requests refused at the door, by `reason`: `queue_full`, `token_budget`, `deadline`.
pub const REFUSED_TOTAL: &str = "samp_refused_total";
/// Tokens admitted and not yet computed, per model.
pub const QUEUE_TOKENS: &str = "samp_queue_tokens";
/// Measured encoder throughput per model, tokens per second (what admission plans with).
pub const TOKENS_PER_SECOND: &str = "samp_tokens_per_second";

/// Install the process-wide recorder once; later calls return the same handle.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
            ];
            let sizes = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
            let tokens = [
                16.0, 64.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
            ];
            let cosine = [0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 1.0];
            let f1 = [0.5, 0.8, 0.9, 0.95, 0.99, 1.0];
            let full = |name: &str| Matcher::Full(name.to_string());
            let recorder = PrometheusBuilder::new()
                .set_buckets(&buckets)
                .and_then(|b| b.set_buckets_for_metric(full(BATCH_INPUTS), &sizes))
                .and_then(|b| b.set_buckets_for_metric(full(BATCH_TOKENS), &tokens))
                .and_then(|b| b.set_buckets_for_metric(full(FIDELITY_COSINE), &cosine))
                .and_then(|b| b.set_buckets_for_metric(full(FIDELITY_ENTITY_F1), &f1))
                .expect("static bucket lists are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (a host program embedding samp);
            // then samp's metrics go there and /metrics shows only what this handle sees.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
