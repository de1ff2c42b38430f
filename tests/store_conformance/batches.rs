//! `BatchRepo`: batches, their compare-and-set status machine and the
//! per-project limits checked in the same transaction as the change.

use std::sync::Arc;

use batchd::domain::{BatchError, BatchRecord, BatchStatus, FileRecord, RequestCounts, Usage};
use batchd::store::{CancelOutcome, FinishedFile, ResultFileKind, StartOutcome, Store};

use crate::{batch, file, ids, result, running_batch};

/// `BatchRecord` has no `PartialEq`; its `Debug` form shows every field.
fn assert_same(actual: &BatchRecord, expected: &BatchRecord) {
    assert_eq!(format!("{actual:#?}"), format!("{expected:#?}"));
}

async fn get(store: &dyn Store, id: &str) -> BatchRecord {
    store.get_batch_any_project(id).await.unwrap().expect("the batch")
}

async fn status(store: &dyn Store, id: &str) -> BatchStatus {
    get(store, id).await.status
}

fn error(code: &str, line: Option<u64>) -> BatchError {
    BatchError::new(code, format!("problem {code}"), Some("body"), line)
}

/// Inserts a batch and brings it to `finalizing`.
async fn finalizing_batch(store: &dyn Store, project: &str, id: &str, now: i64) {
    running_batch(store, project, id, 1, now).await;
    assert!(store.transition(id, BatchStatus::Finalizing, now + 2).await.unwrap());
}

pub async fn inserted_batches_read_back_exactly(store: Arc<dyn Store>) {
    let mut metadata = serde_json::Map::new();
    metadata.insert("team".into(), "ünïcode ✓".into());
    metadata.insert("empty".into(), "".into());
    let full = BatchRecord {
        metadata: Some(metadata),
        output_expires_after: Some(7200),
        ..batch("p1", "batch-full", "file-1", 1_000)
    };
    let bare = BatchRecord {
        expires_at: None,
        ..batch("p1", "batch-bare", "file-1", 1_001)
    };
    store.insert_batch(&full).await.unwrap();
    store.insert_batch(&bare).await.unwrap();
    assert_same(&store.get_batch("p1", "batch-full").await.unwrap().unwrap(), &full);
    assert_same(&get(store.as_ref(), "batch-full").await, &full);
    // Nothing ran: counts are zero and usage is absent (None, not zeros).
    let read = store.get_batch("p1", "batch-bare").await.unwrap().unwrap();
    assert_same(&read, &bare);
    assert!(read.usage.is_none() && read.errors.is_none() && read.metadata.is_none());
    assert_eq!(read.request_counts, RequestCounts::default());
    assert!(store.get_batch("p1", "batch-none").await.unwrap().is_none());
    assert!(store.get_batch_any_project("batch-none").await.unwrap().is_none());
}

pub async fn batches_are_scoped_by_project(store: Arc<dyn Store>) {
    store.insert_batch(&batch("p1", "batch-1", "file-1", 1)).await.unwrap();
    store.insert_batch(&batch("p2", "batch-2", "file-2", 1)).await.unwrap();
    assert!(store.get_batch("p2", "batch-1").await.unwrap().is_none());
    assert!(matches!(
        store.request_cancel("p2", "batch-1", 5).await.unwrap(),
        CancelOutcome::NotFound
    ));
    assert_eq!(status(store.as_ref(), "batch-1").await, BatchStatus::Validating);
    assert!(store.list_batches("p1", Some("batch-2"), 10).await.unwrap().is_none());
    let page = store.list_batches("p2", None, 10).await.unwrap().unwrap();
    assert_eq!(ids(&page.items, |b| &b.id), ["batch-2"]);
    // Workers see every project's batches.
    assert_eq!(get(store.as_ref(), "batch-1").await.project_id, "p1");
}

pub async fn listing_is_newest_first_with_ties(store: Arc<dyn Store>) {
    // Same second, ids sorting the other way: insertion order decides.
    for id in ["batch-z", "batch-y", "batch-x", "batch-w"] {
        store.insert_batch(&batch("p1", id, "file-1", 1_000)).await.unwrap();
    }
    store
        .insert_batch(&batch("p2", "batch-other", "file-1", 1_000))
        .await
        .unwrap();
    let page = |after: Option<&'static str>, limit| {
        let store = store.clone();
        async move {
            let page = store.list_batches("p1", after, limit).await.unwrap().unwrap();
            (ids(&page.items, |b| &b.id), page.has_more)
        }
    };
    let v = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(page(None, 2).await, (v(&["batch-w", "batch-x"]), true));
    assert_eq!(page(Some("batch-x"), 2).await, (v(&["batch-y", "batch-z"]), false));
    assert_eq!(page(Some("batch-y"), 5).await, (v(&["batch-z"]), false));
    assert_eq!(page(Some("batch-z"), 5).await, (vec![], false));
    assert_eq!(
        page(None, 4).await,
        (v(&["batch-w", "batch-x", "batch-y", "batch-z"]), false)
    );
}

pub async fn listing_after_an_unknown_batch_is_none(store: Arc<dyn Store>) {
    store.insert_batch(&batch("p1", "batch-1", "file-1", 1)).await.unwrap();
    assert!(
        store
            .list_batches("p1", Some("batch-nope"), 10)
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.list_batches("p1", Some("batch-1"), 10).await.unwrap().is_some());
}

pub async fn transitions_are_compare_and_set(store: Arc<dyn Store>) {
    let s = store.as_ref();
    store.insert_batch(&batch("p1", "batch-1", "file-1", 1)).await.unwrap();
    let before = get(s, "batch-1").await;
    // From a status the batch is not in: nothing changes.
    for to in [BatchStatus::Finalizing, BatchStatus::Completed, BatchStatus::Cancelled] {
        assert!(!store.transition("batch-1", to, 50).await.unwrap(), "{to:?}");
    }
    assert_same(&get(s, "batch-1").await, &before);
    assert!(
        !store
            .transition("batch-none", BatchStatus::Finalizing, 50)
            .await
            .unwrap()
    );
    running_batch(s, "p1", "batch-2", 3, 10).await;
    assert!(store.transition("batch-2", BatchStatus::Finalizing, 20).await.unwrap());
    // A second worker making the same move loses, and leaves the first stamp.
    assert!(!store.transition("batch-2", BatchStatus::Finalizing, 30).await.unwrap());
    let b = get(s, "batch-2").await;
    assert_eq!((b.status, b.finalizing_at), (BatchStatus::Finalizing, Some(20)));
    assert!(!store.transition("batch-2", BatchStatus::InProgress, 31).await.unwrap());
    assert_eq!(get(s, "batch-2").await.in_progress_at, Some(11));
}

pub async fn transitions_stamp_only_their_own_timestamp(store: Arc<dyn Store>) {
    let s = store.as_ref();
    store
        .insert_batch(&batch("p1", "batch-1", "file-1", 100))
        .await
        .unwrap();
    assert_eq!(
        store
            .start_within_enqueued_limit("batch-1", "m", 1, 110, u64::MAX)
            .await
            .unwrap(),
        StartOutcome::Started
    );
    assert!(store.transition("batch-1", BatchStatus::Finalizing, 120).await.unwrap());
    assert!(
        store
            .finish("batch-1", BatchStatus::Finalizing, BatchStatus::Completed, &[], 130)
            .await
            .unwrap()
    );
    let b = get(s, "batch-1").await;
    assert_eq!(b.status, BatchStatus::Completed);
    assert_eq!(
        (b.created_at, b.in_progress_at, b.finalizing_at, b.completed_at),
        (100, Some(110), Some(120), Some(130))
    );
    assert_eq!(
        (b.failed_at, b.expired_at, b.cancelling_at, b.cancelled_at),
        (None, None, None, None)
    );
    assert_eq!(
        b.expires_at,
        Some(100 + 24 * 3600),
        "expires_at is not a transition stamp"
    );

    running_batch(s, "p1", "batch-2", 1, 200).await;
    assert!(
        store
            .finish("batch-2", BatchStatus::InProgress, BatchStatus::Expired, &[], 250)
            .await
            .unwrap()
    );
    let b = get(s, "batch-2").await;
    assert_eq!(
        (
            b.status,
            b.in_progress_at,
            b.expired_at,
            b.finalizing_at,
            b.completed_at
        ),
        (BatchStatus::Expired, Some(201), Some(250), None, None)
    );
}

pub async fn fail_validation_only_from_validating(store: Arc<dyn Store>) {
    let s = store.as_ref();
    store.insert_batch(&batch("p1", "batch-1", "file-1", 1)).await.unwrap();
    let problems = vec![error("invalid_json", Some(3)), error("missing_file", None)];
    assert!(store.fail_validation("batch-1", &problems, 5).await.unwrap());
    let b = get(s, "batch-1").await;
    assert_eq!((b.status, b.failed_at), (BatchStatus::Failed, Some(5)));
    assert_eq!(b.errors.as_deref(), Some(&problems[..]));
    // Already failed: a second verdict changes nothing.
    assert!(
        !store
            .fail_validation("batch-1", &[error("other", None)], 6)
            .await
            .unwrap()
    );
    let b = get(s, "batch-1").await;
    assert_eq!((b.failed_at, b.errors.as_deref()), (Some(5), Some(&problems[..])));

    // A batch that passed validation (and may have results) is not failed
    // by a late validation verdict: that is finish_failed's job.
    running_batch(s, "p1", "batch-2", 2, 10).await;
    store.record_results(&[result("batch-2", 1, false)]).await.unwrap();
    assert!(!store.fail_validation("batch-2", &problems, 20).await.unwrap());
    let b = get(s, "batch-2").await;
    assert_eq!((b.status, b.failed_at, b.errors), (BatchStatus::InProgress, None, None));
    assert_eq!(store.finished_lines("batch-2").await.unwrap(), [1]);

    store.insert_batch(&batch("p1", "batch-3", "file-1", 1)).await.unwrap();
    store.request_cancel("p1", "batch-3", 2).await.unwrap();
    assert!(!store.fail_validation("batch-3", &problems, 20).await.unwrap());
    assert_eq!(status(s, "batch-3").await, BatchStatus::Cancelling);
}

pub async fn cancel_is_accepted_once_and_keeps_its_first_stamp(store: Arc<dyn Store>) {
    let s = store.as_ref();
    store.insert_batch(&batch("p1", "batch-1", "file-1", 1)).await.unwrap();
    let accepted = |outcome: CancelOutcome| match outcome {
        CancelOutcome::Accepted(b) => *b,
        other => panic!("expected Accepted, got {other:?}"),
    };
    let b = accepted(store.request_cancel("p1", "batch-1", 5).await.unwrap());
    assert_eq!((b.status, b.cancelling_at), (BatchStatus::Cancelling, Some(5)));
    let b = accepted(store.request_cancel("p1", "batch-1", 9).await.unwrap());
    assert_eq!((b.status, b.cancelling_at), (BatchStatus::Cancelling, Some(5)));
    assert!(
        store
            .finish("batch-1", BatchStatus::Cancelling, BatchStatus::Cancelled, &[], 12)
            .await
            .unwrap()
    );
    let b = accepted(store.request_cancel("p1", "batch-1", 15).await.unwrap());
    assert_eq!(
        (b.status, b.cancelling_at, b.cancelled_at),
        (BatchStatus::Cancelled, Some(5), Some(12))
    );
    // From in_progress and finalizing too.
    running_batch(s, "p1", "batch-2", 1, 20).await;
    assert_eq!(
        accepted(store.request_cancel("p1", "batch-2", 25).await.unwrap()).status,
        BatchStatus::Cancelling
    );
    finalizing_batch(s, "p1", "batch-3", 30).await;
    assert_eq!(
        accepted(store.request_cancel("p1", "batch-3", 35).await.unwrap()).cancelling_at,
        Some(35)
    );
    assert!(matches!(
        store.request_cancel("p1", "batch-none", 1).await.unwrap(),
        CancelOutcome::NotFound
    ));
}

pub async fn cancel_of_an_ended_batch_is_refused(store: Arc<dyn Store>) {
    let s = store.as_ref();
    finalizing_batch(s, "p1", "batch-done", 1).await;
    assert!(
        store
            .finish("batch-done", BatchStatus::Finalizing, BatchStatus::Completed, &[], 9)
            .await
            .unwrap()
    );
    store
        .insert_batch(&batch("p1", "batch-invalid", "file-1", 1))
        .await
        .unwrap();
    assert!(store.fail_validation("batch-invalid", &[], 9).await.unwrap());
    running_batch(s, "p1", "batch-late", 1, 1).await;
    assert!(
        store
            .finish("batch-late", BatchStatus::InProgress, BatchStatus::Expired, &[], 9)
            .await
            .unwrap()
    );
    for (id, ended) in [
        ("batch-done", BatchStatus::Completed),
        ("batch-invalid", BatchStatus::Failed),
        ("batch-late", BatchStatus::Expired),
    ] {
        match store.request_cancel("p1", id, 20).await.unwrap() {
            CancelOutcome::Refused(status) => assert_eq!(status, ended),
            other => panic!("{id}: expected Refused, got {other:?}"),
        }
        let b = get(s, id).await;
        assert_eq!((b.status, b.cancelling_at), (ended, None));
    }
}

pub async fn cancel_racing_completion_has_one_winner(store: Arc<dyn Store>) {
    const BATCHES: usize = 24;
    for n in 0..BATCHES {
        finalizing_batch(store.as_ref(), "p1", &format!("batch-{n}"), 1).await;
    }
    let mut races = vec![];
    for n in 0..BATCHES {
        let id = format!("batch-{n}");
        let (a, b) = (store.clone(), store.clone());
        let (id_a, id_b) = (id.clone(), id.clone());
        let cancel = tokio::spawn(async move { a.request_cancel("p1", &id_a, 50).await.unwrap() });
        let complete = tokio::spawn(async move {
            b.finish(&id_b, BatchStatus::Finalizing, BatchStatus::Completed, &[], 50)
                .await
                .unwrap()
        });
        races.push((id, cancel, complete));
    }
    for (id, cancel, complete) in races {
        let (cancel, completed) = (cancel.await.unwrap(), complete.await.unwrap());
        let b = get(store.as_ref(), &id).await;
        match (cancel, completed) {
            (CancelOutcome::Refused(BatchStatus::Completed), true) => {
                assert_eq!((b.status, b.cancelling_at), (BatchStatus::Completed, None), "{id}");
            }
            (CancelOutcome::Accepted(seen), false) => {
                assert_eq!(seen.status, BatchStatus::Cancelling, "{id}");
                assert_eq!((b.status, b.completed_at), (BatchStatus::Cancelling, None), "{id}");
            }
            (cancel, completed) => panic!("{id}: cancel {cancel:?} and completion {completed} both or neither won"),
        }
    }
}

pub async fn finish_is_compare_and_set_on_from(store: Arc<dyn Store>) {
    let s = store.as_ref();
    finalizing_batch(s, "p1", "batch-1", 1).await;
    store.record_results(&[result("batch-1", 1, false)]).await.unwrap();
    let output = FinishedFile {
        record: file("p1", "file-out", 9),
        kind: ResultFileKind::Output,
    };
    // The batch is finalizing, not in_progress: nothing of the finish happens.
    assert!(
        !store
            .finish(
                "batch-1",
                BatchStatus::InProgress,
                BatchStatus::Expired,
                std::slice::from_ref(&output),
                9
            )
            .await
            .unwrap()
    );
    let b = get(s, "batch-1").await;
    assert_eq!(
        (b.status, b.expired_at, b.output_file_id),
        (BatchStatus::Finalizing, None, None)
    );
    assert_eq!(
        store.get_file("p1", "file-out").await.unwrap(),
        None,
        "no file registered"
    );
    assert_eq!(store.finished_lines("batch-1").await.unwrap(), [1], "results kept");
    assert!(
        !store
            .finish_failed("batch-1", BatchStatus::InProgress, &[output], 9)
            .await
            .unwrap()
    );
    assert_eq!(status(s, "batch-1").await, BatchStatus::Finalizing);
    assert!(
        !store
            .finish("batch-none", BatchStatus::Finalizing, BatchStatus::Completed, &[], 9)
            .await
            .unwrap()
    );
}

pub async fn finish_registers_result_files(store: Arc<dyn Store>) {
    let s = store.as_ref();
    running_batch(s, "p1", "batch-1", 3, 1).await;
    store
        .record_results(&[
            result("batch-1", 1, false),
            result("batch-1", 2, true),
            result("batch-1", 3, false),
        ])
        .await
        .unwrap();
    assert!(store.transition("batch-1", BatchStatus::Finalizing, 5).await.unwrap());
    let out = FileRecord {
        purpose: "batch_output".into(),
        expires_at: Some(9 + 3600),
        ..file("p1", "file-out", 9)
    };
    let err = FileRecord {
        purpose: "batch_output".into(),
        ..file("p1", "file-err", 9)
    };
    let files = [
        FinishedFile {
            record: out.clone(),
            kind: ResultFileKind::Output,
        },
        FinishedFile {
            record: err.clone(),
            kind: ResultFileKind::Error,
        },
    ];
    assert!(
        store
            .finish("batch-1", BatchStatus::Finalizing, BatchStatus::Completed, &files, 9)
            .await
            .unwrap()
    );
    let b = get(s, "batch-1").await;
    assert_eq!(b.status, BatchStatus::Completed);
    assert_eq!(
        (b.output_file_id.as_deref(), b.error_file_id.as_deref()),
        (Some("file-out"), Some("file-err"))
    );
    assert_eq!(
        b.request_counts,
        RequestCounts {
            total: 3,
            completed: 2,
            failed: 1
        },
        "the counts outlive the result rows"
    );
    assert_eq!(store.get_file("p1", "file-out").await.unwrap(), Some(out));
    assert_eq!(store.get_file("p1", "file-err").await.unwrap(), Some(err));

    // Only an error file, after a cancel that recorded why lines did not run.
    running_batch(s, "p1", "batch-2", 2, 20).await;
    store.request_cancel("p1", "batch-2", 21).await.unwrap();
    let why = vec![error("input_unreadable", None)];
    store.set_errors("batch-2", &why).await.unwrap();
    assert_eq!(
        status(s, "batch-2").await,
        BatchStatus::Cancelling,
        "set_errors moves nothing"
    );
    let err2 = FinishedFile {
        record: file("p1", "file-err-2", 22),
        kind: ResultFileKind::Error,
    };
    assert!(
        store
            .finish("batch-2", BatchStatus::Cancelling, BatchStatus::Cancelled, &[err2], 22)
            .await
            .unwrap()
    );
    let b = get(s, "batch-2").await;
    assert_eq!(
        (b.status, b.output_file_id, b.error_file_id.as_deref(), b.errors),
        (BatchStatus::Cancelled, None, Some("file-err-2"), Some(why))
    );
}

pub async fn active_batches_oldest_first(store: Arc<dyn Store>) {
    let s = store.as_ref();
    // Same created_at everywhere: creation order decides.
    store.insert_batch(&batch("p2", "batch-v", "file-1", 1)).await.unwrap();
    running_batch(s, "p1", "batch-r", 1, 1).await;
    finalizing_batch(s, "p1", "batch-f", 1).await;
    store.insert_batch(&batch("p1", "batch-c", "file-1", 1)).await.unwrap();
    store.request_cancel("p1", "batch-c", 1).await.unwrap();
    store
        .insert_batch(&batch("p1", "batch-failed", "file-1", 1))
        .await
        .unwrap();
    store.fail_validation("batch-failed", &[], 1).await.unwrap();
    finalizing_batch(s, "p1", "batch-done", 1).await;
    store
        .finish("batch-done", BatchStatus::Finalizing, BatchStatus::Completed, &[], 1)
        .await
        .unwrap();
    store.insert_batch(&batch("p3", "batch-a", "file-1", 1)).await.unwrap();
    let active = store.active_batches().await.unwrap();
    assert_eq!(
        ids(&active, |b| &b.id),
        ["batch-v", "batch-r", "batch-f", "batch-c", "batch-a"]
    );
    let statuses: Vec<BatchStatus> = active.iter().map(|b| b.status).collect();
    use BatchStatus::*;
    assert_eq!(statuses, [Validating, InProgress, Finalizing, Cancelling, Validating]);
}

pub async fn count_by_status_counts_every_batch(store: Arc<dyn Store>) {
    let s = store.as_ref();
    assert!(store.count_by_status().await.unwrap().is_empty());
    store.insert_batch(&batch("p1", "batch-1", "file-1", 1)).await.unwrap();
    store.insert_batch(&batch("p2", "batch-2", "file-1", 1)).await.unwrap();
    running_batch(s, "p2", "batch-3", 1, 1).await;
    store.insert_batch(&batch("p3", "batch-4", "file-1", 1)).await.unwrap();
    store.fail_validation("batch-4", &[], 2).await.unwrap();
    let mut counts = store.count_by_status().await.unwrap();
    counts.sort();
    assert_eq!(
        counts,
        [
            ("failed".to_owned(), 1),
            ("in_progress".to_owned(), 1),
            ("validating".to_owned(), 2)
        ]
    );
}

pub async fn active_limit_counts_only_active_batches(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let within = |id: &'static str, project: &'static str| {
        let store = store.clone();
        async move {
            store
                .insert_batch_within_limit(&batch(project, id, "file-1", 1), 2)
                .await
                .unwrap()
        }
    };
    assert!(within("batch-1", "p1").await);
    assert!(within("batch-2", "p1").await);
    assert!(!within("batch-3", "p1").await);
    assert!(
        store.get_batch_any_project("batch-3").await.unwrap().is_none(),
        "no row"
    );
    assert!(within("batch-other", "p2").await, "the limit is per project");
    // A batch that ended no longer counts; one still cancelling does.
    store.request_cancel("p1", "batch-1", 2).await.unwrap();
    assert!(!within("batch-3", "p1").await);
    store
        .finish("batch-1", BatchStatus::Cancelling, BatchStatus::Cancelled, &[], 3)
        .await
        .unwrap();
    assert!(within("batch-3", "p1").await);
    assert_same(&get(s, "batch-3").await, &batch("p1", "batch-3", "file-1", 1));
}

pub async fn concurrent_creates_do_not_overshoot_the_active_limit(store: Arc<dyn Store>) {
    // Several rounds, each on its own project, all creates of a round let go
    // at once: a store whose count and insert can interleave overshoots in
    // some round.
    for round in 0..10 {
        let project = format!("p{round}");
        let start = Arc::new(tokio::sync::Barrier::new(12));
        let creates: Vec<_> = (0..12)
            .map(|n| {
                let store = store.clone();
                let start = start.clone();
                let project = project.clone();
                tokio::spawn(async move {
                    let batch = batch(&project, &format!("batch-{round}-{n}"), "file-1", 1);
                    start.wait().await;
                    store.insert_batch_within_limit(&batch, 3).await.unwrap()
                })
            })
            .collect();
        let mut created = 0;
        for create in creates {
            created += usize::from(create.await.unwrap());
        }
        assert_eq!(created, 3, "round {round}");
        assert_eq!(
            store
                .list_batches(&project, None, 100)
                .await
                .unwrap()
                .unwrap()
                .items
                .len(),
            3,
            "round {round}"
        );
    }
}

pub async fn start_records_model_total_and_zero_usage(store: Arc<dyn Store>) {
    store.insert_batch(&batch("p1", "batch-1", "file-1", 1)).await.unwrap();
    assert_eq!(
        store
            .start_within_enqueued_limit("batch-1", "llama-3", 42, 7, u64::MAX)
            .await
            .unwrap(),
        StartOutcome::Started
    );
    let b = get(store.as_ref(), "batch-1").await;
    assert_eq!((b.status, b.in_progress_at), (BatchStatus::InProgress, Some(7)));
    assert_eq!(b.model.as_deref(), Some("llama-3"));
    assert_eq!(
        b.request_counts,
        RequestCounts {
            total: 42,
            completed: 0,
            failed: 0
        }
    );
    // Usage starts at zero once the batch runs (the Batch object shows it).
    assert_eq!(b.usage, Some(Usage::default()));
    // Starting twice is refused and keeps the first start.
    assert_eq!(
        store
            .start_within_enqueued_limit("batch-1", "other", 1, 8, u64::MAX)
            .await
            .unwrap(),
        StartOutcome::NotValidating
    );
    let b = get(store.as_ref(), "batch-1").await;
    assert_eq!(
        (b.model.as_deref(), b.request_counts.total, b.in_progress_at),
        (Some("llama-3"), 42, Some(7))
    );
}

pub async fn start_respects_the_enqueued_limit(store: Arc<dyn Store>) {
    let s = store.as_ref();
    running_batch(s, "p1", "batch-run", 10, 1).await;
    let four: Vec<_> = (1..=4).map(|line| result("batch-run", line, line == 2)).collect();
    store.record_results(&four).await.unwrap();
    // Another project's backlog does not count.
    running_batch(s, "p2", "batch-other", 1_000, 1).await;
    // A finalizing batch has no lines left to run.
    finalizing_batch(s, "p1", "batch-fin", 1).await;
    store
        .insert_batch(&batch("p1", "batch-new", "file-1", 2))
        .await
        .unwrap();
    let start = |total, max| {
        let store = store.clone();
        async move {
            store
                .start_within_enqueued_limit("batch-new", "m", total, 5, max)
                .await
                .unwrap()
        }
    };
    // 6 lines enqueued (10 minus 4 results), 5 more would make 11.
    assert_eq!(start(5, 10).await, StartOutcome::OverEnqueuedLimit { enqueued: 6 });
    let b = get(s, "batch-new").await;
    assert_eq!(
        (b.status, b.model, b.request_counts.total),
        (BatchStatus::Validating, None, 0)
    );
    // Exactly at the limit is allowed.
    assert_eq!(start(5, 11).await, StartOutcome::Started);
    assert_eq!(status(s, "batch-new").await, BatchStatus::InProgress);
}

pub async fn concurrent_starts_do_not_overshoot_the_enqueued_limit(store: Arc<dyn Store>) {
    // Twelve batches of 10 lines each, at most 30 lines enqueued per project:
    // three start, whatever the interleaving, in every round.
    for round in 0..10 {
        let project = format!("p{round}");
        for n in 0..12 {
            store
                .insert_batch(&batch(&project, &format!("batch-{round}-{n}"), "file-1", 1))
                .await
                .unwrap();
        }
        let go = Arc::new(tokio::sync::Barrier::new(12));
        let starts: Vec<_> = (0..12)
            .map(|n| {
                let store = store.clone();
                let go = go.clone();
                tokio::spawn(async move {
                    go.wait().await;
                    store
                        .start_within_enqueued_limit(&format!("batch-{round}-{n}"), "m", 10, 2, 30)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut started = 0;
        for start in starts {
            match start.await.unwrap() {
                StartOutcome::Started => started += 1,
                StartOutcome::OverEnqueuedLimit { enqueued } => assert!(enqueued > 20, "round {round}: {enqueued}"),
                other => panic!("round {round}: unexpected {other:?}"),
            }
        }
        assert_eq!(started, 3, "round {round}");
    }
}

pub async fn start_of_a_batch_no_longer_validating(store: Arc<dyn Store>) {
    store.insert_batch(&batch("p1", "batch-1", "file-1", 1)).await.unwrap();
    store.request_cancel("p1", "batch-1", 2).await.unwrap();
    assert_eq!(
        store
            .start_within_enqueued_limit("batch-1", "m", 5, 3, u64::MAX)
            .await
            .unwrap(),
        StartOutcome::NotValidating
    );
    let b = get(store.as_ref(), "batch-1").await;
    assert_eq!(
        (b.status, b.model, b.in_progress_at, b.request_counts.total, b.usage),
        (BatchStatus::Cancelling, None, None, 0, None)
    );
    assert_eq!(
        store
            .start_within_enqueued_limit("batch-none", "m", 5, 3, u64::MAX)
            .await
            .unwrap(),
        StartOutcome::NotValidating
    );
}

pub async fn failing_intent_is_kept_and_becomes_errors(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let intents = store.batch_intents("batch-none").await.unwrap();
    assert!(intents.failing.is_none() && intents.line_limit.is_none());
    store.insert_batch(&batch("p1", "batch-v", "file-1", 1)).await.unwrap();
    assert!(
        !store
            .mark_failing("batch-v", &[error("model_unavailable", None)])
            .await
            .unwrap()
    );
    assert!(store.batch_intents("batch-v").await.unwrap().failing.is_none());

    running_batch(s, "p1", "batch-1", 2, 1).await;
    assert!(store.batch_intents("batch-1").await.unwrap().failing.is_none());
    let first = vec![error("model_unavailable", None)];
    assert!(store.mark_failing("batch-1", &first).await.unwrap());
    // A second decision (after a restart, say) does not replace the first.
    store
        .mark_failing("batch-1", &[error("input_unreadable", None)])
        .await
        .unwrap();
    assert_eq!(
        store.batch_intents("batch-1").await.unwrap().failing,
        Some(first.clone())
    );
    let b = get(s, "batch-1").await;
    assert_eq!((b.status, b.errors), (BatchStatus::InProgress, None), "not visible yet");
    let err = FinishedFile {
        record: file("p1", "file-err", 9),
        kind: ResultFileKind::Error,
    };
    assert!(
        store
            .finish_failed("batch-1", BatchStatus::InProgress, &[err], 9)
            .await
            .unwrap()
    );
    let b = get(s, "batch-1").await;
    assert_eq!(
        (b.status, b.failed_at, b.errors, b.error_file_id.as_deref()),
        (BatchStatus::Failed, Some(9), Some(first), Some("file-err"))
    );
    assert!(!store.mark_failing("batch-1", &[error("late", None)]).await.unwrap());
}

pub async fn line_limit_round_trips(store: Arc<dyn Store>) {
    store.insert_batch(&batch("p1", "batch-1", "file-1", 1)).await.unwrap();
    assert_eq!(store.batch_intents("batch-1").await.unwrap().line_limit, None);
    store.set_line_limit("batch-1", 64 << 20).await.unwrap();
    assert_eq!(store.batch_intents("batch-1").await.unwrap().line_limit, Some(64 << 20));
    store.set_line_limit("batch-1", 1).await.unwrap();
    assert_eq!(store.batch_intents("batch-1").await.unwrap().line_limit, Some(1));
}
