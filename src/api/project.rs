//! The project (tenant) a request acts for. Every handler takes one, and every
//! store lookup is scoped by it, so another project's objects are simply not
//! found. Until API keys exist, every request acts for the default project.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::error::ApiError;

pub const DEFAULT_PROJECT: &str = "default";

#[derive(Debug, Clone)]
pub struct Project(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Project {
    type Rejection = ApiError;

    async fn from_request_parts(_parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Project(DEFAULT_PROJECT.to_owned()))
    }
}
