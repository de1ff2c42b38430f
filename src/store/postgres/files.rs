//! `FileRepo` on PostgreSQL.

use async_trait::async_trait;
use sqlx::AssertSqlSafe;
use sqlx::postgres::PgRow;

use super::PgStore;
use super::decode::column;
use crate::domain::{FileListQuery, FileRecord, Order, Page};
use crate::error::Result;
use crate::ids::now;
use crate::store::FileRepo;

const COLUMNS: &str = "id, project_id, filename, purpose, bytes, created_at, expires_at, storage_key";

/// Statuses of a batch that may still read its input file.
const READING_STATUSES: &str = "'validating', 'in_progress', 'finalizing', 'cancelling'";

pub(super) fn file_from_row(row: &PgRow) -> Result<FileRecord> {
    Ok(FileRecord {
        id: column(row, "id")?,
        project_id: column(row, "project_id")?,
        filename: column(row, "filename")?,
        purpose: column(row, "purpose")?,
        bytes: column(row, "bytes")?,
        created_at: column(row, "created_at")?,
        expires_at: column(row, "expires_at")?,
        storage_key: column(row, "storage_key")?,
    })
}

pub(super) async fn insert_file<'e, E: sqlx::PgExecutor<'e>>(executor: E, file: &FileRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO files (id, project_id, filename, purpose, bytes, created_at, expires_at, storage_key)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&file.id)
    .bind(&file.project_id)
    .bind(&file.filename)
    .bind(&file.purpose)
    .bind(file.bytes)
    .bind(file.created_at)
    .bind(file.expires_at)
    .bind(&file.storage_key)
    .execute(executor)
    .await?;
    Ok(())
}

#[async_trait]
impl FileRepo for PgStore {
    async fn insert_file(&self, file: &FileRecord) -> Result<()> {
        insert_file(&self.pool, file).await
    }

    async fn get_file(&self, project_id: &str, id: &str) -> Result<Option<FileRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM files WHERE id = $1 AND project_id = $2 AND deleted_at IS NULL"
        )))
        .bind(id)
        .bind(project_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(file_from_row).transpose()
    }

    async fn get_file_even_deleted(&self, project_id: &str, id: &str) -> Result<Option<FileRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM files WHERE id = $1 AND project_id = $2"
        )))
        .bind(id)
        .bind(project_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(file_from_row).transpose()
    }

    async fn expired_files(&self, now: i64, limit: u32) -> Result<Vec<FileRecord>> {
        // seq breaks ties in expires_at the way SQLite's rowid order does.
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM files WHERE deleted_at IS NULL AND expires_at IS NOT NULL AND expires_at <= $1
             ORDER BY expires_at, seq LIMIT $2"
        )))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(file_from_row).collect()
    }

    async fn file_in_use(&self, id: &str) -> Result<bool> {
        let in_use: Option<i32> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT 1 FROM batches WHERE input_file_id = $1 AND status IN ({READING_STATUSES}) LIMIT 1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(in_use.is_some())
    }

    async fn list_files(&self, project_id: &str, query: &FileListQuery) -> Result<Option<Page<FileRecord>>> {
        // The cursor is the file's position (seq), looked up including deleted
        // rows so that deleting the last file of a page does not break paging.
        let cursor: Option<i64> = match &query.after {
            None => None,
            Some(after) => {
                let seq = sqlx::query_scalar("SELECT seq FROM files WHERE id = $1 AND project_id = $2")
                    .bind(after)
                    .bind(project_id)
                    .fetch_optional(&self.pool)
                    .await?;
                match seq {
                    Some(seq) => Some(seq),
                    None => return Ok(None),
                }
            }
        };
        let (cmp, dir) = match query.order {
            Order::Asc => (">", "ASC"),
            Order::Desc => ("<", "DESC"),
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM files
             WHERE project_id = $1 AND deleted_at IS NULL
               AND ($2::text IS NULL OR purpose = $2)
               AND ($3::bigint IS NULL OR seq {cmp} $3)
             ORDER BY seq {dir} LIMIT $4"
        );
        let fetch = i64::from(query.limit) + 1;
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(project_id)
            .bind(&query.purpose)
            .bind(cursor)
            .bind(fetch)
            .fetch_all(&self.pool)
            .await?;
        let has_more = rows.len() as i64 > i64::from(query.limit);
        let items = rows
            .iter()
            .take(query.limit as usize)
            .map(file_from_row)
            .collect::<Result<_>>()?;
        Ok(Some(Page { items, has_more }))
    }

    async fn delete_file(&self, project_id: &str, id: &str) -> Result<Option<FileRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE files SET deleted_at = $1 WHERE id = $2 AND project_id = $3 AND deleted_at IS NULL
             RETURNING {COLUMNS}"
        )))
        .bind(now())
        .bind(id)
        .bind(project_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(file_from_row).transpose()
    }

    async fn files_with_bytes_to_remove(&self, limit: u32) -> Result<Vec<FileRecord>> {
        // A batch never starts reading a deleted file (validation looks up live
        // files only), so once no unfinished batch reads it, none ever will.
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM files AS f
             WHERE f.deleted_at IS NOT NULL AND f.bytes_removed_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM batches AS b
                               WHERE b.input_file_id = f.id AND b.status IN ({READING_STATUSES}))
             ORDER BY f.deleted_at, f.seq LIMIT $1"
        )))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(file_from_row).collect()
    }

    async fn bytes_removed(&self, id: &str, now: i64) -> Result<()> {
        sqlx::query("UPDATE files SET bytes_removed_at = $1 WHERE id = $2 AND bytes_removed_at IS NULL")
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
