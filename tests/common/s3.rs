//! A real S3-compatible server for tests: `s3s-fs` (crates.io, installed by
//! `scripts/setup.sh`), on a free loopback port, serving a temporary
//! directory in which each bucket is a folder. Killed when dropped.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "batchd-test-key";
pub const SECRET_KEY: &str = "batchd-test-secret";

pub struct S3Server {
    child: Child,
    pub endpoint: String,
    pub root: tempfile::TempDir,
}

/// The `s3s-fs` binary: `BATCHD_S3S_FS`, else `s3s-fs` in `~/.cargo/bin`
/// or on `PATH`. Missing is a failure, not a skip: `scripts/setup.sh`
/// installs it.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("BATCHD_S3S_FS") {
        return path.into();
    }
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .map(|home| home.join("bin/s3s-fs"));
    match cargo_bin {
        Some(path) if path.exists() => path,
        _ => "s3s-fs".into(),
    }
}

impl S3Server {
    /// Starts the server with `bucket` created.
    pub fn start(bucket: &str) -> S3Server {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(bucket)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(binary())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run s3s-fs ({e}); scripts/setup.sh installs it"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            root,
        }
    }

    /// Every object under `bucket/prefix`, as paths relative to the bucket.
    pub fn objects(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let base = self.root.path().join(bucket);
        let mut out = vec![];
        let mut stack = vec![base.join(prefix)];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let relative = path.strip_prefix(&base).unwrap().to_string_lossy().into_owned();
                    // s3s-fs keeps its own metadata and upload staging in
                    // dot-files and folders next to the objects.
                    if !relative.split('/').any(|part| part.starts_with('.')) {
                        out.push(relative);
                    }
                }
            }
        }
        out.sort();
        out
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
