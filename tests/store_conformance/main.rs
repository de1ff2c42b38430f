//! The store conformance suite: one set of behavioural checks over the
//! persistence traits of `src/store/mod.rs`, run against every store
//! implementation (the way object_store runs each of its stores through the
//! same checks).
//!
//! Each check is an `async fn(Arc<dyn Store>)` in the module of its aggregate
//! (`files`, `batches`, `results`, `keys`, `uploads`, `events`). It goes
//! through the traits only, never SQL, and asserts what the services rely on:
//! ordering and ties in `created_at`, compare-and-set transitions,
//! exactly-once results, project scoping, NULL versus missing.
//!
//! `conformance!(name, factory)` generates one `#[tokio::test]` per check,
//! named `name::aggregate::check`, each on a fresh store from `factory` (an
//! `async fn() -> Fixture`). Adding a store is one line, next to SQLite's
//! and PostgreSQL's below, plus its factory.
//!
//! `postgres` runs every check on a fresh database of one throwaway cluster
//! per test binary (`tests/common/postgres.rs`): `cargo test --test
//! store_conformance postgres::` runs them against PostgreSQL alone. It needs
//! the PostgreSQL server binaries (`scripts/setup.sh` installs them) and fails
//! without them.
//!
//! A check written but not listed in `conformance!` is dead code, which
//! `cargo clippy -- -D warnings` refuses.

mod batches;
mod events;
mod files;
mod keys;
#[path = "../common/postgres.rs"]
mod pg_cluster;
mod results;
mod uploads;

use std::sync::Arc;

use batchd::domain::{BatchRecord, FileRecord, Usage};
use batchd::store::postgres::PgStore;
use batchd::store::sqlite::SqliteStore;
use batchd::store::{LineResult, Store};

/// A fresh, empty store and whatever must outlive it (its directory, its
/// scratch database).
pub struct Fixture {
    pub store: Arc<dyn Store>,
    pub _keep: Box<dyn std::any::Any + Send>,
}

async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("batchd.db"))
        .await
        .expect("open the SQLite store");
    Fixture {
        store: Arc::new(store),
        _keep: Box::new(dir),
    }
}

/// A fresh database on the test binary's PostgreSQL cluster (the cluster
/// goes when the test process ends, and its databases with it).
async fn postgres() -> Fixture {
    let url = pg_cluster::fresh_database().await;
    let store = PgStore::connect(&url).await.expect("open the PostgreSQL store");
    Fixture {
        store: Arc::new(store),
        _keep: Box::new(()),
    }
}

/// One `#[tokio::test]` per check for the store that `$factory` opens, in
/// module `$store`. Multi-threaded, so that the checks of concurrent
/// operations really race.
macro_rules! conformance {
    ($store:ident, $factory:ident) => {
        mod $store {
            conformance!(@checks $factory;
                files: [
                    inserted_files_read_back_exactly,
                    files_are_scoped_by_project,
                    listing_pages_in_insertion_order_with_ties,
                    listing_after_an_unknown_file_is_none,
                    listing_filters_by_purpose,
                    listing_pages_past_a_deleted_cursor,
                    deleting_returns_the_record_once,
                    expired_files_oldest_first_within_limit,
                    file_in_use_while_an_unfinished_batch_reads_it,
                    bytes_to_remove_once_no_batch_reads_the_file,
                ],
                batches: [
                    inserted_batches_read_back_exactly,
                    batches_are_scoped_by_project,
                    listing_is_newest_first_with_ties,
                    listing_after_an_unknown_batch_is_none,
                    transitions_are_compare_and_set,
                    transitions_stamp_only_their_own_timestamp,
                    fail_validation_only_from_validating,
                    cancel_is_accepted_once_and_keeps_its_first_stamp,
                    cancel_of_an_ended_batch_is_refused,
                    cancel_racing_completion_has_one_winner,
                    finish_is_compare_and_set_on_from,
                    finish_registers_result_files,
                    active_batches_oldest_first,
                    count_by_status_counts_every_batch,
                    active_limit_counts_only_active_batches,
                    concurrent_creates_do_not_overshoot_the_active_limit,
                    start_records_model_total_and_zero_usage,
                    start_respects_the_enqueued_limit,
                    concurrent_starts_do_not_overshoot_the_enqueued_limit,
                    start_of_a_batch_no_longer_validating,
                    failing_intent_is_kept_and_becomes_errors,
                    line_limit_round_trips,
                ],
                results: [
                    results_are_exactly_once_per_line,
                    duplicates_within_one_group_count_once,
                    concurrent_duplicate_groups_count_once,
                    results_are_scoped_by_batch,
                    results_go_when_the_batch_ends,
                    results_for_an_ended_batch_are_ignored,
                    result_pages_in_line_order_bounded_by_bytes,
                    large_and_unicode_values_round_trip,
                ],
                keys: [
                    keys_authenticate_by_hash_until_revoked,
                    revoking_twice_keeps_the_first_time,
                    keys_ever_created_stays_true_after_revoking_all,
                    keys_list_oldest_first_by_project,
                ],
                uploads: [
                    uploads_read_back_exactly_and_are_scoped,
                    parts_are_admitted_within_declared_bytes_and_count,
                    parts_are_refused_unless_pending,
                    concurrent_parts_do_not_overshoot_the_declared_size,
                    status_changes_are_compare_and_set,
                    complete_is_compare_and_set_with_its_file,
                    expired_uploads_are_pending_or_completing,
                ],
                events: [
                    terminal_transitions_queue_events_for_webhook_projects_only,
                    failed_validation_queues_an_event,
                    webhook_projects_are_replaced,
                    due_events_oldest_first_capped_per_project,
                    failed_deliveries_retry_later_or_give_up,
                    prune_removes_only_finished_events,
                ],
            );
        }
    };
    (@checks $factory:ident; $($module:ident: [$($check:ident),* $(,)?]),* $(,)?) => {
        $(
            mod $module {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $check() {
                        let fixture = super::super::$factory().await;
                        crate::$module::$check(fixture.store.clone()).await;
                    }
                )*
            }
        )*
    };
}

conformance!(sqlite, sqlite);
conformance!(postgres, postgres);

// Records as the services build them.

pub const ENDPOINT: &str = "/v1/chat/completions";

pub fn file(project: &str, id: &str, created_at: i64) -> FileRecord {
    FileRecord {
        id: id.into(),
        project_id: project.into(),
        filename: format!("{id}.jsonl"),
        purpose: "batch".into(),
        bytes: 100,
        created_at,
        expires_at: None,
        storage_key: format!("files/{id}"),
    }
}

pub fn batch(project: &str, id: &str, input_file_id: &str, created_at: i64) -> BatchRecord {
    BatchRecord::new_validating(
        id.into(),
        project.into(),
        ENDPOINT.into(),
        input_file_id.into(),
        "24h".into(),
        created_at,
        Some(created_at + 24 * 3600),
    )
}

pub fn usage(tokens: i64) -> Usage {
    Usage {
        input_tokens: tokens,
        cached_tokens: 1,
        output_tokens: 2 * tokens,
        reasoning_tokens: 3,
        total_tokens: 3 * tokens,
    }
}

pub fn result(batch_id: &str, line: u64, is_error: bool) -> LineResult {
    LineResult {
        batch_id: batch_id.into(),
        line,
        is_error,
        output_line: format!("{{\"custom_id\":\"line-{line}\"}}"),
        usage: usage(10),
    }
}

/// Inserts a `validating` batch and starts it (`in_progress`, `total` lines).
pub async fn running_batch(store: &dyn Store, project: &str, id: &str, total: i64, now: i64) -> BatchRecord {
    store.insert_batch(&batch(project, id, "file-in", now)).await.unwrap();
    assert_eq!(
        store
            .start_within_enqueued_limit(id, "model-a", total, now + 1, u64::MAX)
            .await
            .unwrap(),
        batchd::store::StartOutcome::Started
    );
    store.get_batch(project, id).await.unwrap().unwrap()
}

pub fn ids<T>(items: &[T], id: impl Fn(&T) -> &str) -> Vec<String> {
    items.iter().map(|item| id(item).to_owned()).collect()
}
