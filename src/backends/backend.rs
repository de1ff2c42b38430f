//! One model server (one `urls` entry, or one managed replica): sends one
//! attempt of a request, keeps its own adaptive concurrency limit, and knows
//! whether it is in rotation. Retries and the choice of server are the
//! pool's (`pool.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::limiter::{Limiter, Signal, Slot};
use crate::config::ModelConfig;

/// Failed attempts in a row (timeouts, 5xx) that take a server out of rotation.
pub const FAILURES_TO_DOWN: u32 = 3;
/// How often a server out of rotation is probed.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Whether a server takes lines, as `/v1/models` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendState {
    /// In rotation.
    Healthy,
    /// An external server that stopped answering: out of rotation, probed
    /// until it answers again.
    Down,
    /// A managed replica being started.
    Starting,
    /// A managed replica that is not running (not placed, unloaded, crashed).
    Stopped,
    /// A managed replica making way for another model: takes no new lines,
    /// is unloaded once its last one is done.
    Draining,
}

pub struct Backend {
    pub model: String,
    /// Its place in the model's list (`urls` order, or the replica's place).
    pub index: usize,
    /// The managed replica's device, if it has one.
    pub device: Option<String>,
    /// Started and watched by the model manager (which decides its state),
    /// rather than an external server this backend probes itself.
    managed: bool,
    /// Changes when a managed replica is started on a new port.
    base_url: std::sync::RwLock<Arc<str>>,
    api_key: Option<String>,
    http: reqwest::Client,
    limiter: Arc<Limiter>,
    /// The pool's: woken when this server comes back into rotation.
    room: Arc<Notify>,
    /// `limits.max_response_bytes`: a longer body is not read.
    max_response_bytes: Arc<AtomicU64>,
    health: Mutex<Health>,
    /// Requests that got their final answer here.
    served: AtomicU64,
    /// A managed replica's process generation (the manager's number), so a
    /// line that got no answer can tell a restarted server from the dead one.
    generation: AtomicU64,
}

struct Health {
    state: BackendState,
    failures_in_a_row: u32,
    /// Cancelled when the server leaves rotation, cutting the requests in
    /// flight on it so they are sent to the others; replaced at once.
    left_rotation: CancellationToken,
    probing: bool,
}

/// `limits.max_response_bytes` until `set_max_response_bytes` says otherwise.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;

/// What finally happened to one request, after any retries.
#[derive(Debug)]
pub enum Outcome {
    /// The backend answered (any status; 2xx is a success).
    Response {
        status: u16,
        request_id: Option<String>,
        body: Bytes,
    },
    /// No answer: connection failures or timeouts until attempts ran out.
    Unreachable { message: String },
    /// The body was longer than `limit` bytes, so it was not read to the end.
    /// Final: the same request would most likely get the same answer.
    TooLarge { limit: u64 },
}

/// One attempt on one server.
pub enum Attempt {
    Done {
        outcome: Outcome,
        /// The server's `Retry-After`, if it gave one.
        retry_after: Option<Duration>,
    },
    /// The server left rotation while the request was in flight: send it
    /// to another one.
    Cut,
}

/// A server's numbers for `/v1/models` and `/metrics`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackendSnapshot {
    pub id: String,
    /// `None` while a managed replica is not running.
    pub url: Option<String>,
    pub device: Option<String>,
    pub state: BackendState,
    pub in_flight: usize,
    pub concurrency_limit: usize,
    pub lines_served: u64,
}

/// How a model's servers are built: the shared parts.
pub struct BackendParts {
    pub http: reqwest::Client,
    pub room: Arc<Notify>,
    pub max_response_bytes: Arc<AtomicU64>,
}

impl Backend {
    /// Server `index` of `model`: at `url` (external), or a managed replica
    /// on `device` that starts `Stopped` with no URL.
    pub fn new(
        model: &ModelConfig,
        index: usize,
        url: Option<&str>,
        device: Option<String>,
        parts: &BackendParts,
    ) -> Self {
        let managed = model.is_managed();
        Self {
            model: model.name.clone(),
            index,
            device,
            managed,
            base_url: std::sync::RwLock::new(Arc::from(url.unwrap_or_default().trim_end_matches('/'))),
            api_key: model.api_key.clone(),
            http: parts.http.clone(),
            limiter: Limiter::with_room(model.min_concurrency, model.max_concurrency, parts.room.clone()),
            room: parts.room.clone(),
            max_response_bytes: parts.max_response_bytes.clone(),
            health: Mutex::new(Health {
                state: if managed {
                    BackendState::Stopped
                } else {
                    BackendState::Healthy
                },
                failures_in_a_row: 0,
                left_rotation: CancellationToken::new(),
                probing: false,
            }),
            served: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        }
    }

    /// Points a managed replica at its (re)started server, e.g.
    /// `http://127.0.0.1:PORT/v1`, of process generation `generation`, and
    /// puts it in rotation.
    pub fn set_serving(&self, url: &str, generation: u64) {
        *self.base_url.write().expect("base url lock") = Arc::from(url.trim_end_matches('/'));
        self.generation.store(generation, Ordering::Relaxed);
        self.set_state(BackendState::Healthy);
    }

    /// The managed replica's process generation (0 for external servers).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url.read().expect("base url lock"), path)
    }

    pub fn state(&self) -> BackendState {
        self.lock_health().state
    }

    /// Whether lines may be sent here now.
    pub fn in_rotation(&self) -> bool {
        self.state() == BackendState::Healthy
    }

    /// The model manager's word on a managed replica (starting, healthy,
    /// draining, stopped). Leaving rotation cuts the requests in flight.
    pub fn set_state(&self, state: BackendState) {
        let mut health = self.lock_health();
        let was = std::mem::replace(&mut health.state, state);
        health.failures_in_a_row = 0;
        // Draining lets in-flight lines finish; only a dead or stopped
        // replica cuts them (they could never be answered).
        if was == BackendState::Healthy && state == BackendState::Stopped {
            Self::cut_in_flight(&mut health);
        }
        drop(health);
        if state == BackendState::Healthy {
            self.room.notify_waiters();
        }
    }

    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }

    /// A request slot, if the server has room (and, with `in_rotation`, is
    /// in rotation). Taken under the health lock, so a slot is never granted
    /// on a replica that `stop_if_idle` has just found empty and stopped.
    pub fn try_acquire(&self, in_rotation: bool) -> Option<Slot> {
        let health = self.lock_health();
        if in_rotation && health.state != BackendState::Healthy {
            return None;
        }
        let slot = self.limiter.try_acquire();
        drop(health);
        slot
    }

    /// Takes a draining replica out of service if no line is in flight on
    /// it, atomically with `try_acquire`: true if it is now `Stopped`.
    pub fn stop_if_idle(&self) -> bool {
        let mut health = self.lock_health();
        if self.limiter.in_flight() > 0 {
            return false;
        }
        health.state = BackendState::Stopped;
        health.failures_in_a_row = 0;
        true
    }

    pub fn snapshot(&self) -> BackendSnapshot {
        let state = self.state();
        let url = self.base_url.read().expect("base url lock").to_string();
        // A stopped replica's last URL is not its address any more.
        let stopped_replica = self.managed && state == BackendState::Stopped;
        let shown = !url.is_empty() && !stopped_replica;
        BackendSnapshot {
            id: self.index.to_string(),
            url: shown.then(|| without_credentials(&url)),
            device: self.device.clone(),
            state,
            in_flight: self.limiter.in_flight(),
            concurrency_limit: self.limiter.limit(),
            lines_served: self.served.load(Ordering::Relaxed),
        }
    }

    /// Counts a final answer from this server.
    pub fn count_served(&self) {
        self.served.fetch_add(1, Ordering::Relaxed);
    }

    /// Polls the server's Prometheus `/metrics` for vLLM's waiting-request
    /// gauge (vLLM, SGLang's vLLM-compatible names, batchd's engine) and
    /// feeds it to the limiter. Servers without it are asked rarely.
    pub fn spawn_queue_watch(self: &Arc<Self>, every: Duration) {
        let backend = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut misses = 0u32;
            loop {
                let pause = if misses >= 3 { every * 30 } else { every };
                tokio::time::sleep(pause).await;
                let Some(backend) = backend.upgrade() else { return };
                let url = backend.url("").trim_end_matches("/v1").to_owned() + "/metrics";
                let waiting = match backend.http.get(&url).timeout(Duration::from_secs(2)).send().await {
                    Ok(r) if r.status().is_success() => r.text().await.ok().and_then(|t| waiting_requests(&t)),
                    _ => None,
                };
                match waiting {
                    Some(n) => {
                        misses = 0;
                        backend.limiter.record_queue(n);
                    }
                    None => misses += 1,
                }
            }
        });
    }

    /// One attempt: sends `body` to `path` (relative to the base URL, e.g.
    /// `/chat/completions`). Cut short if the server leaves rotation meanwhile.
    pub async fn attempt(&self, path: &str, body: Bytes) -> Attempt {
        let left_rotation = self.lock_health().left_rotation.clone();
        let url = self.url(path);
        tokio::select! {
            biased;
            (outcome, retry_after) = self.send_once(&url, body) => Attempt::Done { outcome, retry_after },
            _ = left_rotation.cancelled() => Attempt::Cut,
        }
    }

    /// Feeds an attempt's outcome to the limiter and to the server's health:
    /// a refused connection takes an external server out of rotation at
    /// once, `FAILURES_TO_DOWN` timeouts or 5xx in a row too. Managed
    /// replicas are judged by the model manager, which watches the process.
    pub fn observe(self: &Arc<Self>, outcome: &Outcome) {
        self.limiter.record(match outcome {
            Outcome::Response { status: 429 | 503, .. } | Outcome::Unreachable { .. } => Signal::Overload,
            Outcome::Response { status: 200..=299, .. } => Signal::Success,
            Outcome::Response { .. } | Outcome::TooLarge { .. } => Signal::Neutral,
        });
        let mut health = self.lock_health();
        let failed = match outcome {
            Outcome::Unreachable { message } if message.starts_with(CONNECT_FAILED) => FAILURES_TO_DOWN,
            Outcome::Unreachable { .. } | Outcome::Response { status: 500.., .. } => 1,
            _ => {
                health.failures_in_a_row = 0;
                return;
            }
        };
        health.failures_in_a_row = health.failures_in_a_row.saturating_add(failed);
        if self.managed || health.state != BackendState::Healthy || health.failures_in_a_row < FAILURES_TO_DOWN {
            return;
        }
        health.state = BackendState::Down;
        Self::cut_in_flight(&mut health);
        tracing::warn!(model = %self.model, backend = self.index, "backend stopped answering; taken out of rotation until it answers again");
        if !std::mem::replace(&mut health.probing, true) {
            tokio::spawn(probe_until_back(Arc::downgrade(self)));
        }
    }

    fn cut_in_flight(health: &mut Health) {
        std::mem::take(&mut health.left_rotation).cancel();
    }

    fn lock_health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().expect("backend health lock")
    }

    /// One probe of a server out of rotation: `GET {base}/models`, which
    /// every OpenAI-compatible server answers.
    async fn probe(&self) -> bool {
        let mut request = self.http.get(self.url("/models")).timeout(Duration::from_secs(5));
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        request.send().await.is_ok_and(|r| r.status().is_success())
    }

    async fn send_once(&self, url: &str, body: Bytes) -> (Outcome, Option<Duration>) {
        let mut request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return (Outcome::Unreachable { message: describe(e) }, None),
        };
        let status = response.status().as_u16();
        let request_id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let limit = self.max_response_bytes.load(Ordering::Relaxed);
        match read_limited(response, limit).await {
            Ok(Some(body)) => (
                Outcome::Response {
                    status,
                    request_id,
                    body,
                },
                retry_after,
            ),
            Ok(None) => (Outcome::TooLarge { limit }, None),
            Err(e) => (Outcome::Unreachable { message: describe(e) }, None),
        }
    }
}

/// Probes a server out of rotation every `PROBE_EVERY` until it answers,
/// then puts it back (and wakes lines waiting for room).
async fn probe_until_back(backend: std::sync::Weak<Backend>) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let Some(backend) = backend.upgrade() else { return };
        if backend.probe().await {
            let mut health = backend.lock_health();
            health.probing = false;
            if health.state == BackendState::Down {
                health.state = BackendState::Healthy;
                health.failures_in_a_row = 0;
                drop(health);
                tracing::info!(model = %backend.model, backend = backend.index, "backend answers again; back in rotation");
                backend.room.notify_waiters();
            }
            return;
        }
    }
}

/// The body, chunk by chunk, or `None` as soon as it is known to be longer
/// than `limit`: `bytes()` would buffer any size, and one huge answer
/// (embeddings of thousands of inputs, large `n` with logprobs) could exhaust
/// the memory every tenant shares (audit H3). Dropping the response closes
/// the connection, so the rest is never received.
async fn read_limited(mut response: reqwest::Response, limit: u64) -> Result<Option<Bytes>, reqwest::Error> {
    let declared = response.content_length();
    if declared.is_some_and(|len| len > limit) {
        return Ok(None);
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(chunk) = response.chunk().await? {
        if (body.len() + chunk.len()) as u64 > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body.freeze()))
}

/// The sum of `vllm:num_requests_waiting` samples in a Prometheus text page.
fn waiting_requests(page: &str) -> Option<u64> {
    let mut found = None;
    for line in page.lines() {
        let Some(rest) = line.strip_prefix("vllm:num_requests_waiting") else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let value = rest.rsplit(' ').next()?.parse::<f64>().ok()?;
        *found.get_or_insert(0) += value as u64;
    }
    found
}

/// The URL as every tenant may see it in `/v1/models`: without a
/// `user:password@` part.
fn without_credentials(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string().trim_end_matches('/').to_owned()
        }
        _ => url.to_owned(),
    }
}

/// How a failed connection's message starts (`observe` reads it).
const CONNECT_FAILED: &str = "could not connect to the backend";

pub fn is_retryable(status: u16) -> bool {
    status == 408 || status == 429 || status >= 500
}

/// A short description of a transport error without the URL's query or any body.
fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "the backend did not answer in time".into()
    } else if e.is_connect() {
        // The innermost cause says why: "Connection refused", or for HTTPS
        // "invalid peer certificate: UnknownIssuer" (no URL, no body).
        match innermost_cause(&e) {
            Some(cause) => format!("{CONNECT_FAILED}: {cause}"),
            None => CONNECT_FAILED.into(),
        }
    } else {
        format!("the connection to the backend failed: {}", e.without_url())
    }
}

fn innermost_cause(e: &reqwest::Error) -> Option<String> {
    let mut cause = std::error::Error::source(e)?;
    while let Some(next) = cause.source() {
        cause = next;
    }
    Some(cause.to_string())
}

#[cfg(test)]
mod tests {
    use super::{waiting_requests, without_credentials};

    #[test]
    fn urls_shown_to_tenants_carry_no_credentials() {
        assert_eq!(
            without_credentials("http://user:secret@gpu-a:8000/v1"),
            "http://gpu-a:8000/v1"
        );
        assert_eq!(without_credentials("http://gpu-a:8000/v1"), "http://gpu-a:8000/v1");
    }

    #[test]
    fn reads_vllm_waiting_gauge_with_and_without_labels() {
        let page = "# HELP vllm:num_requests_waiting Requests waiting\n\
                    vllm:num_requests_waiting{model_name=\"a\"} 3.0\n\
                    vllm:num_requests_waiting_total 99\n\
                    vllm:num_requests_waiting{model_name=\"b\"} 2\n";
        assert_eq!(waiting_requests(page), Some(5));
        assert_eq!(waiting_requests("vllm:num_requests_waiting 7\n"), Some(7));
        assert_eq!(waiting_requests("other_metric 1\n"), None);
    }
}
