//! An error as the HTTP door answers it: the gRPC code's HTTP status and a JSON body in TEI's
//! or OpenAI's shape.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tonic::Code;

use crate::server::status::ServeError;

/// An error as the door answers it: the gRPC code (kept in the body), and what went wrong.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) code: Code,
    pub(super) message: String,
    /// The request field at fault, when one is.
    pub(super) param: Option<&'static str>,
}

impl Failure {
    pub(super) fn new(code: Code, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            param: None,
        }
    }

    pub(super) fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Failure {
            code: Code::InvalidArgument,
            message: message.into(),
            param: Some(param),
        }
    }

    /// The HTTP status of a gRPC code (the mapping of google.rpc.Code, 499 for a client that
    /// went away).
    fn status(&self) -> StatusCode {
        match self.code {
            Code::Ok => StatusCode::OK,
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
                StatusCode::BAD_REQUEST
            }
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Cancelled => StatusCode::from_u16(499).expect("valid status"),
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC code's name, e.g. `INVALID_ARGUMENT`.
    fn code_name(&self) -> String {
        format!("{:?}", self.code)
            .chars()
            .enumerate()
            .flat_map(|(i, c)| {
                let sep = (i > 0 && c.is_ascii_uppercase()).then_some('_');
                sep.into_iter()
                    .chain(std::iter::once(c.to_ascii_uppercase()))
            })
            .collect()
    }

    /// TEI's error body: `{"error", "error_type"}`, plus the gRPC code.
    pub(super) fn tei(self) -> Response {
        let kind = match self.code {
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => "Validation",
            Code::ResourceExhausted => "Overloaded",
            Code::Unavailable => "Unhealthy",
            _ => "Backend",
        };
        let body = json!({"error": self.message, "error_type": kind, "code": self.code_name()});
        self.respond(body)
    }

    /// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.
    pub(super) fn openai(self) -> Response {
        let kind = match self.code {
            Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition => {
                "invalid_request_error"
            }
            Code::Unauthenticated => "authentication_error",
            Code::ResourceExhausted => "rate_limit_error",
            _ => "server_error",
        };
        let body = json!({"error": {
            "message": self.message, "type": kind, "param": self.param, "code": self.code_name(),
        }});
        self.respond(body)
    }

    fn respond(self, body: Value) -> Response {
        let mut r = json_response(self.status(), &body);
        if matches!(self.code, Code::ResourceExhausted | Code::Unavailable) {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        Failure::new(s.code(), s.message())
    }
}

impl From<ServeError> for Failure {
    fn from(e: ServeError) -> Self {
        tonic::Status::from(e).into()
    }
}

/// A JSON body with this status.
pub(super) fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    let bytes = serde_json::to_vec(body).expect("JSON values serialize");
    let mut r = (status, bytes).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_http_statuses_and_names() {
        let f = Failure::new(Code::ResourceExhausted, "full");
        assert_eq!(f.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(f.code_name(), "RESOURCE_EXHAUSTED");
        let f = Failure::new(Code::DeadlineExceeded, "late");
        assert_eq!(f.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(f.code_name(), "DEADLINE_EXCEEDED");
        assert_eq!(
            Failure::invalid("input", "x").status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(Failure::new(Code::Cancelled, "gone").status().as_u16(), 499);
    }
}
