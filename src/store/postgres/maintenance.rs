//! `MaintenanceRepo` on PostgreSQL.

use async_trait::async_trait;

use super::PgStore;
use crate::error::Result;
use crate::store::MaintenanceRepo;

#[async_trait]
impl MaintenanceRepo for PgStore {
    /// A no-op: PostgreSQL's autovacuum makes the space of deleted rows
    /// reusable by itself, and giving it back to the file system takes a
    /// `VACUUM FULL` (an exclusive lock), which is the operator's call.
    async fn release_free_pages(&self, _max_pages: u32) -> Result<u64> {
        Ok(0)
    }
}
