use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Row};

use super::SqliteStore;
use super::decode::{column, counter};
use super::files::insert_file;
use super::results::delete_results;
use super::write_tx::WriteTx;
use crate::domain::{BatchError, BatchRecord, BatchStatus, Page, RequestCounts, Usage};
use crate::error::{Error, Result};
use crate::store::{BatchIntents, BatchRepo, CancelOutcome, FinishedFile, ResultFileKind, StartOutcome};

fn batch_from_row(row: &SqliteRow) -> Result<BatchRecord> {
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
    let usage = match counter(row, "input_tokens")? {
        None => None,
        Some(input_tokens) => Some(Usage {
            input_tokens,
            cached_tokens: counter(row, "cached_tokens")?.unwrap_or(0),
            output_tokens: counter(row, "output_tokens")?.unwrap_or(0),
            reasoning_tokens: counter(row, "reasoning_tokens")?.unwrap_or(0),
            total_tokens: counter(row, "total_tokens")?.unwrap_or(0),
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
            total: counter(row, "total_requests")?.unwrap_or(0),
            completed: counter(row, "completed_requests")?.unwrap_or(0),
            failed: counter(row, "failed_requests")?.unwrap_or(0),
        },
        usage,
    })
}

/// The rows that decode. One row that does not (a value no code path writes
/// today, but an older version or a hand edit may have) is logged with its id
/// and left out, instead of failing every list and the supervisor's scan,
/// which would stop the batches of every tenant.
fn decodable_batches<'a>(rows: impl IntoIterator<Item = &'a SqliteRow>) -> Vec<BatchRecord> {
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

/// `status IN (...)` for the statuses a transition to `to` may start from.
fn from_clause(to: BatchStatus) -> String {
    let list: Vec<String> = to.allowed_from().iter().map(|s| format!("'{}'", s.as_str())).collect();
    format!("status IN ({})", list.join(", "))
}

/// `, <column> = ?1` that stamps the new status's timestamp (bound to `now`).
fn stamp_clause(to: BatchStatus) -> String {
    to.timestamp_column().map(|c| format!(", {c} = ?1")).unwrap_or_default()
}

#[async_trait]
impl BatchRepo for SqliteStore {
    async fn insert_batch(&self, b: &BatchRecord) -> Result<()> {
        let metadata = b
            .metadata
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(Error::internal)?;
        sqlx::query(
            "INSERT INTO batches (id, project_id, endpoint, model, input_file_id, completion_window, status,
                                  metadata, output_expires_after, created_at, expires_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&b.id)
        .bind(&b.project_id)
        .bind(&b.endpoint)
        .bind(&b.model)
        .bind(&b.input_file_id)
        .bind(&b.completion_window)
        .bind(b.status.as_str())
        .bind(metadata)
        .bind(b.output_expires_after)
        .bind(b.created_at)
        .bind(b.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_batch(&self, project_id: &str, id: &str) -> Result<Option<BatchRecord>> {
        let row = sqlx::query("SELECT * FROM batches WHERE id = ? AND project_id = ?")
            .bind(id)
            .bind(project_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(batch_from_row).transpose()
    }

    async fn get_batch_any_project(&self, id: &str) -> Result<Option<BatchRecord>> {
        let row = sqlx::query("SELECT * FROM batches WHERE id = ?")
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
                let seq = sqlx::query_scalar("SELECT seq FROM batches WHERE id = ? AND project_id = ?")
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
        let rows = sqlx::query(
            "SELECT * FROM batches WHERE project_id = ? AND (? IS NULL OR seq < ?)
             ORDER BY seq DESC LIMIT ?",
        )
        .bind(project_id)
        .bind(cursor)
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
        let statuses: Vec<String> = BatchStatus::ACTIVE
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT * FROM batches WHERE status IN ({}) ORDER BY seq ASC",
            statuses.join(", ")
        )))
        .fetch_all(&self.pool)
        .await?;
        Ok(decodable_batches(&rows))
    }

    async fn transition(&self, id: &str, to: BatchStatus, now: i64) -> Result<bool> {
        let sql = format!(
            "UPDATE batches SET status = ?2{} WHERE id = ?3 AND {}",
            stamp_clause(to),
            from_clause(to)
        );
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(now)
            .bind(to.as_str())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn fail_validation(&self, id: &str, errors: &[BatchError], now: i64) -> Result<bool> {
        let to = BatchStatus::Failed;
        let errors = serde_json::to_string(errors).map_err(Error::internal)?;
        // From `validating` only. `Failed.allowed_from()` also holds
        // `in_progress`, but a batch that has started ends through
        // `finish_failed`, with its files and the deletion of its results.
        let sql = format!(
            "UPDATE batches SET status = ?2{}, errors = ?4 WHERE id = ?3 AND status = ?5",
            stamp_clause(to)
        );
        let mut tx = WriteTx::begin(&self.pool).await?;
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(now)
            .bind(to.as_str())
            .bind(id)
            .bind(errors)
            .bind(BatchStatus::Validating.as_str())
            .execute(tx.conn())
            .await?;
        if done.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        record_event(tx.conn(), id, to, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn set_errors(&self, id: &str, errors: &[BatchError]) -> Result<()> {
        let errors = serde_json::to_string(errors).map_err(Error::internal)?;
        sqlx::query("UPDATE batches SET errors = ? WHERE id = ?")
            .bind(errors)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn request_cancel(&self, project_id: &str, id: &str, now: i64) -> Result<CancelOutcome> {
        let to = BatchStatus::Cancelling;
        let sql = format!(
            "UPDATE batches SET status = ?2{} WHERE id = ?3 AND project_id = ?4 AND {}",
            stamp_clause(to),
            from_clause(to)
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(now)
            .bind(to.as_str())
            .bind(id)
            .bind(project_id)
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
        finish_with(&self.pool, id, from, to, "", files, now).await
    }

    async fn insert_batch_within_limit(&self, b: &BatchRecord, max_active: u64) -> Result<bool> {
        let metadata = b
            .metadata
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(Error::internal)?;
        // One statement: SQLite runs writes one at a time, so the count and
        // the insert see the same state.
        let sql = format!(
            "INSERT INTO batches (id, project_id, endpoint, model, input_file_id, completion_window, status,
                                  metadata, output_expires_after, created_at, expires_at)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11
             WHERE (SELECT COUNT(*) FROM batches WHERE project_id = ?2 AND {}) < ?12",
            active_clause()
        );
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(&b.id)
            .bind(&b.project_id)
            .bind(&b.endpoint)
            .bind(&b.model)
            .bind(&b.input_file_id)
            .bind(&b.completion_window)
            .bind(b.status.as_str())
            .bind(metadata)
            .bind(b.output_expires_after)
            .bind(b.created_at)
            .bind(b.expires_at)
            .bind(i64::try_from(max_active).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn start_within_enqueued_limit(
        &self,
        id: &str,
        model: &str,
        total: i64,
        now: i64,
        max_enqueued: u64,
    ) -> Result<StartOutcome> {
        let mut tx = WriteTx::begin(&self.pool).await?;
        // Lines of the project's running batches that have no result yet.
        let enqueued: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(total_requests - completed_requests - failed_requests), 0) FROM batches
             WHERE status = 'in_progress' AND id != ?1
               AND project_id = (SELECT project_id FROM batches WHERE id = ?1)",
        )
        .bind(id)
        .fetch_one(tx.conn())
        .await?;
        if enqueued.saturating_add(total) > i64::try_from(max_enqueued).unwrap_or(i64::MAX) {
            tx.rollback().await?;
            return Ok(StartOutcome::OverEnqueuedLimit { enqueued });
        }
        let to = BatchStatus::InProgress;
        let sql = format!(
            "UPDATE batches SET status = ?2{}, model = ?4, total_requests = ?5,
                    input_tokens = 0, cached_tokens = 0, output_tokens = 0, reasoning_tokens = 0, total_tokens = 0
             WHERE id = ?3 AND {}",
            stamp_clause(to),
            from_clause(to)
        );
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(now)
            .bind(to.as_str())
            .bind(id)
            .bind(model)
            .bind(total)
            .execute(tx.conn())
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
            sqlx::query_as("SELECT failing_errors, line_limit FROM batches WHERE id = ?")
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
        sqlx::query("UPDATE batches SET line_limit = ? WHERE id = ?")
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn mark_failing(&self, id: &str, errors: &[BatchError]) -> Result<bool> {
        let errors = serde_json::to_string(errors).map_err(Error::internal)?;
        let done = sqlx::query(
            "UPDATE batches SET failing_errors = COALESCE(failing_errors, ?) WHERE id = ? AND status = 'in_progress'",
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
        finish_with(&self.pool, id, from, BatchStatus::Failed, errors, files, now).await
    }
}

/// A terminal transition, compare-and-set on `from`, in one transaction with
/// its files, the deletion of its result rows and its webhook event.
/// `extra_set` is a constant `, column = expr` list set along with the status.
async fn finish_with(
    pool: &sqlx::SqlitePool,
    id: &str,
    from: BatchStatus,
    to: BatchStatus,
    extra_set: &'static str,
    files: &[FinishedFile],
    now: i64,
) -> Result<bool> {
    let mut tx = WriteTx::begin(pool).await?;
    let sql = format!(
        "UPDATE batches SET status = ?2{}{extra_set} WHERE id = ?3 AND status = ?4",
        stamp_clause(to)
    );
    let done = sqlx::query(AssertSqlSafe(sql))
        .bind(now)
        .bind(to.as_str())
        .bind(id)
        .bind(from.as_str())
        .execute(tx.conn())
        .await?;
    if done.rows_affected() != 1 {
        tx.rollback().await?;
        return Ok(false);
    }
    end_with_files(tx.conn(), id, to, files, now).await?;
    tx.commit().await?;
    Ok(true)
}

/// The rest of a terminal transition, in its transaction: the result files
/// are registered, the batch's result rows deleted (the files now hold every
/// result; the rows, full model responses, would otherwise stay forever) and
/// the webhook event queued.
async fn end_with_files(
    conn: &mut sqlx::SqliteConnection,
    id: &str,
    to: BatchStatus,
    files: &[FinishedFile],
    now: i64,
) -> Result<()> {
    register_result_files(&mut *conn, id, files).await?;
    delete_results(&mut *conn, id).await?;
    record_event(conn, id, to, now).await
}

/// Inserts the result files' rows and points the batch at them.
async fn register_result_files(conn: &mut sqlx::SqliteConnection, id: &str, files: &[FinishedFile]) -> Result<()> {
    for file in files {
        insert_file(&mut *conn, &file.record).await?;
        let column = match file.kind {
            ResultFileKind::Output => "output_file_id",
            ResultFileKind::Error => "error_file_id",
        };
        sqlx::query(AssertSqlSafe(format!("UPDATE batches SET {column} = ? WHERE id = ?")))
            .bind(&file.record.id)
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// `status IN (...)` for the statuses that count as active (see `BatchStatus::ACTIVE`).
fn active_clause() -> String {
    let list: Vec<String> = BatchStatus::ACTIVE
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    format!("status IN ({})", list.join(", "))
}

/// Queues the webhook event of a terminal transition, in the transition's own
/// transaction: the event exists if and only if the batch ended and its
/// project has a webhook endpoint (`webhook_projects`).
async fn record_event(conn: &mut sqlx::SqliteConnection, batch_id: &str, to: BatchStatus, now: i64) -> Result<()> {
    let kind = match to {
        BatchStatus::Completed => "batch.completed",
        BatchStatus::Failed => "batch.failed",
        BatchStatus::Cancelled => "batch.cancelled",
        BatchStatus::Expired => "batch.expired",
        _ => return Ok(()),
    };
    sqlx::query(
        "INSERT INTO webhook_events (id, webhook_id, project_id, type, batch_id, created_at, next_attempt_at)
         SELECT ?, ?, project_id, ?, id, ?, ? FROM batches
         WHERE id = ? AND project_id IN (SELECT project_id FROM webhook_projects)",
    )
    .bind(format!("evt_{}", uuid::Uuid::new_v4().simple()))
    .bind(format!("wh_{}", uuid::Uuid::new_v4().simple()))
    .bind(kind)
    .bind(now)
    .bind(now)
    .bind(batch_id)
    .execute(conn)
    .await?;
    Ok(())
}
