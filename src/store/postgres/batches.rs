//! `BatchRepo` on PostgreSQL.

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgConnection, Row};

use super::decode::column;
use super::files::insert_file;
use super::results::delete_results;
use super::{PgStore, lock_project};
use crate::domain::{BatchError, BatchRecord, BatchStatus, Page, RequestCounts, Usage};
use crate::error::{Error, Result};
use crate::store::{BatchIntents, BatchRepo, CancelOutcome, FinishedFile, ResultFileKind, StartOutcome};

/// Every column a `BatchRecord` is read from.
const COLUMNS: &str = "id, project_id, endpoint, model, input_file_id, completion_window, status, output_file_id,
    error_file_id, errors, metadata, output_expires_after, created_at, in_progress_at, expires_at, finalizing_at,
    completed_at, failed_at, expired_at, cancelling_at, cancelled_at, total_requests, completed_requests,
    failed_requests, input_tokens, cached_tokens, output_tokens, reasoning_tokens, total_tokens";

fn batch_from_row(row: &PgRow) -> Result<BatchRecord> {
    let status: String = column(row, "status")?;
    let status = BatchStatus::parse(&status)
        .ok_or_else(|| Error::internal(anyhow::anyhow!("unknown batch status {status:?} in database")))?;
    let errors: Option<String> = column(row, "errors")?;
    let errors = errors
        .map(|json| serde_json::from_str::<Vec<BatchError>>(&json))
        .transpose()
        .map_err(Error::internal)?;
    let metadata: Option<String> = column(row, "metadata")?;
    let metadata = metadata
        .map(|json| serde_json::from_str(&json))
        .transpose()
        .map_err(Error::internal)?;
    let usage = match column::<Option<i64>>(row, "input_tokens")? {
        None => None,
        Some(input_tokens) => Some(Usage {
            input_tokens,
            cached_tokens: column::<Option<i64>>(row, "cached_tokens")?.unwrap_or(0),
            output_tokens: column::<Option<i64>>(row, "output_tokens")?.unwrap_or(0),
            reasoning_tokens: column::<Option<i64>>(row, "reasoning_tokens")?.unwrap_or(0),
            total_tokens: column::<Option<i64>>(row, "total_tokens")?.unwrap_or(0),
        }),
    };
    Ok(BatchRecord {
        id: column(row, "id")?,
        project_id: column(row, "project_id")?,
        endpoint: column(row, "endpoint")?,
        model: column(row, "model")?,
        input_file_id: column(row, "input_file_id")?,
        completion_window: column(row, "completion_window")?,
        status,
        output_file_id: column(row, "output_file_id")?,
        error_file_id: column(row, "error_file_id")?,
        errors,
        metadata,
        output_expires_after: column(row, "output_expires_after")?,
        created_at: column(row, "created_at")?,
        in_progress_at: column(row, "in_progress_at")?,
        expires_at: column(row, "expires_at")?,
        finalizing_at: column(row, "finalizing_at")?,
        completed_at: column(row, "completed_at")?,
        failed_at: column(row, "failed_at")?,
        expired_at: column(row, "expired_at")?,
        cancelling_at: column(row, "cancelling_at")?,
        cancelled_at: column(row, "cancelled_at")?,
        request_counts: RequestCounts {
            total: column(row, "total_requests")?,
            completed: column(row, "completed_requests")?,
            failed: column(row, "failed_requests")?,
        },
        usage,
    })
}

/// The rows that decode; one that does not is logged and left out (as on
/// SQLite), instead of failing every list and the supervisor's scan.
fn decodable_batches<'a>(rows: impl IntoIterator<Item = &'a PgRow>) -> Vec<BatchRecord> {
    rows.into_iter()
        .filter_map(|row| match batch_from_row(row) {
            Ok(batch) => Some(batch),
            Err(e) => {
                let id = row.try_get::<String, _>("id").unwrap_or_default();
                tracing::error!(batch_id = %id, error = %e, "skipping a batch row that cannot be read");
                None
            }
        })
        .collect()
}

fn names(statuses: &[BatchStatus]) -> Vec<String> {
    statuses.iter().map(|s| s.as_str().to_owned()).collect()
}

/// `, <column> = $1` that stamps the new status's timestamp (bound to `now`).
/// `validating`'s timestamp is `created_at`, never changed: the clause still
/// names `$1` (unlike SQLite, PostgreSQL refuses a parameter it cannot type).
fn stamp_clause(to: BatchStatus) -> String {
    match to.timestamp_column() {
        Some(c) => format!(", {c} = $1"),
        None => ", created_at = COALESCE(created_at, $1)".to_owned(),
    }
}

fn metadata_json(b: &BatchRecord) -> Result<Option<String>> {
    b.metadata
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(Error::internal)
}

const INSERT: &str = "INSERT INTO batches (id, project_id, endpoint, model, input_file_id, completion_window, status,
                                  metadata, output_expires_after, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

async fn insert<'e, E: sqlx::PgExecutor<'e>>(executor: E, b: &BatchRecord) -> Result<()> {
    sqlx::query(INSERT)
        .bind(&b.id)
        .bind(&b.project_id)
        .bind(&b.endpoint)
        .bind(&b.model)
        .bind(&b.input_file_id)
        .bind(&b.completion_window)
        .bind(b.status.as_str())
        .bind(metadata_json(b)?)
        .bind(b.output_expires_after)
        .bind(b.created_at)
        .bind(b.expires_at)
        .execute(executor)
        .await?;
    Ok(())
}

#[async_trait]
impl BatchRepo for PgStore {
    async fn insert_batch(&self, b: &BatchRecord) -> Result<()> {
        insert(&self.pool, b).await
    }

    async fn get_batch(&self, project_id: &str, id: &str) -> Result<Option<BatchRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM batches WHERE id = $1 AND project_id = $2"
        )))
        .bind(id)
        .bind(project_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(batch_from_row).transpose()
    }

    async fn get_batch_any_project(&self, id: &str) -> Result<Option<BatchRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {COLUMNS} FROM batches WHERE id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(batch_from_row).transpose()
    }

    async fn list_batches(
        &self,
        project_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Option<Page<BatchRecord>>> {
        let cursor: Option<i64> = match after {
            None => None,
            Some(after) => {
                let seq = sqlx::query_scalar("SELECT seq FROM batches WHERE id = $1 AND project_id = $2")
                    .bind(after)
                    .bind(project_id)
                    .fetch_optional(&self.pool)
                    .await?;
                match seq {
                    Some(seq) => Some(seq),
                    None => return Ok(None),
                }
            }
        };
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM batches WHERE project_id = $1 AND ($2::bigint IS NULL OR seq < $2)
             ORDER BY seq DESC LIMIT $3"
        )))
        .bind(project_id)
        .bind(cursor)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let has_more = rows.len() > limit as usize;
        let items = decodable_batches(rows.iter().take(limit as usize));
        Ok(Some(Page { items, has_more }))
    }

    async fn count_by_status(&self) -> Result<Vec<(String, i64)>> {
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT status, COUNT(*) FROM batches GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows)
    }

    async fn active_batches(&self) -> Result<Vec<BatchRecord>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM batches WHERE status = ANY($1) ORDER BY seq ASC"
        )))
        .bind(names(&BatchStatus::ACTIVE))
        .fetch_all(&self.pool)
        .await?;
        Ok(decodable_batches(&rows))
    }

    async fn transition(&self, id: &str, to: BatchStatus, now: i64) -> Result<bool> {
        // One statement: a concurrent transition of the same row waits for
        // its lock and re-checks `status` against the committed row.
        let sql = format!(
            "UPDATE batches SET status = $2{} WHERE id = $3 AND status = ANY($4)",
            stamp_clause(to)
        );
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(now)
            .bind(to.as_str())
            .bind(id)
            .bind(names(to.allowed_from()))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn fail_validation(&self, id: &str, errors: &[BatchError], now: i64) -> Result<bool> {
        let to = BatchStatus::Failed;
        let errors = serde_json::to_string(errors).map_err(Error::internal)?;
        // From `validating` only: a batch that has started ends through
        // `finish_failed`, with its files and the deletion of its results.
        let sql = format!(
            "UPDATE batches SET status = $2{}, errors = $4 WHERE id = $3 AND status = $5",
            stamp_clause(to)
        );
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(now)
            .bind(to.as_str())
            .bind(id)
            .bind(errors)
            .bind(BatchStatus::Validating.as_str())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        record_event(&mut tx, id, to, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn set_errors(&self, id: &str, errors: &[BatchError]) -> Result<()> {
        let errors = serde_json::to_string(errors).map_err(Error::internal)?;
        sqlx::query("UPDATE batches SET errors = $1 WHERE id = $2")
            .bind(errors)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn request_cancel(&self, project_id: &str, id: &str, now: i64) -> Result<CancelOutcome> {
        let to = BatchStatus::Cancelling;
        let sql = format!(
            "UPDATE batches SET status = $2{} WHERE id = $3 AND project_id = $4 AND status = ANY($5)",
            stamp_clause(to)
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(now)
            .bind(to.as_str())
            .bind(id)
            .bind(project_id)
            .bind(names(to.allowed_from()))
            .execute(&self.pool)
            .await?;
        Ok(match self.get_batch(project_id, id).await? {
            None => CancelOutcome::NotFound,
            Some(b) if matches!(b.status, BatchStatus::Cancelling | BatchStatus::Cancelled) => {
                CancelOutcome::Accepted(Box::new(b))
            }
            Some(b) => CancelOutcome::Refused(b.status),
        })
    }

    async fn finish(
        &self,
        id: &str,
        from: BatchStatus,
        to: BatchStatus,
        files: &[FinishedFile],
        now: i64,
    ) -> Result<bool> {
        finish_with(self, id, from, to, "", files, now).await
    }

    async fn insert_batch_within_limit(&self, b: &BatchRecord, max_active: u64) -> Result<bool> {
        // Concurrent creates of one project take turns on its advisory lock;
        // the count runs after the lock is held, so (READ COMMITTED: a fresh
        // snapshot per statement) it sees every insert committed before.
        let mut tx = self.pool.begin().await?;
        lock_project(&mut tx, &b.project_id).await?;
        let active: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM batches WHERE project_id = $1 AND status = ANY($2)")
            .bind(&b.project_id)
            .bind(names(&BatchStatus::ACTIVE))
            .fetch_one(&mut *tx)
            .await?;
        if active >= i64::try_from(max_active).unwrap_or(i64::MAX) {
            tx.rollback().await?;
            return Ok(false);
        }
        insert(&mut *tx, b).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn start_within_enqueued_limit(
        &self,
        id: &str,
        model: &str,
        total: i64,
        now: i64,
        max_enqueued: u64,
    ) -> Result<StartOutcome> {
        let mut tx = self.pool.begin().await?;
        let project: Option<String> = sqlx::query_scalar("SELECT project_id FROM batches WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(project) = project else {
            tx.rollback().await?;
            return Ok(StartOutcome::NotValidating);
        };
        // Starts of one project take turns (see `insert_batch_within_limit`).
        lock_project(&mut tx, &project).await?;
        // Lines of the project's running batches that have no result yet.
        let enqueued: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(total_requests - completed_requests - failed_requests), 0)::bigint FROM batches
             WHERE status = 'in_progress' AND id <> $1 AND project_id = $2",
        )
        .bind(id)
        .bind(&project)
        .fetch_one(&mut *tx)
        .await?;
        if enqueued.saturating_add(total) > i64::try_from(max_enqueued).unwrap_or(i64::MAX) {
            tx.rollback().await?;
            return Ok(StartOutcome::OverEnqueuedLimit { enqueued });
        }
        let to = BatchStatus::InProgress;
        let sql = format!(
            "UPDATE batches SET status = $2{}, model = $4, total_requests = $5,
                    input_tokens = 0, cached_tokens = 0, output_tokens = 0, reasoning_tokens = 0, total_tokens = 0
             WHERE id = $3 AND status = ANY($6)",
            stamp_clause(to)
        );
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(now)
            .bind(to.as_str())
            .bind(id)
            .bind(model)
            .bind(total)
            .bind(names(to.allowed_from()))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(if done.rows_affected() == 1 {
            StartOutcome::Started
        } else {
            StartOutcome::NotValidating
        })
    }

    async fn batch_intents(&self, id: &str) -> Result<BatchIntents> {
        let row: Option<(Option<String>, Option<i64>)> =
            sqlx::query_as("SELECT failing_errors, line_limit FROM batches WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        let Some((failing, line_limit)) = row else {
            return Ok(BatchIntents::default());
        };
        let failing = failing
            .map(|json| serde_json::from_str::<Vec<BatchError>>(&json))
            .transpose()
            .map_err(Error::internal)?;
        Ok(BatchIntents {
            failing,
            line_limit: line_limit.and_then(|l| u64::try_from(l).ok()),
        })
    }

    async fn set_line_limit(&self, id: &str, limit: u64) -> Result<()> {
        sqlx::query("UPDATE batches SET line_limit = $1 WHERE id = $2")
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn mark_failing(&self, id: &str, errors: &[BatchError]) -> Result<bool> {
        let errors = serde_json::to_string(errors).map_err(Error::internal)?;
        let done = sqlx::query(
            "UPDATE batches SET failing_errors = COALESCE(failing_errors, $1) WHERE id = $2 AND status = 'in_progress'",
        )
        .bind(errors)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn finish_failed(&self, id: &str, from: BatchStatus, files: &[FinishedFile], now: i64) -> Result<bool> {
        // The stored failure intent becomes the batch's `errors` in the same
        // transaction that makes it `failed`.
        let errors = ", errors = COALESCE(failing_errors, errors)";
        finish_with(self, id, from, BatchStatus::Failed, errors, files, now).await
    }
}

/// A terminal transition, compare-and-set on `from`, in one transaction with
/// its files, the deletion of its result rows and its webhook event.
/// `extra_set` is a constant `, column = expr` list set along with the status.
async fn finish_with(
    store: &PgStore,
    id: &str,
    from: BatchStatus,
    to: BatchStatus,
    extra_set: &'static str,
    files: &[FinishedFile],
    now: i64,
) -> Result<bool> {
    let mut tx = store.pool.begin().await?;
    let sql = format!(
        "UPDATE batches SET status = $2{}{extra_set} WHERE id = $3 AND status = $4",
        stamp_clause(to)
    );
    let done = sqlx::query(AssertSqlSafe(sql))
        .bind(now)
        .bind(to.as_str())
        .bind(id)
        .bind(from.as_str())
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() != 1 {
        tx.rollback().await?;
        return Ok(false);
    }
    register_result_files(&mut tx, id, files).await?;
    delete_results(&mut *tx, id).await?;
    record_event(&mut tx, id, to, now).await?;
    tx.commit().await?;
    Ok(true)
}

/// Inserts the result files' rows and points the batch at them.
async fn register_result_files(conn: &mut PgConnection, id: &str, files: &[FinishedFile]) -> Result<()> {
    for file in files {
        insert_file(&mut *conn, &file.record).await?;
        let column = match file.kind {
            ResultFileKind::Output => "output_file_id",
            ResultFileKind::Error => "error_file_id",
        };
        sqlx::query(AssertSqlSafe(format!("UPDATE batches SET {column} = $1 WHERE id = $2")))
            .bind(&file.record.id)
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Queues the webhook event of a terminal transition, in the transition's own
/// transaction: the event exists if and only if the batch ended and its
/// project has a webhook endpoint (`webhook_projects`).
async fn record_event(conn: &mut PgConnection, batch_id: &str, to: BatchStatus, now: i64) -> Result<()> {
    let kind = match to {
        BatchStatus::Completed => "batch.completed",
        BatchStatus::Failed => "batch.failed",
        BatchStatus::Cancelled => "batch.cancelled",
        BatchStatus::Expired => "batch.expired",
        _ => return Ok(()),
    };
    sqlx::query(
        "INSERT INTO webhook_events (id, webhook_id, project_id, type, batch_id, created_at, next_attempt_at)
         SELECT $1, $2, project_id, $3, id, $4, $4 FROM batches
         WHERE id = $5 AND project_id IN (SELECT project_id FROM webhook_projects)",
    )
    .bind(format!("evt_{}", uuid::Uuid::new_v4().simple()))
    .bind(format!("wh_{}", uuid::Uuid::new_v4().simple()))
    .bind(kind)
    .bind(now)
    .bind(batch_id)
    .execute(conn)
    .await?;
    Ok(())
}
