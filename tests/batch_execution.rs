//! Running batches end to end against the fake backend: results, counts,
//! usage, retries, error lines and bounded concurrency.

mod common;

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use common::{Harness, chat_line};
use serde_json::{Value, json};

#[tokio::test]
async fn chat_batch_completes_with_output_and_error_files() {
    let h = Harness::start().await;
    let mut lines: Vec<Value> = (0..20)
        .map(|i| chat_line(&format!("ok-{i}"), "fake-model", &format!("hello number {i}")))
        .collect();
    lines.push(chat_line("bad-request", "fake-model", "please fail [status=400]"));
    lines.push(chat_line("flaky", "fake-model", "flaky one [fail_times=2]"));
    let file_id = h.upload_lines(&lines).await;
    let created = h.create_batch(&file_id, "/v1/chat/completions").await;
    assert_eq!(created["status"], "validating");
    assert_eq!(
        created["expires_at"].as_i64().unwrap(),
        created["created_at"].as_i64().unwrap() + 86400
    );

    let batch = h.wait_terminal(created["id"].as_str().unwrap()).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(batch["model"], "fake-model");
    assert_eq!(
        batch["request_counts"],
        json!({"total": 22, "completed": 21, "failed": 1})
    );
    for key in ["in_progress_at", "finalizing_at", "completed_at"] {
        assert!(batch[key].is_i64(), "{key} unset: {batch}");
    }
    assert!(batch["in_progress_at"].as_i64() <= batch["finalizing_at"].as_i64());
    assert!(batch["failed_at"].is_null() && batch["cancelled_at"].is_null() && batch["errors"].is_null());

    let output = h.lines_of(&batch["output_file_id"]).await;
    let errors = h.lines_of(&batch["error_file_id"]).await;
    assert_eq!(output.len(), 21);
    assert_eq!(errors.len(), 1);
    let mut expected_input_tokens = 0;
    for line in &output {
        assert!(line["id"].as_str().unwrap().starts_with("batch_req_"));
        assert_eq!(line["response"]["status_code"], 200);
        assert!(line["response"]["request_id"].is_string());
        assert!(line["error"].is_null());
        let body = &line["response"]["body"];
        assert_eq!(body["object"], "chat.completion");
        let prompt =
            lines.iter().find(|l| l["custom_id"] == line["custom_id"]).unwrap()["body"]["messages"][0]["content"]
                .as_str()
                .unwrap();
        assert_eq!(body["choices"][0]["message"]["content"], format!("echo: {prompt}"));
        expected_input_tokens += prompt.split_whitespace().count() as i64;
    }
    let error = &errors[0];
    assert_eq!(error["custom_id"], "bad-request");
    assert_eq!(error["response"]["status_code"], 400);
    assert_eq!(error["response"]["body"]["error"]["message"], "fake backend error 400");
    assert!(error["error"].is_null());

    let usage = &batch["usage"];
    assert_eq!(usage["input_tokens"], expected_input_tokens);
    assert_eq!(usage["output_tokens"], expected_input_tokens + 21);
    assert_eq!(usage["total_tokens"], 2 * expected_input_tokens + 21);

    let (_, out_file) = h
        .get(&format!("/files/{}", batch["output_file_id"].as_str().unwrap()))
        .await;
    assert_eq!(out_file["purpose"], "batch_output");
    assert_eq!(
        out_file["filename"],
        format!("{}_output.jsonl", batch["id"].as_str().unwrap())
    );
    let (_, err_file) = h
        .get(&format!("/files/{}", batch["error_file_id"].as_str().unwrap()))
        .await;
    assert_eq!(
        err_file["filename"],
        format!("{}_error.jsonl", batch["id"].as_str().unwrap())
    );
}

#[tokio::test]
async fn every_endpoint_runs_and_embeddings_report_no_output_tokens() {
    let h = Harness::start().await;
    let cases = [
        (
            "/v1/completions",
            json!({"model": "fake-model", "prompt": "one two three"}),
            "text_completion",
        ),
        (
            "/v1/embeddings",
            json!({"model": "fake-model", "input": ["one two", "three"]}),
            "list",
        ),
        (
            "/v1/responses",
            json!({"model": "fake-model", "input": "one two three"}),
            "response",
        ),
    ];
    for (endpoint, body, object) in cases {
        let line = json!({"custom_id": "a", "method": "POST", "url": endpoint, "body": body});
        let file_id = h.upload_lines(&[line]).await;
        let batch = h.create_batch(&file_id, endpoint).await;
        let batch = h.wait_terminal(batch["id"].as_str().unwrap()).await;
        assert_eq!(batch["status"], "completed", "{endpoint}: {batch}");
        let output = h.lines_of(&batch["output_file_id"]).await;
        assert_eq!(output[0]["response"]["body"]["object"], object, "{endpoint}");
        assert_eq!(batch["usage"]["input_tokens"], 3, "{endpoint}");
        if endpoint == "/v1/embeddings" {
            assert_eq!(batch["usage"]["output_tokens"], 0);
            assert_eq!(output[0]["response"]["body"]["data"].as_array().unwrap().len(), 2);
        }
    }
}

#[tokio::test]
async fn unreachable_backend_lines_go_to_the_error_file_after_retries() {
    let h = Harness::start_with(|c| c.models.push(common::model("dead-model", "http://127.0.0.1:9/v1", 4))).await;
    let file_id = h
        .upload_lines(&[chat_line("x", "dead-model", "hi"), chat_line("y", "dead-model", "hi")])
        .await;
    let batch = h.create_batch(&file_id, "/v1/chat/completions").await;
    let batch = h.wait_terminal(batch["id"].as_str().unwrap()).await;
    assert_eq!(batch["status"], "completed");
    assert_eq!(
        batch["request_counts"],
        json!({"total": 2, "completed": 0, "failed": 2})
    );
    assert!(batch["output_file_id"].is_null());
    let errors = h.lines_of(&batch["error_file_id"]).await;
    assert_eq!(errors.len(), 2);
    assert!(errors[0]["response"].is_null());
    assert_eq!(errors[0]["error"]["code"], "backend_unavailable");
}

#[tokio::test]
async fn concurrency_to_a_backend_stays_within_the_configured_bound() {
    let h = Harness::start_with(|c| c.models[0].max_concurrency = 3).await;
    let lines: Vec<Value> = (0..30)
        .map(|i| chat_line(&format!("c{i}"), "fake-model", &format!("wait [delay_ms=20] {i}")))
        .collect();
    let file_id = h.upload_lines(&lines).await;
    let batch = h.create_batch(&file_id, "/v1/chat/completions").await;
    let batch = h.wait_terminal(batch["id"].as_str().unwrap()).await;
    assert_eq!(batch["request_counts"]["completed"], 30);
    let max = h.backend.stats.max_in_flight.load(Ordering::Relaxed);
    assert!(max <= 3, "max in flight {max}");
    assert!(max >= 2, "lines were not sent concurrently (max {max})");
}

#[tokio::test]
async fn cancel_stops_dispatch_keeps_partial_results_and_accounts_for_every_line() {
    let h = Harness::start_with(|c| c.models[0].max_concurrency = 2).await;
    let lines: Vec<Value> = (0..40)
        .map(|i| chat_line(&format!("c{i}"), "fake-model", &format!("slow [delay_ms=50] {i}")))
        .collect();
    let file_id = h.upload_lines(&lines).await;
    let batch = h.create_batch(&file_id, "/v1/chat/completions").await;
    let id = batch["id"].as_str().unwrap();
    h.wait_for(id, |b| b["request_counts"]["completed"].as_i64().unwrap_or(0) >= 2)
        .await;
    let (status, cancelling) = h.post(&format!("/batches/{id}/cancel"), Value::Null).await;
    assert_eq!(status, 200);
    assert!(matches!(
        cancelling["status"].as_str(),
        Some("cancelling" | "cancelled")
    ));
    assert!(cancelling["cancelling_at"].is_i64());

    let batch = h.wait_terminal(id).await;
    assert_eq!(batch["status"], "cancelled");
    assert!(batch["cancelled_at"].is_i64());
    let output = h.lines_of(&batch["output_file_id"]).await;
    let errors = h.lines_of(&batch["error_file_id"]).await;
    assert!(
        !output.is_empty() && output.len() < 40,
        "partial output expected, got {}",
        output.len()
    );
    assert!(
        errors
            .iter()
            .all(|e| e["error"]["code"] == "batch_cancelled" && e["response"].is_null())
    );
    let ids: HashSet<&str> = output
        .iter()
        .chain(&errors)
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 40, "every line exactly once across output and error files");
    assert_eq!(output.len() + errors.len(), 40);
    assert_eq!(batch["request_counts"]["completed"], output.len());
    assert_eq!(batch["request_counts"]["failed"], errors.len());
    let sent = h.backend.stats.requests.load(Ordering::Relaxed) as usize;
    assert!(sent < 40, "dispatch did not stop: {sent} requests sent");

    // Cancelling again is accepted; cancelling a completed batch is a 409 that the SDKs must not retry.
    let (status, _) = h.post(&format!("/batches/{id}/cancel"), Value::Null).await;
    assert_eq!(status, 200);
    let done_file = h.upload_lines(&[chat_line("a", "fake-model", "hi")]).await;
    let done = h.create_batch(&done_file, "/v1/chat/completions").await;
    let done_id = done["id"].as_str().unwrap();
    h.wait_terminal(done_id).await;
    let response = h
        .http
        .post(h.url(&format!("/batches/{done_id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    assert_eq!(response.headers()["x-should-retry"], "false");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["error"]["message"],
        "Cannot cancel a batch with status 'completed'."
    );
}

#[tokio::test]
async fn a_restart_resumes_a_running_batch_without_duplicates() {
    let mut h = Harness::start_with(|c| c.models[0].max_concurrency = 2).await;
    let lines: Vec<Value> = (0..30)
        .map(|i| chat_line(&format!("r{i}"), "fake-model", &format!("slow [delay_ms=30] {i}")))
        .collect();
    let file_id = h.upload_lines(&lines).await;
    let batch = h.create_batch(&file_id, "/v1/chat/completions").await;
    let id = batch["id"].as_str().unwrap().to_owned();
    h.wait_for(&id, |b| b["request_counts"]["completed"].as_i64().unwrap_or(0) >= 4)
        .await;
    h.restart().await;
    let batch = h.wait_terminal(&id).await;
    assert_eq!(batch["status"], "completed");
    assert_eq!(
        batch["request_counts"],
        json!({"total": 30, "completed": 30, "failed": 0})
    );
    let output = h.lines_of(&batch["output_file_id"]).await;
    let ids: HashSet<&str> = output.iter().map(|l| l["custom_id"].as_str().unwrap()).collect();
    assert_eq!((output.len(), ids.len()), (30, 30));
    // Lines already stored before the restart were not sent again (graceful stop
    // lets in-flight lines finish, so nothing is re-sent at all).
    assert_eq!(h.backend.stats.requests.load(Ordering::Relaxed), 30);
}

#[tokio::test]
async fn deleting_the_input_file_of_a_running_batch_does_not_break_it() {
    let mut h = Harness::start_with(|c| c.models[0].max_concurrency = 2).await;
    let lines: Vec<Value> = (0..20)
        .map(|i| chat_line(&format!("d{i}"), "fake-model", &format!("slow [delay_ms=20] {i}")))
        .collect();
    let file_id = h.upload_lines(&lines).await;
    let batch = h.create_batch(&file_id, "/v1/chat/completions").await;
    let id = batch["id"].as_str().unwrap();
    h.wait_for(id, |b| b["request_counts"]["completed"].as_i64().unwrap_or(0) >= 2)
        .await;
    let deleted = h.http.delete(h.url(&format!("/files/{file_id}"))).send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    assert_eq!(h.get(&format!("/files/{file_id}")).await.0, 404);
    // After a restart the batch reads its input again from the start: the
    // bytes must have been kept.
    h.restart().await;
    let batch = h.wait_terminal(id).await;
    assert_eq!(batch["status"], "completed");
    assert_eq!(batch["request_counts"]["completed"], 20);
}

#[tokio::test]
async fn shutdown_cuts_off_slow_lines_after_the_grace_period_and_a_restart_sends_them_again() {
    let mut h = Harness::start_with(|c| {
        c.execution.shutdown_grace_secs = 0;
        c.models[0].max_concurrency = 4;
    })
    .await;
    let lines: Vec<Value> = (0..4)
        .map(|i| {
            chat_line(
                &format!("s{i}"),
                "fake-model",
                &format!("very slow [delay_ms=3000] {i}"),
            )
        })
        .collect();
    let file_id = h.upload_lines(&lines).await;
    let batch = h.create_batch(&file_id, "/v1/chat/completions").await;
    let id = batch["id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while h.backend.stats.in_flight.load(Ordering::Relaxed) < 4 {
        assert!(std::time::Instant::now() < deadline, "lines never reached the backend");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let stopping = std::time::Instant::now();
    h.restart().await;
    assert!(
        stopping.elapsed() < std::time::Duration::from_secs(2),
        "shutdown waited for the slow lines: {:?}",
        stopping.elapsed()
    );
    let batch = h.wait_terminal(&id).await;
    assert_eq!(
        batch["request_counts"],
        json!({"total": 4, "completed": 4, "failed": 0})
    );
    let output = h.lines_of(&batch["output_file_id"]).await;
    let ids: HashSet<&str> = output.iter().map(|l| l["custom_id"].as_str().unwrap()).collect();
    assert_eq!((output.len(), ids.len()), (4, 4));
    assert_eq!(
        h.backend.stats.requests.load(Ordering::Relaxed),
        8,
        "cut-off lines are sent again, once"
    );
}
