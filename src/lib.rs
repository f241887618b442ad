//! samp: a model server for BERT-class text encoders with Self-Adaptive Mixed-Precision.
//!
//! The request path, top to bottom: [`server`] (gRPC, validation) → [`tokenize`] (text → token
//! ids, on a worker pool) → [`backend`] (a compute thread per model, fed by a bounded queue;
//! batches formed by [`batching`]) → [`model`] (embedding, encoder layers, task heads).
//! Settings in [`config`], errors in [`error`], metric names in [`metrics`].

pub mod backend;
pub mod batching;
pub mod cli;
pub mod client;
pub mod config;
pub mod error;
pub mod kernels;
pub mod metrics;
pub mod model;
pub mod quant;
pub mod server;
pub mod tokenize;
pub mod tune;
