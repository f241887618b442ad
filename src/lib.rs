//! samp: a model server for BERT-class text encoders with Self-Adaptive Mixed-Precision.
//!
//! The request path, top to bottom: [`tokenize`] (text → token ids) → [`model`] (embedding,
//! encoder layers, task heads). Errors are in [`error`].

pub mod cli;
pub mod error;
pub mod model;
pub mod tokenize;
