//! Metadata persistence, behind one narrow trait per aggregate, implemented
//! on SQLite (`sqlite`, the default) and PostgreSQL (`postgres`). Only this
//! module writes SQL.

pub mod postgres;
pub mod sqlite;

use async_trait::async_trait;

use crate::domain::{
    ApiKey, BatchError, BatchRecord, BatchStatus, FileListQuery, FileRecord, Page, UploadPart, UploadRecord,
    UploadStatus, Usage,
};
use crate::error::Result;

#[async_trait]
pub trait FileRepo: Send + Sync {
    async fn insert_file(&self, file: &FileRecord) -> Result<()>;
    /// A live (not deleted) file of this project.
    async fn get_file(&self, project_id: &str, id: &str) -> Result<Option<FileRecord>>;
    /// `Ok(None)` when `query.after` names no file of this project.
    async fn list_files(&self, project_id: &str, query: &FileListQuery) -> Result<Option<Page<FileRecord>>>;
    /// A file of this project even if deleted: a running batch still reads its
    /// input after the user deleted the file.
    async fn get_file_even_deleted(&self, project_id: &str, id: &str) -> Result<Option<FileRecord>>;
    /// Live files whose `expires_at` is at or before `now`, oldest first.
    async fn expired_files(&self, now: i64, limit: u32) -> Result<Vec<FileRecord>>;
    /// Whether a batch that has not finished reads this file as its input.
    async fn file_in_use(&self, id: &str) -> Result<bool>;
    /// Marks the file deleted and returns it, or `None` if it was not live.
    async fn delete_file(&self, project_id: &str, id: &str) -> Result<Option<FileRecord>>;
    /// Deleted files whose bytes are still stored although no unfinished
    /// batch reads them any more (they were in use when deleted, or removing
    /// them failed), longest deleted first.
    async fn files_with_bytes_to_remove(&self, limit: u32) -> Result<Vec<FileRecord>>;
    /// Records that a deleted file's bytes are gone, so no sweep looks at it again.
    async fn bytes_removed(&self, id: &str, now: i64) -> Result<()>;
}

/// Result of asking to cancel a batch.
#[derive(Debug)]
pub enum CancelOutcome {
    /// The batch is now `cancelling` (or already was, or is already `cancelled`).
    Accepted(Box<BatchRecord>),
    /// The batch is terminal in a status that cannot be cancelled.
    Refused(BatchStatus),
    NotFound,
}

#[async_trait]
pub trait BatchRepo: Send + Sync {
    async fn insert_batch(&self, batch: &BatchRecord) -> Result<()>;
    async fn get_batch(&self, project_id: &str, id: &str) -> Result<Option<BatchRecord>>;
    /// Any project's batch: for workers, never for API handlers.
    async fn get_batch_any_project(&self, id: &str) -> Result<Option<BatchRecord>>;
    /// Newest first. `Ok(None)` when `after` names no batch of this project.
    async fn list_batches(
        &self,
        project_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Option<Page<BatchRecord>>>;
    /// Batches a worker must still move forward, oldest first.
    async fn active_batches(&self) -> Result<Vec<BatchRecord>>;
    /// How many batches have each status (all projects; for metrics).
    async fn count_by_status(&self) -> Result<Vec<(String, i64)>>;
    /// Compare-and-set status change that stamps the new status's timestamp.
    /// Returns false if the batch was not in one of `to.allowed_from()`.
    async fn transition(&self, id: &str, to: BatchStatus, now: i64) -> Result<bool>;
    /// `validating` -> `failed` with the validation problems.
    async fn fail_validation(&self, id: &str, errors: &[BatchError], now: i64) -> Result<bool>;
    /// Records batch-level errors (why a running batch is about to fail).
    async fn set_errors(&self, id: &str, errors: &[BatchError]) -> Result<()>;
    async fn request_cancel(&self, project_id: &str, id: &str, now: i64) -> Result<CancelOutcome>;
    /// Registers the result files and moves the batch to its terminal status,
    /// in one transaction, so a batch is never terminal without its files.
    /// The same transaction deletes the batch's stored results: from then on
    /// the files are the results, and nothing reads a terminal batch's rows.
    async fn finish(
        &self,
        id: &str,
        from: BatchStatus,
        to: BatchStatus,
        files: &[FinishedFile],
        now: i64,
    ) -> Result<bool>;
    /// Inserts the batch unless its project already has `max_active` active
    /// batches (then false); one transaction, so concurrent creates cannot
    /// overshoot the limit.
    async fn insert_batch_within_limit(&self, batch: &BatchRecord, max_active: u64) -> Result<bool>;
    /// `validating` -> `in_progress`, recording the model and the line count,
    /// unless the project's enqueued lines (not yet run, over its
    /// `in_progress` batches) plus `total` would exceed `max_enqueued`. One
    /// transaction, so batches whose validation ends at once cannot overshoot.
    async fn start_within_enqueued_limit(
        &self,
        id: &str,
        model: &str,
        total: i64,
        now: i64,
        max_enqueued: u64,
    ) -> Result<StartOutcome>;
    /// What workers stored about a batch before acting on it (see `BatchIntents`).
    async fn batch_intents(&self, id: &str) -> Result<BatchIntents>;
    /// Records the `max_line_bytes` the input was validated with.
    async fn set_line_limit(&self, id: &str, limit: u64) -> Result<()>;
    /// Persists the decision that an `in_progress` batch ends `failed` with
    /// these errors (not yet visible as `errors`). False if it was no longer
    /// `in_progress`.
    async fn mark_failing(&self, id: &str, errors: &[BatchError]) -> Result<bool>;
    /// Like `finish` to `failed`, also making the stored failing errors the
    /// batch's `errors`, in the same transaction.
    async fn finish_failed(&self, id: &str, from: BatchStatus, files: &[FinishedFile], now: i64) -> Result<bool>;
}

/// Decisions stored with a batch so that a restart resumes them.
#[derive(Debug, Clone, Default)]
pub struct BatchIntents {
    /// Set once the batch must end `failed`: its future `errors`.
    pub failing: Option<Vec<BatchError>>,
    /// The line limit its input was validated with (`None` for batches
    /// validated before it was recorded).
    pub line_limit: Option<u64>,
}

/// What `start_within_enqueued_limit` did.
#[derive(Debug, PartialEq, Eq)]
pub enum StartOutcome {
    Started,
    /// The batch was no longer `validating` (cancelled meanwhile).
    NotValidating,
    /// Not started: the project already has this many lines enqueued.
    OverEnqueuedLimit {
        enqueued: i64,
    },
}

/// A result file written by finalization, and which of the batch's columns names it.
#[derive(Debug, Clone)]
pub struct FinishedFile {
    pub record: FileRecord,
    pub kind: ResultFileKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultFileKind {
    Output,
    Error,
}

/// One finished input line, ready to be appended to a result file.
#[derive(Debug, Clone)]
pub struct LineResult {
    pub batch_id: String,
    /// 1-based line of the input file.
    pub line: u64,
    pub is_error: bool,
    /// The full JSONL line for the output or error file, without newline.
    pub output_line: String,
    pub usage: Usage,
}

#[async_trait]
pub trait ResultRepo: Send + Sync {
    /// Durably records results and adds them to their batches' counts and usage,
    /// in one transaction. A line that already has a result is ignored (and not
    /// counted again): results are exactly-once.
    async fn record_results(&self, results: &[LineResult]) -> Result<()>;
    /// The input lines of a batch that already have a result.
    async fn finished_lines(&self, batch_id: &str) -> Result<Vec<u64>>;
    /// Up to `limit` result lines of one file, in input order, after
    /// `after_line`, holding at most `max_bytes` (but always at least one line).
    async fn result_page(
        &self,
        batch_id: &str,
        is_error: bool,
        after_line: u64,
        limit: u32,
        max_bytes: u64,
    ) -> Result<Vec<(u64, String)>>;
    /// Whether `error`, from `record_results`, means that a result in the
    /// group can never be stored (too large for the database, or refused by a
    /// constraint): retrying the same group cannot succeed.
    fn unstorable(&self, error: &crate::error::Error) -> Option<Unstorable>;
}

/// Why a result can never be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unstorable {
    /// Larger than the database accepts in one value.
    TooLarge,
    /// Refused by the database, deterministically.
    Rejected,
}

/// API keys (see `auth`); only hashes of secrets are stored.
#[async_trait]
pub trait KeyRepo: Send + Sync {
    async fn insert_key(&self, key: &ApiKey, secret_hash: &str) -> Result<()>;
    async fn active_key_by_hash(&self, secret_hash: &str) -> Result<Option<ApiKey>>;
    /// Whether any key was ever created, revoked or not: from then on the API
    /// requires keys for good (revoking every key must not reopen it).
    async fn any_key_ever(&self) -> Result<bool>;
    /// Keys not revoked, over all projects.
    async fn count_active_keys(&self) -> Result<u64>;
    /// Oldest first; all projects when `project_id` is `None`.
    async fn list_keys(&self, project_id: Option<&str>) -> Result<Vec<ApiKey>>;
    /// Marks the key revoked (revoking twice keeps the first time).
    async fn revoke_key(&self, id: &str, now: i64) -> Result<Option<ApiKey>>;
}

/// Uploads API state: uploads and their parts (bytes are in blobs).
#[async_trait]
pub trait UploadRepo: Send + Sync {
    async fn insert_upload(&self, upload: &UploadRecord) -> Result<()>;
    async fn get_upload(&self, project_id: &str, id: &str) -> Result<Option<UploadRecord>>;
    /// Records a part whose bytes are already stored, in one transaction with
    /// the checks that the upload is still `pending`, has fewer than
    /// `max_parts` parts, and that all parts together fit in its declared
    /// `bytes`. Unless `Added`, no row was written and the caller deletes the
    /// part's bytes: a part that lands after a cancel or a completion leaks nothing.
    async fn add_part(&self, part: &UploadPart, max_parts: i64) -> Result<PartAdmission>;
    /// How many parts the upload has, and their total bytes.
    async fn part_totals(&self, upload_id: &str) -> Result<(i64, i64)>;
    async fn parts(&self, upload_id: &str) -> Result<Vec<UploadPart>>;
    /// Compare-and-set of the upload's status, from any of `from` to `to`.
    async fn set_upload_status(&self, id: &str, from: &[UploadStatus], to: UploadStatus) -> Result<bool>;
    /// `completing` -> `completed` naming `file`, and `file`'s row, in one
    /// transaction: when the upload is no longer `completing`, neither happens.
    async fn complete_upload(&self, id: &str, file: &FileRecord) -> Result<bool>;
    /// Pending (or stuck completing) uploads past their `expires_at`.
    async fn expired_uploads(&self, now: i64) -> Result<Vec<UploadRecord>>;
}

/// What `UploadRepo::add_part` decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartAdmission {
    Added,
    /// The upload is in this status (or gone: `None`).
    NotPending(Option<UploadStatus>),
    TooManyParts,
    /// The parts would hold more than the upload's declared `bytes`.
    OverDeclared {
        declared: i64,
        stored: i64,
    },
}

/// The webhook outbox (rows are written by `BatchRepo`'s terminal transitions).
#[async_trait]
pub trait EventRepo: Send + Sync {
    /// Undelivered events whose next attempt is due, oldest first, at most
    /// `per_project` of each project, so one project's backlog cannot hide
    /// the others' events.
    async fn due_events(&self, now: i64, per_project: u32, limit: u32) -> Result<Vec<WebhookEvent>>;
    async fn event_delivered(&self, id: &str, now: i64) -> Result<()>;
    async fn event_failed(&self, id: &str, error: &str, next_attempt_at: Option<i64>, now: i64) -> Result<()>;
    /// Replaces the set of projects that have a webhook endpoint: terminal
    /// transitions queue events only for these.
    async fn set_webhook_projects(&self, projects: &[String]) -> Result<()>;
    /// Deletes events delivered or given up at or before `finished_before`;
    /// returns how many.
    async fn prune_events(&self, finished_before: i64) -> Result<u64>;
}

#[derive(Debug, Clone)]
pub struct WebhookEvent {
    pub id: String,
    pub webhook_id: String,
    pub project_id: String,
    pub kind: String,
    pub batch_id: String,
    pub created_at: i64,
    pub attempts: i64,
}

/// Upkeep of the metadata store itself.
#[async_trait]
pub trait MaintenanceRepo: Send + Sync {
    /// Gives up to `max_pages` free database pages back to the file system
    /// (rows deleted by retention leave free pages behind). Returns how many
    /// were free before; a no-op on stores that cannot shrink incrementally.
    async fn release_free_pages(&self, max_pages: u32) -> Result<u64>;
}

/// Everything the services need from persistence: every store
/// implementation passes `tests/store_conformance`.
pub trait Store: FileRepo + BatchRepo + ResultRepo + KeyRepo + UploadRepo + EventRepo + MaintenanceRepo {}
impl<T: FileRepo + BatchRepo + ResultRepo + KeyRepo + UploadRepo + EventRepo + MaintenanceRepo> Store for T {}
