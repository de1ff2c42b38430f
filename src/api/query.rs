//! Query-string parsing with OpenAI-shaped errors (axum's own rejections are
//! plain text, which the SDKs cannot parse).

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;

use super::error::ApiError;

/// The raw query parameters; typed accessors below report bad values.
pub struct Params(HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(map) = Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::bad_request("The query string could not be parsed.", None, None))?;
        Ok(Params(map))
    }
}

impl Params {
    pub fn string(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str).filter(|s| !s.is_empty())
    }

    /// An integer in `min..=max`, or `default` when absent.
    pub fn int_in(&self, name: &str, min: u32, max: u32, default: u32) -> Result<u32, ApiError> {
        let Some(raw) = self.string(name) else {
            return Ok(default);
        };
        match raw.parse::<i64>() {
            Ok(n) if (i64::from(min)..=i64::from(max)).contains(&n) => Ok(n as u32),
            _ => Err(ApiError::bad_request(
                format!(
                    "Invalid '{name}': expected an integer between {min} and {max}, but got '{}'.",
                    truncate(raw)
                ),
                Some(name),
                Some("invalid_value"),
            )),
        }
    }
}

/// Echoing user input in errors is useful, but never unboundedly.
pub fn truncate(s: &str) -> String {
    if s.chars().count() > 64 {
        format!("{}...", s.chars().take(64).collect::<String>())
    } else {
        s.to_owned()
    }
}
