//! The `batchd serve` process: one server per data directory, SIGTERM stops
//! dispatch at once while HTTP drains, within a deadline, and a background
//! task that dies takes the process down with an error.

mod common;

use std::process::{Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use batchd::testing::fake_backend::FakeBackend;
use common::{KillOnDrop, chat_line};
use futures::StreamExt;
use serde_json::Value;

const NO_BACKEND: &str = "http://127.0.0.1:9/v1";

/// Waits for the process to exit; panics (killing it) after `limit`.
fn exit_within(mut child: KillOnDrop, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "batchd did not exit within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = Output {
        status: child.try_wait().unwrap().unwrap(),
        stdout: vec![],
        stderr: vec![],
    };
    use std::io::Read;
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_end(&mut out.stdout);
    }
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_end(&mut out.stderr);
    }
    out
}

fn batchd(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_batchd"));
    command
        .args(args)
        .env("BATCHD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

#[test]
fn a_second_server_on_the_same_data_dir_exits_naming_the_lock_and_the_first_servers_pid() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(dir.path(), NO_BACKEND, "", "");
    let config = config.to_str().unwrap();
    let (first, _url) = common::spawn_batchd(["serve", "--config", config]);
    let second = KillOnDrop(batchd(&["serve", "--config", config]).spawn().unwrap());
    let out = exit_within(second, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
    assert!(
        stderr.contains("serve.lock") && stderr.contains(&format!("pid {}", first.id())),
        "{stderr}"
    );
    // Key management needs no lock: it works while the server runs.
    let keys = batchd(&["keys", "--config", config, "list"]).output().unwrap();
    assert!(keys.status.success(), "{}", String::from_utf8_lossy(&keys.stderr));
}

fn sigterm(child: &KillOnDrop) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
}

/// Large enough that the kernel's socket buffers cannot absorb it: the server
/// is still sending while the client pauses.
const BIG_FILE: usize = 48 * 1024 * 1024;

async fn upload_big_file(http: &reqwest::Client, api: &str) -> String {
    let form = reqwest::multipart::Form::new().text("purpose", "user_data").part(
        "file",
        reqwest::multipart::Part::bytes(vec![b'x'; BIG_FILE]).file_name("big.bin"),
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
    file["id"].as_str().expect("a file id").to_owned()
}

#[tokio::test]
async fn sigterm_stops_dispatch_at_once_while_a_slow_download_still_completes() {
    let backend = FakeBackend::start("127.0.0.1:0".parse().unwrap(), Duration::ZERO)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(
        dir.path(),
        &backend.url(),
        "[execution]\nshutdown_grace_secs = 5\nshutdown_deadline_secs = 30\npoll_interval_ms = 200\n",
        "max_concurrency = 1\n",
    );
    let (server, url) = common::spawn_batchd(["serve", "--config", config.to_str().unwrap()]);
    let api = format!("{url}/v1");
    let http = batchd::http_client::client();
    let big = upload_big_file(&http, &api).await;
    let lines: String = (0..300)
        .map(|i| {
            format!(
                "{}\n",
                chat_line(&format!("l{i}"), "fake-model", &format!("slow [delay_ms=50] {i}"))
            )
        })
        .collect();
    common::create_batch_at(&http, &api, None, lines).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while backend.stats.requests.load(Ordering::Relaxed) < 3 {
        assert!(Instant::now() < deadline, "the batch never reached the backend");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let download = http.get(format!("{api}/files/{big}/content")).send().await.unwrap();
    assert_eq!(download.status(), 200);
    let mut body = download.bytes_stream();
    let mut received = body.next().await.unwrap().unwrap().len();
    let sent_before_signal = backend.stats.requests.load(Ordering::Relaxed);
    sigterm(&server);
    // The slow client: it reads nothing for a while. Before the fix, lines
    // kept flowing to the backend all this time.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    while let Some(chunk) = body.next().await {
        received += chunk.expect("the download was cut off").len();
    }
    assert_eq!(received, BIG_FILE, "the download did not complete");
    let out = tokio::task::spawn_blocking(move || exit_within(server, Duration::from_secs(40)))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = backend.stats.requests.load(Ordering::Relaxed);
    assert!(
        sent <= sent_before_signal + 1,
        "{} lines were sent to the backend after SIGTERM",
        sent - sent_before_signal
    );
}

#[tokio::test]
async fn a_download_that_never_finishes_does_not_hold_the_shutdown_past_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(
        dir.path(),
        NO_BACKEND,
        "[execution]\nshutdown_grace_secs = 1\nshutdown_deadline_secs = 2\n",
        "",
    );
    let (server, url) = common::spawn_batchd(["serve", "--config", config.to_str().unwrap()]);
    let api = format!("{url}/v1");
    let http = batchd::http_client::client();
    let big = upload_big_file(&http, &api).await;
    let download = http.get(format!("{api}/files/{big}/content")).send().await.unwrap();
    let mut body = download.bytes_stream();
    body.next().await.unwrap().unwrap();
    sigterm(&server);
    // The client never reads on; the server must leave anyway.
    let out = tokio::task::spawn_blocking(move || exit_within(server, Duration::from_secs(20)))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    drop(body);
}

#[test]
fn a_background_task_that_dies_stops_the_server_with_an_error() {
    for task in [
        "file sweeper",
        "webhook dispatcher",
        "result writer",
        "batch supervisor",
        "model reconcile loop",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = common::write_config(dir.path(), NO_BACKEND, "", "");
        let child = batchd(&["serve", "--config", config.to_str().unwrap()])
            .env(batchd::server::tasks::FAIL_TASK_ENV, task)
            .spawn()
            .unwrap();
        let out = exit_within(KillOnDrop(child), Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{task}: exited 0");
        assert!(
            stderr.contains(&format!("background task '{task}' panicked")),
            "{task}: {stderr}"
        );
    }
}
