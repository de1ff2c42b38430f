//! No batch is stranded by an input that can no longer be read the way it
//! was validated: a lowered `limits.max_line_bytes`, an input blob missing on
//! disk, a stored line that no longer parses. Each such batch still ends
//! terminal, and cancelling it works.

mod common;

use std::collections::HashMap;

use batchd::app::Server;
use common::{Harness, chat_line};
use serde_json::Value;

/// `n` chat lines `{prefix}{i}` that each take `delay_ms` at the backend.
fn slow_lines(prefix: &str, n: usize, delay_ms: u64) -> Vec<Value> {
    (0..n)
        .map(|i| {
            chat_line(
                &format!("{prefix}{i}"),
                "fake-model",
                &format!("[delay_ms={delay_ms}] q{i}"),
            )
        })
        .collect()
}

/// Every custom_id of `lines` appears exactly once across the batch's files;
/// returns the error code (or "ok") of each.
async fn outcome_by_id(h: &Harness, batch: &Value, lines: &[Value]) -> HashMap<String, String> {
    let mut seen = HashMap::new();
    for line in h.lines_of(&batch["output_file_id"]).await {
        let id = line["custom_id"].as_str().unwrap().to_owned();
        assert!(seen.insert(id.clone(), "ok".to_owned()).is_none(), "{id} twice");
    }
    for line in h.lines_of(&batch["error_file_id"]).await {
        let id = line["custom_id"].as_str().unwrap().to_owned();
        let code = line["error"]["code"].as_str().unwrap().to_owned();
        assert!(seen.insert(id.clone(), code).is_none(), "{id} twice");
    }
    let expected: Vec<&str> = lines.iter().map(|l| l["custom_id"].as_str().unwrap()).collect();
    let mut got: Vec<&str> = seen.keys().map(String::as_str).collect();
    let mut want = expected.clone();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "every custom_id exactly once: {batch}");
    seen
}

/// Stops the server, runs `meanwhile` on its data directory, starts it again.
async fn restart_with(h: &mut Harness, meanwhile: impl FnOnce(&mut Harness)) {
    h.server.take().unwrap().shutdown().await.unwrap();
    meanwhile(h);
    let server = Server::start(h.config.clone()).await.unwrap();
    h.base = format!("{}/v1", server.url());
    h.server = Some(server);
}

/// Where the bytes of an uploaded file live on disk.
fn blob_path(h: &Harness, file_id: &str) -> std::path::PathBuf {
    let path = h.config.server.data_dir.join("blobs/uploads").join(file_id);
    assert!(path.exists(), "no blob at {}", path.display());
    path
}

/// Creates a chat batch on `file` and returns its id.
async fn chat_batch(h: &Harness, file: &str) -> String {
    let batch = h.create_batch(file, "/v1/chat/completions").await;
    batch["id"].as_str().expect("a batch id").to_owned()
}

/// Lines with one long line (about 2 KB) among slow ones.
fn lines_with_a_long_one(prefix: &str, n: usize, delay_ms: u64) -> Vec<Value> {
    let mut lines = slow_lines(prefix, n, delay_ms);
    let long = format!("[delay_ms={delay_ms}] {}", "long ".repeat(400));
    lines.push(chat_line(&format!("{prefix}long"), "fake-model", &long));
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_line_limit_does_not_strand_a_running_batch() {
    let mut h = Harness::start().await;
    let lines = lines_with_a_long_one("l-", 24, 400);
    let file = h.upload_lines(&lines).await;
    let id = chat_batch(&h, &file).await;
    h.wait_for(&id, |b| b["status"] == "in_progress").await;
    // The operator lowers the limit below the long line, which was accepted.
    restart_with(&mut h, |h| h.config.limits.max_line_bytes = 1000).await;
    let done = h.wait_terminal(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    let outcomes = outcome_by_id(&h, &done, &lines).await;
    assert!(outcomes.values().all(|o| o == "ok"), "{outcomes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_works_after_the_line_limit_was_lowered() {
    let mut h = Harness::start().await;
    let lines = lines_with_a_long_one("c-", 40, 2000);
    let file = h.upload_lines(&lines).await;
    let id = chat_batch(&h, &file).await;
    h.wait_for(&id, |b| b["status"] == "in_progress").await;
    restart_with(&mut h, |h| h.config.limits.max_line_bytes = 1000).await;
    let (status, body) = h.post(&format!("/batches/{id}/cancel"), Value::Null).await;
    assert_eq!(status, 200, "{body}");
    let done = h.wait_terminal(&id).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    let outcomes = outcome_by_id(&h, &done, &lines).await;
    assert_eq!(outcomes["c-long"], "batch_cancelled", "{outcomes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_input_blob_ends_the_running_batch_failed_with_what_exists() {
    let mut h = Harness::start().await;
    let lines = slow_lines("m-", 40, 1000);
    let file = h.upload_lines(&lines).await;
    let id = chat_batch(&h, &file).await;
    h.wait_for(&id, |b| b["request_counts"]["completed"].as_u64() >= Some(1))
        .await;
    let blob = blob_path(&h, &file);
    restart_with(&mut h, |_| std::fs::remove_file(&blob).unwrap()).await;
    let done = h.wait_terminal(&id).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["errors"]["data"][0]["code"], "input_unreadable", "{done}");
    // What ran before the bytes vanished is still delivered, once each.
    let output = h.lines_of(&done["output_file_id"]).await;
    let completed = done["request_counts"]["completed"].as_u64().unwrap();
    assert!(completed >= 1, "{done}");
    assert_eq!(output.len() as u64, completed, "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_works_when_the_input_blob_is_missing() {
    let mut h = Harness::start().await;
    // The first batch holds the model's turn for a while, so the second one
    // waits for its turn (without reading its input) across the restart.
    let first = h.upload_lines(&slow_lines("f-", 40, 1500)).await;
    let first = chat_batch(&h, &first).await;
    // Turns go to the oldest batch first, and `created_at` has one-second
    // resolution: a second later, the first batch is older for certain, so
    // it gets the turn again after the restart whichever worker asks first.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let lines = slow_lines("s-", 5, 0);
    let second_file = h.upload_lines(&lines).await;
    let second = chat_batch(&h, &second_file).await;
    h.wait_for(&first, |b| b["status"] == "in_progress").await;
    h.wait_for(&second, |b| b["status"] == "in_progress").await;
    let blob = blob_path(&h, &second_file);
    restart_with(&mut h, |_| std::fs::remove_file(&blob).unwrap()).await;
    let (status, body) = h.post(&format!("/batches/{second}/cancel"), Value::Null).await;
    assert_eq!(status, 200, "{body}");
    let done = h.wait_terminal(&second).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert_eq!(done["errors"]["data"][0]["code"], "input_unreadable", "{done}");
    let (status, body) = h.post(&format!("/batches/{first}/cancel"), Value::Null).await;
    assert_eq!(status, 200, "{body}");
    h.wait_terminal(&first).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_line_that_no_longer_parses_gets_an_internal_error_line() {
    let mut h = Harness::start().await;
    let first = h.upload_lines(&slow_lines("f-", 40, 1500)).await;
    let first = chat_batch(&h, &first).await;
    let lines = slow_lines("t-", 5, 0);
    let file = h.upload_lines(&lines).await;
    let id = chat_batch(&h, &file).await;
    h.wait_for(&id, |b| b["status"] == "in_progress").await;
    // Tamper with the stored input while the batch waits for its turn: line 3
    // keeps its custom_id but is no longer a request.
    let blob = blob_path(&h, &file);
    restart_with(&mut h, |_| {
        let text = std::fs::read_to_string(&blob).unwrap();
        let tampered: Vec<String> = text
            .lines()
            .map(|l| {
                if l.contains("\"t-2\"") {
                    r#"{"custom_id": "t-2", "method": "GET"}"#.to_owned()
                } else {
                    l.to_owned()
                }
            })
            .collect();
        std::fs::write(&blob, tampered.join("\n") + "\n").unwrap();
    })
    .await;
    let done = h.wait_terminal(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    let outcomes = outcome_by_id(&h, &done, &lines).await;
    assert_eq!(outcomes["t-2"], "internal_error", "{outcomes:?}");
    assert_eq!(outcomes.values().filter(|o| *o == "ok").count(), 4, "{outcomes:?}");
    assert_eq!(done["request_counts"]["failed"], 1, "{done}");
    h.wait_terminal(&first).await;
}
