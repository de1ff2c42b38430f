//! Creating, listing, revoking and checking API keys.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};

use crate::domain::ApiKey;
use crate::error::{Error, Result, truncate};
use crate::ids;
use crate::store::Store;

/// A key just created: the secret exists only here.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NewKey {
    #[serde(flatten)]
    pub key: ApiKey,
    pub secret: String,
}

/// Who a request acts as.
#[derive(Debug, Clone)]
pub struct Principal {
    pub project_id: String,
    pub admin: bool,
}

/// Why a request was not authenticated.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    /// The redacted form of what was sent, for the error message.
    Invalid(String),
}

#[derive(Clone)]
pub struct KeyService {
    store: Arc<dyn Store>,
    /// Set once keys are required and never cleared while the process runs:
    /// `server.require_keys`, or a key was ever created. Authentication can
    /// only go from open to closed, never back (audit H1).
    required: Arc<AtomicBool>,
}

const PREFIX: &str = "sk-batchd-";

pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

pub fn redact(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() <= 14 {
        return "*".repeat(chars.len().min(8));
    }
    let head: String = chars[..14].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is
/// case-insensitive (RFC 7235 §2.1), so `bearer sk-...` works as it does with
/// OpenAI.
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl KeyService {
    /// `require_keys`: `server.require_keys`, keys required even before the
    /// first one exists.
    pub fn new(store: Arc<dyn Store>, require_keys: bool) -> Self {
        Self {
            store,
            required: Arc::new(AtomicBool::new(require_keys)),
        }
    }

    pub async fn create(&self, project_id: &str, name: &str, admin: bool) -> Result<NewKey> {
        if project_id.is_empty()
            || project_id.len() > 64
            || !project_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(Error::invalid(
                "A project id is 1 to 64 letters, digits, '-' or '_'.",
                Some("project_id"),
                Some("invalid_value"),
            ));
        }
        // Two v4 UUIDs: 244 bits from the OS's random source.
        let secret = format!(
            "{PREFIX}{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let key = ApiKey {
            id: format!("key_{}", uuid::Uuid::new_v4().simple()),
            project_id: project_id.to_owned(),
            name: name.to_owned(),
            redacted: redact(&secret),
            admin,
            created_at: ids::now(),
            revoked_at: None,
        };
        self.store.insert_key(&key, &hash(&secret)).await?;
        tracing::info!(key_id = %key.id, project_id, admin, "API key created");
        Ok(NewKey { key, secret })
    }

    pub async fn list(&self, project_id: Option<&str>) -> Result<Vec<ApiKey>> {
        self.store.list_keys(project_id).await
    }

    pub async fn revoke(&self, id: &str) -> Result<ApiKey> {
        let key = self
            .store
            .revoke_key(id, ids::now())
            .await?
            .ok_or_else(|| Error::NotFound {
                message: format!("No API key found with id '{}'.", truncate(id)),
                param: Some("key_id"),
            })?;
        tracing::info!(key_id = %key.id, "API key revoked");
        Ok(key)
    }

    /// Whether requests must carry a key: `server.require_keys`, or a key was
    /// ever created (revoked ones count). Sticky: once true it stays true, and
    /// the store is asked only while it is false (a key created by the CLI
    /// next to a running server takes effect at its next request).
    pub async fn required(&self) -> Result<bool> {
        if self.required.load(Ordering::Acquire) {
            return Ok(true);
        }
        let ever = self.store.any_key_ever().await?;
        if ever {
            self.required.store(true, Ordering::Release);
        }
        Ok(ever)
    }

    /// Keys not revoked, over all projects (the CLI warns before the last one goes).
    pub async fn active_count(&self) -> Result<u64> {
        self.store.count_active_keys().await
    }

    /// Checks an `Authorization` header value.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<std::result::Result<Principal, AuthFailure>> {
        let Some(secret) = header.and_then(bearer_token) else {
            return Ok(Err(AuthFailure::Missing));
        };
        if secret.is_empty() {
            return Ok(Err(AuthFailure::Missing));
        }
        match self.store.active_key_by_hash(&hash(secret)).await? {
            Some(key) => Ok(Ok(Principal {
                project_id: key.project_id,
                admin: key.admin,
            })),
            None => Ok(Err(AuthFailure::Invalid(redact(secret)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer sk-1"), Some("sk-1"));
        assert_eq!(bearer_token("bearer sk-1"), Some("sk-1"));
        assert_eq!(bearer_token("BEARER   sk-1 "), Some("sk-1"));
        assert_eq!(bearer_token("Basic sk-1"), None);
        assert_eq!(bearer_token("Bearersk-1"), None);
        assert_eq!(bearer_token("sk-1"), None);
    }
}
