//! Makes every error response an OpenAI envelope, including the ones axum and
//! tower-http produce themselves (body over the size limit, bad path encoding,
//! a missing content type), whose bodies are plain text by default.

use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// Plain-text error bodies longer than this are cut (they are framework messages).
const MAX_TEXT: usize = 1024;

pub async fn openai_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_TEXT * 4).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text[..text.len().min(MAX_TEXT)])
        .trim()
        .to_owned();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("Error").to_owned()
    } else {
        text
    };
    let mut error = ApiError::bad_request(message, None, None).with_status(status);
    if status.is_server_error() {
        error.kind = "server_error";
    }
    let mut rebuilt = error.into_response();
    // Keep headers the inner layers set (x-request-id, retry hints).
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rebuilt.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rebuilt
}
