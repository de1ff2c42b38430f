use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Row};

use super::SqliteStore;
use super::files::insert_file;
use super::write_tx::WriteTx;
use crate::batch::record::{BatchError, BatchRecord, RequestCounts, Usage};
use crate::batch::status::BatchStatus;
use crate::error::{Error, Result};
use crate::store::{BatchIntents, BatchRepo, CancelOutcome, FinishedFile, Page, ResultFileKind};

fn batch_from_row(row: &SqliteRow) -> Result<BatchRecord> {
    let status: String = row.get("status");
    let status = BatchStatus::parse(&status)
        .ok_or_else(|| Error::internal(anyhow::anyhow!("unknown batch status {status:?} in database")))?;
    let errors: Option<String> = row.get("errors");
    let errors = errors
        .map(|json| serde_json::from_str::<Vec<BatchError>>(&json))
        .transpose()
        .map_err(Error::internal)?;
    let metadata: Option<String> = row.get("metadata");
    let metadata = metadata
        .map(|json| serde_json::from_str(&json))
        .transpose()
        .map_err(Error::internal)?;
    let input_tokens: Option<i64> = row.get("input_tokens");
    let usage = input_tokens.map(|input_tokens| Usage {
        input_tokens,
        cached_tokens: row.get::<Option<i64>, _>("cached_tokens").unwrap_or(0),
        output_tokens: row.get::<Option<i64>, _>("output_tokens").unwrap_or(0),
        reasoning_tokens: row.get::<Option<i64>, _>("reasoning_tokens").unwrap_or(0),
        total_tokens: row.get::<Option<i64>, _>("total_tokens").unwrap_or(0),
    });
    Ok(BatchRecord {
        id: row.get("id"),
        project_id: row.get("project_id"),
        endpoint: row.get("endpoint"),
        model: row.get("model"),
        input_file_id: row.get("input_file_id"),
        completion_window: row.get("completion_window"),
        status,
        output_file_id: row.get("output_file_id"),
        error_file_id: row.get("error_file_id"),
        errors,
        metadata,
        output_expires_after: row.get("output_expires_after"),
        created_at: row.get("created_at"),
        in_progress_at: row.get("in_progress_at"),
        expires_at: row.get("expires_at"),
        finalizing_at: row.get("finalizing_at"),
        completed_at: row.get("completed_at"),
        failed_at: row.get("failed_at"),
        expired_at: row.get("expired_at"),
        cancelling_at: row.get("cancelling_at"),
        cancelled_at: row.get("cancelled_at"),
        request_counts: RequestCounts {
            total: row.get("total_requests"),
            completed: row.get("completed_requests"),
            failed: row.get("failed_requests"),
        },
        usage,
    })
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
        let items = rows
            .iter()
            .take(limit as usize)
            .map(batch_from_row)
            .collect::<Result<_>>()?;
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
        rows.iter().map(batch_from_row).collect()
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
        let sql = format!(
            "UPDATE batches SET status = ?2{}, errors = ?4 WHERE id = ?3 AND {}",
            stamp_clause(to),
            from_clause(to)
        );
        let mut tx = WriteTx::begin(&self.pool).await?;
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(now)
            .bind(to.as_str())
            .bind(id)
            .bind(errors)
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

    async fn start(&self, id: &str, model: &str, total: i64, now: i64) -> Result<bool> {
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
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
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
        let mut tx = WriteTx::begin(&self.pool).await?;
        let sql = format!(
            "UPDATE batches SET status = ?2{} WHERE id = ?3 AND status = ?4",
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
        for file in files {
            insert_file(tx.conn(), &file.record).await?;
            let column = match file.kind {
                ResultFileKind::Output => "output_file_id",
                ResultFileKind::Error => "error_file_id",
            };
            sqlx::query(AssertSqlSafe(format!("UPDATE batches SET {column} = ? WHERE id = ?")))
                .bind(&file.record.id)
                .bind(id)
                .execute(tx.conn())
                .await?;
        }
        record_event(tx.conn(), id, to, now).await?;
        tx.commit().await?;
        Ok(true)
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
        let to = BatchStatus::Failed;
        let mut tx = WriteTx::begin(&self.pool).await?;
        let sql = format!(
            "UPDATE batches SET status = ?2{}, errors = COALESCE(failing_errors, errors)
             WHERE id = ?3 AND status = ?4",
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
        register_result_files(tx.conn(), id, files).await?;
        record_event(tx.conn(), id, to, now).await?;
        tx.commit().await?;
        Ok(true)
    }
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

/// Queues the webhook event of a terminal transition, in the transition's own
/// transaction: the event exists if and only if the batch ended.
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
         SELECT ?, ?, project_id, ?, id, ?, ? FROM batches WHERE id = ?",
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
