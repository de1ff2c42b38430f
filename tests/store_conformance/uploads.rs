//! `UploadRepo`: uploads, their parts admitted within the declared size, and
//! the compare-and-set status machine that completion and cancel race on.

use std::sync::Arc;

use batchd::domain::{UploadPart, UploadRecord, UploadStatus};
use batchd::store::{PartAdmission, Store};

use crate::file;

fn upload(project: &str, id: &str, bytes: i64, expires_at: i64) -> UploadRecord {
    UploadRecord {
        id: id.into(),
        project_id: project.into(),
        filename: format!("{id}.jsonl"),
        purpose: "batch".into(),
        mime_type: "text/jsonl".into(),
        bytes,
        created_at: 1,
        expires_at,
        status: UploadStatus::Pending,
        file_expires_after: None,
        file_id: None,
    }
}

fn part(upload_id: &str, id: &str, bytes: i64) -> UploadPart {
    UploadPart {
        id: id.into(),
        upload_id: upload_id.into(),
        bytes,
        created_at: 2,
        storage_key: format!("parts/{id}"),
    }
}

/// `UploadRecord` has no `PartialEq`; its `Debug` form shows every field.
fn same(actual: Option<UploadRecord>, expected: Option<&UploadRecord>) {
    assert_eq!(format!("{actual:?}"), format!("{expected:?}"));
}

async fn status(store: &dyn Store, id: &str) -> UploadStatus {
    store.get_upload("p1", id).await.unwrap().unwrap().status
}

pub async fn uploads_read_back_exactly_and_are_scoped(store: Arc<dyn Store>) {
    let plain = upload("p1", "upload-1", 10, 100);
    let with_ttl = UploadRecord {
        file_expires_after: Some(7200),
        filename: "données ✓.jsonl".into(),
        ..upload("p1", "upload-2", 1 << 40, 100)
    };
    store.insert_upload(&plain).await.unwrap();
    store.insert_upload(&with_ttl).await.unwrap();
    same(store.get_upload("p1", "upload-1").await.unwrap(), Some(&plain));
    same(store.get_upload("p1", "upload-2").await.unwrap(), Some(&with_ttl));
    same(store.get_upload("p2", "upload-1").await.unwrap(), None);
    same(store.get_upload("p1", "upload-none").await.unwrap(), None);
}

pub async fn parts_are_admitted_within_declared_bytes_and_count(store: Arc<dyn Store>) {
    store
        .insert_upload(&upload("p1", "upload-1", 100, 1_000))
        .await
        .unwrap();
    assert_eq!(store.part_totals("upload-1").await.unwrap(), (0, 0));
    // Ids sorting backwards: parts come back in the order they were added.
    assert_eq!(
        store.add_part(&part("upload-1", "part-z", 40), 10).await.unwrap(),
        PartAdmission::Added
    );
    assert_eq!(
        store.add_part(&part("upload-1", "part-y", 60), 10).await.unwrap(),
        PartAdmission::Added
    );
    assert_eq!(
        store.add_part(&part("upload-1", "part-x", 1), 10).await.unwrap(),
        PartAdmission::OverDeclared {
            declared: 100,
            stored: 100
        }
    );
    assert_eq!(store.part_totals("upload-1").await.unwrap(), (2, 100));
    let parts = store.parts("upload-1").await.unwrap();
    assert_eq!(
        parts
            .iter()
            .map(|p| (p.id.as_str(), p.bytes, p.storage_key.as_str()))
            .collect::<Vec<_>>(),
        [("part-z", 40, "parts/part-z"), ("part-y", 60, "parts/part-y")]
    );

    store
        .insert_upload(&upload("p1", "upload-2", 100, 1_000))
        .await
        .unwrap();
    for id in ["part-1", "part-2"] {
        assert_eq!(
            store.add_part(&part("upload-2", id, 1), 2).await.unwrap(),
            PartAdmission::Added
        );
    }
    assert_eq!(
        store.add_part(&part("upload-2", "part-3", 1), 2).await.unwrap(),
        PartAdmission::TooManyParts
    );
    assert_eq!(store.part_totals("upload-2").await.unwrap(), (2, 2));
    assert_eq!(
        store.parts("upload-2").await.unwrap().len(),
        2,
        "a refused part leaves no row"
    );
    assert!(store.parts("upload-none").await.unwrap().is_empty());
}

pub async fn parts_are_refused_unless_pending(store: Arc<dyn Store>) {
    assert_eq!(
        store.add_part(&part("upload-none", "part-0", 1), 10).await.unwrap(),
        PartAdmission::NotPending(None)
    );
    for (id, to) in [
        ("upload-c", UploadStatus::Completing),
        ("upload-x", UploadStatus::Cancelled),
        ("upload-e", UploadStatus::Expired),
    ] {
        store.insert_upload(&upload("p1", id, 100, 1_000)).await.unwrap();
        assert!(store.set_upload_status(id, &[UploadStatus::Pending], to).await.unwrap());
        assert_eq!(
            store.add_part(&part(id, &format!("part-{id}"), 1), 10).await.unwrap(),
            PartAdmission::NotPending(Some(to))
        );
        assert_eq!(store.part_totals(id).await.unwrap(), (0, 0));
    }
}

pub async fn concurrent_parts_do_not_overshoot_the_declared_size(store: Arc<dyn Store>) {
    store
        .insert_upload(&upload("p1", "upload-1", 100, 1_000))
        .await
        .unwrap();
    let adds: Vec<_> = (0..20)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .add_part(&part("upload-1", &format!("part-{n}"), 10), 1_000)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut added = 0;
    for add in adds {
        match add.await.unwrap() {
            PartAdmission::Added => added += 1,
            PartAdmission::OverDeclared {
                declared: 100,
                stored: 100,
            } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(added, 10);
    assert_eq!(store.part_totals("upload-1").await.unwrap(), (10, 100));
}

pub async fn status_changes_are_compare_and_set(store: Arc<dyn Store>) {
    let s = store.as_ref();
    store.insert_upload(&upload("p1", "upload-1", 10, 1_000)).await.unwrap();
    use UploadStatus::*;
    assert!(
        store
            .set_upload_status("upload-1", &[Pending], Completing)
            .await
            .unwrap()
    );
    // A second complete, or a cancel, no longer finds it pending.
    assert!(
        !store
            .set_upload_status("upload-1", &[Pending], Completing)
            .await
            .unwrap()
    );
    assert!(
        !store
            .set_upload_status("upload-1", &[Pending], Cancelled)
            .await
            .unwrap()
    );
    assert_eq!(status(s, "upload-1").await, Completing);
    // A failed assembly puts it back; expiry takes either.
    assert!(
        store
            .set_upload_status("upload-1", &[Completing], Pending)
            .await
            .unwrap()
    );
    assert!(
        store
            .set_upload_status("upload-1", &[Pending, Completing], Expired)
            .await
            .unwrap()
    );
    assert_eq!(status(s, "upload-1").await, Expired);
    assert!(
        !store
            .set_upload_status("upload-1", &[Pending, Completing], Cancelled)
            .await
            .unwrap()
    );
    assert_eq!(status(s, "upload-1").await, Expired);
    assert!(
        !store
            .set_upload_status("upload-none", &[Pending], Cancelled)
            .await
            .unwrap()
    );
}

pub async fn complete_is_compare_and_set_with_its_file(store: Arc<dyn Store>) {
    let s = store.as_ref();
    store.insert_upload(&upload("p1", "upload-1", 10, 1_000)).await.unwrap();
    let assembled = file("p1", "file-1", 5);
    // Not completing: neither the status nor the file.
    assert!(!store.complete_upload("upload-1", &assembled).await.unwrap());
    assert_eq!(store.get_file("p1", "file-1").await.unwrap(), None);
    assert!(
        store
            .set_upload_status("upload-1", &[UploadStatus::Pending], UploadStatus::Completing)
            .await
            .unwrap()
    );
    assert!(store.complete_upload("upload-1", &assembled).await.unwrap());
    let done = store.get_upload("p1", "upload-1").await.unwrap().unwrap();
    assert_eq!(
        (done.status, done.file_id.as_deref()),
        (UploadStatus::Completed, Some("file-1"))
    );
    assert_eq!(store.get_file("p1", "file-1").await.unwrap(), Some(assembled));
    // A second completion leaves the first.
    assert!(
        !store
            .complete_upload("upload-1", &file("p1", "file-2", 6))
            .await
            .unwrap()
    );
    assert_eq!(store.get_file("p1", "file-2").await.unwrap(), None);
    assert_eq!(
        store
            .get_upload("p1", "upload-1")
            .await
            .unwrap()
            .unwrap()
            .file_id
            .as_deref(),
        Some("file-1")
    );

    // Expired while completing: the assembled file never appears.
    store.insert_upload(&upload("p1", "upload-2", 10, 1_000)).await.unwrap();
    use UploadStatus::*;
    assert!(
        store
            .set_upload_status("upload-2", &[Pending], Completing)
            .await
            .unwrap()
    );
    assert!(
        store
            .set_upload_status("upload-2", &[Pending, Completing], Expired)
            .await
            .unwrap()
    );
    assert!(
        !store
            .complete_upload("upload-2", &file("p1", "file-3", 7))
            .await
            .unwrap()
    );
    assert_eq!(store.get_file("p1", "file-3").await.unwrap(), None);
    let expired = store.get_upload("p1", "upload-2").await.unwrap().unwrap();
    assert_eq!((expired.status, expired.file_id), (Expired, None));
    assert_eq!(status(s, "upload-1").await, Completed);
}

pub async fn expired_uploads_are_pending_or_completing(store: Arc<dyn Store>) {
    use UploadStatus::*;
    for (id, expires_at, to) in [
        ("upload-pending", 100, None),
        ("upload-at-now", 200, None),
        ("upload-completing", 100, Some(Completing)),
        ("upload-future", 201, None),
        ("upload-cancelled", 100, Some(Cancelled)),
        ("upload-expired", 100, Some(Expired)),
    ] {
        store.insert_upload(&upload("p1", id, 10, expires_at)).await.unwrap();
        if let Some(to) = to {
            assert!(store.set_upload_status(id, &[Pending], to).await.unwrap());
        }
    }
    store
        .insert_upload(&upload("p2", "upload-other", 10, 50))
        .await
        .unwrap();
    let mut expired: Vec<String> = store
        .expired_uploads(200)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.id)
        .collect();
    expired.sort();
    assert_eq!(
        expired,
        ["upload-at-now", "upload-completing", "upload-other", "upload-pending"]
    );
    assert!(store.expired_uploads(49).await.unwrap().is_empty());
}
