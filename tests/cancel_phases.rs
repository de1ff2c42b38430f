//! Cancel in every phase: while the file is still being validated, while the
//! result files are written, and racing the batch's own completion. Whatever
//! wins, the batch ends in one terminal state and every line is accounted for
//! exactly once. (Cancel mid-run is in batch_execution.rs.)

mod common;

use std::collections::HashSet;

use common::{Harness, chat_line};
use serde_json::Value;

fn lines(prefix: &str, n: usize, prompt: &str) -> Vec<Value> {
    (0..n)
        .map(|i| chat_line(&format!("{prefix}{i}"), "fake-model", prompt))
        .collect()
}

async fn cancel(h: &Harness, id: &str) -> (u16, Value) {
    h.post(&format!("/batches/{id}/cancel"), Value::Null).await
}

/// Every custom_id of `prefix0..prefixN` exactly once across both files, and
/// counts that match the files.
async fn assert_accounted(h: &Harness, batch: &Value, n: usize) {
    let output = h.lines_of(&batch["output_file_id"]).await;
    let errors = h.lines_of(&batch["error_file_id"]).await;
    let ids: HashSet<&str> = output
        .iter()
        .chain(&errors)
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), n, "{batch}");
    assert_eq!(output.len() + errors.len(), n, "{batch}");
    assert_eq!(batch["request_counts"]["total"], n);
    assert_eq!(batch["request_counts"]["completed"], output.len());
    assert_eq!(batch["request_counts"]["failed"], errors.len());
}

#[tokio::test]
async fn cancel_while_validating_ends_cancelled_with_nothing_run() {
    let h = Harness::start_with(|c| {
        c.limits.max_batch_lines = 100_000;
        c.limits.max_batch_input_bytes = 64 << 20;
        c.limits.max_upload_bytes = 64 << 20;
    })
    .await;
    let file_id = h.upload_lines(&lines("v", 60_000, "hi")).await;
    let batch = h.create_batch(&file_id, "/v1/chat/completions").await;
    let id = batch["id"].as_str().unwrap();
    let (status, cancelling) = cancel(&h, id).await;
    assert_eq!(status, 200, "{cancelling}");
    assert!(cancelling["cancelling_at"].is_i64());
    let done = h.wait_terminal(id).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert!(
        done["in_progress_at"].is_null(),
        "validation must not go on to run: {done}"
    );
    assert!(done["cancelled_at"].is_i64());
    assert!(done["output_file_id"].is_null() && done["error_file_id"].is_null());
    assert_eq!(
        done["request_counts"],
        serde_json::json!({"total": 0, "completed": 0, "failed": 0})
    );
    assert_eq!(h.backend.stats.requests.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test]
async fn cancel_while_finalizing_keeps_every_result() {
    let h = Harness::start_with(|c| {
        c.limits.max_batch_lines = 100_000;
        c.limits.max_batch_input_bytes = 64 << 20;
        c.limits.max_upload_bytes = 64 << 20;
        c.models[0].max_concurrency = 64;
    })
    .await;
    const N: usize = 30_000;
    let file_id = h.upload_lines(&lines("f", N, "hi")).await;
    let batch = h.create_batch(&file_id, "/v1/chat/completions").await;
    let id = batch["id"].as_str().unwrap();
    let seen = h
        .wait_for(id, |b| matches!(b["status"].as_str(), Some("finalizing" | "completed")))
        .await;
    let (status, body) = cancel(&h, id).await;
    let done = h.wait_terminal(id).await;
    eprintln!("cancel seen in {}: {status}, ended {}", seen["status"], done["status"]);
    if seen["status"] == "finalizing" && status == 200 {
        // The cancel was accepted while finalizing: every line had already run,
        // so nothing is marked cancelled and all results are kept.
        assert_eq!(done["status"], "cancelled", "{done}");
    } else {
        assert_eq!(status, 409, "{body}");
        assert_eq!(done["status"], "completed");
    }
    assert_eq!(done["request_counts"]["completed"], N, "{done}");
    assert_accounted(&h, &done, N).await;
}

#[tokio::test]
async fn cancel_racing_completion_has_one_outcome_and_loses_nothing() {
    let h = Harness::start_with(|c| c.models[0].max_concurrency = 16).await;
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    let mut tasks = vec![];
    let h = std::sync::Arc::new(h);
    for round in 0..24u64 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let n = 5;
            let file_id = h.upload_lines(&lines("r", n, "[delay_ms=20] hi")).await;
            let batch = h.create_batch(&file_id, "/v1/chat/completions").await;
            let id = batch["id"].as_str().unwrap().to_owned();
            // Spread the cancels over the batch's whole life, from "still
            // validating" to "just completed".
            tokio::time::sleep(std::time::Duration::from_millis(round * 10)).await;
            let (status, body) = cancel(&h, &id).await;
            let done = h.wait_terminal(&id).await;
            match status {
                200 => assert_eq!(done["status"], "cancelled", "cancel was accepted: {done}"),
                409 => assert_eq!(done["status"], "completed", "{body}"),
                other => panic!("cancel answered {other}: {body}"),
            }
            if !done["in_progress_at"].is_null() {
                assert_accounted(&h, &done, n).await;
            }
            done["status"].as_str().unwrap().to_owned()
        }));
    }
    for task in tasks {
        *outcomes.entry(task.await.unwrap()).or_default() += 1;
    }
    eprintln!("outcomes of 24 racing cancels: {outcomes:?}");
}
