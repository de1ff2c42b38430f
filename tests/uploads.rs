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

async fn create_upload(h: &Harness, bytes: u64, filename: &str) -> String {
    let (status, upload) = h
        .post(
            "/uploads",
            json!({"bytes": bytes, "filename": filename, "mime_type": "txt", "purpose": "user_data"}),
        )
        .await;
    assert_eq!(status, 200, "{upload}");
    upload["id"].as_str().unwrap().to_owned()
}

async fn add_part(h: &Harness, upload_id: &str, data: Vec<u8>) -> (u16, Value) {
    let form = reqwest::multipart::Form::new().part("data", reqwest::multipart::Part::bytes(data).file_name("part"));
    let response = h
        .http
        .post(h.url(&format!("/uploads/{upload_id}/parts")))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Files of this project with `filename`.
async fn files_named(h: &Harness, filename: &str) -> usize {
    let (status, list) = h.get("/files?limit=10000").await;
    assert_eq!(status, 200, "{list}");
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["filename"] == filename)
        .count()
}

#[tokio::test]
async fn parts_beyond_the_declared_bytes_are_refused() {
    let h = Harness::start().await;
    let id = create_upload(&h, 6, "six.txt").await;
    let (status, first) = add_part(&h, &id, b"abcd".to_vec()).await;
    assert_eq!(status, 200, "{first}");
    let (status, body) = add_part(&h, &id, b"efgh".to_vec()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(body["error"]["message"].as_str().unwrap().contains("6 bytes"), "{body}");
    let (status, second) = add_part(&h, &id, b"ef".to_vec()).await;
    assert_eq!(status, 200, "{second}");
    // Full: not even one more byte.
    let (status, body) = add_part(&h, &id, b"g".to_vec()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(parts_on_disk(&h), 2, "refused parts leave no bytes behind");
    let (status, done) = h
        .post(
            &format!("/uploads/{id}/complete"),
            json!({"part_ids": [first["id"], second["id"]]}),
        )
        .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(h.content(done["file"]["id"].as_str().unwrap()).await, "abcdef");
}

#[tokio::test]
async fn an_upload_takes_at_most_max_upload_parts() {
    let h = Harness::start_with(|c| c.limits.max_upload_parts = 3).await;
    let id = create_upload(&h, 100, "parts.txt").await;
    for _ in 0..3 {
        let (status, part) = add_part(&h, &id, b"x".to_vec()).await;
        assert_eq!(status, 200, "{part}");
    }
    let (status, body) = add_part(&h, &id, b"x".to_vec()).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("at most 3 parts"),
        "{body}"
    );
    assert_eq!(parts_on_disk(&h), 3);
}

#[tokio::test]
async fn two_concurrent_completes_make_exactly_one_file() {
    let h = Harness::start().await;
    let part_bytes = 8 * 1024 * 1024;
    let id = create_upload(&h, 2 * part_bytes as u64, "race.bin").await;
    let mut part_ids = vec![];
    for fill in [b'a', b'b'] {
        let (status, part) = add_part(&h, &id, vec![fill; part_bytes]).await;
        assert_eq!(status, 200, "{part}");
        part_ids.push(part["id"].clone());
    }
    let path = format!("/uploads/{id}/complete");
    let complete = || h.post(&path, json!({"part_ids": part_ids}));
    let ((first, a), (second, b)) = tokio::join!(complete(), complete());
    let mut statuses = [first, second];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{a} {b}");
    let winner = if first == 200 { a } else { b };
    assert_eq!(winner["status"], "completed");
    assert_eq!(files_named(&h, "race.bin").await, 1, "the loser left no File behind");
    // A retried complete is refused too, and still makes no File.
    let (status, _) = complete().await;
    assert_eq!(status, 409);
    assert_eq!(files_named(&h, "race.bin").await, 1);
}

#[tokio::test]
async fn a_part_that_finishes_after_a_cancel_leaks_nothing() {
    let h = Harness::start().await;
    let id = create_upload(&h, 8 * 1024 * 1024, "cancelled.bin").await;
    // The part's body is sent in two pieces; the upload is cancelled between them.
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Vec<u8>, std::io::Error>>();
    let body = reqwest::Body::wrap_stream(rx);
    let form = reqwest::multipart::Form::new().part("data", reqwest::multipart::Part::stream(body).file_name("part"));
    let request = h
        .http
        .post(h.url(&format!("/uploads/{id}/parts")))
        .multipart(form)
        .send();
    let sending = tokio::spawn(request);
    // More than one write buffer, so the part's bytes are on disk while it streams.
    tx.unbounded_send(Ok(vec![b'a'; 6 * 1024 * 1024])).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while parts_on_disk(&h) == 0 {
        assert!(Instant::now() < deadline, "the part never reached the disk");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, cancelled) = h.post(&format!("/uploads/{id}/cancel"), Value::Null).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    tx.unbounded_send(Ok(vec![b'b'; 1024])).unwrap();
    drop(tx);
    let response = sending.await.unwrap().unwrap();
    assert_eq!(response.status(), 409);
    assert_eq!(parts_on_disk(&h), 0, "the late part's bytes were deleted");
}
