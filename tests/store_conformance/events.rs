//! `EventRepo`: the webhook outbox, written by the terminal transitions of
//! `BatchRepo` for projects with a webhook endpoint, drained by the dispatcher.

use std::sync::Arc;

use batchd::domain::BatchStatus;
use batchd::store::{Store, WebhookEvent};

use crate::{batch, running_batch};

/// Every undelivered event due by the end of time, oldest first.
async fn all_due(store: &dyn Store) -> Vec<WebhookEvent> {
    store.due_events(i64::MAX, u32::MAX, u32::MAX).await.unwrap()
}

fn summary(events: &[WebhookEvent]) -> Vec<(String, String, String, i64, i64)> {
    events
        .iter()
        .map(|e| {
            (
                e.project_id.clone(),
                e.kind.clone(),
                e.batch_id.clone(),
                e.created_at,
                e.attempts,
            )
        })
        .collect()
}

fn row(project: &str, kind: &str, batch: &str, at: i64, attempts: i64) -> (String, String, String, i64, i64) {
    (project.into(), kind.into(), batch.into(), at, attempts)
}

/// Runs a batch of `project` to `completed` at `now`.
async fn complete(store: &dyn Store, project: &str, id: &str, now: i64) {
    running_batch(store, project, id, 1, now - 10).await;
    assert!(store.transition(id, BatchStatus::Finalizing, now - 5).await.unwrap());
    assert!(
        store
            .finish(id, BatchStatus::Finalizing, BatchStatus::Completed, &[], now)
            .await
            .unwrap()
    );
}

pub async fn terminal_transitions_queue_events_for_webhook_projects_only(store: Arc<dyn Store>) {
    let s = store.as_ref();
    store.set_webhook_projects(&["p1".to_owned()]).await.unwrap();
    complete(s, "p1", "batch-done", 100).await;
    complete(s, "p2", "batch-quiet", 101).await;
    running_batch(s, "p1", "batch-late", 1, 50).await;
    // Non-terminal moves queue nothing.
    assert_eq!(all_due(s).await.len(), 1);
    assert!(
        store
            .finish("batch-late", BatchStatus::InProgress, BatchStatus::Expired, &[], 110)
            .await
            .unwrap()
    );
    running_batch(s, "p1", "batch-cancel", 1, 50).await;
    store.request_cancel("p1", "batch-cancel", 111).await.unwrap();
    assert_eq!(all_due(s).await.len(), 2, "cancelling is not terminal");
    assert!(
        store
            .finish(
                "batch-cancel",
                BatchStatus::Cancelling,
                BatchStatus::Cancelled,
                &[],
                120
            )
            .await
            .unwrap()
    );
    running_batch(s, "p1", "batch-broken", 1, 50).await;
    store.mark_failing("batch-broken", &[]).await.unwrap();
    assert!(
        store
            .finish_failed("batch-broken", BatchStatus::InProgress, &[], 130)
            .await
            .unwrap()
    );
    // A finish that lost its compare-and-set queues nothing.
    assert!(
        !store
            .finish("batch-done", BatchStatus::Finalizing, BatchStatus::Completed, &[], 140)
            .await
            .unwrap()
    );
    let events = all_due(s).await;
    assert_eq!(
        summary(&events),
        [
            row("p1", "batch.completed", "batch-done", 100, 0),
            row("p1", "batch.expired", "batch-late", 110, 0),
            row("p1", "batch.cancelled", "batch-cancel", 120, 0),
            row("p1", "batch.failed", "batch-broken", 130, 0),
        ]
    );
    // Ids and webhook ids are unique and distinct from each other.
    let mut seen = std::collections::HashSet::new();
    for e in &events {
        assert!(!e.id.is_empty() && !e.webhook_id.is_empty() && e.id != e.webhook_id);
        assert!(seen.insert(e.id.clone()) && seen.insert(e.webhook_id.clone()));
    }
    // Due from the moment of the transition, not before.
    assert_eq!(store.due_events(99, 10, 10).await.unwrap().len(), 0);
    assert_eq!(store.due_events(100, 10, 10).await.unwrap().len(), 1);
}

pub async fn failed_validation_queues_an_event(store: Arc<dyn Store>) {
    let s = store.as_ref();
    store.set_webhook_projects(&["p1".to_owned()]).await.unwrap();
    store.insert_batch(&batch("p1", "batch-1", "file-1", 1)).await.unwrap();
    assert!(store.fail_validation("batch-1", &[], 7).await.unwrap());
    assert!(!store.fail_validation("batch-1", &[], 8).await.unwrap());
    assert_eq!(summary(&all_due(s).await), [row("p1", "batch.failed", "batch-1", 7, 0)]);
}

pub async fn webhook_projects_are_replaced(store: Arc<dyn Store>) {
    let s = store.as_ref();
    assert!(all_due(s).await.is_empty());
    complete(s, "p1", "batch-0", 100).await;
    assert!(all_due(s).await.is_empty(), "no webhook projects yet");
    // Duplicates in the configuration are harmless.
    store
        .set_webhook_projects(&["p1".to_owned(), "p1".to_owned(), "p2".to_owned()])
        .await
        .unwrap();
    complete(s, "p1", "batch-1", 110).await;
    store.set_webhook_projects(&["p2".to_owned()]).await.unwrap();
    complete(s, "p1", "batch-2", 120).await;
    complete(s, "p2", "batch-3", 130).await;
    store.set_webhook_projects(&[]).await.unwrap();
    complete(s, "p2", "batch-4", 140).await;
    assert_eq!(
        summary(&all_due(s).await),
        [
            row("p1", "batch.completed", "batch-1", 110, 0),
            row("p2", "batch.completed", "batch-3", 130, 0),
        ],
        "events already queued stay"
    );
}

pub async fn due_events_oldest_first_capped_per_project(store: Arc<dyn Store>) {
    let s = store.as_ref();
    store
        .set_webhook_projects(&["p1".to_owned(), "p2".to_owned()])
        .await
        .unwrap();
    // p1 has a backlog of four; p2's two come after p1's first two.
    for (project, id, at) in [
        ("p1", "batch-a", 100),
        ("p1", "batch-b", 100),
        ("p2", "batch-c", 100),
        ("p1", "batch-d", 101),
        ("p1", "batch-e", 102),
        ("p2", "batch-f", 103),
    ] {
        complete(s, project, id, at).await;
    }
    let due = |now, per_project, limit| {
        let store = store.clone();
        async move {
            let events = store.due_events(now, per_project, limit).await.unwrap();
            events.into_iter().map(|e| e.batch_id).collect::<Vec<_>>()
        }
    };
    assert_eq!(
        due(1_000, 10, 10).await,
        ["batch-a", "batch-b", "batch-c", "batch-d", "batch-e", "batch-f"]
    );
    assert_eq!(due(1_000, 2, 10).await, ["batch-a", "batch-b", "batch-c", "batch-f"]);
    assert_eq!(due(1_000, 1, 10).await, ["batch-a", "batch-c"]);
    assert_eq!(due(1_000, 2, 3).await, ["batch-a", "batch-b", "batch-c"]);
    assert_eq!(due(101, 10, 10).await, ["batch-a", "batch-b", "batch-c", "batch-d"]);
    // Delivered events leave room for the next of their project.
    let first = store.due_events(1_000, 1, 10).await.unwrap();
    store.event_delivered(&first[0].id, 500).await.unwrap();
    assert_eq!(due(1_000, 1, 10).await, ["batch-b", "batch-c"]);
}

pub async fn failed_deliveries_retry_later_or_give_up(store: Arc<dyn Store>) {
    let s = store.as_ref();
    store.set_webhook_projects(&["p1".to_owned()]).await.unwrap();
    complete(s, "p1", "batch-retry", 100).await;
    complete(s, "p1", "batch-refused", 101).await;
    complete(s, "p1", "batch-ok", 102).await;
    let events = all_due(s).await;
    let (retry, refused, ok) = (&events[0], &events[1], &events[2]);
    store.event_failed(&retry.id, "HTTP 503", Some(500), 200).await.unwrap();
    store.event_failed(&refused.id, "HTTP 410", None, 200).await.unwrap();
    store.event_delivered(&ok.id, 200).await.unwrap();
    assert!(store.due_events(499, 10, 10).await.unwrap().is_empty());
    let due = store.due_events(500, 10, 10).await.unwrap();
    assert_eq!(summary(&due), [row("p1", "batch.completed", "batch-retry", 100, 1)]);
    // The same event (and webhook id) on every attempt.
    assert_eq!(
        (due[0].id.as_str(), due[0].webhook_id.as_str()),
        (retry.id.as_str(), retry.webhook_id.as_str())
    );
    store.event_failed(&retry.id, "timeout", Some(900), 500).await.unwrap();
    assert_eq!(
        summary(&all_due(s).await),
        [row("p1", "batch.completed", "batch-retry", 100, 2)]
    );
    store.event_delivered(&retry.id, 900).await.unwrap();
    assert!(all_due(s).await.is_empty());
}

pub async fn prune_removes_only_finished_events(store: Arc<dyn Store>) {
    let s = store.as_ref();
    store.set_webhook_projects(&["p1".to_owned()]).await.unwrap();
    for (id, at) in [
        ("batch-delivered", 10),
        ("batch-gave-up", 11),
        ("batch-retrying", 12),
        ("batch-new", 13),
    ] {
        complete(s, "p1", id, at).await;
    }
    let events = all_due(s).await;
    store.event_delivered(&events[0].id, 100).await.unwrap();
    store.event_failed(&events[1].id, "HTTP 410", None, 200).await.unwrap();
    store
        .event_failed(&events[2].id, "HTTP 503", Some(300), 150)
        .await
        .unwrap();
    assert_eq!(store.prune_events(99).await.unwrap(), 0);
    assert_eq!(store.prune_events(100).await.unwrap(), 1, "delivered at or before");
    assert_eq!(store.prune_events(199).await.unwrap(), 0);
    assert_eq!(store.prune_events(200).await.unwrap(), 1, "given up at or before");
    // Events still to be delivered are never pruned, however old.
    assert_eq!(store.prune_events(i64::MAX).await.unwrap(), 0);
    let left: Vec<String> = all_due(s).await.into_iter().map(|e| e.batch_id).collect();
    assert_eq!(left, ["batch-retrying", "batch-new"]);
}
