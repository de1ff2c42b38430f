//! A cap on uploads streaming at once (`limits.max_concurrent_uploads`). Each
//! upload holds several MB of write buffers on its way to storage, so without
//! a cap enough parallel uploads exhaust memory. Over the cap the request is
//! answered at once with OpenAI's 429 `rate_limit_exceeded`, which the SDKs
//! retry after `retry-after`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use crate::openai_error::ApiError;

pub async fn limit_uploads(State(slots): State<Arc<Semaphore>>, request: Request, next: Next) -> Response {
    // The slot is held until the handler has stored (or discarded) the body.
    let Ok(_slot) = slots.try_acquire_owned() else {
        let mut response = ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            kind: "requests",
            message: "Too many uploads are in progress on this server. Retry when one has finished.".to_owned(),
            param: None,
            code: Some("rate_limit_exceeded".to_owned()),
        }
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    next.run(request).await
}
