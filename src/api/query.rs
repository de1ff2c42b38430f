//! Query-string parsing with OpenAI-shaped errors (axum's own rejections are
//! plain text, which the SDKs cannot parse).

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;

use crate::error::truncate;
use crate::openai_error::ApiError;

/// The raw query parameters; typed accessors below report bad values.
pub struct Params(HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(pairs) = Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::bad_request("The query string could not be parsed.", None, None))?;
        let mut map = HashMap::with_capacity(pairs.len());
        for (name, value) in pairs {
            if map.contains_key(&name) {
                // Which of two values a server picks differs between servers;
                // refusing is the only answer that cannot surprise.
                return Err(ApiError::bad_request(
                    format!("The query parameter '{}' was given more than once.", truncate(&name)),
                    Some(&name),
                    Some("invalid_value"),
                ));
            }
            map.insert(name, value);
        }
        Ok(Params(map))
    }
}

impl Params {
    /// A free-form string parameter; an empty value counts as absent.
    pub fn string(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str).filter(|s| !s.is_empty())
    }

    /// A parameter with a fixed set of values or a format: present but empty
    /// is a bad value, not an absent one.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// An integer in `min..=max`, or `default` when absent.
    pub fn int_in(&self, name: &str, min: u32, max: u32, default: u32) -> Result<u32, ApiError> {
        let Some(raw) = self.value(name) else {
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
