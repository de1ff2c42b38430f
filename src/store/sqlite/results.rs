use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use sqlx::AssertSqlSafe;

use super::SqliteStore;
use super::write_tx::WriteTx;
use crate::domain::Usage;
use crate::error::{Error, Result};
use crate::store::{LineResult, ResultRepo, Unstorable};

/// Rows per INSERT statement (4 bound parameters each, far below SQLite's limit).
const ROWS_PER_STATEMENT: usize = 200;

/// SQLite's primary result codes for a row that can never be inserted,
/// however often it is retried.
const SQLITE_TOOBIG: i32 = 18;
const SQLITE_CONSTRAINT: i32 = 19;
const SQLITE_MISMATCH: i32 = 20;

/// What one `record_results` call adds to one batch's counters.
#[derive(Default)]
struct Delta {
    completed: i64,
    failed: i64,
    usage: Usage,
}

/// Deletes a batch's stored results. Called by the terminal transition, in
/// its transaction, once the result files hold them (docs/durability.md).
pub(super) async fn delete_results<'e, E: sqlx::SqliteExecutor<'e>>(executor: E, batch_id: &str) -> Result<u64> {
    let done = sqlx::query("DELETE FROM batch_results WHERE batch_id = ?")
        .bind(batch_id)
        .execute(executor)
        .await?;
    Ok(done.rows_affected())
}

#[async_trait]
impl ResultRepo for SqliteStore {
    async fn record_results(&self, results: &[LineResult]) -> Result<()> {
        if results.is_empty() {
            return Ok(());
        }
        let mut tx = WriteTx::begin(&self.pool).await?;
        let mut deltas: HashMap<&str, Delta> = HashMap::new();
        // A group holds one result per line: the first one sent, which is also
        // the one a multi-row INSERT would keep (audit L11).
        let mut seen = HashSet::new();
        let unique: Vec<&LineResult> = results
            .iter()
            .filter(|r| seen.insert((r.batch_id.as_str(), r.line)))
            .collect();
        // A batch that already ended has its results in its files and its rows
        // deleted (delete_results), so the primary key no longer stops a late
        // duplicate: refuse results for ended batches, in this transaction.
        let mut ended = HashSet::new();
        for batch_id in unique.iter().map(|r| r.batch_id.as_str()).collect::<HashSet<_>>() {
            let terminal: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM batches WHERE id = ? AND status IN ('completed', 'failed', 'expired', 'cancelled')",
            )
            .bind(batch_id)
            .fetch_optional(tx.conn())
            .await?;
            if terminal.is_some() {
                tracing::warn!(batch_id, "results for a batch that already ended were ignored");
                ended.insert(batch_id);
            }
        }
        let unique: Vec<&LineResult> = unique
            .into_iter()
            .filter(|r| !ended.contains(r.batch_id.as_str()))
            .collect();
        // Multi-row inserts: one statement per chunk instead of one per line.
        // RETURNING names only the rows actually inserted, so a line that
        // already had a result (a duplicate after a resume) is not counted twice.
        for chunk in unique.chunks(ROWS_PER_STATEMENT) {
            let mut sql = String::from("INSERT INTO batch_results (batch_id, line, is_error, output_line) VALUES ");
            for i in 0..chunk.len() {
                sql.push_str(if i == 0 { "(?, ?, ?, ?)" } else { ", (?, ?, ?, ?)" });
            }
            sql.push_str(" ON CONFLICT (batch_id, line) DO NOTHING RETURNING batch_id, line");
            // Not cached as a prepared statement: chunk sizes vary, and caching every
            // variant would hold memory per connection for nothing.
            let mut query = sqlx::query_as::<_, (String, i64)>(AssertSqlSafe(sql)).persistent(false);
            for r in chunk {
                query = query
                    .bind(&r.batch_id)
                    .bind(r.line as i64)
                    .bind(r.is_error)
                    .bind(&r.output_line);
            }
            let by_key: HashMap<(&str, i64), &LineResult> = chunk
                .iter()
                .map(|r| ((r.batch_id.as_str(), r.line as i64), *r))
                .collect();
            // Counted from the returned rows themselves: each inserted row once.
            for (batch_id, line) in query.fetch_all(tx.conn()).await? {
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
            // `MIN(col, MAX - ?n) + ?n` saturates at i64::MAX: SQLite would turn
            // an overflowing `col + ?` into a REAL, which no reader expects (audit
            // M3). Every delta is >= 0 (usage is clamped per line).
            sqlx::query(
                "UPDATE batches SET completed_requests = MIN(completed_requests, 9223372036854775807 - ?1) + ?1,
                        failed_requests = MIN(failed_requests, 9223372036854775807 - ?2) + ?2,
                        input_tokens = MIN(COALESCE(input_tokens, 0), 9223372036854775807 - ?3) + ?3,
                        cached_tokens = MIN(COALESCE(cached_tokens, 0), 9223372036854775807 - ?4) + ?4,
                        output_tokens = MIN(COALESCE(output_tokens, 0), 9223372036854775807 - ?5) + ?5,
                        reasoning_tokens = MIN(COALESCE(reasoning_tokens, 0), 9223372036854775807 - ?6) + ?6,
                        total_tokens = MIN(COALESCE(total_tokens, 0), 9223372036854775807 - ?7) + ?7
                 WHERE id = ?8",
            )
            .bind(d.completed)
            .bind(d.failed)
            .bind(d.usage.input_tokens)
            .bind(d.usage.cached_tokens)
            .bind(d.usage.output_tokens)
            .bind(d.usage.reasoning_tokens)
            .bind(d.usage.total_tokens)
            .bind(batch_id)
            .execute(tx.conn())
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn finished_lines(&self, batch_id: &str) -> Result<Vec<u64>> {
        let lines: Vec<i64> = sqlx::query_scalar("SELECT line FROM batch_results WHERE batch_id = ? ORDER BY line")
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
        // Sizes first (octet_length reads no text), so the page holds at most
        // `max_bytes` of lines, and always at least one line.
        let sizes: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT line, octet_length(output_line) FROM batch_results
             WHERE batch_id = ? AND is_error = ? AND line > ? ORDER BY line LIMIT ?",
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
             WHERE batch_id = ? AND is_error = ? AND line > ? AND line <= ? ORDER BY line LIMIT ?",
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
        let primary = db.code()?.parse::<i32>().ok()? & 0xff;
        match primary {
            SQLITE_TOOBIG => Some(Unstorable::TooLarge),
            SQLITE_CONSTRAINT | SQLITE_MISMATCH => Some(Unstorable::Rejected),
            _ => None,
        }
    }
}

/// The last line of `sizes` (line, bytes), in order, that keeps the running
/// total within `max_bytes`; the first line counts even when it alone is larger.
fn lines_within(sizes: &[(i64, i64)], max_bytes: u64) -> Option<i64> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::BatchRecord;
    use crate::store::BatchRepo;

    fn batch(id: &str) -> BatchRecord {
        BatchRecord::new_validating(
            id.into(),
            "p".into(),
            "/v1/chat/completions".into(),
            "file-x".into(),
            "24h".into(),
            1,
            None,
        )
    }

    fn result(batch_id: &str, line: u64, is_error: bool) -> LineResult {
        LineResult {
            batch_id: batch_id.into(),
            line,
            is_error,
            output_line: format!("{{\"line\":{line}}}"),
            usage: Usage {
                input_tokens: 2,
                output_tokens: 3,
                total_tokens: 5,
                ..Usage::default()
            },
        }
    }

    #[tokio::test]
    async fn results_are_counted_once_even_when_recorded_twice() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).await.unwrap();
        store.insert_batch(&batch("b1")).await.unwrap();
        store.insert_batch(&batch("b2")).await.unwrap();
        let first: Vec<LineResult> = (1..=450).map(|l| result("b1", l, l % 10 == 0)).collect();
        store.record_results(&first).await.unwrap();
        // A resumed worker re-records some lines and adds new ones, mixed with another batch.
        let mut again: Vec<LineResult> = (400..=500).map(|l| result("b1", l, l % 10 == 0)).collect();
        again.push(result("b2", 1, false));
        store.record_results(&again).await.unwrap();

        let b1 = store.get_batch_any_project("b1").await.unwrap().unwrap();
        assert_eq!(b1.request_counts.completed + b1.request_counts.failed, 500);
        assert_eq!(b1.request_counts.failed, 50);
        assert_eq!(b1.usage.unwrap().total_tokens, 500 * 5);
        assert_eq!(
            store.finished_lines("b1").await.unwrap(),
            (1..=500).collect::<Vec<u64>>()
        );
        let b2 = store.get_batch_any_project("b2").await.unwrap().unwrap();
        assert_eq!(b2.request_counts.completed, 1);
        let errors = store.result_page("b1", true, 0, 1000, u64::MAX).await.unwrap();
        assert_eq!(errors.len(), 50);
        assert_eq!(errors[0], (10, "{\"line\":10}".to_string()));
    }

    #[tokio::test]
    async fn two_results_for_one_line_in_one_group_count_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).await.unwrap();
        store.insert_batch(&batch("b1")).await.unwrap();
        let mut second = result("b1", 7, true);
        second.output_line = "{\"second\":true}".into();
        store
            .record_results(&[result("b1", 7, false), second, result("b1", 8, false)])
            .await
            .unwrap();
        let b1 = store.get_batch_any_project("b1").await.unwrap().unwrap();
        assert_eq!(b1.request_counts.completed, 2);
        assert_eq!(b1.request_counts.failed, 0);
        assert_eq!(b1.usage.unwrap().total_tokens, 2 * 5);
        let output = store.result_page("b1", false, 0, 10, u64::MAX).await.unwrap();
        assert_eq!(output[0], (7, "{\"line\":7}".to_string()));
        assert!(store.result_page("b1", true, 0, 10, u64::MAX).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn results_for_a_batch_that_ended_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).await.unwrap();
        store.insert_batch(&batch("b1")).await.unwrap();
        store.insert_batch(&batch("b2")).await.unwrap();
        store.record_results(&[result("b1", 1, false)]).await.unwrap();
        // The batch ends: its rows go into its files and are deleted.
        sqlx::query("UPDATE batches SET status = 'completed' WHERE id = 'b1'")
            .execute(&store.pool)
            .await
            .unwrap();
        delete_results(&store.pool, "b1").await.unwrap();
        // A late duplicate of line 1 must not be stored or counted again.
        store
            .record_results(&[result("b1", 1, false), result("b2", 1, false)])
            .await
            .unwrap();
        let b1 = store.get_batch_any_project("b1").await.unwrap().unwrap();
        assert_eq!(b1.request_counts.completed, 1);
        assert!(store.finished_lines("b1").await.unwrap().is_empty());
        let b2 = store.get_batch_any_project("b2").await.unwrap().unwrap();
        assert_eq!(b2.request_counts.completed, 1, "other batches in the group still count");
    }

    #[tokio::test]
    async fn result_pages_are_bounded_by_bytes_but_hold_at_least_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).await.unwrap();
        store.insert_batch(&batch("b1")).await.unwrap();
        let results: Vec<LineResult> = (1..=5)
            .map(|line| LineResult {
                output_line: "x".repeat(100 * line as usize),
                ..result("b1", line, false)
            })
            .collect();
        store.record_results(&results).await.unwrap();
        let lines = |page: Vec<(u64, String)>| page.into_iter().map(|(l, _)| l).collect::<Vec<_>>();
        // 100 + 200 fit in 350 bytes; 300 more would not.
        assert_eq!(lines(store.result_page("b1", false, 0, 10, 350).await.unwrap()), [1, 2]);
        // A line larger than the budget still comes, alone.
        assert_eq!(lines(store.result_page("b1", false, 3, 10, 50).await.unwrap()), [4]);
        assert_eq!(
            lines(store.result_page("b1", false, 0, 2, u64::MAX).await.unwrap()),
            [1, 2]
        );
        assert!(store.result_page("b1", false, 5, 10, 50).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn counters_saturate_instead_of_becoming_real() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).await.unwrap();
        store.insert_batch(&batch("b1")).await.unwrap();
        store
            .start_within_enqueued_limit("b1", "m", 2, 1, u64::MAX)
            .await
            .unwrap();
        let huge = |line| LineResult {
            usage: Usage {
                input_tokens: i64::MAX / 2 + 1,
                total_tokens: i64::MAX / 2 + 1,
                ..Usage::default()
            },
            ..result("b1", line, false)
        };
        store.record_results(&[huge(1)]).await.unwrap();
        store.record_results(&[huge(2)]).await.unwrap();
        let kind: String = sqlx::query_scalar("SELECT typeof(input_tokens) FROM batches WHERE id = 'b1'")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(kind, "integer");
        let b1 = store.get_batch_any_project("b1").await.unwrap().unwrap();
        assert_eq!(b1.usage.unwrap().input_tokens, i64::MAX);
    }
}
