//! `EventRepo` on PostgreSQL: the webhook outbox.

use async_trait::async_trait;

use super::PgStore;
use crate::error::Result;
use crate::store::{EventRepo, WebhookEvent};

#[async_trait]
impl EventRepo for PgStore {
    async fn due_events(&self, now: i64, per_project: u32, limit: u32) -> Result<Vec<WebhookEvent>> {
        let rows: Vec<(String, String, String, String, String, i64, i64)> = sqlx::query_as(
            "SELECT id, webhook_id, project_id, type, batch_id, created_at, attempts FROM (
                 SELECT *, ROW_NUMBER() OVER (PARTITION BY project_id ORDER BY seq) AS nth
                 FROM webhook_events
                 WHERE delivered_at IS NULL AND gave_up_at IS NULL AND next_attempt_at <= $1) AS due
             WHERE nth <= $2 ORDER BY seq LIMIT $3",
        )
        .bind(now)
        .bind(i64::from(per_project))
        .bind(i64::from(limit))
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
            "UPDATE webhook_events SET delivered_at = $1, attempts = attempts + 1, last_error = NULL WHERE id = $2",
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn event_failed(&self, id: &str, error: &str, next_attempt_at: Option<i64>, now: i64) -> Result<()> {
        sqlx::query(
            "UPDATE webhook_events SET attempts = attempts + 1, last_error = $1,
                    next_attempt_at = COALESCE($2, next_attempt_at),
                    gave_up_at = CASE WHEN $2::bigint IS NULL THEN $3 ELSE NULL END
             WHERE id = $4",
        )
        .bind(error)
        .bind(next_attempt_at)
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_webhook_projects(&self, projects: &[String]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM webhook_projects").execute(&mut *tx).await?;
        sqlx::query("INSERT INTO webhook_projects (project_id) SELECT UNNEST($1::text[]) ON CONFLICT DO NOTHING")
            .bind(projects)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn prune_events(&self, finished_before: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM webhook_events WHERE delivered_at <= $1 OR gave_up_at <= $1")
            .bind(finished_before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
