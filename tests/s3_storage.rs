//! File bytes in an S3-compatible bucket (`[storage] url = "s3://..."`),
//! against a real S3 server (`s3s-fs`, see `common/s3.rs`): uploads, a
//! multipart upload larger than S3's 5 MiB part minimum, batch inputs and
//! result files all live under the configured prefix and nothing on the
//! local disk; deleting a file deletes its object; and a store that goes
//! away gives OpenAI-shaped errors while the rest of the API keeps serving.

mod common;

use common::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
use common::{Harness, chat_line};
use serde_json::Value;

const BUCKET: &str = "batchd-files";
const PREFIX: &str = "team-a/prod";

async fn harness_on(s3: &S3Server) -> Harness {
    let endpoint = s3.endpoint.clone();
    Harness::start_with(move |c| {
        c.storage.url = Some(format!("s3://{BUCKET}/{PREFIX}/"));
        c.storage.endpoint = Some(endpoint);
        c.storage.region = Some("us-east-1".into());
        c.storage.access_key_id = Some(ACCESS_KEY.into());
        c.storage.secret_access_key = Some(SECRET_KEY.into());
        c.storage.retry_timeout_secs = 2;
        c.limits.max_upload_bytes = 32 * 1024 * 1024;
    })
    .await
}

fn local_blobs(h: &Harness) -> usize {
    walk(&h.dir.path().join("data/blobs"))
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 })
            .sum()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_batch_results_live_in_the_bucket() {
    let s3 = S3Server::start(BUCKET);
    let h = harness_on(&s3).await;

    // 12 MiB: written as a multipart upload (5 MiB parts), read back whole.
    let big: Vec<u8> = (0..12 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let response = h.upload(big.clone(), "weights.bin", "user_data").await;
    assert_eq!(response.status(), 200);
    let big_file: Value = response.json().await.unwrap();
    assert_eq!(big_file["bytes"], big.len());
    let big_id = big_file["id"].as_str().unwrap();
    let back = h
        .http
        .get(h.url(&format!("/files/{big_id}/content")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(
        back == big,
        "the 12 MiB file came back different ({} bytes)",
        back.len()
    );
    assert_eq!(s3.objects(BUCKET, PREFIX).len(), 1, "{:?}", s3.objects(BUCKET, ""));

    // A batch: its input, output and error files are objects too.
    let mut lines: Vec<Value> = (0..20)
        .map(|i| chat_line(&format!("l{i}"), "fake-model", "hi"))
        .collect();
    lines.push(chat_line("bad", "fake-model", "no [status=400]"));
    let input = h.upload_lines(&lines).await;
    let batch = h.create_batch(&input, "/v1/chat/completions").await;
    let batch = h.wait_terminal(batch["id"].as_str().unwrap()).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    let output = h.lines_of(&batch["output_file_id"]).await;
    assert_eq!(output.len(), 20);
    let errors = h.lines_of(&batch["error_file_id"]).await;
    assert_eq!(errors.len(), 1);
    assert_eq!(s3.objects(BUCKET, PREFIX).len(), 4, "{:?}", s3.objects(BUCKET, ""));
    assert!(
        s3.objects(BUCKET, "")
            .iter()
            .all(|o| o.starts_with(&format!("{PREFIX}/"))),
        "everything under the prefix: {:?}",
        s3.objects(BUCKET, "")
    );
    assert_eq!(local_blobs(&h), 0, "no file bytes on the local disk");

    // Deleting a file deletes its object.
    let deleted = h.http.delete(h.url(&format!("/files/{big_id}"))).send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    assert_eq!(s3.objects(BUCKET, PREFIX).len(), 3, "{:?}", s3.objects(BUCKET, ""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_goes_away_gives_openai_errors_and_the_api_keeps_serving() {
    let s3 = S3Server::start(BUCKET);
    let h = harness_on(&s3).await;
    let kept = h
        .upload_text(&format!("{}\n", chat_line("a", "fake-model", "hi")))
        .await;
    drop(s3);

    let response = h.upload(b"x".to_vec(), "a.txt", "user_data").await;
    assert!(response.status().is_server_error(), "{}", response.status());
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(body["error"]["type"].is_string(), "{body}");

    let content = h
        .http
        .get(h.url(&format!("/files/{kept}/content")))
        .send()
        .await
        .unwrap();
    assert!(content.status().is_server_error(), "{}", content.status());

    // Metadata lives in the database: listing and retrieving still work.
    let (status, list) = h.get("/files").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["data"][0]["id"], kept);
    assert_eq!(h.get("/batches").await.0, 200);
}
