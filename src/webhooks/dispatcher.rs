//! Delivers queued batch events to each project's endpoint: POST with the
//! event envelope and Standard Webhooks headers, retried with exponential
//! backoff (doubling from `retry_initial_secs`, at most an hour apart) until
//! a 2xx or `max_age_hours`. The outbox lives in the database, so pending
//! deliveries survive restarts; `webhook-id` is the same on every attempt.
//! Deliveries run concurrently, a few per project, so a slow or unreachable
//! endpoint delays only its own project's events. Finished events are
//! deleted after `retention_hours`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::address::is_public;
use super::signing::signature;
use crate::config::{WebhookConfig, WebhookDeliveryConfig, webhook_key};
use crate::ids;
use crate::metrics::{METRICS, labels};
use crate::store::{Store, WebhookEvent};

/// Deliveries in flight for one project: an endpoint that hangs until the
/// timeout holds at most this many, and other projects are not held up.
const PER_PROJECT: usize = 4;
/// Deliveries in flight in all.
const IN_FLIGHT: usize = 64;
/// How often finished events past `retention_hours` are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

pub fn spawn(
    store: Arc<dyn Store>,
    hooks: Vec<WebhookConfig>,
    cfg: WebhookDeliveryConfig,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // The projects with endpoints were recorded by `Core::open`, before
        // the supervisor started.
        let hooks = Arc::new(hooks);
        let cfg = Arc::new(cfg);
        // Aborted when the loop returns: a delivery cut off by shutdown is
        // sent again after restart with the same webhook-id.
        let mut running = JoinSet::new();
        // The events being delivered, by task: (event id, project id).
        let mut in_flight: HashMap<tokio::task::Id, (String, String)> = HashMap::new();
        let mut next_prune = Instant::now();
        loop {
            while let Some(done) = running.try_join_next_with_id() {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                in_flight.remove(&id);
            }
            if Instant::now() >= next_prune {
                next_prune = Instant::now() + PRUNE_EVERY;
                prune(store.as_ref(), &cfg).await;
            }
            if in_flight.len() < IN_FLIGHT {
                match store
                    .due_events(ids::now(), PER_PROJECT as u32, 4 * IN_FLIGHT as u32)
                    .await
                {
                    Ok(events) => {
                        for event in events {
                            if in_flight.len() >= IN_FLIGHT {
                                break;
                            }
                            if !startable(&in_flight, &event) {
                                continue;
                            }
                            let key = (event.id.clone(), event.project_id.clone());
                            let (store, hooks, cfg) = (store.clone(), hooks.clone(), cfg.clone());
                            let task = running.spawn(async move {
                                deliver(store.as_ref(), &hooks, &cfg, &event).await;
                            });
                            in_flight.insert(task.id(), key);
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "could not read the webhook outbox"),
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    })
}

/// Whether `event` may start now: not already being delivered (it stays
/// due until its attempt is recorded), and its project has a free slot.
fn startable(in_flight: &HashMap<tokio::task::Id, (String, String)>, event: &WebhookEvent) -> bool {
    let mut of_project = 0;
    for (id, project) in in_flight.values() {
        if *id == event.id {
            return false;
        }
        of_project += usize::from(*project == event.project_id);
    }
    of_project < PER_PROJECT
}

async fn prune(store: &dyn Store, cfg: &WebhookDeliveryConfig) {
    let retention = i64::try_from(cfg.retention_hours.saturating_mul(3600)).unwrap_or(i64::MAX);
    match store.prune_events(ids::now().saturating_sub(retention)).await {
        Ok(0) => {}
        Ok(deleted) => tracing::info!(deleted, "deleted finished webhook events past retention_hours"),
        Err(e) => tracing::error!(error = %e, "could not delete old webhook events"),
    }
}

enum Attempt {
    Delivered,
    /// Worth retrying.
    Failed(String),
    /// Will never work (no endpoint, forbidden address).
    Refused(String),
}

async fn deliver(store: &dyn Store, hooks: &[WebhookConfig], cfg: &WebhookDeliveryConfig, event: &WebhookEvent) {
    let attempt = match hooks.iter().find(|h| h.project == event.project_id) {
        None => Attempt::Refused("no webhook endpoint is configured for the project".into()),
        Some(hook) => attempt(hook, cfg, event).await,
    };
    let now = ids::now();
    let (outcome, result) = match attempt {
        Attempt::Delivered => ("delivered", store.event_delivered(&event.id, now).await),
        Attempt::Refused(why) => {
            tracing::warn!(event_id = %event.id, project_id = %event.project_id, reason = %why, "webhook not delivered");
            ("refused", store.event_failed(&event.id, &why, None, now).await)
        }
        Attempt::Failed(why) => {
            let age = now - event.created_at;
            let next = if age >= cfg.max_age_hours as i64 * 3600 {
                tracing::warn!(event_id = %event.id, attempts = event.attempts + 1, "webhook given up after max_age_hours");
                None
            } else {
                let delay = (cfg.retry_initial_secs * 2f64.powi(event.attempts.min(20) as i32)).min(3600.0);
                Some(now + delay.ceil().max(1.0) as i64)
            };
            tracing::info!(event_id = %event.id, attempts = event.attempts + 1, error = %why, "webhook delivery failed; will retry");
            ("failed", store.event_failed(&event.id, &why, next, now).await)
        }
    };
    METRICS
        .webhook_deliveries
        .get_or_create(&labels(&[("outcome", outcome)]))
        .inc();
    if let Err(e) = result {
        tracing::error!(event_id = %event.id, error = %e, "could not record a webhook attempt");
    }
}

async fn attempt(hook: &WebhookConfig, cfg: &WebhookDeliveryConfig, event: &WebhookEvent) -> Attempt {
    let Ok(url) = reqwest::Url::parse(&hook.url) else {
        return Attempt::Refused("the webhook url does not parse".into());
    };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return Attempt::Refused("the webhook url has no host".into());
    };
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    // The system resolver has its own, long timeouts; a host whose DNS does
    // not answer must not hold a delivery slot for minutes.
    let lookup = tokio::net::lookup_host((host.as_str(), port));
    let addrs: Vec<SocketAddr> = match tokio::time::timeout(Duration::from_secs(cfg.timeout_secs), lookup).await {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(e)) => return Attempt::Failed(format!("cannot resolve the webhook host: {e}")),
        Err(_) => return Attempt::Failed("resolving the webhook host timed out".into()),
    };
    let Some(addr) = addrs.first().copied() else {
        return Attempt::Failed("the webhook host has no address".into());
    };
    if !cfg.allow_private_addresses && addrs.iter().any(|a| !is_public(a.ip())) {
        return Attempt::Refused(format!(
            "{host} resolves to a private or loopback address; set webhook_delivery.allow_private_addresses to allow it"
        ));
    }
    let Some(key) = webhook_key(&hook.secret) else {
        return Attempt::Refused("the webhook secret is not whsec_ + base64".into());
    };
    let body = json!({
        "id": event.id,
        "object": "event",
        "type": event.kind,
        "created_at": event.created_at,
        "data": {"id": event.batch_id},
    })
    .to_string();
    let timestamp = ids::now();
    // Pinned to the address just checked, so a second DNS answer cannot
    // point the request somewhere else.
    let client = match crate::http_client::builder()
        .resolve(&host, addr)
        .timeout(Duration::from_secs(cfg.timeout_secs))
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => client,
        Err(e) => return Attempt::Failed(e.to_string()),
    };
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("batchd/", env!("CARGO_PKG_VERSION"), " (webhooks)"),
        )
        .header("webhook-id", &event.webhook_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            signature(&key, &event.webhook_id, timestamp, body.as_bytes()),
        )
        .body(body)
        .send()
        .await;
    match response {
        Ok(r) if r.status().is_success() => Attempt::Delivered,
        Ok(r) => Attempt::Failed(format!("the endpoint answered {}", r.status())),
        Err(e) => Attempt::Failed(format!("the request failed: {}", describe(e.without_url()))),
    }
}

/// reqwest's message plus its innermost cause, which says what went wrong
/// ("Connection refused", "invalid peer certificate: UnknownIssuer").
fn describe(e: reqwest::Error) -> String {
    let mut innermost = None;
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        innermost = Some(cause);
        source = cause.source();
    }
    match innermost {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}
