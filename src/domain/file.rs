//! The File aggregate as batchd stores it.

use super::page::Order;

/// A stored file's metadata. Its bytes live in the object store at `storage_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    pub id: String,
    pub project_id: String,
    pub filename: String,
    pub purpose: String,
    pub bytes: i64,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub storage_key: String,
}

/// What `GET /v1/files` asks for: a page of one project's live files.
#[derive(Debug, Clone)]
pub struct FileListQuery {
    pub purpose: Option<String>,
    pub after: Option<String>,
    pub limit: u32,
    pub order: Order,
}

/// The purposes a client may upload with, and the one batchd gives result files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Assistants,
    Batch,
    FineTune,
    Vision,
    UserData,
    Evals,
    BatchOutput,
}

impl Purpose {
    /// Purposes accepted by `POST /v1/files`, in OpenAI's documented order.
    pub const UPLOADABLE: [Purpose; 6] = [
        Purpose::Assistants,
        Purpose::Batch,
        Purpose::FineTune,
        Purpose::Vision,
        Purpose::UserData,
        Purpose::Evals,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Assistants => "assistants",
            Purpose::Batch => "batch",
            Purpose::FineTune => "fine-tune",
            Purpose::Vision => "vision",
            Purpose::UserData => "user_data",
            Purpose::Evals => "evals",
            Purpose::BatchOutput => "batch_output",
        }
    }

    pub fn parse_uploadable(s: &str) -> Option<Purpose> {
        Self::UPLOADABLE.into_iter().find(|p| p.as_str() == s)
    }
}

/// Batch input files expire 30 days after upload unless told otherwise, as on
/// OpenAI; so do result files, counted from their creation.
pub const DEFAULT_BATCH_FILE_TTL_SECS: i64 = 30 * 24 * 3600;

/// Upper bound of `expires_after[seconds]` and `output_expires_after.seconds`
/// (the lower bound is `limits.min_expires_after_secs`, 3600 as on OpenAI).
pub const MAX_EXPIRES_AFTER_SECS: i64 = 30 * 24 * 3600;
