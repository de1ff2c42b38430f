//! Model-management benchmarks, on release builds of `batchd` and
//! `batchd-fake-backend` as separate processes.
//!
//! - Saturation: a fake backend that behaves like a GPU with continuous
//!   batching (`--gpu-slots` sequences at once, `--ms-per-token` per token,
//!   the rest queued), one batch of lines asking for 8-128 tokens each. Prints
//!   the batch's makespan (create -> completed) against the ideal, where the
//!   backend never idles: max(total token time / slots, longest request). Run
//!   with adaptive concurrency (min 1, max 256) and, for comparison, with a
//!   fixed concurrency equal to the slot count.
//! - Swap: two `command` models (the fake backend with `--startup-ms`,
//!   standing in for weights loading) sharing one slot, a batch for each
//!   queued at once. Prints the time from the last response of the model
//!   that ran first to the first request served by the other, minus that
//!   server's own start time (spawn to listening): what batchd itself adds to
//!   a swap.
//!
//! Run: `bench/run.sh models [--lines N] [--slots S] [--ms-per-token T]`

use std::process::Command;
use std::time::Instant;

use serde_json::json;

#[path = "common.rs"]
mod common;
use common::{Batchd, spawn_listening};

struct Args {
    lines: usize,
    slots: usize,
    ms_per_token: f64,
    bin_dir: String,
}

fn parse_args() -> Args {
    let mut args = Args {
        lines: 2000,
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

fn input(prefix: &str, model: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            json!({"custom_id": format!("{prefix}{i}"), "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": model, "max_tokens": tokens_of(i),
                            "messages": [{"role": "user", "content": format!("item {i}")}]}})
            .to_string()
                + "\n"
        })
        .collect()
}

async fn saturation(args: &Args, min: usize, max: usize) -> (f64, f64) {
    let mut backend_cmd = Command::new(format!("{}/batchd-fake-backend", args.bin_dir));
    backend_cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--gpu-slots",
        &args.slots.to_string(),
        "--ms-per-token",
        &args.ms_per_token.to_string(),
    ]);
    let (mut backend, url) = spawn_listening(backend_cmd);
    let batchd = Batchd::start(
        &args.bin_dir,
        &format!("[[models]]\nname = \"gpu\"\nurl = \"{url}/v1\"\nmin_concurrency = {min}\nmax_concurrency = {max}\n"),
    );
    let total_ms: f64 = (0..args.lines).map(|i| tokens_of(i) as f64 * args.ms_per_token).sum();
    let longest = (0..args.lines).map(tokens_of).max().unwrap() as f64 * args.ms_per_token;
    let ideal = (total_ms / args.slots as f64).max(longest) / 1000.0;
    let text = input("s", "gpu", args.lines);
    let started = Instant::now();
    let id = batchd.create(text).await;
    batchd.wait(&id).await;
    let makespan = started.elapsed().as_secs_f64();
    let _ = backend.kill();
    let _ = backend.wait();
    (makespan, ideal)
}

fn timeline(path: &std::path::Path) -> Vec<(String, u128)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (event, ms) = l.split_once(' ')?;
            Some((event.to_owned(), ms.parse().ok()?))
        })
        .collect()
}

async fn swap(args: &Args, startup_ms: u64) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let fake = format!("{}/batchd-fake-backend", args.bin_dir);
    let mut models = String::from("[scheduler]\nmax_loaded_models = 1\n");
    for name in ["a", "b"] {
        let timeline = dir.path().join(format!("{name}.timeline"));
        models += &format!(
            "[[models]]\nname = \"{name}\"\ncommand = \"exec {fake} --listen 127.0.0.1:{{port}} --gpu-slots {} --ms-per-token {} --startup-ms {startup_ms} --timeline {}\"\nmax_concurrency = 64\nstop_grace_secs = 5\n",
            args.slots,
            args.ms_per_token,
            timeline.display()
        );
    }
    let batchd = Batchd::start(&args.bin_dir, &models);
    let n = 200;
    let a = batchd.create(input("a", "a", n)).await;
    let b = batchd.create(input("b", "b", n)).await;
    batchd.wait(&a).await;
    batchd.wait(&b).await;
    let ta = timeline(&dir.path().join("a.timeline"));
    let tb = timeline(&dir.path().join("b.timeline"));
    let at = |t: &[(String, u128)], e: &str, last: bool| {
        let it = t.iter().filter(|(ev, _)| ev == e).map(|(_, ms)| *ms);
        if last { it.max().unwrap() } else { it.min().unwrap() }
    };
    // Whichever model validated first ran first.
    let (first, second) = if at(&ta, "request", false) < at(&tb, "request", false) {
        (&ta, &tb)
    } else {
        (&tb, &ta)
    };
    let first_last = at(first, "response", true);
    let second_first = at(second, "request", false);
    let second_start = at(second, "listening", false) - at(second, "spawned", false);
    let gap = (second_first - first_last) as f64 / 1000.0;
    (gap, gap - second_start as f64 / 1000.0)
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    println!(
        "saturation: {} lines of 8-128 tokens, GPU-like fake backend with {} slots at {} ms/token",
        args.lines, args.slots, args.ms_per_token
    );
    for (label, min, max) in [("adaptive 1..256", 1, 256), ("fixed = slots", args.slots, args.slots)] {
        let (makespan, ideal) = saturation(&args, min, max).await;
        println!(
            "  {label:<16} makespan {makespan:.2} s, ideal {ideal:.2} s, {:+.1}% over ideal",
            (makespan / ideal - 1.0) * 100.0
        );
    }
    for startup_ms in [0, 2000] {
        let (gap, overhead) = swap(&args, startup_ms).await;
        println!(
            "swap (model server start {startup_ms} ms): last line of A -> first line of B {gap:.3} s; batchd's own overhead {overhead:.3} s"
        );
    }
}
