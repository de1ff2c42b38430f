//! Helpers shared by the benchmarks.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

/// Starts a process and waits for its "... listening on http://ADDR" line;
/// returns the process and the URL.
pub fn spawn_listening(mut cmd: Command) -> (Child, String) {
    // The caller's plain `reqwest::Client`s need a default rustls provider.
    batchd::http_client::install_crypto_provider();
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert!(line.contains("listening on"), "process did not start: {line:?}");
    let url = line.trim().rsplit(' ').next().expect("listening line").to_owned();
    (child, url)
}

/// A release `batchd serve` on a temporary data directory with the given
/// `[[models]]` TOML, stopped with SIGTERM when dropped.
pub struct Batchd {
    child: Child,
    pub api: String,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Batchd {
    /// Starts `{bin_dir}/batchd serve` and waits until it listens.
    pub fn start(bin_dir: &str, models_toml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("batchd.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[execution]\npoll_interval_ms = 50\n{models_toml}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new(format!("{bin_dir}/batchd"));
        cmd.args(["serve", "--config"]).arg(&config).env("BATCHD_LOG", "warn");
        let (child, url) = spawn_listening(cmd);
        Self {
            child,
            api: format!("{url}/v1"),
            http: batchd::http_client::client(),
            _dir: dir,
        }
    }

    /// Uploads `text` as a batch input and creates a chat batch; its id.
    pub async fn create(&self, text: String) -> String {
        let form = reqwest::multipart::Form::new().text("purpose", "batch").part(
            "file",
            reqwest::multipart::Part::bytes(text.into_bytes()).file_name("in.jsonl"),
        );
        let file: Value = self
            .http
            .post(format!("{}/files", self.api))
            .multipart(form)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let batch: Value = self
            .http
            .post(format!("{}/batches", self.api))
            .json(&json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        batch["id"].as_str().unwrap().to_owned()
    }

    /// Polls until the batch is terminal; asserts it completed without a failed line.
    pub async fn wait(&self, id: &str) -> Value {
        loop {
            let b: Value = self
                .http
                .get(format!("{}/batches/{id}", self.api))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if matches!(
                b["status"].as_str(),
                Some("completed" | "failed" | "expired" | "cancelled")
            ) {
                assert_eq!(b["status"], "completed", "{b}");
                assert_eq!(b["request_counts"]["failed"], 0, "{b}");
                return b;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Batchd {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}
