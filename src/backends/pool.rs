//! One model's servers behind its name: lines go to the server in rotation
//! with free capacity and the least work outstanding (in flight relative to
//! its adaptive limit), so a faster GPU, whose slots free up sooner and whose
//! limit grows higher, gets more lines than a slower one. Retries with
//! backoff, and failover: a line whose server left rotation is sent to
//! another without using up one of its attempts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

use super::backend::{
    Attempt, Backend, BackendParts, BackendSnapshot, DEFAULT_MAX_RESPONSE_BYTES, Outcome, is_retryable,
};
use super::limiter::Slot;
use crate::config::{ExecutionConfig, ModelConfig};

pub struct BackendPool {
    pub name: String,
    backends: Vec<Arc<Backend>>,
    /// Woken when any server frees or adds a slot or comes into rotation.
    room: Arc<Notify>,
    max_response_bytes: Arc<AtomicU64>,
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
}

/// A request slot on one server of the pool; dropping it frees the slot.
pub struct PoolSlot {
    backend: Arc<Backend>,
    _slot: Slot,
    /// The server's process generation when the last attempt was sent.
    generation: u64,
}

impl PoolSlot {
    /// The server this slot is on (its index in the pool).
    pub fn backend_index(&self) -> usize {
        self.backend.index
    }

    /// The generation of the server the last attempt went to (managed
    /// replicas; see `ModelManager::recover`).
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl BackendPool {
    pub fn new(model: &ModelConfig, http: reqwest::Client, execution: &ExecutionConfig) -> Self {
        let parts = BackendParts {
            http,
            room: Arc::default(),
            max_response_bytes: Arc::new(AtomicU64::new(DEFAULT_MAX_RESPONSE_BYTES)),
        };
        let backends = if model.is_managed() {
            model
                .replica_devices()
                .into_iter()
                .enumerate()
                .map(|(i, device)| Arc::new(Backend::new(model, i, None, device, &parts)))
                .collect()
        } else {
            model
                .backend_urls()
                .iter()
                .enumerate()
                .map(|(i, url)| Arc::new(Backend::new(model, i, Some(url), None, &parts)))
                .collect()
        };
        Self {
            name: model.name.clone(),
            backends,
            room: parts.room,
            max_response_bytes: parts.max_response_bytes,
            max_attempts: execution.max_attempts,
            initial_backoff: Duration::from_millis(execution.retry_initial_backoff_ms),
            max_backoff: Duration::from_millis(execution.retry_max_backoff_ms.max(execution.retry_initial_backoff_ms)),
        }
    }

    /// Responses longer than `max_bytes` are cut off and become `TooLarge`.
    pub fn set_max_response_bytes(&self, max_bytes: u64) {
        self.max_response_bytes.store(max_bytes, Ordering::Relaxed);
    }

    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    pub fn backend(&self, index: usize) -> Option<&Arc<Backend>> {
        self.backends.get(index)
    }

    pub fn snapshots(&self) -> Vec<BackendSnapshot> {
        self.backends.iter().map(|b| b.snapshot()).collect()
    }

    /// The sum of the adaptive limits of the servers in rotation.
    pub fn concurrency_limit(&self) -> usize {
        self.backends
            .iter()
            .filter(|b| b.in_rotation())
            .map(|b| b.limiter().limit())
            .sum()
    }

    fn any_in_rotation(&self) -> bool {
        self.backends.iter().any(|b| b.in_rotation())
    }

    /// Watches every server's queue gauge (adaptive concurrency).
    pub fn spawn_queue_watches(&self, every: Duration) {
        for backend in &self.backends {
            backend.spawn_queue_watch(every);
        }
    }

    /// Waits for a free slot on a server in rotation (the least loaded one).
    /// When no server is in rotation at all, any server's slot will do: the
    /// line is then tried, and fails with the servers' own error once its
    /// attempts run out, instead of waiting forever.
    pub async fn acquire(&self) -> PoolSlot {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if let Some(slot) = self.try_acquire() {
                return slot;
            }
            room.await;
        }
    }

    /// A slot on the least loaded server with room, if one has room now.
    pub fn try_acquire(&self) -> Option<PoolSlot> {
        let in_rotation = self.any_in_rotation();
        let mut candidates: Vec<(f64, &Arc<Backend>)> = self
            .backends
            .iter()
            .filter(|b| !in_rotation || b.in_rotation())
            .filter(|b| b.limiter().free() > 0)
            .map(|b| {
                let limiter = b.limiter();
                (limiter.in_flight() as f64 / limiter.limit().max(1) as f64, b)
            })
            .collect();
        candidates.sort_by(|a, b| a.0.total_cmp(&b.0));
        candidates.into_iter().find_map(|(_, backend)| {
            backend.try_acquire(in_rotation).map(|slot| PoolSlot {
                backend: backend.clone(),
                _slot: slot,
                generation: backend.generation(),
            })
        })
    }

    /// Sends `body` to `path` on the slot's server, retrying connection
    /// errors, timeouts, 408, 429 and 5xx with backoff. A line whose server
    /// left rotation (before or during an attempt) moves to another server
    /// in rotation without counting an attempt, at most twice per server;
    /// `slot` then refers to the new server.
    pub async fn send(&self, slot: &mut PoolSlot, path: &str, body: Bytes) -> Outcome {
        let mut attempt = 1;
        let mut failovers = 0;
        loop {
            if !slot.backend.in_rotation() && self.any_in_rotation() && failovers < 2 * self.backends.len() {
                failovers += 1;
                self.move_slot(slot).await;
            }
            let backend = slot.backend.clone();
            slot.generation = backend.generation();
            let started = std::time::Instant::now();
            let attempted = backend.attempt(path, body.clone()).await;
            crate::metrics::METRICS
                .backend_latency
                .get_or_create(&crate::metrics::labels(&[("model", &self.name)]))
                .observe(started.elapsed().as_secs_f64());
            let (outcome, retry_after) = match attempted {
                Attempt::Cut => {
                    tracing::debug!(model = %self.name, backend = backend.index, "server left rotation with the line in flight; sending it elsewhere");
                    continue;
                }
                Attempt::Done { outcome, retry_after } => (outcome, retry_after),
            };
            backend.observe(&outcome);
            match &outcome {
                Outcome::Response { status, .. } if !is_retryable(*status) => {
                    backend.count_served();
                    return outcome;
                }
                Outcome::TooLarge { limit } => {
                    tracing::warn!(model = %self.name, limit, "backend response over limits.max_response_bytes; not retried");
                    backend.count_served();
                    return outcome;
                }
                Outcome::Response { status, .. } => {
                    tracing::debug!(model = %self.name, backend = backend.index, status, attempt, "backend returned a retryable status");
                }
                Outcome::Unreachable { message } => {
                    tracing::debug!(model = %self.name, backend = backend.index, attempt, error = %message, "backend unreachable");
                }
            }
            // The server just left rotation: another one takes the line now.
            if !backend.in_rotation() && self.any_in_rotation() && failovers < 2 * self.backends.len() {
                continue;
            }
            if attempt >= self.max_attempts {
                backend.count_served();
                return outcome;
            }
            // A server that says when to come back (429/503 with Retry-After)
            // is believed, within the configured maximum backoff.
            let delay = retry_after.map_or_else(|| self.backoff(attempt), |d| d.min(self.max_backoff));
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// Moves a line's slot to a server in rotation. The old slot is held
    /// until the new one is granted: its server is out of rotation, so it is
    /// not among those `acquire` waits for.
    async fn move_slot(&self, slot: &mut PoolSlot) {
        *slot = self.acquire().await;
    }

    /// Exponential backoff with up to 25% jitter, so retries of many lines do
    /// not arrive in lockstep.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.initial_backoff.saturating_mul(1 << (attempt - 1).min(16));
        let capped = exp.min(self.max_backoff);
        capped.mul_f64(1.0 - 0.25 * fastrand::f64())
    }
}
