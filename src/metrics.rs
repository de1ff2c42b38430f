//! Prometheus metrics (`GET /metrics`, text format), with bounded labels only:
//! model names come from the config, statuses and outcomes from fixed sets;
//! never a batch id, project or anything a request contains.
//!
//! Counters and histograms live in process-wide families updated where
//! things happen; gauges (batches by status, queue depth, model loads,
//! concurrency limits) are read from the live state at scrape time.

use std::sync::LazyLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    /// Lines with a stored result, by model and outcome (completed/failed).
    pub lines: Family<Labels, Counter>,
    /// Tokens, by model and direction (input/output).
    pub tokens: Family<Labels, Counter>,
    /// One backend request attempt, by model.
    pub backend_latency: Family<Labels, Histogram>,
    /// Webhook delivery attempts, by outcome (delivered/failed).
    pub webhook_deliveries: Family<Labels, Counter>,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    lines: Family::default(),
    tokens: Family::default(),
    backend_latency: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.005, 2.0, 16))),
    webhook_deliveries: Family::default(),
});

pub fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

/// Values read from the live state at scrape time.
#[derive(Default)]
pub struct Snapshot {
    pub batches_by_status: Vec<(String, i64)>,
    /// Per model: batches waiting for a turn, loads so far, concurrency limit.
    pub models: Vec<ModelSnapshot>,
}

pub struct ModelSnapshot {
    pub name: String,
    pub waiting_batches: usize,
    pub running_batches: usize,
    pub loads: u64,
    /// Each of its servers (`backend` label: its index, so labels stay
    /// bounded by the configuration).
    pub backends: Vec<BackendSample>,
}

/// One server of a model, as the page shows it. Its own type rather than
/// `backends::BackendSnapshot`: backends count into these families, so
/// metrics must not depend on backends.
pub struct BackendSample {
    /// The server's index in its model's pool.
    pub id: String,
    /// In rotation: it takes lines.
    pub up: bool,
    pub in_flight: usize,
    pub concurrency_limit: usize,
    pub lines_served: u64,
}

/// A per-server family: one sample per (model, backend).
fn backend_family<M>(models: &[ModelSnapshot], set: impl Fn(&M, &BackendSample)) -> Family<Labels, M>
where
    M: Default + Clone + prometheus_client::metrics::TypedMetric + prometheus_client::encoding::EncodeMetric + 'static,
{
    let family = Family::<Labels, M>::default();
    for m in models {
        for b in &m.backends {
            set(
                &family.get_or_create(&labels(&[("model", &m.name), ("backend", &b.id)])),
                b,
            );
        }
    }
    family
}

fn gauge_family<F: Fn(&ModelSnapshot) -> i64>(models: &[ModelSnapshot], value: F) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    for m in models {
        family.get_or_create(&labels(&[("model", &m.name)])).set(value(m));
    }
    family
}

pub fn render(snapshot: Snapshot) -> String {
    let mut registry = Registry::with_prefix("batchd");
    let m = &*METRICS;
    registry.register("lines", "Batch lines with a stored result", m.lines.clone());
    registry.register("tokens", "Tokens in batch results", m.tokens.clone());
    registry.register(
        "backend_request_duration_seconds",
        "Time of one request attempt to a model backend",
        m.backend_latency.clone(),
    );
    registry.register(
        "webhook_deliveries",
        "Webhook delivery attempts",
        m.webhook_deliveries.clone(),
    );
    let batches = Family::<Labels, Gauge>::default();
    for (status, n) in &snapshot.batches_by_status {
        batches.get_or_create(&labels(&[("status", status)])).set(*n);
    }
    registry.register("batches", "Batches by status", batches);
    registry.register(
        "queue_depth",
        "Batches waiting for their model's turn",
        gauge_family(&snapshot.models, |m| m.waiting_batches as i64),
    );
    registry.register(
        "running_batches",
        "Batches running on the model",
        gauge_family(&snapshot.models, |m| m.running_batches as i64),
    );
    registry.register(
        "model_loads",
        "Times the model server was started or woken (swaps)",
        gauge_family(&snapshot.models, |m| m.loads as i64),
    );
    registry.register(
        "backend_concurrency_limit",
        "The adaptive limit of requests in flight to the backend (each server of a model)",
        backend_family::<Gauge>(&snapshot.models, |g, b| {
            g.set(b.concurrency_limit as i64);
        }),
    );
    registry.register(
        "backend_in_flight",
        "Requests in flight to the backend",
        backend_family::<Gauge>(&snapshot.models, |g, b| {
            g.set(b.in_flight as i64);
        }),
    );
    registry.register(
        "backend_up",
        "1 if the backend takes lines (in rotation), else 0",
        backend_family::<Gauge>(&snapshot.models, |g, b| {
            g.set(i64::from(b.up));
        }),
    );
    registry.register(
        "backend_lines_served",
        "Requests that got their final answer from the backend",
        backend_family::<prometheus_client::metrics::counter::Counter>(&snapshot.models, |c, b| {
            c.inc_by(b.lines_served);
        }),
    );
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String");
    out
}
