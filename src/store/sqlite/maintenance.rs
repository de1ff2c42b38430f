use async_trait::async_trait;

use super::SqliteStore;
use crate::error::Result;
use crate::store::MaintenanceRepo;

#[async_trait]
impl MaintenanceRepo for SqliteStore {
    async fn release_free_pages(&self, max_pages: u32) -> Result<u64> {
        let free: i64 = sqlx::query_scalar("PRAGMA freelist_count")
            .fetch_one(&self.pool)
            .await?;
        if free > 0 {
            // Only shrinks databases created with auto_vacuum = INCREMENTAL
            // (see `SqliteStore::open`); elsewhere SQLite ignores it, and the
            // free pages are still reused by later inserts.
            sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA incremental_vacuum({max_pages})")))
                .execute(&self.pool)
                .await?;
        }
        Ok(free as u64)
    }
}
