//! Task heads on top of the encoder's token states: embed (pooling), classify (sequence
//! classification) and tag (token classification → entities). A head never touches the
//! encoder's internals; it reads `[T, H]` states.

pub mod classify;
pub mod embed;
pub mod tag;

use serde::Serialize;

use tag::Entity;

/// What the heads answer, per input (the pipeline's results).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Embedding {
    pub embedding: Vec<f32>,
    pub tokens: usize,
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Classification {
    pub label: String,
    pub score: f32,
    /// Probability per label, in id2label order.
    pub scores: Vec<LabelScore>,
    /// Raw head outputs; empty (and not printed) where they did not travel, as in replies.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logits: Vec<f32>,
    pub tokens: usize,
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelScore {
    pub label: String,
    pub score: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tagging {
    pub entities: Vec<Entity>,
    pub tokens: usize,
    pub truncated: bool,
}
