//! Webhook events for every terminal status, and the SSRF guard: by default a
//! webhook is never delivered to a loopback or private address.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
use batchd::config::WebhookConfig;
use common::{Harness, chat_line};
use serde_json::{Value, json};

type Seen = Arc<Mutex<Vec<Value>>>;

async fn receiver() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let store = seen.clone();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let store = store.clone();
            async move {
                assert!(headers.contains_key("webhook-signature"));
                store.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

fn hook(url: &str) -> WebhookConfig {
    hook_for("default", url)
}

fn hook_for(project: &str, url: &str) -> WebhookConfig {
    WebhookConfig {
        project: project.into(),
        url: url.into(),
        secret: "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0".into(),
    }
}

/// The number of rows of the server's webhook outbox matching `filter`.
async fn outbox_rows(h: &Harness, filter: &str) -> i64 {
    let db = h.config.server.data_dir.join("batchd.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let sql = format!("SELECT COUNT(*) FROM webhook_events WHERE {filter}");
    let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    count
}

async fn wait_rows(h: &Harness, filter: &str, expected: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = outbox_rows(h, filter).await;
        if rows == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{rows} outbox rows with {filter}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates an API key for `project` with the real CLI; returns its secret.
fn create_key(h: &Harness, project: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_batchd"))
        .args(["keys", "--data-dir"])
        .arg(&h.config.server.data_dir)
        .args(["create", "--project", project, "--name", "test"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key: Value = serde_json::from_slice(&out.stdout).unwrap();
    key["secret"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn every_terminal_status_sends_its_event() {
    let (url, seen) = receiver().await;
    let h = Harness::start_with(|c| {
        c.webhooks = vec![hook(&url)];
        c.webhook_delivery.allow_private_addresses = true;
    })
    .await;
    let ok = h.upload_lines(&[chat_line("a", "fake-model", "hi")]).await;
    let completed = h.create_batch(&ok, "/v1/chat/completions").await;
    let bad = h.upload_lines(&[chat_line("a", "no-such-model", "hi")]).await;
    let failed = h.create_batch(&bad, "/v1/chat/completions").await;
    let slow = h
        .upload_lines(&[chat_line("a", "fake-model", "[delay_ms=2000] hi")])
        .await;
    let cancelled = h.create_batch(&slow, "/v1/chat/completions").await;
    let cancelled_id = cancelled["id"].as_str().unwrap();
    h.wait_for(cancelled_id, |b| b["status"] == "in_progress").await;
    h.post(&format!("/batches/{cancelled_id}/cancel"), Value::Null).await;
    let expected = [
        (completed["id"].clone(), "batch.completed"),
        (failed["id"].clone(), "batch.failed"),
        (cancelled["id"].clone(), "batch.cancelled"),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "events: {:?}", seen.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = seen.lock().unwrap().clone();
    for (id, kind) in expected {
        let event = events
            .iter()
            .find(|e| e["data"]["id"] == id)
            .expect("an event per batch");
        assert_eq!(event["type"], kind);
        assert_eq!(event["object"], "event");
        assert_eq!(event["data"], json!({"id": id}));
    }
}

#[tokio::test]
async fn loopback_endpoints_are_refused_unless_allowed() {
    let (url, seen) = receiver().await;
    let h = Harness::start_with(|c| c.webhooks = vec![hook(&url)]).await;
    let ok = h.upload_lines(&[chat_line("a", "fake-model", "hi")]).await;
    let batch = h.create_batch(&ok, "/v1/chat/completions").await;
    h.wait_terminal(batch["id"].as_str().unwrap()).await;
    let metrics_url = format!("{}/metrics", h.base.trim_end_matches("/v1"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = h.http.get(&metrics_url).send().await.unwrap().text().await.unwrap();
        if page.contains(r#"batchd_webhook_deliveries_total{outcome="refused"} 1"#) {
            break;
        }
        assert!(Instant::now() < deadline, "{page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(seen.lock().unwrap().is_empty(), "nothing reached the loopback receiver");
}

#[tokio::test]
async fn projects_without_a_webhook_leave_no_outbox_rows() {
    let (url, seen) = receiver().await;
    // Only another project has an endpoint.
    let h = Harness::start_with(|c| {
        c.webhooks = vec![hook_for("someone-else", &url)];
        c.webhook_delivery.allow_private_addresses = true;
    })
    .await;
    for model in ["fake-model", "no-such-model"] {
        let file = h.upload_lines(&[chat_line("a", model, "hi")]).await;
        let batch = h.create_batch(&file, "/v1/chat/completions").await;
        h.wait_terminal(batch["id"].as_str().unwrap()).await;
    }
    // The event row would be written in the terminal transition itself.
    assert_eq!(outbox_rows(&h, "1 = 1").await, 0);
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn finished_events_are_deleted_after_the_retention_period() {
    let (url, seen) = receiver().await;
    let mut h = Harness::start_with(|c| {
        c.webhooks = vec![hook(&url)];
        c.webhook_delivery.allow_private_addresses = true;
        c.webhook_delivery.retention_hours = 0;
    })
    .await;
    let file = h.upload_lines(&[chat_line("a", "fake-model", "hi")]).await;
    let batch = h.create_batch(&file, "/v1/chat/completions").await;
    h.wait_terminal(batch["id"].as_str().unwrap()).await;
    wait_rows(&h, "delivered_at IS NOT NULL", 1).await;
    assert_eq!(seen.lock().unwrap().len(), 1);
    // Cleanup runs at start (and hourly).
    h.restart().await;
    wait_rows(&h, "1 = 1", 0).await;
}

#[tokio::test]
async fn an_endpoint_that_never_answers_does_not_hold_up_other_projects() {
    // Project "slow"'s endpoint accepts connections and never answers.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_url = format!("http://{}/hook", hang.local_addr().unwrap());
    let held: Arc<Mutex<Vec<tokio::net::TcpStream>>> = Arc::default();
    let holder = held.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = hang.accept().await {
            holder.lock().unwrap().push(stream);
        }
    });
    let (url, seen) = receiver().await;
    let h = Harness::start_with(|c| {
        c.webhooks = vec![hook_for("slow", &hang_url), hook_for("fast", &url)];
        c.webhook_delivery.allow_private_addresses = true;
        // One delivery after another, the slow project would hold up
        // everyone for an hour per event.
        c.webhook_delivery.timeout_secs = 3600;
    })
    .await;
    let slow = create_key(&h, "slow");
    let fast = create_key(&h, "fast");
    for _ in 0..2 {
        common::create_batch_at(
            &h.http,
            &h.base,
            Some(&slow),
            format!("{}\n", chat_line("a", "fake-model", "hi")),
        )
        .await;
    }
    // The slow project's deliveries have started (and hang)...
    let deadline = Instant::now() + Duration::from_secs(30);
    while held.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the slow endpoint was never called");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...and the fast project's event still arrives.
    let id = common::create_batch_at(
        &h.http,
        &h.base,
        Some(&fast),
        format!("{}\n", chat_line("a", "fake-model", "hi")),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(event) = seen.lock().unwrap().first() {
            assert_eq!(event["data"]["id"], id.as_str());
            break;
        }
        assert!(Instant::now() < deadline, "the fast project's event did not arrive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
