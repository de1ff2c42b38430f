//! `FileRepo`: files, their listing, deletion and the sweeps over them.

use std::sync::Arc;

use batchd::domain::{BatchStatus, FileListQuery, FileRecord, Order};
use batchd::store::Store;

use crate::{batch, file, ids, running_batch};

fn query(after: Option<&str>, limit: u32, order: Order) -> FileListQuery {
    FileListQuery {
        purpose: None,
        after: after.map(str::to_owned),
        limit,
        order,
    }
}

async fn list(store: &dyn Store, project: &str, q: &FileListQuery) -> (Vec<String>, bool) {
    let page = store.list_files(project, q).await.unwrap().expect("a page");
    (ids(&page.items, |f: &FileRecord| &f.id), page.has_more)
}

pub async fn inserted_files_read_back_exactly(store: Arc<dyn Store>) {
    let with_expiry = FileRecord {
        expires_at: Some(5_000),
        bytes: 1 << 40,
        filename: "données ✓.jsonl".into(),
        ..file("p1", "file-a", 1_000)
    };
    let without = file("p1", "file-b", 1_001);
    store.insert_file(&with_expiry).await.unwrap();
    store.insert_file(&without).await.unwrap();
    assert_eq!(store.get_file("p1", "file-a").await.unwrap(), Some(with_expiry.clone()));
    // NULL expires_at stays None (not 0).
    assert_eq!(store.get_file("p1", "file-b").await.unwrap(), Some(without));
    assert_eq!(
        store.get_file_even_deleted("p1", "file-a").await.unwrap(),
        Some(with_expiry)
    );
    assert_eq!(store.get_file("p1", "file-zzz").await.unwrap(), None);
}

pub async fn files_are_scoped_by_project(store: Arc<dyn Store>) {
    store.insert_file(&file("p1", "file-a", 1)).await.unwrap();
    store.insert_file(&file("p2", "file-b", 1)).await.unwrap();
    assert_eq!(store.get_file("p2", "file-a").await.unwrap(), None);
    assert_eq!(store.get_file_even_deleted("p2", "file-a").await.unwrap(), None);
    assert_eq!(store.delete_file("p2", "file-a").await.unwrap(), None);
    assert!(
        store.get_file("p1", "file-a").await.unwrap().is_some(),
        "not deleted by p2"
    );
    assert_eq!(
        list(store.as_ref(), "p1", &query(None, 10, Order::Desc)).await,
        (vec!["file-a".to_owned()], false)
    );
    // A cursor naming another project's file is unknown to this project.
    assert!(
        store
            .list_files("p1", &query(Some("file-b"), 10, Order::Desc))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        list(store.as_ref(), "p3", &query(None, 10, Order::Asc))
            .await
            .0
            .is_empty()
    );
}

pub async fn listing_pages_in_insertion_order_with_ties(store: Arc<dyn Store>) {
    // Five files in the same second: the order is the order of insertion,
    // not of ids (which are random in production; here they sort backwards).
    let names = ["file-e", "file-d", "file-c", "file-b", "file-a"];
    for name in names {
        store.insert_file(&file("p1", name, 1_000)).await.unwrap();
    }
    let s = store.as_ref();
    let desc = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        list(s, "p1", &query(None, 2, Order::Desc)).await,
        (desc(&["file-a", "file-b"]), true)
    );
    assert_eq!(
        list(s, "p1", &query(Some("file-b"), 2, Order::Desc)).await,
        (desc(&["file-c", "file-d"]), true)
    );
    // The last page is exactly full: nothing more.
    assert_eq!(
        list(s, "p1", &query(Some("file-d"), 1, Order::Desc)).await,
        (desc(&["file-e"]), false)
    );
    assert_eq!(
        list(s, "p1", &query(Some("file-e"), 10, Order::Desc)).await,
        (vec![], false)
    );
    assert_eq!(
        list(s, "p1", &query(None, 3, Order::Asc)).await,
        (desc(&["file-e", "file-d", "file-c"]), true)
    );
    assert_eq!(
        list(s, "p1", &query(Some("file-c"), 2, Order::Asc)).await,
        (desc(&["file-b", "file-a"]), false)
    );
    assert_eq!(list(s, "p1", &query(None, 5, Order::Asc)).await, (desc(&names), false));
}

pub async fn listing_after_an_unknown_file_is_none(store: Arc<dyn Store>) {
    store.insert_file(&file("p1", "file-a", 1)).await.unwrap();
    for order in [Order::Asc, Order::Desc] {
        assert!(
            store
                .list_files("p1", &query(Some("file-nope"), 10, order))
                .await
                .unwrap()
                .is_none()
        );
    }
}

pub async fn listing_filters_by_purpose(store: Arc<dyn Store>) {
    for (id, purpose) in [("file-1", "batch"), ("file-2", "batch_output"), ("file-3", "batch")] {
        let f = FileRecord {
            purpose: purpose.into(),
            ..file("p1", id, 1)
        };
        store.insert_file(&f).await.unwrap();
    }
    let batch_only = FileListQuery {
        purpose: Some("batch".into()),
        ..query(None, 10, Order::Asc)
    };
    assert_eq!(
        list(store.as_ref(), "p1", &batch_only).await,
        (vec!["file-1".to_owned(), "file-3".to_owned()], false)
    );
    // The cursor may name a file of another purpose.
    let after_output = FileListQuery {
        after: Some("file-2".into()),
        ..batch_only.clone()
    };
    assert_eq!(
        list(store.as_ref(), "p1", &after_output).await,
        (vec!["file-3".to_owned()], false)
    );
    let none = FileListQuery {
        purpose: Some("vision".into()),
        ..batch_only
    };
    assert_eq!(list(store.as_ref(), "p1", &none).await, (vec![], false));
}

pub async fn listing_pages_past_a_deleted_cursor(store: Arc<dyn Store>) {
    for name in ["file-1", "file-2", "file-3"] {
        store.insert_file(&file("p1", name, 1)).await.unwrap();
    }
    // The last file of the previous page is deleted before the next page is asked for.
    store.delete_file("p1", "file-2").await.unwrap().unwrap();
    assert_eq!(
        list(store.as_ref(), "p1", &query(Some("file-2"), 10, Order::Asc)).await,
        (vec!["file-3".to_owned()], false)
    );
    assert_eq!(
        list(store.as_ref(), "p1", &query(None, 10, Order::Asc)).await,
        (vec!["file-1".to_owned(), "file-3".to_owned()], false),
        "deleted files are not listed"
    );
}

pub async fn deleting_returns_the_record_once(store: Arc<dyn Store>) {
    let f = FileRecord {
        expires_at: Some(10),
        ..file("p1", "file-a", 1)
    };
    store.insert_file(&f).await.unwrap();
    assert_eq!(store.delete_file("p1", "file-a").await.unwrap(), Some(f.clone()));
    assert_eq!(store.delete_file("p1", "file-a").await.unwrap(), None);
    assert_eq!(store.get_file("p1", "file-a").await.unwrap(), None);
    // A running batch still reads its input after the user deleted it.
    assert_eq!(store.get_file_even_deleted("p1", "file-a").await.unwrap(), Some(f));
    assert_eq!(store.delete_file("p1", "file-never").await.unwrap(), None);
    // A deleted file is not expired again.
    assert!(store.expired_files(100, 10).await.unwrap().is_empty());
}

pub async fn expired_files_oldest_first_within_limit(store: Arc<dyn Store>) {
    let expiring = |project: &str, id: &str, at: Option<i64>| FileRecord {
        expires_at: at,
        ..file(project, id, 1)
    };
    // Inserted in an order that is neither expiry order nor id order.
    for f in [
        expiring("p1", "file-300", Some(300)),
        expiring("p2", "file-100", Some(100)),
        expiring("p1", "file-never", None),
        expiring("p1", "file-301", Some(301)),
        expiring("p1", "file-200", Some(200)),
        expiring("p1", "file-deleted", Some(50)),
    ] {
        store.insert_file(&f).await.unwrap();
    }
    store.delete_file("p1", "file-deleted").await.unwrap().unwrap();
    let expired = |now, limit| {
        let store = store.clone();
        async move { ids(&store.expired_files(now, limit).await.unwrap(), |f| &f.id) }
    };
    // At `now` itself counts as expired; all projects.
    assert_eq!(expired(300, 10).await, ["file-100", "file-200", "file-300"]);
    assert_eq!(expired(300, 2).await, ["file-100", "file-200"]);
    assert_eq!(expired(99, 10).await, Vec::<String>::new());
    assert_eq!(
        expired(i64::MAX, 10).await,
        ["file-100", "file-200", "file-300", "file-301"]
    );
}

pub async fn file_in_use_while_an_unfinished_batch_reads_it(store: Arc<dyn Store>) {
    store.insert_file(&file("p1", "file-in", 1)).await.unwrap();
    store.insert_file(&file("p1", "file-idle", 1)).await.unwrap();
    assert!(!store.file_in_use("file-in").await.unwrap());
    // validating, in_progress, finalizing and cancelling all still read it.
    store
        .insert_batch(&batch("p1", "batch-1", "file-in", 10))
        .await
        .unwrap();
    assert!(store.file_in_use("file-in").await.unwrap());
    assert!(
        store
            .start_within_enqueued_limit("batch-1", "m", 3, 11, u64::MAX)
            .await
            .unwrap()
            == batchd::store::StartOutcome::Started
    );
    assert!(store.file_in_use("file-in").await.unwrap());
    assert!(store.transition("batch-1", BatchStatus::Finalizing, 12).await.unwrap());
    assert!(store.file_in_use("file-in").await.unwrap());
    store.request_cancel("p1", "batch-1", 13).await.unwrap();
    assert!(store.file_in_use("file-in").await.unwrap());
    assert!(
        store
            .finish("batch-1", BatchStatus::Cancelling, BatchStatus::Cancelled, &[], 14)
            .await
            .unwrap()
    );
    assert!(
        !store.file_in_use("file-in").await.unwrap(),
        "a cancelled batch reads nothing"
    );
    assert!(!store.file_in_use("file-idle").await.unwrap());
    // A failed validation ends the reading too.
    store
        .insert_batch(&batch("p1", "batch-2", "file-idle", 20))
        .await
        .unwrap();
    assert!(store.file_in_use("file-idle").await.unwrap());
    assert!(store.fail_validation("batch-2", &[], 21).await.unwrap());
    assert!(!store.file_in_use("file-idle").await.unwrap());
}

pub async fn bytes_to_remove_once_no_batch_reads_the_file(store: Arc<dyn Store>) {
    for name in ["file-read", "file-free", "file-live"] {
        store.insert_file(&file("p1", name, 1)).await.unwrap();
    }
    let running = running_batch(store.as_ref(), "p1", "batch-1", 1, 10).await;
    assert_eq!(running.input_file_id, "file-in");
    store
        .insert_batch(&batch("p1", "batch-2", "file-read", 10))
        .await
        .unwrap();
    store.delete_file("p1", "file-read").await.unwrap().unwrap();
    store.delete_file("p1", "file-free").await.unwrap().unwrap();
    let to_remove = |limit| {
        let store = store.clone();
        async move {
            let mut ids = ids(&store.files_with_bytes_to_remove(limit).await.unwrap(), |f| &f.id);
            ids.sort();
            ids
        }
    };
    // Live files and files a validating batch reads keep their bytes.
    assert_eq!(to_remove(10).await, ["file-free"]);
    assert!(store.fail_validation("batch-2", &[], 12).await.unwrap());
    assert_eq!(to_remove(10).await, ["file-free", "file-read"]);
    assert_eq!(to_remove(1).await.len(), 1);
    store.bytes_removed("file-free", 20).await.unwrap();
    assert_eq!(to_remove(10).await, ["file-read"]);
    // Recording it twice is harmless.
    store.bytes_removed("file-free", 21).await.unwrap();
    store.bytes_removed("file-read", 22).await.unwrap();
    assert_eq!(to_remove(10).await, Vec::<String>::new());
    // The rows stay: a cursor may still name them.
    assert!(store.get_file_even_deleted("p1", "file-free").await.unwrap().is_some());
}
