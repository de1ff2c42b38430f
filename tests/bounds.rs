//! Bounded resources, through the real server and the fake backend: a huge
//! response, a result the database refuses, absurd token counts, and batch
//! rows holding values no reader expects must each stay one line's (or one
//! batch's) problem, never the whole server's.

mod common;

use std::sync::atomic::Ordering;

use common::{Harness, chat_line};
use serde_json::Value;

/// A direct connection to the server's database, as an operator's tool (or an
/// older batchd) would have.
async fn database(h: &Harness) -> sqlx::SqlitePool {
    let path = h.config.server.data_dir.join("batchd.db");
    sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap()
}

async fn run_batch(h: &Harness, lines: &[Value]) -> Value {
    let file = h.upload_lines(lines).await;
    let batch = h.create_batch(&file, "/v1/chat/completions").await;
    h.wait_terminal(batch["id"].as_str().unwrap()).await
}

/// The server still runs new batches and serves lists.
async fn assert_still_serving(h: &Harness) {
    let after = run_batch(h, &[chat_line("after", "fake-model", "still there")]).await;
    assert_eq!(after["status"], "completed", "{after}");
    assert_eq!(after["request_counts"]["completed"], 1, "{after}");
    let (status, list) = h.get("/batches").await;
    assert_eq!(status, 200, "{list}");
}

#[tokio::test]
async fn a_response_over_the_cap_is_an_error_line_and_not_retried() {
    let h = Harness::start_with(|c| c.limits.max_response_bytes = 64 * 1024).await;
    let batch = run_batch(
        &h,
        &[
            chat_line("small-1", "fake-model", "hello"),
            chat_line("huge", "fake-model", "[response_bytes=200000] big"),
            chat_line("small-2", "fake-model", "[response_bytes=1000] fits"),
        ],
    )
    .await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(batch["request_counts"]["completed"], 2, "{batch}");
    assert_eq!(batch["request_counts"]["failed"], 1, "{batch}");
    let errors = h.lines_of(&batch["error_file_id"]).await;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["custom_id"], "huge");
    assert_eq!(errors[0]["error"]["code"], "response_too_large");
    assert!(
        errors[0]["error"]["message"].as_str().unwrap().contains("65536"),
        "{}",
        errors[0]
    );
    let output = h.lines_of(&batch["output_file_id"]).await;
    let ids: Vec<&str> = output.iter().map(|l| l["custom_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["small-1", "small-2"]);
    // One request per line: the too-large answer was not asked for again.
    assert_eq!(h.backend.stats.requests.load(Ordering::Relaxed), 3);
    assert_still_serving(&h).await;
}

#[tokio::test]
async fn a_result_the_database_refuses_becomes_an_error_line_and_the_writer_moves_on() {
    let h = Harness::start().await;
    // A result row that can never be inserted (as one over SQLite's length
    // limit would be): the fake echoes the prompt into the response.
    sqlx::query(
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON batch_results
         WHEN NEW.output_line LIKE '%POISON-RESULT%'
         BEGIN SELECT RAISE(ABORT, 'refused by test'); END",
    )
    .execute(&database(&h).await)
    .await
    .unwrap();
    let batch = run_batch(
        &h,
        &[
            chat_line("fine-1", "fake-model", "hello"),
            chat_line("poisoned", "fake-model", "POISON-RESULT"),
            chat_line("fine-2", "fake-model", "world"),
        ],
    )
    .await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(batch["request_counts"]["completed"], 2, "{batch}");
    assert_eq!(batch["request_counts"]["failed"], 1, "{batch}");
    let errors = h.lines_of(&batch["error_file_id"]).await;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["custom_id"], "poisoned");
    assert_eq!(errors[0]["error"]["code"], "internal_error");
    assert_still_serving(&h).await;
}

#[tokio::test]
async fn absurd_token_counts_saturate_and_batches_keep_running() {
    let h = Harness::start().await;
    let near_max = format!("[prompt_tokens={}] tokens", i64::MAX - 10);
    let batch = run_batch(
        &h,
        &[
            chat_line("a", "fake-model", &near_max),
            chat_line("b", "fake-model", &near_max),
            chat_line("c", "fake-model", "hello"),
        ],
    )
    .await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(batch["request_counts"]["completed"], 3, "{batch}");
    // Each line counts at most i32::MAX tokens.
    let per_line_max = i64::from(i32::MAX);
    assert_eq!(batch["usage"]["input_tokens"], 2 * per_line_max + 1, "{batch}");
    assert_eq!(batch["usage"]["total_tokens"], 2 * per_line_max + 3, "{batch}");
    let id = batch["id"].as_str().unwrap();
    let (status, again) = h.get(&format!("/batches/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(again["usage"], batch["usage"]);
    let (status, list) = h.get("/batches").await;
    assert_eq!(status, 200);
    assert!(list["data"].as_array().unwrap().iter().any(|b| b["id"] == id));
    assert_still_serving(&h).await;
}

#[tokio::test]
async fn batch_rows_with_unexpected_values_do_not_stop_lists_or_scheduling() {
    let h = Harness::start().await;
    let done = run_batch(&h, &[chat_line("a", "fake-model", "hello")]).await;
    let done_id = done["id"].as_str().unwrap();
    let db = database(&h).await;
    // What an overflowing `+` left behind before the counters saturated.
    sqlx::query("UPDATE batches SET input_tokens = 1.5e300, total_tokens = 9.3e18 WHERE id = ?")
        .bind(done_id)
        .execute(&db)
        .await
        .unwrap();
    // An active batch no code can read (text where a count belongs).
    sqlx::query(
        "INSERT INTO batches (id, project_id, endpoint, input_file_id, completion_window, status, created_at,
                              total_requests)
         VALUES ('batch_unreadable', 'default', '/v1/chat/completions', 'file-x', '24h', 'in_progress', 1, 'many')",
    )
    .execute(&db)
    .await
    .unwrap();

    let (status, read) = h.get(&format!("/batches/{done_id}")).await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["usage"]["input_tokens"], i64::MAX, "{read}");
    let (status, list) = h.get("/batches").await;
    assert_eq!(status, 200, "{list}");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [done_id], "the unreadable row is left out of the list");
    let (status, body) = h.get("/batches/batch_unreadable").await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["type"], "server_error");
    // The scheduler skips the unreadable row and runs everything else.
    assert_still_serving(&h).await;
}
