//! A throwaway PostgreSQL cluster for tests: started once per test binary,
//! on first use, with one fresh database per caller (`fresh_database`), so
//! tests stay independent without paying for a cluster each.
//!
//! Rust runs no destructors for statics, so nothing in this process could
//! stop the cluster when the tests end. Instead `postgres` runs under a small
//! `sh` watchdog that polls the test process's pid and, once it is gone,
//! stops the server and removes the cluster's directory.
//!
//! The server binaries come from `$BATCHD_PG_BIN`, else the newest
//! `/usr/lib/postgresql/*/bin` (Debian's `postgresql` package, which
//! `scripts/setup.sh` installs), else `pg_config --bindir`. Missing binaries
//! fail the test with that advice: they are never a reason to skip.
//!
//! `initdb` and `postgres` refuse to run as root; as root they run as
//! `nobody`, with the directory chowned to it.
//!
//! Shared by any test that needs PostgreSQL: `common::postgres` from a test
//! file under `tests/` (`tests/postgres_server.rs`), or
//! `#[path = "../common/postgres.rs"] mod pg_cluster;` from a test directory
//! (`tests/store_conformance/`), which needs none of the rest of `common`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
}

impl Cluster {
    /// The URL of database `name` on this cluster (superuser `postgres`, no password).
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
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

fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BATCHD_PG_BIN") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("initdb").exists() && dir.join("postgres").exists(),
            "BATCHD_PG_BIN={} holds no initdb and postgres (PostgreSQL server binaries)",
            dir.display()
        );
        return dir;
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if bin.join("postgres").exists() {
            return bin;
        }
    }
    panic!(
        "PostgreSQL server binaries (initdb, postgres) not found: install the `postgresql` package \
         (scripts/setup.sh does), or point BATCHD_PG_BIN at their directory"
    );
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `setpriv` arguments that drop root to `nobody` (empty when not root).
fn unprivileged(root: bool) -> Vec<&'static str> {
    if root {
        vec!["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
    } else {
        vec![]
    }
}

fn command(prefix: &[&str], program: &Path) -> Command {
    match prefix.split_first() {
        None => Command::new(program),
        Some((first, rest)) => {
            let mut command = Command::new(first);
            command.args(rest).arg(program);
            command
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port")
        .port()
}

fn start() -> Cluster {
    let bin = bin_dir();
    let root = running_as_root();
    let prefix = unprivileged(root);
    let dir = tempfile::Builder::new()
        .prefix("batchd-pg-")
        .tempdir()
        .expect("tempdir for the PostgreSQL cluster")
        .keep();
    let data = dir.join("data");
    if root {
        let status = Command::new("chown")
            .arg("nobody:nogroup")
            .arg(&dir)
            .status()
            .expect("run chown");
        assert!(status.success(), "chown nobody {}", dir.display());
    }
    let out = command(&prefix, &bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-locale",
            "--encoding=UTF8",
            "--no-sync",
        ])
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.join("initdb").display()));
    assert!(
        out.status.success(),
        "initdb failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let port = free_port();
    // The watchdog: runs postgres, polls this process's pid, and once this
    // process is gone (or postgres died) stops postgres and removes `dir`.
    let mut postgres: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
    postgres.push(bin.join("postgres").display().to_string());
    let quoted: Vec<String> = postgres.iter().map(|a| format!("'{a}'")).collect();
    let script = format!(
        r#"{postgres} -D "$2" -k "$1" -p "$3" -c listen_addresses=127.0.0.1 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 \
             >"$1/postgres.log" 2>&1 &
           pg=$!
           while kill -0 "$0" 2>/dev/null && kill -0 "$pg" 2>/dev/null; do sleep 1; done
           kill -INT "$pg" 2>/dev/null
           wait "$pg"
           rm -rf "$1""#,
        postgres = quoted.join(" ")
    );
    // Never waited for: the watchdog is meant to outlive this process.
    #[expect(
        clippy::zombie_processes,
        reason = "the watchdog outlives the test process by design"
    )]
    let _watchdog = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(std::process::id().to_string())
        .arg(&dir)
        .arg(&data)
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the PostgreSQL watchdog");

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = Command::new(bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-p", &port.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ready {
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
            panic!("PostgreSQL did not start within 60 s on port {port}:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Cluster { dir, port }
}
