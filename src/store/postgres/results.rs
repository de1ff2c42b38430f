//! `ResultRepo` on PostgreSQL.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;

use super::PgStore;
use crate::domain::Usage;
use crate::error::{Error, Result};
use crate::store::{LineResult, ResultRepo, Unstorable};

/// Rows per INSERT statement: each statement sends four arrays (UNNEST), so
/// the row count does not change the statement text.
const ROWS_PER_STATEMENT: usize = 1000;

/// What one `record_results` call adds to one batch's counters.
#[derive(Default)]
struct Delta {
    completed: i64,
    failed: i64,
    usage: Usage,
}

/// Deletes a batch's stored results. Called by the terminal transition, in
/// its transaction, once the result files hold them (docs/durability.md).
pub(super) async fn delete_results<'e, E: sqlx::PgExecutor<'e>>(executor: E, batch_id: &str) -> Result<u64> {
    let done = sqlx::query("DELETE FROM batch_results WHERE batch_id = $1")
        .bind(batch_id)
        .execute(executor)
        .await?;
    Ok(done.rows_affected())
}

#[async_trait]
impl ResultRepo for PgStore {
    async fn record_results(&self, results: &[LineResult]) -> Result<()> {
        if results.is_empty() {
            return Ok(());
        }
        // A group holds one result per line: the first one sent.
        let mut seen = HashSet::new();
        let unique: Vec<&LineResult> = results
            .iter()
            .filter(|r| seen.insert((r.batch_id.as_str(), r.line)))
            .collect();
        let mut batch_ids: Vec<&str> = unique.iter().map(|r| r.batch_id.as_str()).collect();
        batch_ids.sort_unstable();
        batch_ids.dedup();

        let mut tx = self.pool.begin().await?;
        // Locks the group's batches (in id order, so that two groups never
        // wait for each other crosswise) for the whole transaction: a terminal
        // transition, which deletes the result rows, waits for this group or
        // this group waits for it and then sees the batch ended. An ended
        // batch's rows are gone, so the primary key no longer stops a late
        // duplicate: its results are refused here.
        let statuses: Vec<(String, String)> =
            sqlx::query_as("SELECT id, status FROM batches WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
                .bind(&batch_ids)
                .fetch_all(&mut *tx)
                .await?;
        let mut ended = HashSet::new();
        for (batch_id, status) in &statuses {
            if matches!(status.as_str(), "completed" | "failed" | "expired" | "cancelled") {
                tracing::warn!(batch_id, "results for a batch that already ended were ignored");
                ended.insert(batch_id.clone());
            }
        }
        let unique: Vec<&LineResult> = unique.into_iter().filter(|r| !ended.contains(&r.batch_id)).collect();

        let mut deltas: HashMap<&str, Delta> = HashMap::new();
        // Multi-row inserts: one statement per chunk, the rows as arrays.
        // RETURNING names only the rows actually inserted, so a line that
        // already had a result (a duplicate after a resume, or one a
        // concurrent group committed first) is not counted twice.
        for chunk in unique.chunks(ROWS_PER_STATEMENT) {
            let by_key: HashMap<(&str, i64), &LineResult> = chunk
                .iter()
                .map(|r| ((r.batch_id.as_str(), r.line as i64), *r))
                .collect();
            let inserted: Vec<(String, i64)> = sqlx::query_as(
                "INSERT INTO batch_results (batch_id, line, is_error, output_line)
                 SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::boolean[], $4::text[])
                 ON CONFLICT (batch_id, line) DO NOTHING RETURNING batch_id, line",
            )
            .bind(chunk.iter().map(|r| r.batch_id.as_str()).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| r.line as i64).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| r.is_error).collect::<Vec<_>>())
            .bind(chunk.iter().map(|r| r.output_line.as_str()).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await?;
            for (batch_id, line) in inserted {
                let Some(r) = by_key.get(&(batch_id.as_str(), line)) else {
                    continue;
                };
                let delta = deltas.entry(r.batch_id.as_str()).or_default();
                if r.is_error {
                    delta.failed += 1;
                } else {
                    delta.completed += 1;
                }
                delta.usage.add(&r.usage);
            }
        }
        for (batch_id, d) in deltas {
            // `LEAST(col, MAX - $n) + $n` saturates at i64::MAX where `col + $n`
            // would fail with numeric_value_out_of_range. Every delta is >= 0.
            sqlx::query(
                "UPDATE batches SET completed_requests = LEAST(completed_requests, 9223372036854775807 - $1) + $1,
                        failed_requests = LEAST(failed_requests, 9223372036854775807 - $2) + $2,
                        input_tokens = LEAST(COALESCE(input_tokens, 0), 9223372036854775807 - $3) + $3,
                        cached_tokens = LEAST(COALESCE(cached_tokens, 0), 9223372036854775807 - $4) + $4,
                        output_tokens = LEAST(COALESCE(output_tokens, 0), 9223372036854775807 - $5) + $5,
                        reasoning_tokens = LEAST(COALESCE(reasoning_tokens, 0), 9223372036854775807 - $6) + $6,
                        total_tokens = LEAST(COALESCE(total_tokens, 0), 9223372036854775807 - $7) + $7
                 WHERE id = $8",
            )
            .bind(d.completed)
            .bind(d.failed)
            .bind(d.usage.input_tokens)
            .bind(d.usage.cached_tokens)
            .bind(d.usage.output_tokens)
            .bind(d.usage.reasoning_tokens)
            .bind(d.usage.total_tokens)
            .bind(batch_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn finished_lines(&self, batch_id: &str) -> Result<Vec<u64>> {
        let lines: Vec<i64> = sqlx::query_scalar("SELECT line FROM batch_results WHERE batch_id = $1 ORDER BY line")
            .bind(batch_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(lines.into_iter().map(|l| l as u64).collect())
    }

    async fn result_page(
        &self,
        batch_id: &str,
        is_error: bool,
        after_line: u64,
        limit: u32,
        max_bytes: u64,
    ) -> Result<Vec<(u64, String)>> {
        // Sizes first, so the page holds at most `max_bytes` of lines, and
        // always at least one line.
        let sizes: Vec<(i64, i32)> = sqlx::query_as(
            "SELECT line, octet_length(output_line) FROM batch_results
             WHERE batch_id = $1 AND is_error = $2 AND line > $3 ORDER BY line LIMIT $4",
        )
        .bind(batch_id)
        .bind(is_error)
        .bind(after_line as i64)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let Some(last_line) = lines_within(&sizes, max_bytes) else {
            return Ok(vec![]);
        };
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT line, output_line FROM batch_results
             WHERE batch_id = $1 AND is_error = $2 AND line > $3 AND line <= $4 ORDER BY line LIMIT $5",
        )
        .bind(batch_id)
        .bind(is_error)
        .bind(after_line as i64)
        .bind(last_line)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(line, text)| (line as u64, text)).collect())
    }

    fn unstorable(&self, error: &Error) -> Option<Unstorable> {
        let Error::Internal(e) = error else { return None };
        let sqlx::Error::Database(db) = e.downcast_ref::<sqlx::Error>()? else {
            return None;
        };
        let code = db.code()?;
        // SQLSTATE classes: 54 program limit exceeded (a value or row too
        // large), 22 data exception (a NUL character in text, say) and 23
        // integrity constraint violation refuse the same row every time.
        match &code[..code.len().min(2)] {
            "54" => Some(Unstorable::TooLarge),
            "22" | "23" => Some(Unstorable::Rejected),
            _ => None,
        }
    }
}

/// The last line of `sizes` (line, bytes), in order, that keeps the running
/// total within `max_bytes`; the first line counts even when it alone is larger.
fn lines_within(sizes: &[(i64, i32)], max_bytes: u64) -> Option<i64> {
    let mut total: u64 = 0;
    let mut last = None;
    for &(line, size) in sizes {
        total = total.saturating_add(u64::try_from(size).unwrap_or(0));
        if last.is_some() && total > max_bytes {
            break;
        }
        last = Some(line);
    }
    last
}
