//! Nothing is stored forever by accident: the bytes of an input file deleted
//! while its batch reads it go once the batch has ended (never before), and a
//! batch's stored results go once its result files exist.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use batchd::config::ModelConfig;
use common::{Harness, chat_line};
use serde_json::{Value, json};

/// A managed model whose server never becomes healthy: its batches stay
/// `in_progress`, waiting for their turn, until they are cancelled.
const NEVER_READY: &str = "never-ready";

async fn start() -> Harness {
    Harness::start_with(|c| {
        c.execution.file_sweep_interval_ms = 50;
        let mut never_ready = ModelConfig::command(NEVER_READY, "exec sleep 600 # {port}");
        never_ready.start_timeout_secs = 600;
        never_ready.stop_grace_secs = 1;
        c.models.push(never_ready);
        c.limits.max_batch_lines = 50_000;
        c.limits.max_batch_input_bytes = 64 << 20;
        c.limits.max_upload_bytes = 64 << 20;
    })
    .await
}

fn blob_of(h: &Harness, file_id: &str) -> PathBuf {
    h.dir.path().join("data/blobs/uploads").join(file_id)
}

async fn delete_file(h: &Harness, file_id: &str) {
    let r = h.http.delete(h.url(&format!("/files/{file_id}"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

async fn cancel(h: &Harness, batch_id: &str) {
    let (status, body) = h.post(&format!("/batches/{batch_id}/cancel"), Value::Null).await;
    assert_eq!(status, 200, "{body}");
}

async fn wait_blob_gone(h: &Harness, file_id: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while blob_of(h, file_id).exists() {
        assert!(
            Instant::now() < deadline,
            "the bytes of deleted file {file_id} were never removed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates a batch on `model` with `n` lines and waits until it runs.
async fn running_batch(h: &Harness, prefix: &str, n: usize) -> (String, String) {
    let lines: Vec<Value> = (0..n)
        .map(|i| chat_line(&format!("{prefix}{i}"), NEVER_READY, "hi"))
        .collect();
    let input = h.upload_lines(&lines).await;
    let batch = h.create_batch(&input, "/v1/chat/completions").await;
    let id = batch["id"].as_str().unwrap().to_owned();
    h.wait_for(&id, |b| b["status"] == "in_progress").await;
    (id, input)
}

#[tokio::test]
async fn an_input_deleted_while_its_batch_runs_loses_its_bytes_once_the_batch_ends_and_not_before() {
    let h = start().await;
    let (held, held_input) = running_batch(&h, "h", 3).await;
    delete_file(&h, &held_input).await;
    assert!(
        blob_of(&h, &held_input).exists(),
        "a running batch's input keeps its bytes"
    );
    assert_eq!(h.get(&format!("/files/{held_input}")).await.0, 404);

    let (ended, ended_input) = running_batch(&h, "e", 2).await;
    delete_file(&h, &ended_input).await;
    assert!(blob_of(&h, &ended_input).exists());
    cancel(&h, &ended).await;
    let done = h.wait_terminal(&ended).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    // Ending the batch read the deleted input again: every line is accounted for.
    let errors = h.lines_of(&done["error_file_id"]).await;
    assert_eq!(errors.len(), 2, "{done}");
    wait_blob_gone(&h, &ended_input).await;

    // The sweep that removed those bytes also saw the held batch's input
    // (deleted earlier) and had to leave it: that batch still reads it.
    assert!(
        blob_of(&h, &held_input).exists(),
        "bytes removed while a batch reads them"
    );
    cancel(&h, &held).await;
    let done = h.wait_terminal(&held).await;
    assert_eq!(h.lines_of(&done["error_file_id"]).await.len(), 3, "{done}");
    wait_blob_gone(&h, &held_input).await;

    let db = common::open_db(&h.dir.path().join("data")).await;
    let unmarked: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM files WHERE deleted_at IS NOT NULL AND bytes_removed_at IS NULL")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(unmarked, 0, "every deleted file is recorded as having lost its bytes");
}

#[tokio::test]
async fn an_input_deleted_while_its_batch_validates_loses_its_bytes_once_validation_fails() {
    let h = start().await;
    // Many lines, so validation takes a while; an unknown model, so it fails
    // however the delete lands (before the file is opened: "Cannot find file";
    // after: "model_not_found").
    let lines: Vec<Value> = (0..20_000)
        .map(|i| chat_line(&format!("v{i}"), "no-such-model", "hi"))
        .collect();
    let mut landed = 0;
    for _ in 0..5 {
        let input = h.upload_lines(&lines).await;
        let batch = h.create_batch(&input, "/v1/chat/completions").await;
        delete_file(&h, &input).await;
        // Bytes still there right after the delete: it landed while the batch validated.
        let in_use = blob_of(&h, &input).exists();
        let done = h.wait_terminal(batch["id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "failed", "{done}");
        wait_blob_gone(&h, &input).await;
        if in_use {
            landed += 1;
            break;
        }
    }
    assert_eq!(landed, 1, "no delete landed while a batch was validating");
}

#[tokio::test]
async fn a_finished_batch_keeps_its_results_in_its_files_only() {
    let h = start().await;
    let n = 50;
    let lines: Vec<Value> = (0..n)
        .map(|i| {
            let prompt = if i % 5 == 0 { "no [status=400]" } else { "hi" };
            chat_line(&format!("r{i}"), "fake-model", prompt)
        })
        .collect();
    let input = h.upload_lines(&lines).await;
    let batch = h.create_batch(&input, "/v1/chat/completions").await;
    let id = batch["id"].as_str().unwrap();
    let done = h.wait_terminal(id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["request_counts"],
        json!({"total": n, "completed": n - n / 5, "failed": n / 5})
    );

    let db = common::open_db(&h.dir.path().join("data")).await;
    assert_eq!(
        common::result_rows(&db, id).await,
        0,
        "the batch's results are only in its files"
    );
    let output = h.lines_of(&done["output_file_id"]).await;
    let errors = h.lines_of(&done["error_file_id"]).await;
    assert_eq!(output.len(), n - n / 5);
    assert_eq!(errors.len(), n / 5);
    let mut ids: Vec<String> = output
        .iter()
        .chain(&errors)
        .map(|l| l["custom_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "every line exactly once across the files");
    // A new database gives the pages of deleted rows back (docs/durability.md).
    let auto_vacuum: i64 = sqlx::query_scalar("PRAGMA auto_vacuum").fetch_one(&db).await.unwrap();
    assert_eq!(auto_vacuum, 2, "auto_vacuum = INCREMENTAL");
}
