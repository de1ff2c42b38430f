//! A full disk: the data directory sits on a small tmpfs that the test fills to
//! the last byte. Requests that need space fail with a clear 507, what is
//! stored stays readable, a running batch waits instead of losing results, and
//! everything works again once space is freed.
//!
//! Mounting needs root (CI runs as root). Elsewhere the test says so and
//! returns; as root a failed mount is a failure, not a skip.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Harness, chat_line};
use serde_json::Value;

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status();
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        match status {
            Ok(s) if s.success() => Some(Self(dir.to_owned())),
            _ if is_root => panic!("running as root but could not mount a tmpfs at {}", dir.display()),
            _ => None,
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes a ballast file until the device refuses another byte.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 64 * 1024];
    loop {
        if f.write_all(&block).is_err() {
            break;
        }
    }
    let mut byte = [0u8; 1];
    while f.write_all(&byte).is_ok() {
        byte[0] = byte[0].wrapping_add(1);
    }
    let _ = f.sync_all();
}

fn input(prefix: &str, n: usize, prompt: &str) -> String {
    (0..n)
        .map(|i| format!("{}\n", chat_line(&format!("{prefix}{i}"), "fake-model", prompt)))
        .collect()
}

#[tokio::test]
async fn a_full_disk_fails_requests_cleanly_and_work_resumes_when_space_returns() {
    let scratch = tempfile::tempdir().unwrap();
    let mount_dir = scratch.path().join("mnt");
    let Some(_tmpfs) = Tmpfs::mount(&mount_dir, "24m") else {
        eprintln!("SKIPPED: not root, cannot mount a tmpfs to fill");
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter("batchd=info")
        .with_test_writer()
        .try_init();
    let data_dir = mount_dir.join("data");
    let h = Harness::start_with(|c| {
        c.server.data_dir = data_dir.clone();
        c.execution.poll_interval_ms = 100;
    })
    .await;

    // Stored before the disk fills: a plain file, and a batch still running.
    let witness = "{\"witness\":1}\n";
    let witness_id = h.upload_text(witness).await;
    let running_input = h.upload_text(&input("run-", 60, "[delay_ms=300] hi")).await;
    let running = h.create_batch(&running_input, "/v1/chat/completions").await;
    let running_id = running["id"].as_str().unwrap().to_owned();
    let spare_input = h.upload_text(&input("later-", 5, "hi")).await;
    h.wait_for(&running_id, |b| b["status"] == "in_progress").await;

    let ballast = mount_dir.join("ballast");
    fill(&ballast);

    // An upload needs space: a 507 with OpenAI's envelope, and nothing recorded.
    let files_before = h.get("/files?limit=100").await.1["data"].as_array().unwrap().len();
    let r = h.upload(vec![b'x'; 2 << 20], "big.jsonl", "batch").await;
    assert_eq!(r.status(), 507);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "server_error", "{body}");
    assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("space"), "{body}");

    // Creating a batch needs a row: also a clean error, not a hang or a 500.
    let (status, body) = h
        .post(
            "/batches",
            serde_json::json!({"input_file_id": spare_input, "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
        )
        .await;
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");

    // Reads keep working on a full disk.
    let (status, list) = h.get("/files?limit=100").await;
    assert_eq!(status, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), files_before);
    assert_eq!(h.content(&witness_id).await, witness);
    assert_eq!(h.get(&format!("/batches/{running_id}")).await.0, 200);

    // Let the running batch hit the wall for a while, then free the space.
    tokio::time::sleep(Duration::from_secs(3)).await;
    std::fs::remove_file(&ballast).unwrap();

    let done = h.wait_terminal(&running_id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["request_counts"]["completed"], 60, "{done}");
    let out = h.lines_of(&done["output_file_id"]).await;
    let mut ids: Vec<String> = out
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 60, "every line exactly once");
    assert_eq!(out.len(), 60);

    // And new work is accepted again.
    let r = h.upload(vec![b'x'; 2 << 20], "big.jsonl", "batch").await;
    assert_eq!(r.status(), 200);
    let later = h.create_batch(&spare_input, "/v1/chat/completions").await;
    let later = h.wait_terminal(later["id"].as_str().unwrap()).await;
    assert_eq!(later["status"], "completed", "{later}");
}
