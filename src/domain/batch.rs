//! The Batch aggregate as batchd stores it.

use serde::{Deserialize, Serialize};

use super::batch_status::BatchStatus;
use super::usage::Usage;

#[derive(Debug, Clone)]
pub struct BatchRecord {
    pub id: String,
    pub project_id: String,
    pub endpoint: String,
    pub model: Option<String>,
    pub input_file_id: String,
    pub completion_window: String,
    pub status: BatchStatus,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub errors: Option<Vec<BatchError>>,
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    pub output_expires_after: Option<i64>,
    pub created_at: i64,
    pub in_progress_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub finalizing_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub expired_at: Option<i64>,
    pub cancelling_at: Option<i64>,
    pub cancelled_at: Option<i64>,
    pub request_counts: RequestCounts,
    pub usage: Option<Usage>,
}

impl BatchRecord {
    /// A batch as created: `validating`, nothing run, every timestamp but
    /// `created_at` and `expires_at` unset.
    pub fn new_validating(
        id: String,
        project_id: String,
        endpoint: String,
        input_file_id: String,
        completion_window: String,
        created_at: i64,
        expires_at: Option<i64>,
    ) -> Self {
        Self {
            id,
            project_id,
            endpoint,
            model: None,
            input_file_id,
            completion_window,
            status: BatchStatus::Validating,
            output_file_id: None,
            error_file_id: None,
            errors: None,
            metadata: None,
            output_expires_after: None,
            created_at,
            in_progress_at: None,
            expires_at,
            finalizing_at: None,
            completed_at: None,
            failed_at: None,
            expired_at: None,
            cancelling_at: None,
            cancelled_at: None,
            request_counts: RequestCounts::default(),
            usage: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RequestCounts {
    pub total: i64,
    pub completed: i64,
    pub failed: i64,
}

/// One entry of a failed batch's `errors.data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchError {
    pub code: String,
    pub message: String,
    pub param: Option<String>,
    /// 1-based line of the input file, or null for file-level problems.
    pub line: Option<u64>,
}

impl BatchError {
    pub fn new(code: &str, message: impl Into<String>, param: Option<&str>, line: Option<u64>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
            param: param.map(str::to_owned),
            line,
        }
    }
}
