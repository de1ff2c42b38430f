//! The OpenAI wire objects batchd returns, built from its records. Every key
//! OpenAI sends is present; unset ones are `null`.

use serde::Serialize;

use crate::domain::{BatchError, BatchRecord, FileRecord, Page, RequestCounts};

#[derive(Serialize)]
pub struct FileObject<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub bytes: i64,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub filename: &'a str,
    pub purpose: &'a str,
    /// Deprecated upstream but still required by the SDKs' types; batchd
    /// stores a file only once its bytes are complete, so it is always processed.
    pub status: &'static str,
    pub status_details: Option<&'static str>,
}

impl<'a> From<&'a FileRecord> for FileObject<'a> {
    fn from(f: &'a FileRecord) -> Self {
        Self {
            id: &f.id,
            object: "file",
            bytes: f.bytes,
            created_at: f.created_at,
            expires_at: f.expires_at,
            filename: &f.filename,
            purpose: &f.purpose,
            status: "processed",
            status_details: None,
        }
    }
}

#[derive(Serialize)]
pub struct FileDeleted<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub deleted: bool,
}

#[derive(Serialize)]
pub struct ListEnvelope<T> {
    pub object: &'static str,
    pub data: Vec<T>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}

impl<T> ListEnvelope<T> {
    /// Builds a list page; `id_of` names each item for `first_id`/`last_id`.
    pub fn new<'a, R>(page: &'a Page<R>, id_of: impl Fn(&R) -> &str, to_wire: impl Fn(&'a R) -> T) -> Self {
        Self {
            object: "list",
            data: page.items.iter().map(to_wire).collect(),
            first_id: page.items.first().map(|r| id_of(r).to_owned()),
            last_id: page.items.last().map(|r| id_of(r).to_owned()),
            has_more: page.has_more,
        }
    }
}

#[derive(Serialize)]
pub struct BatchObject<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub endpoint: &'a str,
    pub model: Option<&'a str>,
    pub errors: Option<BatchErrors<'a>>,
    pub input_file_id: &'a str,
    pub completion_window: &'a str,
    pub status: &'static str,
    pub output_file_id: Option<&'a str>,
    pub error_file_id: Option<&'a str>,
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
    pub usage: Option<UsageObject>,
    pub metadata: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

#[derive(Serialize)]
pub struct BatchErrors<'a> {
    pub object: &'static str,
    pub data: &'a [BatchError],
}

#[derive(Serialize)]
pub struct UsageObject {
    pub input_tokens: i64,
    pub input_tokens_details: CachedTokens,
    pub output_tokens: i64,
    pub output_tokens_details: ReasoningTokens,
    pub total_tokens: i64,
}

#[derive(Serialize)]
pub struct CachedTokens {
    pub cached_tokens: i64,
}

#[derive(Serialize)]
pub struct ReasoningTokens {
    pub reasoning_tokens: i64,
}

impl<'a> From<&'a BatchRecord> for BatchObject<'a> {
    fn from(b: &'a BatchRecord) -> Self {
        Self {
            id: &b.id,
            object: "batch",
            endpoint: &b.endpoint,
            model: b.model.as_deref(),
            errors: b.errors.as_deref().map(|data| BatchErrors { object: "list", data }),
            input_file_id: &b.input_file_id,
            completion_window: &b.completion_window,
            status: b.status.as_str(),
            output_file_id: b.output_file_id.as_deref(),
            error_file_id: b.error_file_id.as_deref(),
            created_at: b.created_at,
            in_progress_at: b.in_progress_at,
            expires_at: b.expires_at,
            finalizing_at: b.finalizing_at,
            completed_at: b.completed_at,
            failed_at: b.failed_at,
            expired_at: b.expired_at,
            cancelling_at: b.cancelling_at,
            cancelled_at: b.cancelled_at,
            request_counts: b.request_counts,
            usage: b.usage.map(|u| UsageObject {
                input_tokens: u.input_tokens,
                input_tokens_details: CachedTokens {
                    cached_tokens: u.cached_tokens,
                },
                output_tokens: u.output_tokens,
                output_tokens_details: ReasoningTokens {
                    reasoning_tokens: u.reasoning_tokens,
                },
                total_tokens: u.total_tokens,
            }),
            metadata: b.metadata.as_ref(),
        }
    }
}
