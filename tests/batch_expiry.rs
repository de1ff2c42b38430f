//! The completion window is enforced with time that really passes: a batch
//! not finished by `expires_at` ends `expired`, finished lines stay in the
//! output file and the rest go to the error file as `batch_expired`.

mod common;

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use common::{Harness, chat_line};
use serde_json::{Value, json};

#[tokio::test]
async fn a_batch_past_its_window_expires_with_every_line_accounted_for() {
    let h = Harness::start_with(|c| {
        c.execution.allowed_completion_windows = vec!["24h".into(), "2s".into()];
        c.models[0].max_concurrency = 1;
    })
    .await;
    let lines: Vec<Value> = (0..40)
        .map(|i| chat_line(&format!("x{i}"), "fake-model", &format!("slow [delay_ms=150] {i}")))
        .collect();
    let file_id = h.upload_lines(&lines).await;
    let (status, batch) = h
        .post(
            "/batches",
            json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "2s"}),
        )
        .await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(batch["completion_window"], "2s");
    assert_eq!(
        batch["expires_at"].as_i64().unwrap(),
        batch["created_at"].as_i64().unwrap() + 2
    );

    let batch = h.wait_terminal(batch["id"].as_str().unwrap()).await;
    assert_eq!(batch["status"], "expired", "{batch}");
    assert!(batch["expired_at"].is_i64());
    assert!(batch["completed_at"].is_null());
    let output = h.lines_of(&batch["output_file_id"]).await;
    let errors = h.lines_of(&batch["error_file_id"]).await;
    assert!(
        !output.is_empty() && output.len() < 40,
        "some but not all lines ran: {}",
        output.len()
    );
    for e in &errors {
        assert!(e["response"].is_null());
        assert_eq!(e["error"]["code"], "batch_expired");
        assert_eq!(
            e["error"]["message"],
            "This request could not be executed before the completion window expired."
        );
    }
    let ids: HashSet<&str> = output
        .iter()
        .chain(&errors)
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!((ids.len(), output.len() + errors.len()), (40, 40));
    assert_eq!(
        batch["request_counts"],
        json!({"total": 40, "completed": output.len(), "failed": errors.len()})
    );
    // Dispatch stopped at the deadline: unexecuted lines were never sent.
    assert_eq!(h.backend.stats.requests.load(Ordering::Relaxed) as usize, output.len());

    let (status, body) = h
        .post(
            &format!("/batches/{}/cancel", batch["id"].as_str().unwrap()),
            Value::Null,
        )
        .await;
    assert_eq!(status, 409, "{body}");
}

#[tokio::test]
async fn only_configured_windows_are_accepted() {
    let h = Harness::start().await;
    let file_id = h.upload_lines(&[chat_line("a", "fake-model", "hi")]).await;
    for window in ["1h", "2s", "7d", "", "24"] {
        let (status, body) = h
            .post(
                "/batches",
                json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": window}),
            )
            .await;
        assert_eq!(status, 400, "{window}: {body}");
        assert_eq!(body["error"]["param"], "completion_window");
        assert!(body["error"]["message"].as_str().unwrap().contains("'24h'"));
    }
}
