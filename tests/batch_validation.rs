//! The `validating` phase: every documented per-line and file-level problem
//! fails the batch with the right code, param and 1-based line.

mod common;

use common::{Harness, chat_line};
use serde_json::{Value, json};

/// Runs a batch over `text` and returns its `errors.data`, asserting it failed.
async fn failures(h: &Harness, text: &str) -> Vec<Value> {
    let file_id = h.upload_text(text).await;
    let batch = h.create_batch(&file_id, "/v1/chat/completions").await;
    let batch = h.wait_terminal(batch["id"].as_str().unwrap()).await;
    assert_eq!(batch["status"], "failed", "{batch}");
    assert!(batch["failed_at"].is_i64());
    assert!(batch["in_progress_at"].is_null() && batch["output_file_id"].is_null() && batch["error_file_id"].is_null());
    assert_eq!(
        batch["request_counts"],
        json!({"total": 0, "completed": 0, "failed": 0})
    );
    assert_eq!(batch["errors"]["object"], "list");
    batch["errors"]["data"].as_array().unwrap().clone()
}

fn jsonl(lines: &[Value]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

fn only(errors: &[Value]) -> (&str, Value, Value) {
    assert_eq!(errors.len(), 1, "{errors:?}");
    (
        errors[0]["code"].as_str().unwrap(),
        errors[0]["param"].clone(),
        errors[0]["line"].clone(),
    )
}

#[tokio::test]
async fn per_line_problems_are_reported_with_code_param_and_line() {
    let h = Harness::start().await;
    let good = chat_line("g", "fake-model", "hi");
    let mut stream = chat_line("s", "fake-model", "hi");
    stream["body"]["stream"] = json!(true);
    let mut no_messages = chat_line("m", "fake-model", "hi");
    no_messages["body"].as_object_mut().unwrap().remove("messages");
    let mut no_model = chat_line("n", "fake-model", "hi");
    no_model["body"].as_object_mut().unwrap().remove("model");
    let mut wrong_url = chat_line("u", "fake-model", "hi");
    wrong_url["url"] = json!("/v1/embeddings");
    let mut no_custom_id = chat_line("x", "fake-model", "hi");
    no_custom_id.as_object_mut().unwrap().remove("custom_id");

    let cases: Vec<(String, &str, Value, i64)> = vec![
        (format!("{good}\nnot json\n"), "invalid_json_line", Value::Null, 2),
        (
            jsonl(&[no_custom_id]),
            "missing_required_parameter",
            json!("custom_id"),
            1,
        ),
        (jsonl(&[good.clone(), wrong_url]), "invalid_url", json!("url"), 2),
        (jsonl(&[stream]), "streaming_unsupported", json!("body.stream"), 1),
        (
            jsonl(&[chat_line("a", "no-such-model", "hi")]),
            "model_not_found",
            json!("body.model"),
            1,
        ),
        (jsonl(&[no_model]), "invalid_request", json!("body.model"), 1),
        (jsonl(&[no_messages]), "invalid_request", json!("body.messages"), 1),
        (
            jsonl(&[good.clone(), chat_line("b", "fake-model", "x"), good.clone()]),
            "duplicate_custom_id",
            json!("custom_id"),
            3,
        ),
        (
            jsonl(&[good.clone(), chat_line("b", "fake-model-2", "x")]),
            "mixed_models",
            json!("body.model"),
            2,
        ),
        (format!("\u{feff}{good}\n"), "invalid_json_line", Value::Null, 1),
    ];
    for (text, code, param, line) in cases {
        let errors = failures(&h, &text).await;
        assert_eq!(only(&errors), (code, param, json!(line)), "{text}");
        assert!(!errors[0]["message"].as_str().unwrap().is_empty());
    }
}

#[tokio::test]
async fn file_level_problems_have_no_line() {
    let h = Harness::start_with(|c| {
        c.limits.max_batch_lines = 3;
        c.limits.max_batch_input_bytes = 2000;
        c.limits.max_line_bytes = 500;
    })
    .await;
    assert_eq!(only(&failures(&h, "").await).0, "empty_file");
    assert_eq!(only(&failures(&h, "\n\n").await).0, "empty_file");
    let four: Vec<Value> = (0..4).map(|i| chat_line(&format!("{i}"), "fake-model", "hi")).collect();
    assert_eq!(
        only(&failures(&h, &jsonl(&four)).await),
        ("too_many_lines", Value::Null, Value::Null)
    );
    let big = chat_line("big", "fake-model", &"x".repeat(2500));
    assert_eq!(
        only(&failures(&h, &jsonl(&[big])).await),
        ("file_too_large", Value::Null, Value::Null)
    );
    let long = chat_line("long", "fake-model", &"y".repeat(600));
    let good = chat_line("g", "fake-model", "hi");
    assert_eq!(
        only(&failures(&h, &jsonl(&[good, long])).await),
        ("line_too_large", Value::Null, json!(2))
    );
}

#[tokio::test]
async fn all_problems_are_listed_in_line_order() {
    let h = Harness::start().await;
    let text = format!("oops\n{}\n{{}}\n", chat_line("a", "nope", "hi"));
    let errors = failures(&h, &text).await;
    let lines: Vec<i64> = errors.iter().map(|e| e["line"].as_i64().unwrap()).collect();
    assert_eq!(lines, vec![1, 2, 3]);
}

#[tokio::test]
async fn a_missing_input_file_fails_the_batch_after_creation() {
    let h = Harness::start().await;
    let batch = h.create_batch("file-doesnotexist", "/v1/chat/completions").await;
    assert_eq!(batch["status"], "validating");
    let errors = failures_of(&h, batch["id"].as_str().unwrap()).await;
    assert_eq!(only(&errors), ("invalid_request", json!("file_id"), Value::Null));
    assert!(errors[0]["message"].as_str().unwrap().contains("file-doesnotexist"));
}

async fn failures_of(h: &Harness, id: &str) -> Vec<Value> {
    let batch = h.wait_terminal(id).await;
    assert_eq!(batch["status"], "failed");
    batch["errors"]["data"].as_array().unwrap().clone()
}
