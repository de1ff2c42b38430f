//! Request-level errors: OpenAI's envelope, status codes, params and headers.

mod common;

use common::Harness;
use serde_json::{Value, json};

fn assert_envelope(body: &Value) {
    let error = &body["error"];
    for key in ["message", "type", "param", "code"] {
        assert!(error.get(key).is_some(), "missing error.{key}: {body}");
    }
    assert!(error["message"].is_string() && error["type"].is_string());
}

#[tokio::test]
async fn create_batch_rejects_bad_parameters_with_the_offending_param() {
    let h = Harness::start().await;
    let file_id = h.upload_text("{}\n").await;
    let cases = [
        (
            json!({"input_file_id": file_id, "endpoint": "/v1/moderations", "completion_window": "24h"}),
            "endpoint",
            Some("invalid_value"),
        ),
        (
            json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "48h"}),
            "completion_window",
            Some("invalid_value"),
        ),
        (
            json!({"endpoint": "/v1/chat/completions", "completion_window": "24h"}),
            "input_file_id",
            Some("missing_required_parameter"),
        ),
        (
            json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h", "metadata": {"tags": ["a"]}}),
            "metadata.tags",
            Some("invalid_type"),
        ),
        (
            json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h",
                "output_expires_after": {"anchor": "created_at", "seconds": 10}}),
            "output_expires_after.seconds",
            Some("invalid_value"),
        ),
        (
            json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h",
                "completion_windows": "24h"}),
            "completion_windows",
            Some("unknown_parameter"),
        ),
    ];
    for (body, param, code) in cases {
        let (status, error) = h.post("/batches", body.clone()).await;
        assert_eq!(status, 400, "{body}");
        assert_envelope(&error);
        assert_eq!(error["error"]["type"], "invalid_request_error");
        assert_eq!(error["error"]["param"], param, "{error}");
        assert_eq!(error["error"]["code"].as_str(), code);
    }
    let too_many: serde_json::Map<String, Value> = (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
    let (status, _) = h
        .post("/batches", json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h", "metadata": too_many}))
        .await;
    assert_eq!(status, 400);
    let response = h.http.post(h.url("/batches")).body("{not json").send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert_envelope(&response.json().await.unwrap());
}

#[tokio::test]
async fn unknown_ids_and_routes_are_404_with_a_request_id() {
    let h = Harness::start().await;
    for path in [
        "/files/file-nope",
        "/files/file-nope/content",
        "/batches/batch_nope",
        "/nothing/here",
    ] {
        let response = h.http.get(h.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
        assert!(response.headers()["x-request-id"].to_str().unwrap().starts_with("req_"));
        assert_envelope(&response.json().await.unwrap());
    }
    let (status, body) = h.get("/files/file-nope").await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (404, Some("No such File object: file-nope"))
    );
    assert_eq!(body["error"]["param"], "id");
    let (status, _) = h.post("/batches/batch_nope/cancel", Value::Null).await;
    assert_eq!(status, 404);
    let response = h.http.delete(h.url("/files/file-nope")).send().await.unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn list_parameters_out_of_range_are_400() {
    let h = Harness::start().await;
    for path in [
        "/batches?limit=0",
        "/batches?limit=101",
        "/batches?limit=abc",
        "/files?limit=10001",
        "/files?order=sideways",
        "/batches?after=batch_unknown",
    ] {
        let (status, body) = h.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_envelope(&body);
    }
}

#[tokio::test]
async fn models_are_listed() {
    let h = Harness::start().await;
    let (status, body) = h.get("/models").await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["fake-model", "fake-model-2"]);
}

#[tokio::test]
async fn framework_rejections_also_use_the_envelope() {
    let h = Harness::start().await;
    let huge = format!("{{\"input_file_id\":\"{}\"}}", "a".repeat(3 << 20));
    let response = h.http.post(h.url("/batches")).body(huge).send().await.unwrap();
    assert_eq!(response.status(), 413);
    assert!(response.headers().contains_key("x-request-id"));
    assert_envelope(&response.json().await.unwrap());
}
