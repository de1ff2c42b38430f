//! `KeyRepo` on PostgreSQL.

use async_trait::async_trait;
use sqlx::postgres::PgRow;

use super::PgStore;
use super::decode::column;
use crate::domain::ApiKey;
use crate::error::Result;
use crate::store::KeyRepo;

const COLUMNS: &str = "id, project_id, name, redacted, admin, created_at, revoked_at";

fn key_of(row: &PgRow) -> Result<ApiKey> {
    Ok(ApiKey {
        id: column(row, "id")?,
        project_id: column(row, "project_id")?,
        name: column(row, "name")?,
        redacted: column(row, "redacted")?,
        admin: column(row, "admin")?,
        created_at: column(row, "created_at")?,
        revoked_at: column(row, "revoked_at")?,
    })
}

#[async_trait]
impl KeyRepo for PgStore {
    async fn insert_key(&self, key: &ApiKey, secret_hash: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_keys (id, project_id, name, secret_hash, redacted, admin, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&key.id)
        .bind(&key.project_id)
        .bind(&key.name)
        .bind(secret_hash)
        .bind(&key.redacted)
        .bind(key.admin)
        .bind(key.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn active_key_by_hash(&self, secret_hash: &str) -> Result<Option<ApiKey>> {
        let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE secret_hash = $1 AND revoked_at IS NULL");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(secret_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(key_of).transpose()
    }

    async fn any_key_ever(&self) -> Result<bool> {
        // Revoked keys keep their rows, so this stays true once a key was created.
        let row = sqlx::query("SELECT EXISTS (SELECT 1 FROM api_keys) AS any_key")
            .fetch_one(&self.pool)
            .await?;
        column::<bool>(&row, "any_key")
    }

    async fn count_active_keys(&self) -> Result<u64> {
        let row = sqlx::query("SELECT COUNT(*) AS active FROM api_keys WHERE revoked_at IS NULL")
            .fetch_one(&self.pool)
            .await?;
        Ok(column::<i64>(&row, "active")?.max(0) as u64)
    }

    async fn list_keys(&self, project_id: Option<&str>) -> Result<Vec<ApiKey>> {
        let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE $1::text IS NULL OR project_id = $1 ORDER BY seq");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(project_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(key_of).collect()
    }

    async fn revoke_key(&self, id: &str, now: i64) -> Result<Option<ApiKey>> {
        let sql =
            format!("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 RETURNING {COLUMNS}");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(key_of).transpose()
    }
}
