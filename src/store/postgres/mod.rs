//! The PostgreSQL implementation of the store traits, for deployments that
//! already run PostgreSQL (`[store] url = "postgres://..."`). Same semantics
//! as `store::sqlite`, checked by the same conformance suite
//! (`tests/store_conformance`).
//!
//! Where SQLite gets its guarantees from running one write at a time,
//! PostgreSQL runs transactions concurrently (READ COMMITTED), so:
//! - compare-and-set transitions are single `UPDATE ... WHERE status = ANY(..)`
//!   statements: a concurrent writer of the same row waits for the row lock
//!   and re-checks the `WHERE` against the committed row;
//! - per-project limits take a transaction-scoped advisory lock on the
//!   project (`lock_project`) before counting, and per-upload limits lock the
//!   upload's row (`SELECT ... FOR UPDATE`), so the count and the insert see
//!   the same state;
//! - results lock their batches' rows before inserting, so a terminal
//!   transition (which deletes the rows) cannot interleave with them.

mod batches;
mod decode;
mod events;
mod files;
mod keys;
mod maintenance;
mod results;
mod uploads;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://` or `postgresql://`)
    /// and applies migrations (`migrations-postgres/`).
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations-postgres").run(&pool).await?;
        Ok(Self { pool })
    }
}

/// Held by the one `batchd serve` that uses a database: a session-level
/// advisory lock on a connection of its own, released by PostgreSQL when the
/// connection closes (the process stopped or died). Until batches are claimed
/// in leased chunks, two servers on one database would both run every active
/// batch (every line sent twice), so a second one refuses to start, as a
/// second server on one data directory does (`server::lock`).
pub struct ServerLock {
    _conn: sqlx::PgConnection,
}

/// The advisory lock key: "batchd serve" hashed, stable across versions.
const SERVER_LOCK_SQL: &str = "SELECT pg_try_advisory_lock(hashtextextended('batchd.serve', 0))";

impl ServerLock {
    /// Takes the lock, or fails at once (never waits).
    pub async fn acquire(url: &str) -> anyhow::Result<ServerLock> {
        use sqlx::Connection;
        let options: PgConnectOptions = url.parse()?;
        let mut conn = sqlx::PgConnection::connect_with(&options).await?;
        let (taken,): (bool,) = sqlx::query_as(SERVER_LOCK_SQL).fetch_one(&mut conn).await?;
        anyhow::ensure!(
            taken,
            "another batchd serve is using this PostgreSQL database (it holds the server lock);              several replicas on one database are not supported yet"
        );
        Ok(ServerLock { _conn: conn })
    }
}

/// Takes the transaction-scoped advisory lock of `project_id`: transactions
/// that enforce a per-project limit run one at a time per project, and the
/// lock goes with the transaction's end. An advisory lock rather than a row
/// lock because a project has no row of its own; a hash collision between
/// two projects only makes them wait for each other.
async fn lock_project(conn: &mut sqlx::PgConnection, project_id: &str) -> crate::error::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('batchd.project:' || $1, 0))")
        .bind(project_id)
        .execute(conn)
        .await?;
    Ok(())
}
