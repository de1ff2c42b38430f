//! Crash torture: the real `batchd` process is killed with SIGKILL at random
//! moments (validating, running, finalizing) and restarted, many times. At the
//! end every custom_id of the input appears exactly once across the output and
//! error files, the counts agree with the files, and no line with a durable
//! result was sent to the backend again.

mod common;

use std::collections::HashMap;
use std::process::Child;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use batchd::testing::fake_backend::FakeBackend;
use common::{chat_line, spawn_batchd};
use serde_json::{Value, json};

const LINES: usize = 2000;
const CONCURRENCY: usize = 16;

fn start(config: &std::path::Path) -> (Child, String) {
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
    let config = dir.path().join("batchd.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[limits]\nmax_batch_lines = {LINES}\n\
             [execution]\npoll_interval_ms = 50\n[[models]]\nname = \"fake-model\"\nurl = \"{}\"\nmax_concurrency = {CONCURRENCY}\n",
            dir.path().join("data").display(),
            backend.url()
        ),
    )
    .unwrap();
    let http = reqwest::Client::new();
    let (mut server, mut api) = start(&config);

    let text: String = (0..LINES)
        .map(|i| {
            // Every 10th line gets a 400 from the backend: both files are exercised.
            let prompt = if i.is_multiple_of(10) {
                format!("line {i} [status=400]")
            } else {
                format!("line {i}")
            };
            format!("{}\n", chat_line(&format!("id-{i}"), "fake-model", &prompt))
        })
        .collect();
    let form = reqwest::multipart::Form::new().text("purpose", "batch").part(
        "file",
        reqwest::multipart::Part::bytes(text.into_bytes()).file_name("in.jsonl"),
    );
    let file: Value = http
        .post(format!("{api}/files"))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let batch: Value = http
        .post(format!("{api}/batches"))
        .json(&json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = batch["id"].as_str().unwrap().to_owned();

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

    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut counts = (0, 0);
    for (key, is_error) in [("output_file_id", false), ("error_file_id", true)] {
        let file_id = batch[key].as_str().unwrap();
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
            let custom_id = v["custom_id"].as_str().unwrap().to_owned();
            let n: usize = custom_id[3..].parse().unwrap();
            assert_eq!(is_error, n.is_multiple_of(10), "{custom_id} is in the wrong file");
            *seen.entry(custom_id).or_default() += 1;
            if is_error { counts.1 += 1 } else { counts.0 += 1 }
        }
    }
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicated.is_empty(), "duplicated lines: {duplicated:?}");
    assert_eq!(seen.len(), LINES, "lost lines: {}", LINES - seen.len());
    assert_eq!(
        batch["request_counts"],
        json!({"total": LINES, "completed": counts.0, "failed": counts.1})
    );
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
