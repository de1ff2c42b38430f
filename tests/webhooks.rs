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
    WebhookConfig {
        project: "default".into(),
        url: url.into(),
        secret: "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0".into(),
    }
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
