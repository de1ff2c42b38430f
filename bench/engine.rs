//! Embedded-engine benchmark: generated tokens per second of `batchd engine`
//! on a GGUF model at 1, 8 and 32 concurrent requests, next to a direct
//! llama.cpp batched-decode loop (the same file, threads and sequence count,
//! no HTTP, no scheduler): the upper bound the engine is measured against.
//!
//! Run: `bench/run.sh engine [--model FILE.gguf] [--tokens N] [--threads T]`

use std::process::Command;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;
use serde_json::{Value, json};

#[path = "common.rs"]
mod common;
use common::spawn_listening;

const PROMPT: &str = "Write a short story about a lighthouse keeper who finds a message in a bottle.";

struct Args {
    model: String,
    tokens: u32,
    threads: i32,
    bin_dir: String,
    levels: Vec<u32>,
}

fn parse_args() -> Args {
    let mut a = Args {
        model: "data/models/gemma-3-270m-q4_k_m.gguf".into(),
        tokens: 64,
        threads: std::thread::available_parallelism()
            .map(|n| n.get() as i32)
            .unwrap_or(2),
        bin_dir: "target/release".into(),
        levels: vec![1, 8, 32],
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--model" => a.model = it.next().unwrap(),
            "--tokens" => a.tokens = it.next().unwrap().parse().unwrap(),
            "--threads" => a.threads = it.next().unwrap().parse().unwrap(),
            "--bin-dir" => a.bin_dir = it.next().unwrap(),
            "--levels" => a.levels = it.next().unwrap().split(',').map(|s| s.parse().unwrap()).collect(),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// Direct loop: `seqs` copies of the prompt prefilled in one batch, then
/// greedy decoding of `tokens` tokens for every sequence, one decode per step.
fn direct_loop(backend: &LlamaBackend, model: &LlamaModel, seqs: u32, tokens: u32, threads: i32) -> f64 {
    let vocab = model.vocab();
    let prompt = vocab.tokenize(PROMPT.as_bytes(), true, true);
    let ctx_per_seq = prompt.len() as u32 + tokens + 8;
    // Every prompt is prefilled in one decode, so each sequence's last prompt
    // token has its logits in that one output.
    let batch_size = (prompt.len() as u32 * seqs).max(512);
    let params = LlamaContextParams::default()
        .with_n_ctx(std::num::NonZeroU32::new(ctx_per_seq * seqs))
        .with_n_batch(batch_size)
        .with_n_ubatch(batch_size)
        .with_n_seq_max(seqs)
        .with_kv_unified(true)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let mut ctx = model.new_context(backend, params).unwrap();
    let mut batch = LlamaBatch::new(batch_size as usize, seqs as i32);
    let started = Instant::now();
    let mut logits_at = vec![0i32; seqs as usize];
    batch.clear();
    for s in 0..seqs {
        for (i, token) in prompt.iter().enumerate() {
            let last = i + 1 == prompt.len();
            if last {
                logits_at[s as usize] = batch.n_tokens();
            }
            batch.add(*token, i as i32, &[s as i32], last).unwrap();
        }
    }
    ctx.decode(&mut batch).unwrap();
    let mut samplers: Vec<LlamaSampler> = (0..seqs).map(|_| LlamaSampler::greedy()).collect();
    let mut generated = 0u64;
    for step in 0..tokens {
        let next: Vec<_> = (0..seqs as usize)
            .map(|s| samplers[s].sample(&ctx, logits_at[s]))
            .collect();
        generated += u64::from(seqs);
        if step + 1 == tokens {
            break;
        }
        batch.clear();
        for (s, token) in next.into_iter().enumerate() {
            logits_at[s] = batch.n_tokens();
            batch
                .add(token, prompt.len() as i32 + step as i32, &[s as i32], true)
                .unwrap();
        }
        ctx.decode(&mut batch).unwrap();
    }
    generated as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    assert!(
        std::path::Path::new(&args.model).is_file(),
        "no model at {} (scripts/setup-model.sh)",
        args.model
    );
    let max_parallel = *args.levels.iter().max().unwrap();
    let mut engine = Command::new(format!("{}/batchd", args.bin_dir));
    engine
        .args([
            "engine",
            "--name",
            "bench",
            "--listen",
            "127.0.0.1:0",
            "--model",
            &args.model,
        ])
        .args(["--parallel", &max_parallel.to_string(), "--ctx-per-seq", "512"])
        .args(["--threads", &args.threads.to_string()]);
    let (mut child, url) = spawn_listening(engine);
    let http = batchd::http_client::client();

    println!(
        "embedded engine benchmark: {} ({} threads, {} tokens per request, greedy, EOS ignored on both sides)",
        args.model, args.threads, args.tokens
    );
    let mut engine_rates = vec![];
    for &c in &args.levels {
        // Warm-up request so model pages are resident.
        let body = json!({"model": "bench", "prompt": PROMPT, "max_tokens": args.tokens, "temperature": 0, "ignore_eos": true});
        http.post(format!("{url}/v1/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let started = Instant::now();
        let requests = (0..c).map(|_| {
            let (http, url, body) = (http.clone(), url.clone(), body.clone());
            async move {
                let r: Value = http
                    .post(format!("{url}/v1/completions"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                r["usage"]["completion_tokens"].as_u64().unwrap()
            }
        });
        let tokens: u64 = futures::future::join_all(requests).await.into_iter().sum();
        let rate = tokens as f64 / started.elapsed().as_secs_f64();
        engine_rates.push((c, rate, tokens));
    }
    let _ = child.kill();
    let _ = child.wait();

    let mut backend = LlamaBackend::init().unwrap();
    backend.void_logs();
    let model = LlamaModel::load_from_file(&backend, &args.model, &LlamaModelParams::default()).unwrap();
    println!("  concurrency   engine tok/s   direct loop tok/s   engine/direct");
    for (c, rate, tokens) in engine_rates {
        let direct = direct_loop(&backend, &model, c, args.tokens, args.threads);
        println!(
            "  {c:>11}   {rate:>12.1}   {direct:>17.1}   {:>12.0}%   ({tokens} tokens generated by the engine)",
            100.0 * rate / direct
        );
    }
}
