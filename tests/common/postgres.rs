//! A throwaway PostgreSQL cluster for tests: started once per test binary,
//! on first use, with one fresh database per caller (`fresh_database`), so
//! tests stay independent without paying for a cluster each.
//!
//! The cluster comes from `scripts/pg-test-cluster.sh`, the same recipe the
//! SDK suites use: Debian's server binaries (or `$BATCHD_PG_BIN`), run as
//! `nobody` under root, and a watchdog that stops the server and removes its
//! directory once the process it watches (this test binary) is gone; Rust
//! runs no destructors for statics, so nothing in this process could.
//! Missing binaries fail the test with the script's advice: they are never
//! a reason to skip.
//!
//! Shared by any test that needs PostgreSQL: `common::postgres` from a test
//! file under `tests/` (`tests/postgres_server.rs`), or
//! `#[path = "../common/postgres.rs"] mod pg_cluster;` from a test directory
//! (`tests/store_conformance/`), which needs none of the rest of `common`.
#![allow(dead_code)]

use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Cluster {
    /// `postgres://postgres@127.0.0.1:PORT`, without a database.
    base: String,
}

impl Cluster {
    /// The URL of database `name` on this cluster (superuser `postgres`, no password).
    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }
}

/// The test binary's cluster, started on the first call.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(start)
}

/// Creates an empty database on the cluster and returns its URL.
pub async fn fresh_database() -> String {
    use sqlx::Connection;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let cluster = cluster();
    let name = format!("test_{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let mut conn = sqlx::PgConnection::connect(&cluster.url("postgres"))
        .await
        .expect("connect to the test PostgreSQL cluster");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("CREATE DATABASE");
    conn.close().await.ok();
    cluster.url(&name)
}

fn start() -> Cluster {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg-test-cluster.sh");
    let out = Command::new(script)
        .arg(std::process::id().to_string())
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It prints the URL of its database `batchd`.
    let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let base = url
        .rsplit_once('/')
        .map(|(base, _)| base.to_owned())
        .unwrap_or_else(|| panic!("{script} printed {url:?}"));
    Cluster { base }
}
