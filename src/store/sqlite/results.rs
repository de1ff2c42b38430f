use std::collections::HashMap;

use async_trait::async_trait;

use super::SqliteStore;
use crate::batch::record::Usage;
use crate::error::Result;
use crate::store::{LineResult, ResultRepo};

/// What one `record_results` call adds to one batch's counters.
#[derive(Default)]
struct Delta {
    completed: i64,
    failed: i64,
    usage: Usage,
}

#[async_trait]
impl ResultRepo for SqliteStore {
    async fn record_results(&self, results: &[LineResult]) -> Result<()> {
        if results.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        let mut deltas: HashMap<&str, Delta> = HashMap::new();
        for r in results {
            let inserted = sqlx::query(
                "INSERT INTO batch_results (batch_id, line, is_error, output_line) VALUES (?, ?, ?, ?)
                 ON CONFLICT (batch_id, line) DO NOTHING",
            )
            .bind(&r.batch_id)
            .bind(r.line as i64)
            .bind(r.is_error)
            .bind(&r.output_line)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            // Count only what was newly stored: a result already recorded
            // (a duplicate after a resume) must not be counted twice.
            if inserted == 1 {
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
            .execute(&mut *tx)
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
