//! `EventRepo` on SQLite: the webhook outbox.

use async_trait::async_trait;

use super::SqliteStore;
use super::write_tx::WriteTx;
use crate::error::Result;
use crate::store::{EventRepo, WebhookEvent};

#[async_trait]
impl EventRepo for SqliteStore {
    async fn due_events(&self, now: i64, per_project: u32, limit: u32) -> Result<Vec<WebhookEvent>> {
        let rows: Vec<(String, String, String, String, String, i64, i64)> = sqlx::query_as(
            "SELECT id, webhook_id, project_id, type, batch_id, created_at, attempts FROM (
                 SELECT *, ROW_NUMBER() OVER (PARTITION BY project_id ORDER BY seq) AS nth
                 FROM webhook_events
                 WHERE delivered_at IS NULL AND gave_up_at IS NULL AND next_attempt_at <= ?)
             WHERE nth <= ? ORDER BY seq LIMIT ?",
        )
        .bind(now)
        .bind(per_project)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, webhook_id, project_id, kind, batch_id, created_at, attempts)| WebhookEvent {
                    id,
                    webhook_id,
                    project_id,
                    kind,
                    batch_id,
                    created_at,
                    attempts,
                },
            )
            .collect())
    }

    async fn event_delivered(&self, id: &str, now: i64) -> Result<()> {
        sqlx::query(
            "UPDATE webhook_events SET delivered_at = ?, attempts = attempts + 1, last_error = NULL WHERE id = ?",
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn event_failed(&self, id: &str, error: &str, next_attempt_at: Option<i64>, now: i64) -> Result<()> {
        sqlx::query(
            "UPDATE webhook_events SET attempts = attempts + 1, last_error = ?,
                    next_attempt_at = COALESCE(?, next_attempt_at),
                    gave_up_at = CASE WHEN ? IS NULL THEN ? ELSE NULL END
             WHERE id = ?",
        )
        .bind(error)
        .bind(next_attempt_at)
        .bind(next_attempt_at)
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_webhook_projects(&self, projects: &[String]) -> Result<()> {
        let mut tx = WriteTx::begin(&self.pool).await?;
        sqlx::query("DELETE FROM webhook_projects").execute(tx.conn()).await?;
        for project in projects {
            sqlx::query("INSERT OR IGNORE INTO webhook_projects (project_id) VALUES (?)")
                .bind(project)
                .execute(tx.conn())
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn prune_events(&self, finished_before: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM webhook_events WHERE delivered_at <= ?1 OR gave_up_at <= ?1")
            .bind(finished_before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
