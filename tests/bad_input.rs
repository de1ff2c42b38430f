//! Hostile and broken input: every case gets a clear OpenAI-shaped error (or a
//! batch that fails with a precise reason), nothing already stored changes, and
//! the server keeps serving afterwards.

mod common;

use common::{Harness, chat_line};
use serde_json::{Value, json};

fn assert_envelope(body: &Value, context: &str) {
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{context}: {body}"
    );
    assert!(error["type"].is_string(), "{context}: {body}");
    assert!(
        error.get("param").is_some() && error.get("code").is_some(),
        "{context}: {body}"
    );
}

/// Uploads a known file first and checks at the end that it is untouched and
/// that the server still answers: the common tail of every case here.
struct Witness {
    id: String,
    content: &'static str,
}

impl Witness {
    async fn new(h: &Harness) -> Self {
        let content = "{\"witness\":true}\n";
        Self {
            id: h.upload_text(content).await,
            content,
        }
    }

    async fn check(&self, h: &Harness) {
        let (status, body) = h.get("/files?limit=1").await;
        assert_eq!(status, 200, "server no longer lists files: {body}");
        assert_eq!(h.content(&self.id).await, self.content);
    }
}

async fn raw_post(h: &Harness, path: &str, content_type: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let r = h
        .http
        .post(h.url(path))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert!(r.headers().contains_key("x-request-id"));
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn malformed_multipart_uploads_are_400() {
    let h = Harness::start().await;
    let witness = Witness::new(&h).await;
    let b = "XyZboundary";
    let multipart = format!("multipart/form-data; boundary={b}");
    let file_part =
        format!("--{b}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n\r\n{{}}\n\r\n");
    let purpose_part = format!("--{b}\r\ncontent-disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n");
    let cases: Vec<(&str, String, String)> = vec![
        (
            "no boundary",
            "multipart/form-data".into(),
            format!("{file_part}{purpose_part}--{b}--\r\n"),
        ),
        ("garbage body", multipart.clone(), "this is not multipart at all".into()),
        (
            "truncated body",
            multipart.clone(),
            format!("{purpose_part}{}", &file_part[..file_part.len() - 6]),
        ),
        ("missing file", multipart.clone(), format!("{purpose_part}--{b}--\r\n")),
        ("missing purpose", multipart.clone(), format!("{file_part}--{b}--\r\n")),
        (
            "unknown purpose",
            multipart.clone(),
            format!("{file_part}--{b}\r\ncontent-disposition: form-data; name=\"purpose\"\r\n\r\nnope\r\n--{b}--\r\n"),
        ),
        (
            "headerless part",
            multipart.clone(),
            format!("--{b}\r\n\r\nbatch\r\n--{b}--\r\n"),
        ),
        (
            "json instead of multipart",
            "application/json".into(),
            "{\"purpose\":\"batch\"}".into(),
        ),
        ("empty body", multipart.clone(), String::new()),
    ];
    for (name, content_type, body) in cases {
        let (status, body) = raw_post(&h, "/files", &content_type, body).await;
        assert_eq!(status, 400, "{name}: {body}");
        assert_envelope(&body, name);
    }
    witness.check(&h).await;
    // Nothing half-written was registered.
    let (_, list) = h.get("/files").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test]
async fn create_batch_bodies_of_the_wrong_shape_are_400() {
    let h = Harness::start().await;
    let witness = Witness::new(&h).await;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let cases: Vec<(&str, &str, String)> = vec![
        ("not json", "application/json", "{input_file_id:".into()),
        ("array", "application/json", "[1,2,3]".into()),
        ("null", "application/json", "null".into()),
        ("number id", "application/json", json!({"input_file_id": 7, "endpoint": "/v1/chat/completions", "completion_window": "24h"}).to_string()),
        ("null endpoint", "application/json", json!({"input_file_id": witness.id, "endpoint": null, "completion_window": "24h"}).to_string()),
        ("metadata string", "application/json", json!({"input_file_id": witness.id, "endpoint": "/v1/chat/completions", "completion_window": "24h", "metadata": "x"}).to_string()),
        ("deeply nested", "application/json", deep.clone()),
        ("deeply nested metadata", "application/json", format!("{{\"input_file_id\":\"{}\",\"endpoint\":\"/v1/chat/completions\",\"completion_window\":\"24h\",\"metadata\":{{\"k\":{deep}}}}}", witness.id)),
        ("invalid utf-8", "application/json", unsafe { String::from_utf8_unchecked(b"{\"input_file_id\":\"\xff\xfe\"}".to_vec()) }),
        ("form body", "application/x-www-form-urlencoded", "input_file_id=x".into()),
    ];
    for (name, content_type, body) in cases {
        let (status, body) = raw_post(&h, "/batches", content_type, body).await;
        assert!(status == 400 || status == 415, "{name}: {status} {body}");
        assert_envelope(&body, name);
    }
    witness.check(&h).await;
    let (_, list) = h.get("/batches").await;
    assert!(list["data"].as_array().unwrap().is_empty(), "{list}");
}

/// Runs `content` as a batch input and returns the finished batch and its
/// validation errors.
async fn run_input(h: &Harness, content: Vec<u8>) -> (Value, Vec<Value>) {
    let response = h.upload(content, "input.jsonl", "batch").await;
    assert_eq!(response.status(), 200);
    let file: Value = response.json().await.unwrap();
    let batch = h
        .create_batch(file["id"].as_str().unwrap(), "/v1/chat/completions")
        .await;
    let batch = h.wait_terminal(batch["id"].as_str().unwrap()).await;
    let errors = batch["errors"]["data"].as_array().cloned().unwrap_or_default();
    (batch, errors)
}

fn codes(errors: &[Value]) -> Vec<(String, Value)> {
    errors
        .iter()
        .map(|e| (e["code"].as_str().unwrap().to_owned(), e["line"].clone()))
        .collect()
}

#[tokio::test]
async fn binary_and_non_utf8_inputs_fail_validation_with_line_numbers() {
    let h = Harness::start().await;
    let witness = Witness::new(&h).await;
    let good = chat_line("ok", "fake-model", "hi").to_string();

    // A line with invalid UTF-8 inside a JSON string.
    let mut content = format!("{good}\n").into_bytes();
    content.extend_from_slice(b"{\"custom_id\":\"\xff\xfe\",\"method\":\"POST\"}\n");
    let (batch, errors) = run_input(&h, content).await;
    assert_eq!(batch["status"], "failed");
    assert_eq!(codes(&errors), vec![("invalid_json_line".to_owned(), json!(2))]);

    // Arbitrary binary, NUL bytes included: stored and returned byte for byte,
    // and refused as batch input.
    let binary: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let response = h.upload(binary.clone(), "blob.bin", "batch").await;
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let back = h.http.get(h.url(&format!("/files/{id}/content"))).send().await.unwrap();
    assert_eq!(back.bytes().await.unwrap().as_ref(), binary.as_slice());
    let (batch, errors) = run_input(&h, binary).await;
    assert_eq!(batch["status"], "failed");
    assert!(!errors.is_empty());
    assert!(errors.iter().all(|e| e["line"].is_u64()), "{errors:?}");

    // A UTF-8 byte-order mark spoils line 1 only.
    let content = format!("\u{feff}{good}\n{}\n", chat_line("b", "fake-model", "x"));
    let (batch, errors) = run_input(&h, content.into_bytes()).await;
    assert_eq!(batch["status"], "failed");
    assert_eq!(codes(&errors), vec![("invalid_json_line".to_owned(), json!(1))]);

    // JSON nested far deeper than any parser's stack allows.
    let deep = format!(
        "{{\"custom_id\":\"d\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{}{}}}",
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    let (batch, errors) = run_input(&h, format!("{good}\n{deep}\n[{deep}]\n").into_bytes()).await;
    assert_eq!(batch["status"], "failed");
    assert_eq!(
        codes(&errors),
        vec![
            ("invalid_type".to_owned(), json!(2)),
            ("invalid_json_line".to_owned(), json!(3))
        ]
    );

    witness.check(&h).await;
}

#[tokio::test]
async fn lines_of_many_megabytes_are_refused_without_buffering_the_file() {
    let h = Harness::start_with(|c| {
        c.limits.max_upload_bytes = 64 << 20;
        c.limits.max_batch_input_bytes = 64 << 20;
        c.limits.max_line_bytes = 1 << 20;
    })
    .await;
    let witness = Witness::new(&h).await;
    let good = chat_line("ok", "fake-model", "hi").to_string();
    let huge = chat_line("huge", "fake-model", &"x".repeat(12 << 20)).to_string();
    let (batch, errors) = run_input(&h, format!("{good}\n{huge}\n{good}\n").into_bytes()).await;
    assert_eq!(batch["status"], "failed");
    assert_eq!(codes(&errors)[0], ("line_too_large".to_owned(), json!(2)), "{errors:?}");
    let message = errors[0]["message"].as_str().unwrap();
    assert!(message.contains("1048576"), "the limit is stated: {message}");

    // One endless line with no newline at all.
    let (batch, errors) = run_input(&h, vec![b'a'; 20 << 20]).await;
    assert_eq!(batch["status"], "failed");
    assert_eq!(codes(&errors), vec![("line_too_large".to_owned(), json!(1))]);
    witness.check(&h).await;
}

#[tokio::test]
async fn ids_of_the_wrong_kind_and_odd_ids_are_404() {
    let h = Harness::start().await;
    let witness = Witness::new(&h).await;
    let batch = h.create_batch(&witness.id, "/v1/chat/completions").await;
    let batch_id = batch["id"].as_str().unwrap().to_owned();
    let long = "file-".to_owned() + &"a".repeat(10_000);
    let paths = [
        format!("/files/{batch_id}"),
        format!("/files/{batch_id}/content"),
        format!("/batches/{}", witness.id),
        format!("/batches/{}/cancel", witness.id),
        format!("/files/{long}"),
        "/files/%2e%2e%2f%2e%2e%2fetc%2fpasswd".to_owned(),
        "/files/..%2F..%2Fetc%2Fpasswd/content".to_owned(),
        "/files/file-%00".to_owned(),
        "/batches/%F0%9F%92%A5".to_owned(),
    ];
    for path in &paths {
        let method = if path.ends_with("/cancel") {
            reqwest::Method::POST
        } else {
            reqwest::Method::GET
        };
        let r = h.http.request(method, h.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 404, "{path}: {body}");
        assert_envelope(&body, path);
    }
    let r = h
        .http
        .delete(h.url(&format!("/files/{batch_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // A batch whose input id names a batch, not a file, fails validation.
    let (status, created) = h
        .post(
            "/batches",
            json!({"input_file_id": batch_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let done = h.wait_terminal(created["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "failed");
    // OpenAI names the param `file_id` here (observed).
    assert_eq!(done["errors"]["data"][0]["param"], "file_id", "{done}");
    witness.check(&h).await;
}

#[tokio::test]
async fn huge_and_odd_list_parameters_are_400_not_500() {
    let h = Harness::start().await;
    let witness = Witness::new(&h).await;
    let huge_after = "file-".to_owned() + &"z".repeat(20_000);
    for path in [
        "/files?limit=99999999999999999999999".to_owned(),
        "/files?limit=-1".to_owned(),
        "/batches?limit=18446744073709551616".to_owned(),
        "/batches?limit=1.5".to_owned(),
        format!("/files?after={huge_after}"),
        format!("/batches?after=batch_{}", "9".repeat(20_000)),
        "/files?after=%00".to_owned(),
        "/files?order=%FF".to_owned(),
        "/files?order=".to_owned(),
        "/batches?limit=".to_owned(),
        "/files?limit=5&limit=7".to_owned(),
        "/batches?after=a&after=b".to_owned(),
    ] {
        let (status, body) = h.get(&path).await;
        assert_eq!(status, 400, "{}: {body}", &path[..path.len().min(60)]);
        assert_envelope(&body, &path[..path.len().min(60)]);
    }
    witness.check(&h).await;
}

#[tokio::test]
async fn path_tricks_in_filenames_stay_metadata() {
    let h = Harness::start().await;
    let witness = Witness::new(&h).await;
    let outside = h.dir.path().join("escaped.jsonl");
    let names = [
        format!("../../{}", outside.display()),
        "..\\..\\windows\\system32\\evil.jsonl".to_owned(),
        "/etc/passwd".to_owned(),
        "a/../../b.jsonl".to_owned(),
        "..".to_owned(),
        "\u{202e}lnosj.exe".to_owned(),
        "x".repeat(5000),
    ];
    for name in &names {
        let r = h.upload(b"{}\n".to_vec(), name, "batch").await;
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        if status == 400 {
            assert_envelope(&body, name);
            continue;
        }
        assert_eq!(status, 200, "{name}: {body}");
        let stored = body["filename"].as_str().unwrap();
        assert!(!stored.contains('/') && !stored.contains('\\'), "{stored}");
        assert!(stored != ".." && stored != ".", "{stored}");
    }
    assert!(!outside.exists());
    assert!(!std::path::Path::new("/etc/passwd.jsonl").exists());
    // Only the server's own folders exist under the data directory.
    for entry in std::fs::read_dir(&h.config.server.data_dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(!name.contains("jsonl") && !name.contains("passwd"), "{name}");
    }
    witness.check(&h).await;
}
