//! Files expire: `expires_after` on uploads and `output_expires_after` on
//! batches delete the file and its bytes once the time has really passed.

mod common;

use std::time::{Duration, Instant};

use common::{Harness, chat_line};
use serde_json::{Value, json};

async fn wait_gone(h: &Harness, file_id: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while h.get(&format!("/files/{file_id}")).await.0 != 404 {
        assert!(Instant::now() < deadline, "file {file_id} did not expire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (bounded) until `folder` holds `n` blobs: a file's row is deleted
/// before its bytes, so the bytes go a moment after the file reads as gone.
async fn wait_blob_count(h: &Harness, folder: &str, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while blob_count(h, folder) != n {
        assert!(
            Instant::now() < deadline,
            "{what}: {} blobs in {folder}, expected {n}",
            blob_count(h, folder)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn blob_count(h: &Harness, folder: &str) -> usize {
    std::fs::read_dir(h.dir.path().join("data/blobs").join(folder))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test]
async fn uploads_and_batch_outputs_expire_with_their_bytes() {
    let h = Harness::start_with(|c| {
        c.limits.min_expires_after_secs = 1;
        c.execution.file_sweep_interval_ms = 100;
    })
    .await;
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"x".to_vec()).file_name("a.txt"),
        )
        .text("purpose", "user_data")
        .text("expires_after[anchor]", "created_at")
        .text("expires_after[seconds]", "1");
    let short: Value = h
        .http
        .post(h.url("/files"))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keep: Value = h
        .upload(b"y".to_vec(), "b.txt", "user_data")
        .await
        .json()
        .await
        .unwrap();
    // (No count before the sweep: a 1-second expiry may already have passed
    // if the upload landed at the end of a wall-clock second.)
    wait_gone(&h, short["id"].as_str().unwrap()).await;
    wait_blob_count(&h, "uploads", 1, "the expired file's bytes are removed").await;
    assert_eq!(h.get(&format!("/files/{}", keep["id"].as_str().unwrap())).await.0, 200);

    let input = h
        .upload_lines(&[
            chat_line("a", "fake-model", "hi"),
            chat_line("b", "fake-model", "no [status=400]"),
        ])
        .await;
    let (status, batch) = h
        .post(
            "/batches",
            json!({"input_file_id": input, "endpoint": "/v1/chat/completions", "completion_window": "24h",
                                 "output_expires_after": {"anchor": "created_at", "seconds": 1}}),
        )
        .await;
    assert_eq!(status, 200, "{batch}");
    let batch = h.wait_terminal(batch["id"].as_str().unwrap()).await;
    let output = batch["output_file_id"].as_str().unwrap();
    let (_, file) = h.get(&format!("/files/{output}")).await;
    assert_eq!(
        file["expires_at"].as_i64().unwrap(),
        file["created_at"].as_i64().unwrap() + 1
    );
    wait_gone(&h, output).await;
    wait_gone(&h, batch["error_file_id"].as_str().unwrap()).await;
    assert_eq!(
        h.get(&format!("/files/{input}")).await.0,
        200,
        "the input keeps its own 30-day expiry"
    );
}
