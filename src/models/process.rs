//! One model server process: started in its own process group with its output
//! in a log file, polled until healthy (a premature exit is reported with the
//! log's last lines), watched for crashes, and stopped with a signal to the
//! whole group, a grace period, then SIGKILL.

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

pub fn parse_signal(name: &str) -> Option<Signal> {
    let name = name.trim().to_ascii_uppercase();
    let full = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    full.parse().ok()
}

/// A port that was free a moment ago: the server binds it right after.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl ServerProcess {
    /// Starts the server and returns once its health check passes. On any
    /// failure the process group is killed and the error says why, with the
    /// log's last lines.
    pub async fn start(spec: &LaunchSpec, http: &reqwest::Client) -> Result<Self, String> {
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        if let Some(dir) = spec.log_path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log_path)
            .map_err(|e| format!("cannot open {}: {e}", spec.log_path.display()))?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
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
            .map_err(|e| format!("cannot run {}: {e}", spec.program.display()))?;
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
            if let Some(status) = *process.exited.borrow() {
                return Err(format!(
                    "the server exited ({status}) before it became healthy; last log lines: {}",
                    log_tail(&spec.log_path)
                ));
            }
            let probe = http.get(&health).timeout(Duration::from_secs(5)).send().await;
            if probe.is_ok_and(|r| r.status().is_success()) {
                return Ok(process);
            }
            if tokio::time::Instant::now() >= deadline {
                process.kill_now().await;
                return Err(format!(
                    "{health} did not answer 2xx within {}s; last log lines: {}",
                    spec.start_timeout.as_secs(),
                    log_tail(&spec.log_path)
                ));
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

/// The last lines of a log, to explain a failed start.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().filter(|l| !l.trim().is_empty()).take(5).collect();
    if lines.is_empty() {
        return "(empty)".into();
    }
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}
