use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use sqlx::AssertSqlSafe;

use super::SqliteStore;
use super::write_tx::WriteTx;
use crate::batch::record::Usage;
use crate::error::Result;
use crate::store::{LineResult, ResultRepo};

/// Rows per INSERT statement (4 bound parameters each, far below SQLite's limit).
const ROWS_PER_STATEMENT: usize = 200;

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
        // Multi-row inserts: one statement per chunk instead of one per line.
        // RETURNING names only the rows actually inserted, so a line that
        // already had a result (a duplicate after a resume) is not counted twice.
        for chunk in results.chunks(ROWS_PER_STATEMENT) {
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
            let inserted: HashSet<(String, i64)> = query.fetch_all(tx.conn()).await?.into_iter().collect();
            for r in chunk {
                if inserted.contains(&(r.batch_id.clone(), r.line as i64)) {
                    let delta = deltas.entry(r.batch_id.as_str()).or_default();
                    if r.is_error {
                        delta.failed += 1;
                    } else {
                        delta.completed += 1;
                    }
                    delta.usage.add(&r.usage);
                }
            }
        }
        for (batch_id, d) in deltas {
            sqlx::query(
                "UPDATE batches SET completed_requests = completed_requests + ?, failed_requests = failed_requests + ?,
                        input_tokens = COALESCE(input_tokens, 0) + ?, cached_tokens = COALESCE(cached_tokens, 0) + ?,
                        output_tokens = COALESCE(output_tokens, 0) + ?, reasoning_tokens = COALESCE(reasoning_tokens, 0) + ?,
                        total_tokens = COALESCE(total_tokens, 0) + ?
                 WHERE id = ?",
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
    ) -> Result<Vec<(u64, String)>> {
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT line, output_line FROM batch_results
             WHERE batch_id = ? AND is_error = ? AND line > ? ORDER BY line LIMIT ?",
        )
        .bind(batch_id)
        .bind(is_error)
        .bind(after_line as i64)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(line, text)| (line as u64, text)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::record::BatchRecord;
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
        let errors = store.result_page("b1", true, 0, 1000).await.unwrap();
        assert_eq!(errors.len(), 50);
        assert_eq!(errors[0], (10, "{\"line\":10}".to_string()));
    }
}
