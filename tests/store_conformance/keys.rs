//! `KeyRepo`: API keys, found by the hash of their secret, and the
//! fail-closed rule that once a key existed the API requires keys for good.

use std::sync::Arc;

use batchd::domain::ApiKey;
use batchd::store::Store;

fn key(project: &str, id: &str, admin: bool, created_at: i64) -> ApiKey {
    ApiKey {
        id: id.into(),
        project_id: project.into(),
        name: format!("name of {id}"),
        redacted: format!("sk-batchd-{id}…cdef"),
        admin,
        created_at,
        revoked_at: None,
    }
}

/// `ApiKey` has no `PartialEq`; its `Debug` form shows every field.
fn same(actual: Option<ApiKey>, expected: Option<&ApiKey>) {
    assert_eq!(format!("{actual:?}"), format!("{:?}", expected));
}

fn listed(keys: Vec<ApiKey>) -> Vec<String> {
    keys.into_iter().map(|k| k.id).collect()
}

pub async fn keys_authenticate_by_hash_until_revoked(store: Arc<dyn Store>) {
    let admin = key("p1", "key-1", true, 10);
    let user = key("p2", "key-2", false, 11);
    store.insert_key(&admin, "hash-1").await.unwrap();
    store.insert_key(&user, "hash-2").await.unwrap();
    same(store.active_key_by_hash("hash-1").await.unwrap(), Some(&admin));
    same(store.active_key_by_hash("hash-2").await.unwrap(), Some(&user));
    same(store.active_key_by_hash("hash-3").await.unwrap(), None);
    same(store.active_key_by_hash("key-1").await.unwrap(), None);
    assert_eq!(store.count_active_keys().await.unwrap(), 2);
    // Two keys never share a secret.
    assert!(
        store
            .insert_key(&key("p1", "key-3", false, 12), "hash-1")
            .await
            .is_err()
    );
    same(store.active_key_by_hash("hash-1").await.unwrap(), Some(&admin));

    let revoked = ApiKey {
        revoked_at: Some(50),
        ..admin.clone()
    };
    same(store.revoke_key("key-1", 50).await.unwrap(), Some(&revoked));
    same(store.active_key_by_hash("hash-1").await.unwrap(), None);
    same(store.active_key_by_hash("hash-2").await.unwrap(), Some(&user));
    assert_eq!(store.count_active_keys().await.unwrap(), 1);
    same(store.revoke_key("key-none", 50).await.unwrap(), None);
}

pub async fn revoking_twice_keeps_the_first_time(store: Arc<dyn Store>) {
    store
        .insert_key(&key("p1", "key-1", false, 10), "hash-1")
        .await
        .unwrap();
    assert_eq!(
        store.revoke_key("key-1", 50).await.unwrap().unwrap().revoked_at,
        Some(50)
    );
    assert_eq!(
        store.revoke_key("key-1", 60).await.unwrap().unwrap().revoked_at,
        Some(50)
    );
    let listed = store.list_keys(None).await.unwrap();
    assert_eq!(listed[0].revoked_at, Some(50));
}

pub async fn keys_ever_created_stays_true_after_revoking_all(store: Arc<dyn Store>) {
    assert!(!store.any_key_ever().await.unwrap());
    assert_eq!(store.count_active_keys().await.unwrap(), 0);
    store.insert_key(&key("p1", "key-1", true, 10), "hash-1").await.unwrap();
    store
        .insert_key(&key("p2", "key-2", false, 10), "hash-2")
        .await
        .unwrap();
    assert!(store.any_key_ever().await.unwrap());
    store.revoke_key("key-1", 20).await.unwrap().unwrap();
    store.revoke_key("key-2", 20).await.unwrap().unwrap();
    assert_eq!(store.count_active_keys().await.unwrap(), 0);
    // Revoking every key must not reopen the API.
    assert!(store.any_key_ever().await.unwrap());
}

pub async fn keys_list_oldest_first_by_project(store: Arc<dyn Store>) {
    // Same second, ids sorting the other way: creation order decides.
    store
        .insert_key(&key("p1", "key-c", false, 10), "hash-c")
        .await
        .unwrap();
    store.insert_key(&key("p2", "key-b", true, 10), "hash-b").await.unwrap();
    store
        .insert_key(&key("p1", "key-a", false, 10), "hash-a")
        .await
        .unwrap();
    store.revoke_key("key-c", 20).await.unwrap();
    assert_eq!(
        listed(store.list_keys(None).await.unwrap()),
        ["key-c", "key-b", "key-a"]
    );
    // Revoked keys are still listed, with when they were revoked.
    let p1 = store.list_keys(Some("p1")).await.unwrap();
    assert_eq!(
        p1.iter().map(|k| (k.id.as_str(), k.revoked_at)).collect::<Vec<_>>(),
        [("key-c", Some(20)), ("key-a", None)]
    );
    same(
        store.list_keys(Some("p2")).await.unwrap().pop(),
        Some(&key("p2", "key-b", true, 10)),
    );
    assert!(store.list_keys(Some("p3")).await.unwrap().is_empty());
}
