//! A "poison line" that crashes the managed model server every time it is
//! sent fails alone (`model_crashed`) instead of using up the model's
//! restarts and failing every tenant's batches on it.

mod common;

use std::process::Command;

use batchd::config::ModelConfig;
use common::{Harness, chat_line, create_batch_at};
use serde_json::Value;

/// Creates a key for `project` with the real CLI; returns its secret.
fn create_key(h: &Harness, project: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_batchd"))
        .args(["keys", "--data-dir"])
        .arg(&h.config.server.data_dir)
        .args(["create", "--project", project, "--name", "test"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key: Value = serde_json::from_slice(&out.stdout).unwrap();
    key["secret"].as_str().unwrap().to_owned()
}

async fn get(h: &Harness, key: &str, path: &str) -> reqwest::Response {
    h.http.get(h.url(path)).bearer_auth(key).send().await.unwrap()
}

async fn wait_terminal(h: &Harness, key: &str, id: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let batch: Value = get(h, key, &format!("/batches/{id}")).await.json().await.unwrap();
        if matches!(
            batch["status"].as_str(),
            Some("completed" | "failed" | "expired" | "cancelled")
        ) {
            return batch;
        }
        assert!(std::time::Instant::now() < deadline, "batch never ended: {batch}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// (custom_id, error code or "ok") of every line in the batch's files.
async fn outcomes(h: &Harness, key: &str, batch: &Value) -> Vec<(String, String)> {
    let mut out = vec![];
    for (column, is_error) in [("output_file_id", false), ("error_file_id", true)] {
        let Some(file) = batch[column].as_str() else { continue };
        let text = get(h, key, &format!("/files/{file}/content"))
            .await
            .text()
            .await
            .unwrap();
        for line in text.lines() {
            let line: Value = serde_json::from_str(line).unwrap();
            let outcome = if is_error {
                line["error"]["code"].as_str().unwrap().to_owned()
            } else {
                "ok".to_owned()
            };
            out.push((line["custom_id"].as_str().unwrap().to_owned(), outcome));
        }
    }
    out.sort();
    out
}

fn jsonl(lines: &[Value]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_that_crashes_the_model_twice_fails_alone() {
    let fake = env!("CARGO_BIN_EXE_batchd-fake-backend");
    let h = Harness::start_with(|c| {
        let mut m = ModelConfig::command(
            "shared-model",
            &format!("exec {fake} --listen 127.0.0.1:{{port}} --delay-ms 20 --exit-on-crash-marker"),
        );
        m.max_concurrency = 4;
        m.min_concurrency = 4;
        m.start_timeout_secs = 20;
        m.stop_grace_secs = 1;
        c.models = vec![m];
        // Two poison lines cost four crashes; without attributing them to
        // their lines, two restarts would be used up and the model failed.
        c.scheduler.max_restarts = 2;
        // One attempt per send: a crash is seen as such, not retried into
        // the restarted server.
        c.execution.max_attempts = 1;
    })
    .await;
    let tenant_a = create_key(&h, "tenant-a");
    let tenant_b = create_key(&h, "tenant-b");
    let poison = ["a-7", "a-23"];
    let a_lines: Vec<Value> = (0..30)
        .map(|i| {
            let id = format!("a-{i}");
            let text = if poison.contains(&id.as_str()) {
                format!("[crash_server] {id}")
            } else {
                format!("hello {id}")
            };
            chat_line(&id, "shared-model", &text)
        })
        .collect();
    let b_lines: Vec<Value> = (0..10)
        .map(|i| chat_line(&format!("b-{i}"), "shared-model", &format!("hello b-{i}")))
        .collect();
    let a = create_batch_at(&h.http, &h.base, Some(&tenant_a), jsonl(&a_lines)).await;
    let b = create_batch_at(&h.http, &h.base, Some(&tenant_b), jsonl(&b_lines)).await;

    let a_done = wait_terminal(&h, &tenant_a, &a).await;
    assert_eq!(a_done["status"], "completed", "{a_done}");
    let a_outcomes = outcomes(&h, &tenant_a, &a_done).await;
    assert_eq!(a_outcomes.len(), 30, "{a_outcomes:?}");
    for (id, outcome) in &a_outcomes {
        let expected = if poison.contains(&id.as_str()) {
            "model_crashed"
        } else {
            "ok"
        };
        assert_eq!(outcome, expected, "{id}: {a_outcomes:?}");
    }

    let b_done = wait_terminal(&h, &tenant_b, &b).await;
    assert_eq!(b_done["status"], "completed", "{b_done}");
    let b_outcomes = outcomes(&h, &tenant_b, &b_done).await;
    assert_eq!(b_outcomes.len(), 10, "{b_outcomes:?}");
    assert!(b_outcomes.iter().all(|(_, o)| o == "ok"), "{b_outcomes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_restarts_run_out_the_batch_ends_failed_instead_of_hanging() {
    let fake = env!("CARGO_BIN_EXE_batchd-fake-backend");
    let h = Harness::start_with(|c| {
        let mut m = ModelConfig::command(
            "fragile-model",
            &format!("exec {fake} --listen 127.0.0.1:{{port}} --delay-ms 20 --exit-on-crash-marker"),
        );
        m.max_concurrency = 4;
        m.start_timeout_secs = 20;
        m.stop_grace_secs = 1;
        c.models = vec![m];
        // The first crash already uses up the restarts.
        c.scheduler.max_restarts = 0;
        c.execution.max_attempts = 1;
    })
    .await;
    let lines: Vec<Value> = (0..20)
        .map(|i| {
            let text = if i == 5 {
                "[crash_server]".to_owned()
            } else {
                format!("hello {i}")
            };
            chat_line(&format!("f-{i}"), "fragile-model", &text)
        })
        .collect();
    let file = h.upload_lines(&lines).await;
    let id = h.create_batch(&file, "/v1/chat/completions").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = h.wait_terminal(&id).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["errors"]["data"][0]["code"], "model_unavailable", "{done}");
    let counts = &done["request_counts"];
    assert_eq!(
        counts["completed"].as_u64().unwrap() + counts["failed"].as_u64().unwrap(),
        20,
        "{done}"
    );
}
