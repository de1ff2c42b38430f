//! Decisions survive the process dying in the middle of acting on them: a
//! batch whose model failed ends `failed` even if batchd is killed while it
//! writes the `model_unavailable` rows and the model would start after the
//! restart; a line task that panics still gives its line a result. Both use
//! debug-build failpoints (`BATCHD_FAILPOINT`) of the real binary.

mod common;

use std::time::{Duration, Instant};

use batchd::testing::fake_backend::FakeBackend;
use common::{KillOnDrop, chat_line, create_batch_at, spawn_batchd, spawn_batchd_with_env};
use serde_json::{Value, json};

fn serve_args(config: &std::path::Path) -> Vec<std::ffi::OsString> {
    vec!["serve".into(), "--config".into(), config.into()]
}

async fn batch(http: &reqwest::Client, api: &str, id: &str) -> Value {
    http.get(format!("{api}/batches/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn wait_terminal(http: &reqwest::Client, api: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let b = batch(http, api, id).await;
        if matches!(
            b["status"].as_str(),
            Some("completed" | "failed" | "expired" | "cancelled")
        ) {
            return b;
        }
        assert!(Instant::now() < deadline, "batch never ended: {b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn file_lines(http: &reqwest::Client, api: &str, file: &Value) -> Vec<Value> {
    let Some(file) = file.as_str() else { return vec![] };
    let text = http
        .get(format!("{api}/files/{file}/content"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn wait_exit(server: &mut KillOnDrop) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = server.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the failpoint never fired");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_recording_a_model_failure_the_batch_still_ends_failed() {
    let dir = tempfile::tempdir().unwrap();
    // The model's server starts only once this file exists: it fails now,
    // and would start after the restart.
    let may_start = dir.path().join("model-may-start");
    let fake = env!("CARGO_BIN_EXE_batchd-fake-backend");
    let config = dir.path().join("batchd.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{data}\"\n[execution]\npoll_interval_ms = 50\n\
             [[models]]\nname = \"fake-model\"\n\
             command = 'test -f {marker} && exec {fake} --listen 127.0.0.1:{{port}}'\n\
             start_timeout_secs = 10\nstop_grace_secs = 1\n",
            data = dir.path().join("data").display(),
            marker = may_start.display(),
        ),
    )
    .unwrap();
    let http = batchd::http_client::client();
    let lines: Vec<Value> = (0..50)
        .map(|i| chat_line(&format!("r-{i}"), "fake-model", &format!("q{i}")))
        .collect();
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();

    let (mut server, url) = spawn_batchd_with_env(serve_args(&config), |c| {
        c.env("BATCHD_FAILPOINT", "unexecuted_rows_partly_written");
    });
    let api = format!("{url}/v1");
    let id = create_batch_at(&http, &api, None, text).await;
    // The start fails, the batch is being failed, and the process dies with
    // some of the `model_unavailable` rows written.
    let status = wait_exit(&mut server);
    assert!(!status.success(), "{status}");

    std::fs::write(&may_start, "").unwrap();
    let (_server, url) = spawn_batchd(serve_args(&config));
    let api = format!("{url}/v1");
    let done = wait_terminal(&http, &api, &id).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["errors"]["data"][0]["code"], "model_unavailable", "{done}");
    assert_eq!(
        done["request_counts"],
        json!({"total": 50, "completed": 0, "failed": 50}),
        "{done}"
    );
    assert!(done["output_file_id"].is_null(), "{done}");
    let errors = file_lines(&http, &api, &done["error_file_id"]).await;
    let mut ids: Vec<&str> = errors.iter().map(|l| l["custom_id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 50, "every custom_id exactly once");
    assert_eq!(errors.len(), 50);
    assert!(errors.iter().all(|l| l["error"]["code"] == "model_unavailable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_task_that_panics_still_gets_an_internal_error_line() {
    let backend = FakeBackend::start("127.0.0.1:0".parse().unwrap(), Duration::ZERO)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(dir.path(), &backend.url(), "[execution]\npoll_interval_ms = 50", "");
    let (_server, url) = spawn_batchd_with_env(serve_args(&config), |c| {
        c.env("BATCHD_FAILPOINT", "line_task_panic=p-3");
    });
    let api = format!("{url}/v1");
    let http = batchd::http_client::client();
    let text: String = (0..6)
        .map(|i| format!("{}\n", chat_line(&format!("p-{i}"), "fake-model", "hi")))
        .collect();
    let id = create_batch_at(&http, &api, None, text).await;
    let done = wait_terminal(&http, &api, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["request_counts"],
        json!({"total": 6, "completed": 5, "failed": 1}),
        "{done}"
    );
    let errors = file_lines(&http, &api, &done["error_file_id"]).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["custom_id"], "p-3");
    assert_eq!(errors[0]["error"]["code"], "internal_error");
    assert_eq!(file_lines(&http, &api, &done["output_file_id"]).await.len(), 5);
}
