//! Starting and stopping an embedded-engine process (`batchd engine`) for a
//! model whose config names a GGUF file. The engine runs in its own process
//! group, so stopping it never leaves a stray child, and a native crash in
//! llama.cpp never reaches the control plane.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::config::ModelConfig;

/// How long a model may take to load before its start counts as failed.
const START_TIMEOUT: Duration = Duration::from_secs(300);

pub struct EngineProcess {
    pub name: String,
    /// Base URL ending in `/v1`.
    pub url: String,
    child: Child,
}

impl EngineProcess {
    /// Starts the engine for `model` and waits until it answers `/health`.
    /// Its stderr (logs) goes to `<log_dir>/<name>.engine.log`.
    pub async fn start(model: &ModelConfig, gguf: &Path, exe: &Path, log_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(log_dir)?;
        let log_path = log_dir.join(format!("{}.engine.log", sanitize(&model.name)));
        let log = std::fs::File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
        let mut command = Command::new(exe);
        command
            .arg("engine")
            .arg("--model")
            .arg(gguf)
            .args(["--name", &model.name, "--listen", "127.0.0.1:0"])
            .args(["--parallel", &model.engine_parallel.to_string()])
            .args(["--ctx-per-seq", &model.engine_ctx_per_seq.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .process_group(0)
            .kill_on_drop(true);
        if let Some(threads) = model.engine_threads {
            command.args(["--threads", &threads.to_string()]);
        }
        let mut child = command.spawn().context("cannot start the engine process")?;
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(START_TIMEOUT, lines.next_line()).await;
        let url = match first {
            Ok(Ok(Some(line))) if line.contains("listening on ") => {
                line.rsplit(' ').next().unwrap_or_default().to_owned()
            }
            Ok(_) => {
                let status = child.wait().await.ok();
                let tail = log_tail(&log_path);
                anyhow::bail!(
                    "the engine for {:?} exited before serving ({status:?}): {tail}",
                    model.name
                );
            }
            Err(_) => anyhow::bail!("the engine for {:?} did not start within {START_TIMEOUT:?}", model.name),
        };
        // Keep draining stdout so the engine never blocks or dies writing to it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let health = format!("{url}/health");
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if client.get(&health).send().await.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the engine for {:?} never became healthy",
                model.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(model = %model.name, %url, log = %log_path.display(), "engine started");
        Ok(Self {
            name: model.name.clone(),
            url: format!("{url}/v1"),
            child,
        })
    }

    /// Stops the engine: SIGTERM to its process group, then SIGKILL after a grace period.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // The engine leads its own process group; signal all of it.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        tracing::info!(model = %self.name, "engine stopped");
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The last lines of a log, to explain a failed start.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}
