//! The project (tenant) a request acts for, as the auth middleware
//! (`api::auth`) established it. Every handler takes one, and every store
//! lookup is scoped by it, so another project's objects are simply not found.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use axum::http::StatusCode;

use crate::openai_error::ApiError;

#[derive(Debug, Clone)]
pub struct Project(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Project {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // Fails closed: a handler reached without the auth middleware (a
        // routing mistake) must never act for some default project.
        parts.extensions.get::<Project>().cloned().ok_or_else(|| {
            tracing::error!("request reached a handler without an authenticated project");
            ApiError::bad_request("The server had an error while processing your request.", None, None)
                .with_status(StatusCode::INTERNAL_SERVER_ERROR)
        })
    }
}
