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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{BatchRecord, BatchStatus, Usage};
    use crate::store::{BatchRepo, LineResult, ResultRepo};

    async fn pragma(store: &SqliteStore, name: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("PRAGMA {name}")))
            .fetch_one(&store.pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn pages_of_a_finished_batchs_results_go_back_to_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).await.unwrap();
        let batch = BatchRecord::new_validating(
            "b1".into(),
            "p".into(),
            "/v1/chat/completions".into(),
            "file-x".into(),
            "24h".into(),
            1,
            None,
        );
        store.insert_batch(&batch).await.unwrap();
        let results: Vec<LineResult> = (1..=2000)
            .map(|line| LineResult {
                batch_id: "b1".into(),
                line,
                is_error: false,
                output_line: "x".repeat(1000),
                usage: Usage::default(),
            })
            .collect();
        store.record_results(&results).await.unwrap();
        let pages_with_results = pragma(&store, "page_count").await;
        assert!(
            store
                .finish("b1", BatchStatus::Validating, BatchStatus::Cancelled, &[], 1)
                .await
                .unwrap()
        );
        assert!(
            store.finished_lines("b1").await.unwrap().is_empty(),
            "the results went with the finish"
        );
        let free = store.release_free_pages(4096).await.unwrap();
        assert!(free > 400, "{free} free pages");
        assert_eq!(pragma(&store, "freelist_count").await, 0);
        assert!(pragma(&store, "page_count").await < pages_with_results - 400);
    }
}
