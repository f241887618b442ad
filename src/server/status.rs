//! The one mapping from serving errors to gRPC status codes. Client faults keep their message
//! (with the field named); internal faults become a generic INTERNAL and go to the log whole.

use crate::backend::JobError;
use crate::error::SampError;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Overloaded(String),
    #[error("deadline exceeded before the request could run")]
    DeadlineExceeded,
    #[error("the server is shutting down")]
    Unavailable,
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ServeError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ServeError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Outcome label for metrics (a closed set).
    pub fn outcome(&self) -> &'static str {
        match self {
            ServeError::InvalidArgument { .. } => "invalid_argument",
            ServeError::NotFound(_) => "not_found",
            ServeError::FailedPrecondition(_) => "failed_precondition",
            ServeError::Overloaded(_) => "resource_exhausted",
            ServeError::DeadlineExceeded => "deadline_exceeded",
            ServeError::Unavailable => "unavailable",
            ServeError::Internal(_) => "internal",
        }
    }
}

impl From<SampError> for ServeError {
    fn from(e: SampError) -> Self {
        match e {
            SampError::InvalidInput { field, reason } => {
                ServeError::InvalidArgument { field, reason }
            }
            SampError::WrongTask { .. } => ServeError::FailedPrecondition(e.to_string()),
            other => ServeError::Internal(other.into()),
        }
    }
}

impl From<JobError> for ServeError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::DeadlineExceeded => ServeError::DeadlineExceeded,
            JobError::Model(m) => m.into(),
            JobError::Pass(e) => ServeError::Internal(anyhow::Error::new(e)),
        }
    }
}

impl From<ServeError> for tonic::Status {
    fn from(e: ServeError) -> Self {
        use tonic::Status;
        match e {
            ServeError::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
            ServeError::NotFound(m) => Status::not_found(m),
            ServeError::FailedPrecondition(m) => Status::failed_precondition(m),
            ServeError::Overloaded(m) => Status::resource_exhausted(m),
            ServeError::DeadlineExceeded => Status::deadline_exceeded(e.to_string()),
            ServeError::Unavailable => Status::unavailable(e.to_string()),
            ServeError::Internal(err) => {
                tracing::error!(error = format!("{err:#}"), "internal error");
                Status::internal("internal error")
            }
        }
    }
}
