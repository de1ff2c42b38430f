//! Crash torture: the real `batchd` process is killed with SIGKILL at random
//! moments and restarted, many times. At the end every custom_id of the input
//! appears exactly once across the output and error files, the counts agree
//! with the files, and no line with a durable result was sent to the backend
//! again.
//!
//! A second test aims kills at each phase on purpose: while a batch is
//! `validating`, `cancelling` and `finalizing` (writing its result files),
//! with several batches in different phases at once.

mod common;

use std::collections::HashMap;
use std::process::Child;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use batchd::testing::fake_backend::FakeBackend;
use common::{KillOnDrop, chat_line, spawn_batchd};
use serde_json::{Value, json};

const LINES: usize = 2000;
const CONCURRENCY: usize = 16;

fn start(config: &std::path::Path) -> (KillOnDrop, String) {
    let (child, url) = spawn_batchd([std::ffi::OsStr::new("serve"), "--config".as_ref(), config.as_os_str()]);
    (child, format!("{url}/v1"))
}

async fn status_of(http: &reqwest::Client, api: &str, id: &str) -> Value {
    http.get(format!("{api}/batches/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[derive(Clone, Copy, PartialEq)]
enum Stop {
    Kill,
    Term,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    torture(Stop::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_at_random_moments_exits_cleanly_and_loses_and_duplicates_nothing() {
    torture(Stop::Term).await;
}

/// Stops the server the given way; a SIGTERM must end in a clean exit 0.
fn stop(server: &mut Child, how: Stop) {
    match how {
        Stop::Kill => server.kill().unwrap(),
        Stop::Term => {
            let pid = nix::unistd::Pid::from_raw(server.id() as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        }
    }
    let status = server.wait().unwrap();
    if how == Stop::Term {
        assert!(status.success(), "SIGTERM must end in exit 0, got {status}");
    }
}

async fn torture(how: Stop) {
    let backend = FakeBackend::start("127.0.0.1:0".parse().unwrap(), Duration::from_millis(15))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(
        dir.path(),
        &backend.url(),
        &format!("[limits]\nmax_batch_lines = {LINES}\n[execution]\npoll_interval_ms = 50"),
        &format!("max_concurrency = {CONCURRENCY}"),
    );
    let http = batchd::http_client::client();
    let (mut server, mut api) = start(&config);

    let id = create_batch(&http, &api, "id-", LINES).await;

    let seed = std::env::var("BATCHD_TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261127);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut kills = 0;
    let mut seen_statuses = std::collections::BTreeSet::new();
    while kills < 30 {
        tokio::time::sleep(Duration::from_millis(rng.u64(0..250))).await;
        stop(&mut server, how);
        kills += 1;
        (server, api) = start(&config);
        let status = status_of(&http, &api, &id).await["status"].as_str().unwrap().to_owned();
        seen_statuses.insert(status.clone());
        if status == "completed" {
            break;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let batch = loop {
        let b = status_of(&http, &api, &id).await;
        if b["status"] == "completed" {
            break b;
        }
        assert!(
            Instant::now() < deadline,
            "batch never completed after {kills} kills: {b}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let signal = if how == Stop::Kill { "SIGKILL" } else { "SIGTERM" };
    eprintln!("survived {kills} {signal}s (seed {seed}); statuses seen after restarts: {seen_statuses:?}");
    assert!(
        kills >= 10,
        "the batch finished too fast to be tortured ({kills} kills)"
    );

    verify(&http, &api, &batch, "id-", LINES).await;
    // Only lines without a durable result are sent again: at each kill, those
    // in flight (at most CONCURRENCY) plus finished ones still queued for the
    // result writer's next commit (a few milliseconds' worth).
    let sent = backend.stats.requests.load(Ordering::Relaxed) as usize;
    assert!(
        sent <= LINES + kills * 3 * CONCURRENCY,
        "{sent} requests for {LINES} lines and {kills} kills"
    );
    if how == Stop::Term {
        // A graceful stop lets in-flight lines finish and be stored: nothing is sent twice.
        assert_eq!(sent, LINES, "after SIGTERMs no line may be sent twice");
    }
    stop(&mut server, Stop::Kill);
}

/// Uploads `lines` chat lines (every 10th answered with a 400) and creates a batch.
async fn create_batch(http: &reqwest::Client, api: &str, prefix: &str, lines: usize) -> String {
    let text: String = (0..lines)
        .map(|i| {
            let prompt = if i.is_multiple_of(10) { "x [status=400]" } else { "x" };
            format!("{}\n", chat_line(&format!("{prefix}{i}"), "fake-model", prompt))
        })
        .collect();
    common::create_batch_at(http, api, None, text).await
}

/// Checks one finished batch line by line: every custom_id exactly once across
/// both files, backend 400s only in the error file, cancelled lines (if any)
/// in the error file, and `request_counts` equal to what the files hold.
async fn verify(http: &reqwest::Client, api: &str, batch: &Value, prefix: &str, lines: usize) {
    if batch["status"] == "cancelled" && batch["in_progress_at"].is_null() {
        // Cancelled before validation finished: no lines were taken on, so
        // there are no files and every count is zero (docs/compatibility.md).
        assert!(
            batch["output_file_id"].is_null() && batch["error_file_id"].is_null(),
            "{batch}"
        );
        assert_eq!(
            batch["request_counts"],
            json!({"total": 0, "completed": 0, "failed": 0})
        );
        return;
    }
    let mut seen: HashMap<usize, usize> = HashMap::new();
    let (mut completed, mut failed) = (0, 0);
    for (key, is_error) in [("output_file_id", false), ("error_file_id", true)] {
        let Some(file_id) = batch[key].as_str() else { continue };
        let content = http
            .get(format!("{api}/files/{file_id}/content"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for line in content.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            let n: usize = v["custom_id"]
                .as_str()
                .unwrap()
                .strip_prefix(prefix)
                .unwrap()
                .parse()
                .unwrap();
            if !is_error {
                assert!(!n.is_multiple_of(10), "{prefix}{n}: a backend 400 in the output file");
            } else if v["error"]["code"] != "batch_cancelled" {
                assert!(n.is_multiple_of(10), "{prefix}{n} failed: {v}");
            }
            *seen.entry(n).or_default() += 1;
            if is_error { failed += 1 } else { completed += 1 }
        }
    }
    let duplicated: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        duplicated.is_empty(),
        "{}: duplicated lines {duplicated:?}",
        batch["id"]
    );
    assert_eq!(seen.len(), lines, "{}: lost {} lines", batch["id"], lines - seen.len());
    assert_eq!(
        batch["request_counts"],
        json!({"total": lines, "completed": completed, "failed": failed}),
        "{}",
        batch["id"]
    );
}

/// Polls every few milliseconds until the batch shows `status` (then kills at
/// once) or has gone past it. Returns whether the kill landed in that status.
async fn kill_when(http: &reqwest::Client, api: &str, id: &str, status: &str, server: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = status_of(http, api, id).await;
        let current = now["status"].as_str().unwrap();
        if current == status {
            stop(server, Stop::Kill);
            return true;
        }
        if matches!(current, "completed" | "failed" | "cancelled" | "expired") || Instant::now() > deadline {
            stop(server, Stop::Kill);
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_aimed_at_validating_cancelling_and_finalizing_loses_and_duplicates_nothing() {
    let backend = FakeBackend::start("127.0.0.1:0".parse().unwrap(), Duration::from_millis(2))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(
        dir.path(),
        &backend.url(),
        "[limits]\nmax_batch_lines = 50000\nmax_batch_input_bytes = 104857600\nmax_upload_bytes = 104857600\n\
         [execution]\npoll_interval_ms = 50",
        "max_concurrency = 64",
    );
    let http = batchd::http_client::client();
    let (mut server, mut api) = start(&config);
    let mut landed: std::collections::BTreeMap<&str, usize> = Default::default();
    let mut kills = 0;
    let mut batches: Vec<(String, &str, usize)> = vec![];

    // Big batches spend long enough in `validating` and `finalizing` to be hit.
    for round in 0..3 {
        let prefix = ["v0-", "v1-", "v2-"][round];
        let lines = 20_000;
        let id = create_batch(&http, &api, prefix, lines).await;
        if kill_when(&http, &api, &id, "validating", &mut server).await {
            *landed.entry("validating").or_default() += 1;
        }
        kills += 1;
        (server, api) = start(&config);
        if kill_when(&http, &api, &id, "finalizing", &mut server).await {
            *landed.entry("finalizing").or_default() += 1;
        }
        kills += 1;
        (server, api) = start(&config);
        batches.push((id, prefix, lines));
    }

    // Cancels: one while validating, others mid-run; each followed by a kill
    // while the batch is still `cancelling` where the timing allows.
    for (round, delay_ms) in [0u64, 300, 900].into_iter().enumerate() {
        let prefix = ["c0-", "c1-", "c2-"][round];
        let lines = 10_000;
        let id = create_batch(&http, &api, prefix, lines).await;
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let cancelled: Value = http
            .post(format!("{api}/batches/{id}/cancel"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if cancelled["status"] == "cancelling" && status_of(&http, &api, &id).await["status"] == "cancelling" {
            stop(&mut server, Stop::Kill);
            *landed.entry("cancelling").or_default() += 1;
        } else {
            stop(&mut server, Stop::Kill);
        }
        kills += 1;
        (server, api) = start(&config);
        batches.push((id, prefix, lines));
    }

    let deadline = Instant::now() + Duration::from_secs(180);
    for (id, prefix, lines) in &batches {
        let batch = loop {
            let b = status_of(&http, &api, id).await;
            if matches!(b["status"].as_str(), Some("completed" | "cancelled")) {
                break b;
            }
            assert!(Instant::now() < deadline, "batch stuck: {b}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        verify(&http, &api, &batch, prefix, *lines).await;
    }
    eprintln!("survived {kills} aimed SIGKILLs; kills that landed in each phase: {landed:?}");
    for phase in ["validating", "finalizing", "cancelling"] {
        assert!(
            landed.get(phase).copied().unwrap_or(0) >= 1,
            "no kill landed while {phase}: {landed:?}"
        );
    }
    stop(&mut server, Stop::Kill);
}

/// A batch killed while `finalizing` writes its files again after the
/// restart, from its stored results; once it has ended, those results are
/// only in its files (the rows went in the transaction that ended it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_finalizing_still_yields_exactly_once_files_and_no_stored_results() {
    let backend = FakeBackend::start("127.0.0.1:0".parse().unwrap(), Duration::from_millis(2))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(
        dir.path(),
        &backend.url(),
        "[limits]\nmax_batch_lines = 50000\nmax_batch_input_bytes = 104857600\nmax_upload_bytes = 104857600\n\
         [execution]\npoll_interval_ms = 50",
        "max_concurrency = 64",
    );
    let http = batchd::http_client::client();
    let (mut server, mut api) = start(&config);
    let lines = 20_000;
    let mut batches = vec![];
    let mut landed = false;
    for prefix in ["f0-", "f1-", "f2-"] {
        let id = create_batch(&http, &api, prefix, lines).await;
        landed = kill_when(&http, &api, &id, "finalizing", &mut server).await;
        (server, api) = start(&config);
        batches.push((id, prefix));
        if landed {
            break;
        }
    }
    assert!(landed, "no kill landed while finalizing");
    let db = common::open_db(&dir.path().join("data")).await;
    let deadline = Instant::now() + Duration::from_secs(180);
    for (id, prefix) in &batches {
        let batch = loop {
            let b = status_of(&http, &api, id).await;
            if b["status"] == "completed" {
                break b;
            }
            assert!(Instant::now() < deadline, "batch stuck: {b}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        verify(&http, &api, &batch, prefix, lines).await;
        assert_eq!(
            common::result_rows(&db, id).await,
            0,
            "{id} keeps its results in the database"
        );
    }
    stop(&mut server, Stop::Kill);
}
