//! One OpenAI-compatible backend: sends a line's body, retries transient
//! failures with exponential backoff, and bounds requests in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::limiter::{Limiter, Signal, Slot};
use bytes::{Bytes, BytesMut};

use crate::config::{ExecutionConfig, ModelConfig};

pub struct Backend {
    pub name: String,
    /// Changes when a managed model's server is started on a new port.
    base_url: std::sync::RwLock<Arc<str>>,
    api_key: Option<String>,
    http: reqwest::Client,
    limiter: Arc<Limiter>,
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    /// `limits.max_response_bytes`: a longer body is not read.
    max_response_bytes: AtomicU64,
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

impl Backend {
    pub fn new(model: &ModelConfig, http: reqwest::Client, execution: &ExecutionConfig) -> Self {
        Self {
            name: model.name.clone(),
            base_url: std::sync::RwLock::new(Arc::from(
                model.url.as_deref().unwrap_or_default().trim_end_matches('/'),
            )),
            api_key: model.api_key.clone(),
            http,
            limiter: Limiter::new(model.min_concurrency, model.max_concurrency),
            max_attempts: execution.max_attempts,
            initial_backoff: Duration::from_millis(execution.retry_initial_backoff_ms),
            max_backoff: Duration::from_millis(execution.retry_max_backoff_ms.max(execution.retry_initial_backoff_ms)),
            max_response_bytes: AtomicU64::new(DEFAULT_MAX_RESPONSE_BYTES),
        }
    }

    /// Responses longer than `max_bytes` are cut off and become `TooLarge`.
    pub fn set_max_response_bytes(&self, max_bytes: u64) {
        self.max_response_bytes.store(max_bytes, Ordering::Relaxed);
    }

    /// Points the backend at a (re)started server, e.g. `http://127.0.0.1:PORT/v1`.
    pub fn set_base_url(&self, url: &str) {
        *self.base_url.write().expect("base url lock") = Arc::from(url.trim_end_matches('/'));
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url.read().expect("base url lock"), path)
    }

    /// Waits for a free request slot on this backend. Slots are granted in
    /// arrival order; how many there are adapts to the backend (`limiter`).
    pub async fn acquire(&self) -> Slot {
        self.limiter.acquire().await
    }

    /// The current adaptive concurrency limit.
    pub fn concurrency_limit(&self) -> usize {
        self.limiter.limit()
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

    /// Sends `body` to `path` (relative to the base URL, e.g. `/chat/completions`),
    /// retrying connection errors, timeouts, 408, 429 and 5xx.
    pub async fn send(&self, path: &str, body: Bytes) -> Outcome {
        let mut attempt = 1;
        loop {
            let started = std::time::Instant::now();
            let (outcome, retry_after) = self.send_once(&self.url(path), body.clone()).await;
            crate::metrics::METRICS
                .backend_latency
                .get_or_create(&crate::metrics::labels(&[("model", &self.name)]))
                .observe(started.elapsed().as_secs_f64());
            self.limiter.record(match &outcome {
                Outcome::Response { status: 429 | 503, .. } | Outcome::Unreachable { .. } => Signal::Overload,
                Outcome::Response { status: 200..=299, .. } => Signal::Success,
                Outcome::Response { .. } | Outcome::TooLarge { .. } => Signal::Neutral,
            });
            match &outcome {
                Outcome::Response { status, .. } if !is_retryable(*status) => return outcome,
                Outcome::TooLarge { limit } => {
                    tracing::warn!(model = %self.name, limit, "backend response over limits.max_response_bytes; not retried");
                    return outcome;
                }
                Outcome::Response { status, .. } => {
                    tracing::debug!(model = %self.name, status, attempt, "backend returned a retryable status");
                }
                Outcome::Unreachable { message } => {
                    tracing::debug!(model = %self.name, attempt, error = %message, "backend unreachable");
                }
            }
            if attempt >= self.max_attempts {
                return outcome;
            }
            // A server that says when to come back (429/503 with Retry-After)
            // is believed, within the configured maximum backoff.
            let delay = retry_after.map_or_else(|| self.backoff(attempt), |d| d.min(self.max_backoff));
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
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

    /// Exponential backoff with up to 25% jitter, so retries of many lines do
    /// not arrive in lockstep.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.initial_backoff.saturating_mul(1 << (attempt - 1).min(16));
        let capped = exp.min(self.max_backoff);
        capped.mul_f64(1.0 - 0.25 * fastrand::f64())
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

fn is_retryable(status: u16) -> bool {
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
            Some(cause) => format!("could not connect to the backend: {cause}"),
            None => "could not connect to the backend".into(),
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
    use super::waiting_requests;

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
