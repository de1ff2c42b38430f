//! Test harness: the real server on an ephemeral port, backed by the fake
//! OpenAI-compatible backend (a real HTTP server), driven over HTTP.
#![allow(dead_code)]

pub mod postgres;
pub mod s3;

use std::time::{Duration, Instant};

use batchd::app::Server;
use batchd::config::{Config, ModelConfig};
use batchd::testing::fake_backend::FakeBackend;
use serde_json::{Value, json};

pub struct Harness {
    pub server: Option<Server>,
    pub backend: FakeBackend,
    pub base: String,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
    pub config: Config,
}

pub fn test_config(dir: &std::path::Path, backend_url: &str) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.data_dir = dir.join("data");
    config.execution.retry_initial_backoff_ms = 10;
    config.execution.retry_max_backoff_ms = 50;
    config.execution.max_attempts = 3;
    config.execution.request_timeout_secs = 10;
    config.execution.poll_interval_ms = 200;
    config.limits.max_batch_lines = 1000;
    config.limits.max_line_bytes = 64 * 1024;
    config.limits.max_upload_bytes = 4 * 1024 * 1024;
    config.limits.max_batch_input_bytes = 1024 * 1024;
    config.models = vec![
        model("fake-model", backend_url, 8),
        model("fake-model-2", backend_url, 8),
    ];
    config
}

pub fn model(name: &str, url: &str, max_concurrency: usize) -> ModelConfig {
    ModelConfig {
        max_concurrency,
        ..ModelConfig::remote(name, url)
    }
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(|_| {}).await
    }

    /// Starts with the test config, adjusted by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Harness {
        let backend = FakeBackend::start("127.0.0.1:0".parse().unwrap(), Duration::ZERO)
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path(), &backend.url());
        tweak(&mut config);
        let server = Server::start(config.clone()).await.unwrap();
        let base = format!("{}/v1", server.url());
        Harness {
            server: Some(server),
            backend,
            base,
            http: batchd::http_client::client(),
            dir,
            config,
        }
    }

    /// Stops the server gracefully and starts a new one on the same data directory.
    pub async fn restart(&mut self) {
        self.server.take().unwrap().shutdown().await.unwrap();
        let server = Server::start(self.config.clone()).await.unwrap();
        self.base = format!("{}/v1", server.url());
        self.server = Some(server);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn upload(&self, content: impl Into<Vec<u8>>, filename: &str, purpose: &str) -> reqwest::Response {
        let part = reqwest::multipart::Part::bytes(content.into()).file_name(filename.to_owned());
        let form = reqwest::multipart::Form::new()
            .text("purpose", purpose.to_owned())
            .part("file", part);
        self.http.post(self.url("/files")).multipart(form).send().await.unwrap()
    }

    /// Uploads JSONL lines as a batch input file and returns its id.
    pub async fn upload_lines(&self, lines: &[Value]) -> String {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        self.upload_text(&text).await
    }

    pub async fn upload_text(&self, text: &str) -> String {
        let response = self.upload(text.as_bytes().to_vec(), "input.jsonl", "batch").await;
        assert_eq!(response.status(), 200);
        response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self.http.post(self.url(path)).json(&body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn create_batch(&self, file_id: &str, endpoint: &str) -> Value {
        let (status, batch) = self
            .post(
                "/batches",
                json!({"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h"}),
            )
            .await;
        assert_eq!(status, 200, "{batch}");
        batch
    }

    /// Polls until the batch reaches a terminal status.
    pub async fn wait_terminal(&self, batch_id: &str) -> Value {
        self.wait_for(batch_id, |b| {
            matches!(
                b["status"].as_str(),
                Some("completed" | "failed" | "expired" | "cancelled")
            )
        })
        .await
    }

    pub async fn wait_for(&self, batch_id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, batch) = self.get(&format!("/batches/{batch_id}")).await;
            assert_eq!(status, 200);
            if done(&batch) {
                return batch;
            }
            assert!(
                Instant::now() < deadline,
                "batch did not reach the expected state: {batch}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Downloads a file's content as parsed JSONL lines.
    pub async fn lines_of(&self, file_id: &Value) -> Vec<Value> {
        let Some(id) = file_id.as_str() else { return vec![] };
        let text = self.content(id).await;
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// Downloads a file's content as text.
    pub async fn content(&self, file_id: &str) -> String {
        self.http
            .get(self.url(&format!("/files/{file_id}/content")))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// A child process that is killed when dropped, so a failing test leaves no
/// server behind.
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the real `batchd` binary with `args` and waits for its "... listening
/// on http://ADDR" line; returns the process and that URL.
pub fn spawn_batchd<I, S>(args: I) -> (KillOnDrop, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    spawn_batchd_with_env(args, |_| {})
}

/// A chat request line whose prompt is `content`.
pub fn chat_line(custom_id: &str, model: &str, content: &str) -> Value {
    json!({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
           "body": {"model": model, "messages": [{"role": "user", "content": content}]}})
}

/// Writes a config for a `batchd serve` process: its data directory in `dir`,
/// one model `fake-model` at `backend_url`, and `extra` TOML (sections after
/// `[server]`, for example `[limits]`).
pub fn write_config(dir: &std::path::Path, backend_url: &str, extra: &str, model_extra: &str) -> std::path::PathBuf {
    let config = dir.join("batchd.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n{extra}\n[[models]]\nname = \"fake-model\"\nurl = \"{backend_url}\"\n{model_extra}\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    config
}

/// Uploads `text` as a batch input file to the API at `api` (as `key`, if
/// given) and returns the file's id.
pub async fn upload_at(http: &reqwest::Client, api: &str, key: Option<&str>, text: String) -> String {
    let form = reqwest::multipart::Form::new().text("purpose", "batch").part(
        "file",
        reqwest::multipart::Part::bytes(text.into_bytes()).file_name("in.jsonl"),
    );
    let mut request = http.post(format!("{api}/files")).multipart(form);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let file: Value = request.send().await.unwrap().json().await.unwrap();
    file["id"].as_str().expect("a file id").to_owned()
}

/// Uploads `text` and creates a chat batch on it; returns the batch's id.
pub async fn create_batch_at(http: &reqwest::Client, api: &str, key: Option<&str>, text: String) -> String {
    let file_id = upload_at(http, api, key, text).await;
    let mut request = http
        .post(format!("{api}/batches"))
        .json(&json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let batch: Value = request.send().await.unwrap().json().await.unwrap();
    batch["id"].as_str().expect("a batch id").to_owned()
}

/// Creates an API key for `project` with the real CLI, on the running
/// server's database; returns the CLI's JSON (with `secret`).
pub fn create_key(h: &Harness, project: &str, admin: bool) -> Value {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_batchd"));
    cmd.args(["keys", "--data-dir"]).arg(&h.config.server.data_dir).args([
        "create",
        "--project",
        project,
        "--name",
        "test",
    ]);
    if admin {
        cmd.arg("--admin");
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Opens the server's SQLite database in `data_dir`, to check what it keeps.
pub async fn open_db(data_dir: &std::path::Path) -> sqlx::SqlitePool {
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(data_dir.join("batchd.db"));
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap()
}

/// How many `batch_results` rows the database keeps for `batch_id`.
pub async fn result_rows(db: &sqlx::SqlitePool, batch_id: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM batch_results WHERE batch_id = ?")
        .bind(batch_id)
        .fetch_one(db)
        .await
        .unwrap()
}

/// `spawn_batchd` with the child's environment adjusted by `env` first (for
/// example `SSL_CERT_FILE`, or proxy variables the test must not set on
/// itself).
pub fn spawn_batchd_with_env<I, S>(args: I, env: impl FnOnce(&mut std::process::Command)) -> (KillOnDrop, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    use std::io::{BufRead, BufReader};
    // The caller's plain `reqwest::Client`s need a default rustls provider.
    batchd::http_client::install_crypto_provider();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_batchd"));
    command
        .args(args)
        .env("BATCHD_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    env(&mut command);
    let mut child = command.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening on"), "batchd did not start: {line:?}");
    let url = line.trim().rsplit(' ').next().unwrap().to_owned();
    (KillOnDrop(child), url)
}

/// Polls the batch at `api` until it is terminal (a deadline turns a hang
/// into a failure).
pub async fn wait_terminal_at(http: &reqwest::Client, api: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let batch: Value = http
            .get(format!("{api}/batches/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if matches!(
            batch["status"].as_str(),
            Some("completed" | "failed" | "expired" | "cancelled")
        ) {
            return batch;
        }
        assert!(Instant::now() < deadline, "batch did not finish: {batch}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A file's content at `api`, as parsed JSONL lines.
pub async fn lines_at(http: &reqwest::Client, api: &str, file_id: &Value) -> Vec<Value> {
    let Some(id) = file_id.as_str() else { return vec![] };
    let text = http
        .get(format!("{api}/files/{id}/content"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}
