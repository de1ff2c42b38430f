//! The project (tenant) a request acts for, as the auth middleware
//! (`api::auth`) established it. Every handler takes one, and every store
//! lookup is scoped by it, so another project's objects are simply not found.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::error::ApiError;
use crate::auth::DEFAULT_PROJECT;

#[derive(Debug, Clone)]
pub struct Project(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Project {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Project>()
            .cloned()
            .unwrap_or_else(|| Project(DEFAULT_PROJECT.to_owned())))
    }
}
