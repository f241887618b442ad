//! Online fidelity: a sample of requests to a quantized variant re-run on the model's float32
//! variant off the hot path, compared, and exported as metrics.

use std::sync::Arc;

use crate::backend::{HeadWork, Job, ModelWorker, Output};
use crate::metrics as m;

/// Run a sampled request again on the float variant, in the background, and export how close
/// the quantized answer was. Never blocks or fails the request: a full float queue skips it.
pub fn spawn_shadow(
    served: &Arc<ModelWorker>,
    float: Arc<ModelWorker>,
    encoded: Vec<crate::tokenize::Encoded>,
    work: HeadWork,
    output: Output,
) {
    let (model, variant) = (served.model.name.clone(), served.variant.clone());
    let (job, rx) = Job::new(encoded, work, None);
    if float.submit(job).is_err() {
        metrics::counter!(m::FIDELITY_SKIPPED_TOTAL, "model" => model, "variant" => variant)
            .increment(1);
        return;
    }
    tokio::spawn(async move {
        let Ok(Ok(reference)) = rx.await else {
            return;
        };
        let labels = [("model", model), ("variant", variant)];
        match (&output, &reference.output) {
            (Output::Embed(q), Output::Embed(f)) => {
                for (a, b) in q.iter().zip(f) {
                    let c = crate::tune::eval::cosine(&a.embedding, &b.embedding);
                    metrics::histogram!(m::FIDELITY_COSINE, &labels).record(c);
                }
            }
            (Output::Classify(q), Output::Classify(f)) => {
                for (a, b) in q.iter().zip(f) {
                    metrics::counter!(m::FIDELITY_COMPARED_TOTAL, &labels).increment(1);
                    if a.label == b.label {
                        metrics::counter!(m::FIDELITY_AGREED_TOTAL, &labels).increment(1);
                    }
                }
            }
            (Output::Tag(q), Output::Tag(f)) => {
                for (a, b) in q.iter().zip(f) {
                    let f1 = crate::tune::eval::entity_f1(
                        std::slice::from_ref(&a.entities),
                        std::slice::from_ref(&b.entities),
                    );
                    metrics::histogram!(m::FIDELITY_ENTITY_F1, &labels).record(f1);
                }
            }
            _ => {}
        }
    });
}
