//! OpenAI's error envelope, `{"error": {"message", "type", "param", "code"}}`,
//! produced for every failure from one table of kind -> (status, type).
//!
//! Outside `api` because two HTTP servers answer in it: batchd's API and the
//! embedded engine (`batchd engine`), which must not depend on the API.

mod envelope;

pub use envelope::openai_errors;

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::Error;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

const INVALID_REQUEST: &str = "invalid_request_error";
const SERVER_ERROR: &str = "server_error";

impl ApiError {
    pub fn bad_request(message: impl Into<String>, param: Option<&str>, code: Option<&str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: INVALID_REQUEST,
            message: message.into(),
            param: param.map(str::to_owned),
            code: code.map(str::to_owned),
        }
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }
}

/// The table: each service error kind's HTTP status and OpenAI error type.
impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let (status, kind) = match &e {
            Error::NotFound { .. } => (StatusCode::NOT_FOUND, INVALID_REQUEST),
            Error::Invalid { .. } => (StatusCode::BAD_REQUEST, INVALID_REQUEST),
            Error::Conflict { .. } => (StatusCode::CONFLICT, INVALID_REQUEST),
            Error::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, INVALID_REQUEST),
            Error::StorageFull { .. } => (StatusCode::INSUFFICIENT_STORAGE, SERVER_ERROR),
            // OpenAI's rate-limit errors have type "requests" (or "tokens").
            Error::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "requests"),
            Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, SERVER_ERROR),
        };
        let (message, param, code) = match e {
            Error::NotFound { message, param } => (message, param.map(str::to_owned), None),
            Error::Invalid { message, param, code } => (message, param, code.map(str::to_owned)),
            Error::Conflict { message } | Error::TooLarge { message } => (message, None, None),
            Error::StorageFull { message } => (message, None, Some("insufficient_storage".to_owned())),
            Error::RateLimited { message } => (message, None, Some("rate_limit_exceeded".to_owned())),
            Error::Internal(err) => {
                tracing::error!(error = %err, "internal error");
                (
                    "The server had an error while processing your request.".to_owned(),
                    None,
                    None,
                )
            }
        };
        Self {
            status,
            kind,
            message,
            param,
            code,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let envelope = Envelope {
            error: Body {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code.as_deref(),
            },
        };
        let mut response = (self.status, Json(envelope)).into_response();
        // The SDKs retry 409 and 5xx by default; a conflict will not resolve by
        // itself, so tell them not to (see the contract, §1.2).
        if self.status == StatusCode::CONFLICT {
            response
                .headers_mut()
                .insert("x-should-retry", HeaderValue::from_static("false"));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
