//! `UploadRepo` on SQLite.

use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;

use super::SqliteStore;
use super::decode::column;
use super::files::insert_file;
use super::write_tx::WriteTx;
use crate::domain::{FileRecord, UploadPart, UploadRecord, UploadStatus};
use crate::error::{Error, Result};
use crate::store::{PartAdmission, UploadRepo};

const COLUMNS: &str =
    "id, project_id, filename, purpose, mime_type, bytes, created_at, expires_at, status, file_expires_after, file_id";

fn status_of(stored: &str) -> Result<UploadStatus> {
    UploadStatus::parse(stored)
        .ok_or_else(|| Error::internal(anyhow::anyhow!("unknown upload status {stored:?} in database")))
}

fn upload_of(row: &SqliteRow) -> Result<UploadRecord> {
    Ok(UploadRecord {
        id: column(row, "id")?,
        project_id: column(row, "project_id")?,
        filename: column(row, "filename")?,
        purpose: column(row, "purpose")?,
        mime_type: column(row, "mime_type")?,
        bytes: column(row, "bytes")?,
        created_at: column(row, "created_at")?,
        expires_at: column(row, "expires_at")?,
        status: status_of(&column::<String>(row, "status")?)?,
        file_expires_after: column(row, "file_expires_after")?,
        file_id: column(row, "file_id")?,
    })
}

fn part_of(row: &SqliteRow) -> Result<UploadPart> {
    Ok(UploadPart {
        id: column(row, "id")?,
        upload_id: column(row, "upload_id")?,
        bytes: column(row, "bytes")?,
        created_at: column(row, "created_at")?,
        storage_key: column(row, "storage_key")?,
    })
}

const TOTALS: &str = "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM upload_parts WHERE upload_id = ?";

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
        .bind(u.status.as_str())
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
        row.as_ref().map(upload_of).transpose()
    }

    async fn add_part(&self, p: &UploadPart, max_parts: i64) -> Result<PartAdmission> {
        // One write transaction: a cancel, a completion or another part cannot
        // slip in between the checks and the insert.
        let mut tx = WriteTx::begin(&self.pool).await?;
        let upload: Option<(String, i64)> = sqlx::query_as("SELECT status, bytes FROM uploads WHERE id = ?")
            .bind(&p.upload_id)
            .fetch_optional(tx.conn())
            .await?;
        let (count, stored): (i64, i64) = sqlx::query_as(TOTALS).bind(&p.upload_id).fetch_one(tx.conn()).await?;
        let upload = upload
            .map(|(status, declared)| status_of(&status).map(|status| (status, declared)))
            .transpose()?;
        let admission = match upload {
            None => PartAdmission::NotPending(None),
            Some((status, _)) if status != UploadStatus::Pending => PartAdmission::NotPending(Some(status)),
            Some(_) if count >= max_parts => PartAdmission::TooManyParts,
            Some((_, declared)) if stored.saturating_add(p.bytes) > declared => {
                PartAdmission::OverDeclared { declared, stored }
            }
            Some(_) => PartAdmission::Added,
        };
        if admission != PartAdmission::Added {
            tx.rollback().await?;
            return Ok(admission);
        }
        sqlx::query("INSERT INTO upload_parts (id, upload_id, bytes, created_at, storage_key) VALUES (?, ?, ?, ?, ?)")
            .bind(&p.id)
            .bind(&p.upload_id)
            .bind(p.bytes)
            .bind(p.created_at)
            .bind(&p.storage_key)
            .execute(tx.conn())
            .await?;
        tx.commit().await?;
        Ok(PartAdmission::Added)
    }

    async fn part_totals(&self, upload_id: &str) -> Result<(i64, i64)> {
        Ok(sqlx::query_as(TOTALS).bind(upload_id).fetch_one(&self.pool).await?)
    }

    async fn parts(&self, upload_id: &str) -> Result<Vec<UploadPart>> {
        let rows = sqlx::query(
            "SELECT id, upload_id, bytes, created_at, storage_key FROM upload_parts WHERE upload_id = ? ORDER BY seq",
        )
        .bind(upload_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(part_of).collect()
    }

    async fn set_upload_status(&self, id: &str, from: &[UploadStatus], to: UploadStatus) -> Result<bool> {
        let placeholders = vec!["?"; from.len()].join(", ");
        let sql = format!("UPDATE uploads SET status = ? WHERE id = ? AND status IN ({placeholders})");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(to.as_str()).bind(id);
        for status in from {
            query = query.bind(status.as_str());
        }
        Ok(query.execute(&self.pool).await?.rows_affected() == 1)
    }

    async fn complete_upload(&self, id: &str, file: &FileRecord) -> Result<bool> {
        let mut tx = WriteTx::begin(&self.pool).await?;
        let done =
            sqlx::query("UPDATE uploads SET status = 'completed', file_id = ? WHERE id = ? AND status = 'completing'")
                .bind(&file.id)
                .bind(id)
                .execute(tx.conn())
                .await?;
        if done.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        insert_file(tx.conn(), file).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn expired_uploads(&self, now: i64) -> Result<Vec<UploadRecord>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM uploads WHERE status IN ('pending', 'completing') AND expires_at <= ? LIMIT 1000"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(upload_of).collect()
    }
}
