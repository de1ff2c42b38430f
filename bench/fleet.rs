//! Fleet benchmark, on release builds of `batchd` and `batchd-fake-backend`
//! as separate processes: one model whose `urls` are 1, 2 or 4 GPU-like fake
//! backends (`--gpu-slots` sequences at once, `--ms-per-token` per token, the
//! rest queued), all at one speed or alternating between `--ms-per-token` and
//! twice it. One batch of lines asking for 8-128 tokens each, `--lines` per
//! backend, so every case has about the same ideal time. Prints the batch's
//! makespan (create -> completed) against the ideal, where no backend ever
//! idles: max(total tokens / sum over backends of slots / ms-per-token, the
//! longest request on the fastest backend); the throughput, its scaling
//! against one backend, and how many lines each backend got (its own count).
//! batchd runs with adaptive concurrency (min 1, max 256 per backend).
//!
//! Run: `bench/run.sh fleet [--lines N] [--slots S] [--ms-per-token T]`

use std::process::Command;
use std::time::Instant;

use serde_json::{Value, json};

#[path = "common.rs"]
mod common;
use common::{Batchd, spawn_listening};

struct Args {
    /// Lines per backend.
    lines: usize,
    slots: usize,
    ms_per_token: f64,
    bin_dir: String,
}

fn parse_args() -> Args {
    let mut args = Args {
        lines: 1500,
        slots: 16,
        ms_per_token: 2.0,
        bin_dir: "target/release".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--lines" => args.lines = it.next().unwrap().parse().unwrap(),
            "--slots" => args.slots = it.next().unwrap().parse().unwrap(),
            "--ms-per-token" => args.ms_per_token = it.next().unwrap().parse().unwrap(),
            "--bin-dir" => args.bin_dir = it.next().unwrap(),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

/// Tokens line `i` asks for: 8..=128, spread deterministically.
fn tokens_of(i: usize) -> u64 {
    8 + (i as u64).wrapping_mul(2_654_435_761) % 121
}

fn input(model: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            json!({"custom_id": format!("f{i}"), "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": model, "max_tokens": tokens_of(i),
                            "messages": [{"role": "user", "content": format!("item {i}")}]}})
            .to_string()
                + "\n"
        })
        .collect()
}

struct Outcome {
    lines: usize,
    makespan: f64,
    ideal: f64,
    /// Lines each backend received, by its own count.
    split: Vec<u64>,
}

/// One batch over backends at `speeds` (ms per token each).
async fn run(args: &Args, speeds: &[f64]) -> Outcome {
    let mut fakes = vec![];
    for ms in speeds {
        let mut cmd = Command::new(format!("{}/batchd-fake-backend", args.bin_dir));
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--gpu-slots",
            &args.slots.to_string(),
            "--ms-per-token",
            &ms.to_string(),
        ]);
        fakes.push(spawn_listening(cmd));
    }
    let urls: Vec<String> = fakes.iter().map(|(_, url)| format!("{url}/v1")).collect();
    let batchd = Batchd::start(
        &args.bin_dir,
        &format!(
            "[[models]]\nname = \"gpu\"\nurls = {}\nmin_concurrency = 1\nmax_concurrency = 256\n",
            json!(urls)
        ),
    );
    let lines = args.lines * speeds.len();
    let total_tokens: f64 = (0..lines).map(|i| tokens_of(i) as f64).sum();
    let tokens_per_ms: f64 = speeds.iter().map(|ms| args.slots as f64 / ms).sum();
    let fastest = speeds.iter().copied().fold(f64::INFINITY, f64::min);
    let longest = (0..lines).map(tokens_of).max().unwrap() as f64 * fastest;
    let ideal = (total_tokens / tokens_per_ms).max(longest) / 1000.0;
    let text = input("gpu", lines);
    let started = Instant::now();
    let id = batchd.create(text).await;
    batchd.wait(&id).await;
    let makespan = started.elapsed().as_secs_f64();
    let mut split = vec![];
    for (_, url) in &fakes {
        let stats: Value = batchd
            .http
            .get(format!("{url}/fake/stats"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        split.push(stats["requests"].as_u64().unwrap_or(0));
    }
    drop(batchd);
    for (mut fake, _) in fakes {
        let _ = fake.kill();
        let _ = fake.wait();
    }
    Outcome {
        lines,
        makespan,
        ideal,
        split,
    }
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let (m, slow) = (args.ms_per_token, args.ms_per_token * 2.0);
    println!(
        "fleet: {} lines of 8-128 tokens per backend; GPU-like fake backends with {} slots each; \
         batchd adaptive concurrency 1..256 per backend",
        args.lines, args.slots
    );
    let cases: Vec<(&str, Vec<f64>)> = vec![
        ("equal", vec![m]),
        ("equal", vec![m; 2]),
        ("equal", vec![m; 4]),
        ("unequal", vec![m, slow]),
        ("unequal", vec![m, slow, m, slow]),
    ];
    println!(
        "{:>8}  {:<8} {:<16} {:>6} {:>10} {:>8} {:>10} {:>8} {:>8}  lines per backend",
        "backends", "speeds", "ms/token", "lines", "makespan_s", "ideal_s", "overhead_%", "lines/s", "scaling"
    );
    let mut baseline = None;
    for (label, speeds) in cases {
        let o = run(&args, &speeds).await;
        let throughput = o.lines as f64 / o.makespan;
        let base = *baseline.get_or_insert(throughput);
        let ms: Vec<String> = speeds.iter().map(f64::to_string).collect();
        let split: Vec<String> = o.split.iter().map(u64::to_string).collect();
        println!(
            "{:>8}  {label:<8} {:<16} {:>6} {:>10.2} {:>8.2} {:>+10.1} {:>8.1} {:>7.2}x  {}",
            speeds.len(),
            ms.join(","),
            o.lines,
            o.makespan,
            o.ideal,
            (o.makespan / o.ideal - 1.0) * 100.0,
            throughput,
            throughput / base,
            split.join(" ")
        );
    }
}
