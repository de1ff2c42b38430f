//! `UploadRepo` on PostgreSQL.

use async_trait::async_trait;
use sqlx::postgres::PgRow;

use super::PgStore;
use super::decode::column;
use super::files::insert_file;
use crate::domain::{FileRecord, UploadPart, UploadRecord, UploadStatus};
use crate::error::{Error, Result};
use crate::store::{PartAdmission, UploadRepo};

const COLUMNS: &str =
    "id, project_id, filename, purpose, mime_type, bytes, created_at, expires_at, status, file_expires_after, file_id";

fn status_of(stored: &str) -> Result<UploadStatus> {
    UploadStatus::parse(stored)
        .ok_or_else(|| Error::internal(anyhow::anyhow!("unknown upload status {stored:?} in database")))
}

fn upload_of(row: &PgRow) -> Result<UploadRecord> {
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

fn part_of(row: &PgRow) -> Result<UploadPart> {
    Ok(UploadPart {
        id: column(row, "id")?,
        upload_id: column(row, "upload_id")?,
        bytes: column(row, "bytes")?,
        created_at: column(row, "created_at")?,
        storage_key: column(row, "storage_key")?,
    })
}

const TOTALS: &str = "SELECT COUNT(*), COALESCE(SUM(bytes), 0)::bigint FROM upload_parts WHERE upload_id = $1";

#[async_trait]
impl UploadRepo for PgStore {
    async fn insert_upload(&self, u: &UploadRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO uploads (id, project_id, filename, purpose, mime_type, bytes, created_at, expires_at, status,
                                  file_expires_after, file_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
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
        let sql = format!("SELECT {COLUMNS} FROM uploads WHERE id = $1 AND project_id = $2");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(project_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(upload_of).transpose()
    }

    async fn add_part(&self, p: &UploadPart, max_parts: i64) -> Result<PartAdmission> {
        // The upload's row is locked (FOR UPDATE) for the transaction: other
        // parts of the same upload wait here, and a cancel or a completion
        // (an UPDATE of that row) waits for this part or comes first and is
        // then seen. The totals are read after the lock, so (READ COMMITTED)
        // they include every part committed before.
        let mut tx = self.pool.begin().await?;
        let upload: Option<(String, i64)> =
            sqlx::query_as("SELECT status, bytes FROM uploads WHERE id = $1 FOR UPDATE")
                .bind(&p.upload_id)
                .fetch_optional(&mut *tx)
                .await?;
        let (count, stored): (i64, i64) = sqlx::query_as(TOTALS).bind(&p.upload_id).fetch_one(&mut *tx).await?;
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
        sqlx::query(
            "INSERT INTO upload_parts (id, upload_id, bytes, created_at, storage_key) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&p.id)
        .bind(&p.upload_id)
        .bind(p.bytes)
        .bind(p.created_at)
        .bind(&p.storage_key)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(PartAdmission::Added)
    }

    async fn part_totals(&self, upload_id: &str) -> Result<(i64, i64)> {
        Ok(sqlx::query_as(TOTALS).bind(upload_id).fetch_one(&self.pool).await?)
    }

    async fn parts(&self, upload_id: &str) -> Result<Vec<UploadPart>> {
        let rows = sqlx::query(
            "SELECT id, upload_id, bytes, created_at, storage_key FROM upload_parts WHERE upload_id = $1 ORDER BY seq",
        )
        .bind(upload_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(part_of).collect()
    }

    async fn set_upload_status(&self, id: &str, from: &[UploadStatus], to: UploadStatus) -> Result<bool> {
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        let done = sqlx::query("UPDATE uploads SET status = $1 WHERE id = $2 AND status = ANY($3)")
            .bind(to.as_str())
            .bind(id)
            .bind(from)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn complete_upload(&self, id: &str, file: &FileRecord) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE uploads SET status = 'completed', file_id = $1 WHERE id = $2 AND status = 'completing'",
        )
        .bind(&file.id)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        insert_file(&mut *tx, file).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn expired_uploads(&self, now: i64) -> Result<Vec<UploadRecord>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM uploads WHERE status IN ('pending', 'completing') AND expires_at <= $1
             ORDER BY seq LIMIT 1000"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(upload_of).collect()
    }
}
