//! Write transactions that cannot poison the pool.
//!
//! They start with `BEGIN IMMEDIATE`, which takes SQLite's write lock up front
//! (waiting up to the busy timeout) instead of starting as a reader and failing
//! with `SQLITE_BUSY_SNAPSHOT` when it must upgrade.
//!
//! A transaction that fails or is dropped closes its connection instead of
//! returning it to the pool. After `SQLITE_FULL` or an I/O error, SQLite may or
//! may not have rolled back by itself, and sqlx's own transaction bookkeeping
//! can then disagree with the connection's real state; a connection left in
//! that state failed every later write, so a full disk that had been freed
//! still stopped all batches (`tests/full_disk.rs`).

use sqlx::pool::PoolConnection;
use sqlx::{Sqlite, SqliteConnection, SqlitePool};

use crate::error::Result;

pub struct WriteTx {
    conn: PoolConnection<Sqlite>,
    open: bool,
}

impl WriteTx {
    pub async fn begin(pool: &SqlitePool) -> Result<Self> {
        let mut conn = pool.acquire().await?;
        if let Err(e) = sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await {
            conn.close_on_drop();
            return Err(e.into());
        }
        Ok(Self { conn, open: true })
    }

    pub fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }

    pub async fn commit(mut self) -> Result<()> {
        self.finish("COMMIT").await
    }

    /// Ends the transaction without writing anything (a compare-and-set that
    /// found another status).
    pub async fn rollback(mut self) -> Result<()> {
        self.finish("ROLLBACK").await
    }

    async fn finish(&mut self, statement: &'static str) -> Result<()> {
        sqlx::raw_sql(statement).execute(&mut *self.conn).await?;
        self.open = false;
        Ok(())
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if self.open {
            // Closing the connection rolls back whatever is still open.
            self.conn.close_on_drop();
        }
    }
}
