//! One `batchd serve` per data directory (and, with `[store] url`, per
//! PostgreSQL database: `store::postgres::ServerLock`). Two servers on the same database
//! would run every active batch twice (every line sent twice) and race on the
//! result files' blobs, so `Server::start` takes an exclusive `flock` on
//! `data_dir/serve.lock` and holds it until the server has stopped. The kernel
//! drops the lock when the process dies, so a crash never leaves it behind.
//! `batchd keys` does not take it: it only writes keys, which is safe while a
//! server runs.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

pub const LOCK_FILE: &str = "serve.lock";

/// Held while the server runs; dropping it releases the lock.
pub struct DataDirLock {
    _file: Flock<File>,
}

impl DataDirLock {
    /// Takes the lock, or fails at once (never waits) naming the lock file and,
    /// if it wrote it, the pid of the server that holds it.
    pub fn acquire(data_dir: &Path) -> anyhow::Result<DataDirLock> {
        let path = data_dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                // The pid is only for the message another server prints.
                lock.set_len(0)?;
                writeln!(&*lock, "{}", std::process::id())?;
                Ok(DataDirLock { _file: lock })
            }
            Err((_, Errno::EWOULDBLOCK)) => Err(held_by_another(&path)),
            Err((_, e)) => anyhow::bail!("cannot lock {}: {e}", path.display()),
        }
    }
}

fn held_by_another(path: &Path) -> anyhow::Error {
    let pid = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok());
    let holder = match pid {
        Some(pid) => format!("another batchd serve (pid {pid})"),
        None => "another batchd serve".to_owned(),
    };
    anyhow::anyhow!(
        "{} is locked by {holder}: two servers on one data directory would run every batch twice. \
         Stop the other server, or give this one its own data_dir",
        path.display()
    )
}
