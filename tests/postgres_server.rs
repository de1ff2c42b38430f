//! The whole server on the PostgreSQL store (`[store] url`): a batch runs
//! end to end, and what it left survives a restart. The store's own
//! behaviour is checked by `tests/store_conformance`; this checks the wiring,
//! and what only PostgreSQL refuses.

mod common;

use common::{Harness, chat_line};
use serde_json::{Value, json};

#[tokio::test]
async fn a_batch_runs_end_to_end_on_postgres_and_survives_a_restart() {
    let url = common::postgres::fresh_database().await;
    let mut h = Harness::start_with(|config| config.store.url = Some(url)).await;
    let mut lines: Vec<Value> = (0..10)
        .map(|i| chat_line(&format!("ok-{i}"), "fake-model", &format!("hello number {i}")))
        .collect();
    lines.push(chat_line("bad-request", "fake-model", "please fail [status=400]"));
    let file_id = h.upload_lines(&lines).await;
    let created = h.create_batch(&file_id, "/v1/chat/completions").await;
    let id = created["id"].as_str().unwrap().to_owned();
    let batch = h.wait_terminal(&id).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(
        batch["request_counts"],
        json!({"total": 11, "completed": 10, "failed": 1})
    );
    assert_eq!(h.lines_of(&batch["output_file_id"]).await.len(), 10);
    assert_eq!(h.lines_of(&batch["error_file_id"]).await.len(), 1);
    assert!(
        !h.dir.path().join("data").join("batchd.db").exists(),
        "no SQLite database beside PostgreSQL"
    );

    h.restart().await;
    let (status, again) = h.get(&format!("/batches/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(again, batch);
    let (status, files) = h.get("/files").await;
    assert_eq!(status, 200);
    assert_eq!(files["data"].as_array().unwrap().len(), 3, "{files}");
}

/// PostgreSQL refuses a NUL character in text, which SQLite stores: such a
/// result must read as unstorable (the writer turns it into an error line)
/// rather than as a failure worth retrying. Results are JSON, where NUL is
/// escaped, so no code path sends one today.
#[tokio::test]
async fn a_result_postgres_refuses_is_unstorable_not_retried() {
    use batchd::domain::{BatchRecord, Usage};
    use batchd::store::postgres::PgStore;
    use batchd::store::{BatchRepo, LineResult, ResultRepo, Unstorable};

    let store = PgStore::connect(&common::postgres::fresh_database().await)
        .await
        .unwrap();
    let batch = BatchRecord::new_validating(
        "batch-1".into(),
        "p1".into(),
        "/v1/chat/completions".into(),
        "file-1".into(),
        "24h".into(),
        1,
        None,
    );
    store.insert_batch(&batch).await.unwrap();
    let nul = LineResult {
        batch_id: "batch-1".into(),
        line: 1,
        is_error: false,
        output_line: "a\0b".into(),
        usage: Usage::default(),
    };
    let error = store.record_results(&[nul]).await.unwrap_err();
    assert_eq!(store.unstorable(&error), Some(Unstorable::Rejected), "{error:?}");
    assert!(store.finished_lines("batch-1").await.unwrap().is_empty());
}

/// One `batchd serve` per database until work is claimed in leased chunks:
/// a second server on the same database (another data directory, another
/// machine) refuses to start instead of running every batch twice, and a
/// server can start again once the first has stopped.
#[tokio::test]
async fn a_second_server_on_one_database_refuses_to_start() {
    let url = common::postgres::fresh_database().await;
    let h = Harness::start_with(|config| config.store.url = Some(url.clone())).await;
    let other_dir = tempfile::tempdir().unwrap();
    let mut second = h.config.clone();
    second.server.data_dir = other_dir.path().join("data");
    let refused = match batchd::app::Server::start(second.clone()).await {
        Ok(_) => panic!("a second server started on the same database"),
        Err(e) => e.to_string(),
    };
    assert!(refused.contains("another batchd serve"), "{refused}");
    assert_eq!(h.get("/files").await.0, 200, "the first server keeps serving");

    h.server.unwrap().shutdown().await.unwrap();
    let again = batchd::app::Server::start(second)
        .await
        .expect("starts once the first stopped");
    again.shutdown().await.unwrap();
}

/// `batchd keys` writes to the configured store, so a key created on the
/// command line is the one a PostgreSQL-backed server checks.
#[tokio::test]
async fn keys_created_with_the_cli_reach_the_postgres_server() {
    let url = common::postgres::fresh_database().await;
    let h = Harness::start_with(|config| config.store.url = Some(url.clone())).await;
    let config = h.dir.path().join("keys.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ndata_dir = {:?}\n[store]\nurl = {url:?}\n",
            h.dir.path().join("cli-data").display().to_string()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_batchd"))
        .args(["keys", "create", "--project", "team-a", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key: Value = serde_json::from_slice(&out.stdout).unwrap();
    let secret = key["secret"].as_str().expect("the secret is printed once");

    // Keys now exist in the server's database: without one, 401.
    assert_eq!(h.get("/files").await.0, 401);
    let with_key = h.http.get(h.url("/files")).bearer_auth(secret).send().await.unwrap();
    assert_eq!(with_key.status(), 200);
}
