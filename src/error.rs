//! Error types of the library. Owns every error a caller can see; knows nothing about gRPC
//! (the one mapping to `tonic::Status` lives in the server module).

use std::path::PathBuf;

/// Errors from loading a model directory or running the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum SampError {
    /// A file the model directory must have is not there.
    #[error("{path}: missing ({what})")]
    MissingFile { path: PathBuf, what: &'static str },

    /// A file exists but could not be read.
    #[error("{path}: cannot read")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A JSON file exists but does not parse or lacks a required key.
    #[error("{path}: malformed: {reason}")]
    Malformed { path: PathBuf, reason: String },

    /// The config names an architecture samp does not implement.
    #[error("{path}: unsupported architecture {found:?} (supported: bert, roberta, xlm-roberta, distilbert)")]
    UnsupportedArchitecture { path: PathBuf, found: String },

    /// The weights file lacks a tensor or has one of the wrong shape.
    #[error("{path}: tensor {name}: {reason}")]
    BadTensor {
        path: PathBuf,
        name: String,
        reason: String,
    },

    /// The weights could not be decoded at all.
    #[error("{path}: cannot load weights")]
    Weights {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },

    /// The tokenizer file failed to load or to encode.
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },

    /// The model was asked for a task its head cannot do.
    #[error("model {model} has no {task} head (it is a {has} model)")]
    WrongTask {
        model: String,
        task: &'static str,
        has: &'static str,
    },

    /// The GPU failed during a pass (the message is for the log, not the client).
    #[error("GPU: {0}")]
    Device(#[from] DeviceError),

    /// The encoder produced a NaN or infinite value (bad weights, or an overflow); the result
    /// is refused rather than returned.
    #[error("the encoder produced a non-finite value (at hidden-state element {index})")]
    NonFinite { index: usize },

    /// A caller-supplied input is not acceptable; `field` names it.
    #[error("invalid {field}: {reason}")]
    InvalidInput { field: String, reason: String },
}

/// Why a pass on an accelerator failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// An earlier pass panicked while it held the device state; that state is not trusted.
    #[error("a previous GPU pass panicked")]
    Poisoned,
    /// The driver, cuBLASLt or a kernel reported an error, or the pass panicked (the text is
    /// theirs).
    #[error("{0}")]
    Pass(String),
}

impl SampError {
    pub(crate) fn malformed(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        SampError::Malformed {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        SampError::InvalidInput {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = SampError> = std::result::Result<T, E>;
