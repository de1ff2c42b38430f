//! `/metrics` after a batch, parsed; and the logs of a whole run, at debug
//! level and as JSON, never contain a prompt, a response or an API key.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use batchd::testing::fake_backend::FakeBackend;
use common::{Harness, chat_line};
use serde_json::Value;

/// `name{labels} value` lines of a Prometheus text page.
fn sample(page: &str, name_and_labels: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_after_a_batch() {
    let h = Harness::start().await;
    let lines = vec![
        chat_line("a", "fake-model", "one two"),
        chat_line("b", "fake-model", "three"),
        chat_line("c", "fake-model", "[status=400] bad"),
    ];
    let file = h.upload_lines(&lines).await;
    let batch = h.create_batch(&file, "/v1/chat/completions").await;
    h.wait_terminal(batch["id"].as_str().unwrap()).await;
    let response = h
        .http
        .get(format!("{}/metrics", h.base.trim_end_matches("/v1")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let page = response.text().await.unwrap();
    assert_eq!(
        sample(&page, r#"batchd_batches{status="completed"}"#),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, r#"batchd_lines_total{model="fake-model",outcome="completed"}"#),
        Some(2.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, r#"batchd_lines_total{model="fake-model",outcome="failed"}"#),
        Some(1.0),
        "{page}"
    );
    // The fake backend counts words: 2 + 1 prompt tokens, 3 + 2 completion tokens.
    assert_eq!(
        sample(&page, r#"batchd_tokens_total{model="fake-model",direction="input"}"#),
        Some(3.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, r#"batchd_tokens_total{model="fake-model",direction="output"}"#),
        Some(5.0),
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            r#"batchd_backend_request_duration_seconds_count{model="fake-model"}"#
        ),
        Some(3.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, r#"batchd_queue_depth{model="fake-model"}"#),
        Some(0.0),
        "{page}"
    );
    // Per server of the model: `backend` is its index in the configuration.
    assert!(
        sample(
            &page,
            r#"batchd_backend_concurrency_limit{model="fake-model",backend="0"}"#
        )
        .is_some_and(|v| v >= 1.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, r#"batchd_backend_up{model="fake-model",backend="0"}"#),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            r#"batchd_backend_lines_served_total{model="fake-model",backend="0"}"#
        ),
        Some(3.0),
        "{page}"
    );
    assert!(page.contains("# TYPE batchd_model_loads gauge"), "{page}");
    assert!(!page.contains("batch_"), "no batch ids in labels");
}

#[tokio::test]
async fn logs_never_contain_prompts_responses_or_keys() {
    let backend = FakeBackend::start("127.0.0.1:0".parse().unwrap(), std::time::Duration::ZERO)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(dir.path(), &backend.url(), "", "");
    let key_out = Command::new(env!("CARGO_BIN_EXE_batchd"))
        .args(["keys", "--config"])
        .arg(&config)
        .args(["create", "--project", "p"])
        .env("BATCHD_LOG", "trace")
        .output()
        .unwrap();
    let key: Value = serde_json::from_slice(&key_out.stdout).unwrap();
    let secret = key["secret"].as_str().unwrap().to_owned();
    let log_path = dir.path().join("batchd.log");
    let mut child = common::KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_batchd"))
            .args(["--log-json", "serve", "--config"])
            .arg(&config)
            .env("BATCHD_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let api = format!("{}/v1", line.trim().rsplit(' ').next().unwrap());
    let http = batchd::http_client::client();

    const PROMPT: &str = "PROMPT-7f3a-never-log-me";
    let text = format!(
        "{}\n{}\n",
        chat_line("ok", "fake-model", PROMPT),
        chat_line("bad", "fake-model", &format!("{PROMPT} [status=400]"))
    );
    let id = &common::create_batch_at(&http, &api, Some(&secret), text).await;
    let done = loop {
        let b: Value = http
            .get(format!("{api}/batches/{id}"))
            .bearer_auth(&secret)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if b["status"] == "completed" {
            break b;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let output = http
        .get(format!(
            "{api}/files/{}/content",
            done["output_file_id"].as_str().unwrap()
        ))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        output.contains(PROMPT),
        "the response echoes the prompt, so it is in the data"
    );
    // A wrong key is logged redacted at most.
    let _ = http
        .get(format!("{api}/files"))
        .bearer_auth(format!("{secret}x"))
        .send()
        .await
        .unwrap();

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    child.wait().unwrap();
    let serve_logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(serve_logs.lines().count() > 5, "the run logged something: {serve_logs}");
    assert!(
        serve_logs.lines().all(|l| l.starts_with('{')),
        "--log-json writes JSON lines"
    );
    let logs = serve_logs + &String::from_utf8_lossy(&key_out.stderr);
    assert!(!logs.contains(PROMPT), "a prompt or response reached the logs");
    assert!(!logs.contains(&secret[10..]), "an API key reached the logs");
    assert!(!logs.contains("echo:"), "a response body reached the logs");
}
