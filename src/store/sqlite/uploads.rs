//! `UploadRepo` on SQLite.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::SqliteStore;
use crate::error::Result;
use crate::store::{UploadPart, UploadRecord, UploadRepo};

const COLUMNS: &str =
    "id, project_id, filename, purpose, mime_type, bytes, created_at, expires_at, status, file_expires_after, file_id";

fn upload_of(row: &SqliteRow) -> UploadRecord {
    UploadRecord {
        id: row.get("id"),
        project_id: row.get("project_id"),
        filename: row.get("filename"),
        purpose: row.get("purpose"),
        mime_type: row.get("mime_type"),
        bytes: row.get("bytes"),
        created_at: row.get("created_at"),
        expires_at: row.get("expires_at"),
        status: row.get("status"),
        file_expires_after: row.get("file_expires_after"),
        file_id: row.get("file_id"),
    }
}

#[async_trait]
impl UploadRepo for SqliteStore {
    async fn insert_upload(&self, u: &UploadRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO uploads (id, project_id, filename, purpose, mime_type, bytes, created_at, expires_at, status,
                                  file_expires_after, file_id)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&u.id)
        .bind(&u.project_id)
        .bind(&u.filename)
        .bind(&u.purpose)
        .bind(&u.mime_type)
        .bind(u.bytes)
        .bind(u.created_at)
        .bind(u.expires_at)
        .bind(&u.status)
        .bind(u.file_expires_after)
        .bind(&u.file_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_upload(&self, project_id: &str, id: &str) -> Result<Option<UploadRecord>> {
        let sql = format!("SELECT {COLUMNS} FROM uploads WHERE id = ? AND project_id = ?");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(project_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(upload_of))
    }

    async fn insert_part(&self, p: &UploadPart) -> Result<()> {
        sqlx::query("INSERT INTO upload_parts (id, upload_id, bytes, created_at, storage_key) VALUES (?, ?, ?, ?, ?)")
            .bind(&p.id)
            .bind(&p.upload_id)
            .bind(p.bytes)
            .bind(p.created_at)
            .bind(&p.storage_key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn parts(&self, upload_id: &str) -> Result<Vec<UploadPart>> {
        let rows = sqlx::query(
            "SELECT id, upload_id, bytes, created_at, storage_key FROM upload_parts WHERE upload_id = ? ORDER BY seq",
        )
        .bind(upload_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| UploadPart {
                id: r.get("id"),
                upload_id: r.get("upload_id"),
                bytes: r.get("bytes"),
                created_at: r.get("created_at"),
                storage_key: r.get("storage_key"),
            })
            .collect())
    }

    async fn finish_upload(&self, id: &str, status: &str, file_id: Option<&str>) -> Result<bool> {
        let done = sqlx::query("UPDATE uploads SET status = ?, file_id = ? WHERE id = ? AND status = 'pending'")
            .bind(status)
            .bind(file_id)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn expired_uploads(&self, now: i64) -> Result<Vec<UploadRecord>> {
        let sql = format!("SELECT {COLUMNS} FROM uploads WHERE status = 'pending' AND expires_at <= ? LIMIT 1000");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(upload_of).collect())
    }
}
