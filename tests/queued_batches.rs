//! Batches waiting for their model's turn hold no file descriptors: the input
//! is opened only once the turn is granted, so thousands of queued batches
//! cannot exhaust the process's descriptors (EMFILE for every tenant).

mod common;

use std::time::{Duration, Instant};

use batchd::testing::fake_backend::FakeBackend;
use common::{chat_line, create_batch_at, spawn_batchd, upload_at};
use serde_json::{Value, json};

const QUEUED: usize = 300;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_queued_batches_hold_no_file_descriptors() {
    let backend = FakeBackend::start("127.0.0.1:0".parse().unwrap(), Duration::ZERO)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(
        dir.path(),
        &backend.url(),
        // More queued batches than the default per-project active limit (100).
        "[execution]\npoll_interval_ms = 200\n[limits]\nmax_active_batches_per_project = 1000",
        "max_concurrency = 2",
    );
    let (server, url) = spawn_batchd(["serve".as_ref(), "--config".as_ref(), config.as_os_str()]);
    let api = format!("{url}/v1");
    let http = batchd::http_client::client();

    // The first batch holds the model's turn: its lines take a minute and
    // only two run at once, so it never finishes dispatching during the test.
    let slow: String = (0..4)
        .map(|i| {
            format!(
                "{}\n",
                chat_line(&format!("slow-{i}"), "fake-model", "[delay_ms=60000] x")
            )
        })
        .collect();
    let first = create_batch_at(&http, &api, None, slow).await;
    let baseline = open_fds(server.id());

    let file = upload_at(&http, &api, None, format!("{}\n", chat_line("q", "fake-model", "hi"))).await;
    for _ in 0..QUEUED {
        let batch: Value = http
            .post(format!("{api}/batches"))
            .json(&json!({"input_file_id": file, "endpoint": "/v1/chat/completions", "completion_window": "24h"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(batch["status"], "validating", "{batch}");
    }
    // Wait until every queued batch is validated and waits for its turn.
    let deadline = Instant::now() + Duration::from_secs(120);
    let depth_line = format!("batchd_queue_depth{{model=\"fake-model\"}} {QUEUED}");
    loop {
        let metrics = http
            .get(format!("{url}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.lines().any(|l| l == depth_line) {
            break;
        }
        assert!(Instant::now() < deadline, "the batches never queued: {metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_status: Value = http
        .get(format!("{api}/batches/{first}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first_status["status"], "in_progress", "{first_status}");
    let waiting = open_fds(server.id());
    eprintln!("open fds: {baseline} with one running batch, {waiting} with {QUEUED} more queued");
    assert!(
        waiting < baseline + 50,
        "{QUEUED} queued batches must not hold descriptors: {baseline} before, {waiting} after"
    );
}
