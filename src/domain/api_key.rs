//! An API key as batchd stores it: who it acts for, never its secret (the
//! store keeps only the secret's SHA-256, `auth` checks it).

/// A stored key, without its secret.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ApiKey {
    pub id: String,
    pub project_id: String,
    pub name: String,
    /// `sk-batchd-1234…cdef`: enough to recognise a key, not to use it.
    pub redacted: String,
    pub admin: bool,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}
