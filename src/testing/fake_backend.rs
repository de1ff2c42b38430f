//! A fake OpenAI-compatible model server: a real HTTP server that answers
//! chat, completions, embeddings and responses requests instantly (or after a
//! configured delay), echoing the prompt. Markers in the prompt text script
//! failures, so one batch can mix successes, errors and retries:
//!
//! - `[status=NNN]`: answer with HTTP NNN and an OpenAI error body;
//! - `[delay_ms=N]`: wait N ms before answering;
//! - `[fail_times=N]`: the first N requests with this exact text get 503.
//! - `[response_bytes=N]` (chat): the answer's content is padded with N bytes;
//! - `[prompt_tokens=N]` (chat): the answer reports N prompt tokens (and
//!   total tokens), whatever the prompt, like a buggy or hostile server.
//! - `[crash_server]`: only with `FakeOptions::exit_on_crash_marker` (the
//!   binary's `--exit-on-crash-marker`): the whole process exits at once, like
//!   a model server that a request crashes or OOMs.
//!
//! With `FakeOptions::gpu` it behaves like a GPU server with continuous
//! batching: at most `slots` requests generate at once, each for
//! `max_tokens` x `ms_per_token`, and the rest wait in a FIFO queue; `/metrics`
//! reports vLLM's running and waiting gauges. It also answers vLLM's sleep
//! mode endpoints (`/sleep`, `/wake_up`, `/is_sleeping`).
//!
//! With `FakeOptions::tls` it serves HTTPS (`tls.rs`), like a remote vLLM
//! behind a certificate of a private CA.

pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::net::TcpListener;

#[derive(Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub in_flight: AtomicU64,
    pub max_in_flight: AtomicU64,
    /// GPU mode: requests generating now, and waiting for a slot.
    pub running: AtomicU64,
    pub waiting: AtomicU64,
    pub sleeps: AtomicU64,
    pub wakes: AtomicU64,
    pub sleeping: std::sync::atomic::AtomicBool,
}

/// A GPU-like server: `slots` sequences at once, `ms_per_token` per token.
#[derive(Clone, Copy, Debug)]
pub struct GpuModel {
    pub slots: usize,
    pub ms_per_token: f64,
}

#[derive(Clone, Debug, Default)]
pub struct FakeOptions {
    /// Delay before every answer (when not in GPU mode).
    pub delay: Duration,
    pub gpu: Option<GpuModel>,
    /// Appends `request <unix_ms>` / `response <unix_ms>` lines (benchmarks).
    pub timeline: Option<std::path::PathBuf>,
    /// Serve HTTPS with this identity (`tls::server_config_from_pem`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Exit the process on a request whose prompt holds `[crash_server]`
    /// (never set in-process: it would end the test).
    pub exit_on_crash_marker: bool,
}

/// Appends one timestamped event to the timeline file, if there is one.
pub fn timeline_event(path: Option<&std::path::Path>, event: &str) {
    use std::io::Write;
    let Some(path) = path else { return };
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    // One `write` per event: `writeln!` on a `File` writes each piece
    // separately, and concurrent requests' events would interleave.
    let line = format!("{event} {ms}\n");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = f.write_all(line.as_bytes());
    }
}

#[derive(Clone)]
struct FakeState {
    delay: Duration,
    gpu: Option<(GpuModel, Arc<tokio::sync::Semaphore>)>,
    timeline: Option<Arc<std::path::PathBuf>>,
    exit_on_crash_marker: bool,
    stats: Arc<Stats>,
    attempts: Arc<Mutex<HashMap<String, u64>>>,
}

/// A running fake backend.
pub struct FakeBackend {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    scheme: &'static str,
    task: tokio::task::JoinHandle<()>,
}

impl FakeBackend {
    /// Starts on `listen` (port 0 for a free port); every answer waits `delay` first.
    pub async fn start(listen: SocketAddr, delay: Duration) -> std::io::Result<FakeBackend> {
        Self::start_with(
            listen,
            FakeOptions {
                delay,
                ..FakeOptions::default()
            },
        )
        .await
    }

    pub async fn start_with(listen: SocketAddr, options: FakeOptions) -> std::io::Result<FakeBackend> {
        // Tests start a fake backend before building their own plain
        // `reqwest::Client`s, which need a default rustls provider.
        crate::http_client::install_crypto_provider();
        let stats = Arc::new(Stats::default());
        let state = FakeState {
            delay: options.delay,
            gpu: options.gpu.map(|g| (g, Arc::new(tokio::sync::Semaphore::new(g.slots)))),
            timeline: options.timeline.map(Arc::new),
            exit_on_crash_marker: options.exit_on_crash_marker,
            stats: stats.clone(),
            attempts: Arc::default(),
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/completions", post(completions))
            .route("/v1/embeddings", post(embeddings))
            .route("/v1/responses", post(responses))
            .route(
                "/v1/models",
                get(|| async { Json(json!({"object": "list", "data": []})) }),
            )
            .route("/health", get(|| async { "ok" }))
            .route("/metrics", get(metrics))
            .route("/sleep", post(sleep))
            .route("/wake_up", post(wake_up))
            .route("/is_sleeping", get(is_sleeping))
            .route("/fake/stats", get(stats_handler))
            .with_state(state);
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (scheme, task) = match options.tls {
            None => (
                "http",
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app).await;
                }),
            ),
            Some(config) => {
                let listener = tls::TlsListener::new(listener, config)?;
                (
                    "https",
                    tokio::spawn(async move {
                        let _ = axum::serve(listener, app).await;
                    }),
                )
            }
        };
        Ok(FakeBackend {
            addr,
            stats,
            scheme,
            task,
        })
    }

    /// Base URL as batchd's config wants it, ending in `/v1`.
    pub fn url(&self) -> String {
        format!("{}://{}/v1", self.scheme, self.addr)
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn stats_handler(State(s): State<FakeState>) -> Json<Value> {
    Json(json!({
        "requests": s.stats.requests.load(Ordering::Relaxed),
        "in_flight": s.stats.in_flight.load(Ordering::Relaxed),
        "max_in_flight": s.stats.max_in_flight.load(Ordering::Relaxed),
        "sleeps": s.stats.sleeps.load(Ordering::Relaxed),
        "wakes": s.stats.wakes.load(Ordering::Relaxed),
    }))
}

async fn metrics(State(s): State<FakeState>) -> String {
    format!(
        "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{model_name=\"fake\"}} {}\n\
         # TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{model_name=\"fake\"}} {}\n",
        s.stats.running.load(Ordering::Relaxed),
        s.stats.waiting.load(Ordering::Relaxed)
    )
}

async fn sleep(State(s): State<FakeState>) -> &'static str {
    s.stats.sleeping.store(true, Ordering::Relaxed);
    s.stats.sleeps.fetch_add(1, Ordering::Relaxed);
    "ok"
}

async fn wake_up(State(s): State<FakeState>) -> &'static str {
    s.stats.sleeping.store(false, Ordering::Relaxed);
    s.stats.wakes.fetch_add(1, Ordering::Relaxed);
    "ok"
}

async fn is_sleeping(State(s): State<FakeState>) -> Json<Value> {
    Json(json!({"is_sleeping": s.stats.sleeping.load(Ordering::Relaxed)}))
}

/// GPU mode: waits for a slot in FIFO order, then generates `tokens`.
async fn generate(state: &FakeState, tokens: u64) {
    let Some((gpu, slots)) = &state.gpu else { return };
    state.stats.waiting.fetch_add(1, Ordering::Relaxed);
    let slot = slots.acquire().await.expect("never closed");
    state.stats.waiting.fetch_sub(1, Ordering::Relaxed);
    state.stats.running.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(tokens as f64 * gpu.ms_per_token / 1000.0)).await;
    state.stats.running.fetch_sub(1, Ordering::Relaxed);
    drop(slot);
}

/// Tokens a request asks to generate (GPU mode), default 16.
fn max_tokens(body: &Value) -> u64 {
    ["max_tokens", "max_completion_tokens", "max_output_tokens"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_u64))
        .unwrap_or(16)
}

/// The prompt text of a request, whatever the endpoint.
fn text_of(body: &Value) -> String {
    fn strings(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => out.push(s.clone()),
            Value::Array(items) => items.iter().for_each(|i| strings(i, out)),
            Value::Object(map) => {
                if let Some(c) = map.get("content") {
                    strings(c, out)
                } else if let Some(t) = map.get("text") {
                    strings(t, out)
                }
            }
            _ => {}
        }
    }
    let mut out = vec![];
    for key in ["messages", "prompt", "input"] {
        if let Some(v) = body.get(key) {
            strings(v, &mut out);
        }
    }
    out.join("\n")
}

fn marker(text: &str, name: &str) -> Option<u64> {
    let start = text.find(&format!("[{name}="))? + name.len() + 2;
    let end = text[start..].find(']')? + start;
    text[start..end].parse().ok()
}

fn words(text: &str) -> u64 {
    (text.split_whitespace().count() as u64).max(1)
}

/// Runs the scripted behaviour; `Err` is the response to send instead of success.
async fn script(state: &FakeState, text: &str) -> Result<(), Response> {
    timeline_event(state.timeline.as_deref().map(|p| p.as_path()), "request");
    state.stats.requests.fetch_add(1, Ordering::Relaxed);
    if state.exit_on_crash_marker && text.contains("[crash_server]") {
        std::process::exit(70);
    }
    let now = state.stats.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
    state.stats.max_in_flight.fetch_max(now, Ordering::Relaxed);
    let delay = marker(text, "delay_ms")
        .map(Duration::from_millis)
        .unwrap_or(state.delay);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if state.stats.sleeping.load(Ordering::Relaxed) {
        state.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        return Err(error_response(503));
    }
    state.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    if let Some(times) = marker(text, "fail_times") {
        let mut attempts = state.attempts.lock().expect("lock");
        let seen = attempts.entry(text.to_owned()).or_insert(0);
        *seen += 1;
        if *seen <= times {
            return Err(error_response(503));
        }
    }
    if let Some(status) = marker(text, "status") {
        return Err(error_response(status as u16));
    }
    Ok(())
}

fn error_response(status: u16) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({"error": {"message": format!("fake backend error {status}"), "type": "fake_error", "param": null, "code": null}});
    (code, Json(body)).into_response()
}

fn model_of(body: &Value) -> Value {
    body.get("model").cloned().unwrap_or(Value::Null)
}

async fn chat(State(s): State<FakeState>, Json(body): Json<Value>) -> Response {
    let text = text_of(&body);
    if let Err(r) = script(&s, &text).await {
        return r;
    }
    let w = words(&text);
    if s.gpu.is_some() {
        let tokens = max_tokens(&body);
        generate(&s, tokens).await;
        timeline_event(s.timeline.as_deref().map(|p| p.as_path()), "response");
        return Json(json!({
            "id": format!("chatcmpl-{}", s.stats.requests.load(Ordering::Relaxed)),
            "object": "chat.completion", "created": crate::ids::now(), "model": model_of(&body),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "x ".repeat(tokens as usize)},
                         "finish_reason": "length", "logprobs": null}],
            "usage": {"prompt_tokens": w, "completion_tokens": tokens, "total_tokens": w + tokens},
        }))
        .into_response();
    }
    let mut content = format!("echo: {text}");
    if let Some(pad) = marker(&text, "response_bytes") {
        content.push_str(&"x".repeat(pad as usize));
    }
    let prompt_tokens = marker(&text, "prompt_tokens").unwrap_or(w);
    Json(json!({
        "id": format!("chatcmpl-{}", s.stats.requests.load(Ordering::Relaxed)),
        "object": "chat.completion", "created": crate::ids::now(), "model": model_of(&body),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop", "logprobs": null}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": w + 1,
                  "total_tokens": prompt_tokens.saturating_add(w + 1)},
    }))
    .into_response()
}

async fn completions(State(s): State<FakeState>, Json(body): Json<Value>) -> Response {
    let text = text_of(&body);
    if let Err(r) = script(&s, &text).await {
        return r;
    }
    let w = words(&text);
    Json(json!({
        "id": format!("cmpl-{}", s.stats.requests.load(Ordering::Relaxed)),
        "object": "text_completion", "created": crate::ids::now(), "model": model_of(&body),
        "choices": [{"index": 0, "text": format!("echo: {text}"), "finish_reason": "stop", "logprobs": null}],
        "usage": {"prompt_tokens": w, "completion_tokens": w + 1, "total_tokens": 2 * w + 1},
    }))
    .into_response()
}

async fn embeddings(State(s): State<FakeState>, Json(body): Json<Value>) -> Response {
    let text = text_of(&body);
    if let Err(r) = script(&s, &text).await {
        return r;
    }
    let inputs: Vec<String> = match body.get("input") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().unwrap_or_default().to_owned())
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => vec![String::new()],
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let seed = input
                .bytes()
                .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
            let vector: Vec<f64> = (0..8).map(|d| ((seed >> (d * 4)) & 0xF) as f64 / 15.0 - 0.5).collect();
            json!({"object": "embedding", "index": i, "embedding": vector})
        })
        .collect();
    let w = words(&text);
    Json(json!({"object": "list", "data": data, "model": model_of(&body),
                "usage": {"prompt_tokens": w, "total_tokens": w}}))
    .into_response()
}

async fn responses(State(s): State<FakeState>, Json(body): Json<Value>) -> Response {
    let text = text_of(&body);
    if let Err(r) = script(&s, &text).await {
        return r;
    }
    let w = words(&text);
    Json(json!({
        "id": format!("resp_{}", s.stats.requests.load(Ordering::Relaxed)),
        "object": "response", "created_at": crate::ids::now(), "status": "completed", "model": model_of(&body),
        "output": [{"type": "message", "role": "assistant",
                    "content": [{"type": "output_text", "text": format!("echo: {text}")}]}],
        "usage": {"input_tokens": w, "output_tokens": w + 1, "total_tokens": 2 * w + 1},
    }))
    .into_response()
}
