//! Uploads API expiry with time that really passes: an upload left unfinished
//! past `limits.upload_ttl_secs` expires, its parts' bytes are deleted, and it
//! takes no more changes.

mod common;

use std::time::{Duration, Instant};

use common::Harness;
use serde_json::{Value, json};

fn parts_on_disk(h: &Harness) -> usize {
    walk(&h.config.server.data_dir.join("blobs/upload_parts"))
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 })
            .sum()
    })
}

#[tokio::test]
async fn an_unfinished_upload_expires_and_its_parts_are_deleted() {
    let h = Harness::start_with(|c| {
        // Two seconds: timestamps are whole seconds, so a 1-second upload
        // created at the end of one could expire before its part arrives.
        c.limits.upload_ttl_secs = 2;
        c.execution.file_sweep_interval_ms = 100;
    })
    .await;
    let (status, upload) = h
        .post(
            "/uploads",
            json!({"bytes": 6, "filename": "x.jsonl", "mime_type": "txt", "purpose": "batch"}),
        )
        .await;
    assert_eq!(status, 200, "{upload}");
    assert_eq!(upload["expires_at"], upload["created_at"].as_i64().unwrap() + 2);
    let id = upload["id"].as_str().unwrap();
    let form = reqwest::multipart::Form::new().part(
        "data",
        reqwest::multipart::Part::bytes(b"abc".to_vec()).file_name("upload"),
    );
    let part: Value = h
        .http
        .post(h.url(&format!("/uploads/{id}/parts")))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(part["object"], "upload.part");
    assert_eq!(parts_on_disk(&h), 1);

    // The sweeper expires it and deletes the part's bytes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while parts_on_disk(&h) > 0 {
        assert!(Instant::now() < deadline, "the part's bytes were never deleted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = h
        .post(&format!("/uploads/{id}/complete"), json!({"part_ids": [part["id"]]}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("expired"), "{body}");
    let (status, _) = h.post(&format!("/uploads/{id}/cancel"), Value::Null).await;
    assert_eq!(status, 409);
}
