//! One model server process: started in its own process group with its output
//! in a log file (one per start, the previous start's kept as `.1`), polled
//! until healthy (a premature exit is logged for the operator with the log's
//! last lines), watched for crashes, and stopped with a signal to the whole
//! group, a grace period, then SIGKILL.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::sync::watch;

/// Everything needed to start one model server.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub model: String,
    pub program: PathBuf,
    /// `{port}` in any argument is replaced by the port chosen at start.
    pub args: Vec<OsString>,
    pub env: BTreeMap<String, String>,
    pub health_path: String,
    pub start_timeout: Duration,
    pub stop_signal: Signal,
    /// Run with `sh -c` (after `{port}` and `{pid}` are filled in) instead of
    /// sending `stop_signal`.
    pub stop_command: Option<String>,
    pub stop_grace: Duration,
    pub log_path: PathBuf,
    /// The device this replica runs on (already filled into `args` and `env`).
    pub device: Option<String>,
}

/// A running, healthy model server.
pub struct ServerProcess {
    pub model: String,
    /// Root URL, `http://127.0.0.1:PORT` (the OpenAI routes are under `/v1`).
    pub root_url: String,
    pub port: u16,
    pid: Pid,
    exited: watch::Receiver<Option<ExitStatus>>,
    stop_signal: Signal,
    stop_command: Option<String>,
    stop_grace: Duration,
}

/// A port that was free a moment ago: the server binds it right after.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl ServerProcess {
    /// Starts the server and returns once its health check passes. On any
    /// failure the process group is killed and the error says why in general
    /// terms: it is shown to every tenant (`/v1/models`, failed batches), so it
    /// never carries the server's output, which may hold other tenants'
    /// prompts. The details (and the log's last lines) go to the operator log.
    pub async fn start(spec: &LaunchSpec, http: &reqwest::Client) -> Result<Self, String> {
        let port = free_port().map_err(|e| operator_detail(spec, "no free port", &e))?;
        let log = open_fresh_log(&spec.log_path).map_err(|e| operator_detail(spec, "cannot open its log file", &e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| operator_detail(spec, "cannot open its log file", &e))?;
        let port_text = port.to_string();
        let args: Vec<OsString> = spec
            .args
            .iter()
            .map(|a| a.to_string_lossy().replace("{port}", &port_text).into())
            .collect();
        let mut child = Command::new(&spec.program)
            .args(&args)
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| operator_detail(spec, &format!("cannot run {}", spec.program.display()), &e))?;
        let pid = Pid::from_raw(child.id().expect("a just-spawned child has a pid") as i32);
        let (exit_tx, exited) = watch::channel(None);
        tokio::spawn(async move {
            let status = child.wait().await.ok();
            let _ = exit_tx.send(status);
        });
        let process = Self {
            model: spec.model.clone(),
            root_url: format!("http://127.0.0.1:{port}"),
            port,
            pid,
            exited,
            stop_signal: spec.stop_signal,
            stop_command: spec.stop_command.clone(),
            stop_grace: spec.stop_grace,
        };
        let health = format!("{}{}", process.root_url, spec.health_path);
        let deadline = tokio::time::Instant::now() + spec.start_timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            let exited = *process.exited.borrow();
            if let Some(status) = exited {
                let reason = format!("the model server exited ({status}) before it became healthy");
                log_failed_start(spec, &reason);
                return Err(format!("{reason}; the operator's log has the details"));
            }
            let probe = http.get(&health).timeout(Duration::from_secs(5)).send().await;
            if probe.is_ok_and(|r| r.status().is_success()) {
                return Ok(process);
            }
            if tokio::time::Instant::now() >= deadline {
                process.kill_now().await;
                let reason = format!(
                    "the model server did not answer its health check within {}s",
                    spec.start_timeout.as_secs()
                );
                log_failed_start(spec, &format!("{reason} ({health})"));
                return Err(format!("{reason}; the operator's log has the details"));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    pub fn is_running(&self) -> bool {
        self.exited.borrow().is_none()
    }

    /// Resolves when the process exits, with its status.
    pub fn exit_watch(&self) -> watch::Receiver<Option<ExitStatus>> {
        self.exited.clone()
    }

    /// Stops the whole process group: the stop command or signal, up to the
    /// grace period, then SIGKILL.
    pub async fn stop(mut self) {
        if !self.is_running() {
            return;
        }
        match &self.stop_command {
            Some(command) => {
                let command = command
                    .replace("{port}", &self.port.to_string())
                    .replace("{pid}", &self.pid.to_string());
                let _ = Command::new("sh").arg("-c").arg(command).status().await;
            }
            None => {
                let _ = killpg(self.pid, self.stop_signal);
            }
        }
        let exited = self.exited.wait_for(Option::is_some);
        if tokio::time::timeout(self.stop_grace, exited).await.is_err() {
            tracing::warn!(model = %self.model, "model server ignored the stop signal; killing it");
            self.kill_now().await;
        }
        // Children the server left in its group go too.
        let _ = killpg(self.pid, Signal::SIGKILL);
    }

    async fn kill_now(&self) {
        let _ = killpg(self.pid, Signal::SIGKILL);
        let mut exited = self.exited.clone();
        let _ = tokio::time::timeout(Duration::from_secs(10), exited.wait_for(Option::is_some)).await;
    }

    /// vLLM sleep mode: frees the GPU memory, keeps the process.
    pub async fn sleep(&self, http: &reqwest::Client) -> Result<(), String> {
        self.post(http, "/sleep?level=1").await
    }

    /// vLLM sleep mode: reloads the weights into GPU memory.
    pub async fn wake(&self, http: &reqwest::Client) -> Result<(), String> {
        self.post(http, "/wake_up").await
    }

    async fn post(&self, http: &reqwest::Client, path: &str) -> Result<(), String> {
        let url = format!("{}{path}", self.root_url);
        match http.post(&url).timeout(Duration::from_secs(600)).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("POST {path} answered {}", r.status())),
            Err(e) => Err(format!("POST {path} failed: {}", e.without_url())),
        }
    }
}

/// Bytes read from the end of a model server's log to explain a failed start.
const TAIL_BYTES: u64 = 4096;
/// Lines of that tail shown in the operator log.
const TAIL_LINES: usize = 5;

/// Opens the log for a new start: the previous start's log is kept as
/// `NAME.log.1` (replacing the one before), so the log, and the tail of a
/// failed start, hold this start's output only and never grow across starts.
fn open_fresh_log(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut previous = path.as_os_str().to_owned();
    previous.push(".1");
    match std::fs::rename(path, &previous) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
}

/// A start that failed before the process ran: the operator log gets the
/// details (paths, OS errors); the returned reason is for tenants.
fn operator_detail(spec: &LaunchSpec, what: &str, e: &dyn std::fmt::Display) -> String {
    tracing::error!(model = %spec.model, error = %e, "model server could not be started: {what}");
    "the model server could not be started; the operator's log has the details".into()
}

/// The operator log gets the failed start's reason with its log's last lines.
fn log_failed_start(spec: &LaunchSpec, reason: &str) {
    tracing::error!(
        model = %spec.model,
        log = %spec.log_path.display(),
        last_log_lines = %log_tail(&spec.log_path, TAIL_BYTES, TAIL_LINES),
        "{reason}"
    );
}

/// The last `lines` non-empty lines within the last `max_bytes` of a log,
/// joined with " | ". Reads only those bytes, however large the log is.
fn log_tail(path: &Path, max_bytes: u64, lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let read = || -> std::io::Result<(Vec<u8>, bool)> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        let start = len.saturating_sub(max_bytes);
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::with_capacity((len - start) as usize);
        file.take(max_bytes).read_to_end(&mut bytes)?;
        Ok((bytes, start > 0))
    };
    let Ok((bytes, cut)) = read() else {
        return "(no log)".into();
    };
    let text = String::from_utf8_lossy(&bytes);
    // The window's first line is most likely cut in the middle: drop it,
    // unless it is all there is (one very long last line).
    let text = match text.split_once('\n') {
        Some((_, rest)) if cut && !rest.trim().is_empty() => rest,
        _ => &text,
    };
    let tail: Vec<&str> = text
        .lines()
        .rev()
        .filter(|l| !l.trim().is_empty())
        .take(lines)
        .collect();
    if tail.is_empty() {
        return "(empty)".into();
    }
    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_tail_of_a_big_log_is_its_last_lines_read_from_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.log");
        let mut log = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        // 20 MB of earlier output, then a line longer than the window, then the end.
        for i in 0..200_000 {
            writeln!(log, "early line {i:06} {}", "x".repeat(90)).unwrap();
        }
        writeln!(log, "{}", "y".repeat(10_000)).unwrap();
        for i in 0..7 {
            writeln!(log, "late line {i}").unwrap();
        }
        writeln!(log).unwrap();
        drop(log);
        assert!(std::fs::metadata(&path).unwrap().len() > 20_000_000);
        assert_eq!(
            log_tail(&path, TAIL_BYTES, TAIL_LINES),
            "late line 2 | late line 3 | late line 4 | late line 5 | late line 6"
        );
        // A window that starts inside a line: the cut line is dropped.
        assert_eq!(
            log_tail(&path, 40, TAIL_LINES),
            "late line 4 | late line 5 | late line 6"
        );

        // A last line longer than the window: its end is all there is to show.
        let mut log = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        writeln!(log, "{}", "z".repeat(10_000)).unwrap();
        let tail = log_tail(&path, TAIL_BYTES, TAIL_LINES);
        assert_eq!(tail, "z".repeat(TAIL_BYTES as usize - 1));
    }

    #[test]
    fn a_small_or_missing_log_has_a_tail_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.log");
        assert_eq!(log_tail(&path, TAIL_BYTES, TAIL_LINES), "(no log)");
        std::fs::write(&path, "").unwrap();
        assert_eq!(log_tail(&path, TAIL_BYTES, TAIL_LINES), "(empty)");
        std::fs::write(&path, "only line").unwrap();
        assert_eq!(log_tail(&path, TAIL_BYTES, TAIL_LINES), "only line");
    }

    #[test]
    fn each_start_gets_a_fresh_log_and_keeps_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/model.log");
        for run in ["first", "second", "third"] {
            let mut log = open_fresh_log(&path).unwrap();
            writeln!(log, "{run} run").unwrap();
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "third run\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("logs/model.log.1")).unwrap(),
            "second run\n"
        );
    }
}
