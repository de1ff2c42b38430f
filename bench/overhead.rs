//! Overhead benchmark: how fast batchd moves lines when the model costs nothing.
//!
//! Starts the fake backend (instant answers) and `batchd serve` as separate
//! release-built processes on loopback, uploads N chat lines, creates a batch
//! and polls it to `completed`. Prints lines per second from create to the
//! output file being ready, the time spent in `validating`, and the server's
//! peak RSS. For scale it also measures the bare loopback round-trip rate: the
//! same requests sent straight to the fake backend with the same concurrency.
//!
//! Run: `bench/run.sh overhead [--lines N] [--concurrency C]`

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "common.rs"]
mod common;
use common::spawn_listening;

struct Args {
    lines: usize,
    concurrency: usize,
    bin_dir: String,
}

fn parse_args() -> Args {
    let mut args = Args {
        lines: 50_000,
        concurrency: 64,
        bin_dir: "target/release".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--lines" => args.lines = it.next().unwrap().parse().unwrap(),
            "--concurrency" => args.concurrency = it.next().unwrap().parse().unwrap(),
            "--bin-dir" => args.bin_dir = it.next().unwrap(),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Resets the kernel's peak-RSS counter of `pid`, so the next reading covers
/// only what happens from now on.
fn reset_peak_rss(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

fn chat_line(i: usize) -> String {
    json!({"custom_id": format!("request-{i}"), "method": "POST", "url": "/v1/chat/completions",
           "body": {"model": "bench-model", "max_tokens": 16,
                    "messages": [{"role": "system", "content": "You are a helpful assistant."},
                                 {"role": "user", "content": format!("Summarise item number {i} in one sentence.")}]}})
    .to_string()
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let dir = tempfile::tempdir().unwrap();
    let mut backend_cmd = Command::new(format!("{}/batchd-fake-backend", args.bin_dir));
    backend_cmd.args(["--listen", "127.0.0.1:0"]);
    let (mut backend, backend_url) = spawn_listening(backend_cmd);
    let config = dir.path().join("batchd.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[limits]\nmax_batch_lines = {}\nmax_batch_input_bytes = 2000000000\nmax_upload_bytes = 2000000000\n[[models]]\nname = \"bench-model\"\nurl = \"{backend_url}/v1\"\nmax_concurrency = {}\n",
            dir.path().join("data").display(),
            args.lines.max(50_000),
            args.concurrency
        ),
    )
    .unwrap();
    let mut server_cmd = Command::new(format!("{}/batchd", args.bin_dir));
    server_cmd
        .args(["serve", "--config"])
        .arg(&config)
        .env("BATCHD_LOG", "warn");
    let (mut server, server_url) = spawn_listening(server_cmd);
    let api = format!("{server_url}/v1");
    let http = batchd::http_client::client();

    // Baseline: the loopback round trip, same request bodies and concurrency.
    let baseline_n = args.lines.min(20_000);
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = vec![];
    for _ in 0..args.concurrency {
        let (http, next, url) = (http.clone(), next.clone(), format!("{backend_url}/v1/chat/completions"));
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= baseline_n {
                    return;
                }
                let line: Value = serde_json::from_str(&chat_line(i)).unwrap();
                let body = line["body"].to_string();
                let r = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                r.bytes().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let baseline_rate = baseline_n as f64 / started.elapsed().as_secs_f64();

    let text: String = (0..args.lines).map(|i| chat_line(i) + "\n").collect();
    let input_bytes = text.len();
    let started = Instant::now();
    let form = reqwest::multipart::Form::new().text("purpose", "batch").part(
        "file",
        reqwest::multipart::Part::bytes(text.into_bytes()).file_name("bench.jsonl"),
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
    let upload_time = started.elapsed();
    let upload_rss = peak_rss_mib(server.id());
    reset_peak_rss(server.id());

    let created = Instant::now();
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
    let mut validating_done: Option<Duration> = None;
    let batch = loop {
        let b: Value = http
            .get(format!("{api}/batches/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let status = b["status"].as_str().unwrap_or_default().to_owned();
        if validating_done.is_none() && status != "validating" {
            validating_done = Some(created.elapsed());
        }
        if matches!(status.as_str(), "completed" | "failed" | "cancelled" | "expired") {
            break b;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let total = created.elapsed();
    let rss = peak_rss_mib(server.id());
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(
        batch["request_counts"]["completed"].as_u64(),
        Some(args.lines as u64),
        "{batch}"
    );

    println!("batchd overhead benchmark (instant fake backend on loopback)");
    println!("  lines                      {}", args.lines);
    println!("  input size                 {:.1} MB", input_bytes as f64 / 1e6);
    println!("  backend concurrency        {}", args.concurrency);
    println!("  upload                     {:.2} s", upload_time.as_secs_f64());
    println!(
        "  validating                 {:.3} s",
        validating_done.unwrap_or_default().as_secs_f64()
    );
    println!("  create -> completed        {:.2} s", total.as_secs_f64());
    println!(
        "  throughput                 {:.0} lines/s",
        args.lines as f64 / total.as_secs_f64()
    );
    println!("  loopback baseline          {baseline_rate:.0} requests/s (client -> fake backend directly)");
    println!("  server peak RSS            {upload_rss:.1} MiB up to the end of the upload");
    println!("                             {rss:.1} MiB from batch create to completed");
    let _ = server.kill();
    let _ = backend.kill();
}
