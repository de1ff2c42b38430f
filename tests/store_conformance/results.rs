//! `ResultRepo`: exactly-once results, counted in the same operation, kept
//! only until the batch ends with its files.

use std::sync::Arc;

use batchd::domain::{BatchStatus, RequestCounts, Usage};
use batchd::store::{LineResult, Store};

use crate::{result, running_batch, usage};

async fn counts(store: &dyn Store, id: &str) -> (RequestCounts, Option<Usage>) {
    let b = store.get_batch_any_project(id).await.unwrap().unwrap();
    (b.request_counts, b.usage)
}

fn summed(lines: i64) -> Usage {
    let one = usage(10);
    Usage {
        input_tokens: one.input_tokens * lines,
        cached_tokens: one.cached_tokens * lines,
        output_tokens: one.output_tokens * lines,
        reasoning_tokens: one.reasoning_tokens * lines,
        total_tokens: one.total_tokens * lines,
    }
}

fn counted(total: i64, completed: i64, failed: i64) -> RequestCounts {
    RequestCounts {
        total,
        completed,
        failed,
    }
}

pub async fn results_are_exactly_once_per_line(store: Arc<dyn Store>) {
    let s = store.as_ref();
    running_batch(s, "p1", "batch-1", 600, 1).await;
    // More lines than one statement of most implementations holds.
    let first: Vec<LineResult> = (1..=450).map(|l| result("batch-1", l, l % 10 == 0)).collect();
    store.record_results(&first).await.unwrap();
    assert_eq!(counts(s, "batch-1").await, (counted(600, 405, 45), Some(summed(450))));
    // A resumed worker sends lines 400..=500 again: the stored result of a
    // line stays the first one, and only the new lines count.
    let again: Vec<LineResult> = (400..=500)
        .map(|l| LineResult {
            output_line: "{\"second\":true}".into(),
            ..result("batch-1", l, l % 2 == 0)
        })
        .collect();
    store.record_results(&again).await.unwrap();
    // Lines 451..=500: 50 new ones, of which the even ones (25) are errors.
    assert_eq!(
        counts(s, "batch-1").await,
        (counted(600, 405 + 25, 45 + 25), Some(summed(500)))
    );
    assert_eq!(
        store.finished_lines("batch-1").await.unwrap(),
        (1..=500).collect::<Vec<u64>>()
    );
    let page = store.result_page("batch-1", false, 399, 2, u64::MAX).await.unwrap();
    assert_eq!(
        page,
        [
            (401, "{\"custom_id\":\"line-401\"}".to_owned()),
            (402, "{\"custom_id\":\"line-402\"}".to_owned())
        ]
    );
    // Recording nothing is a no-op.
    store.record_results(&[]).await.unwrap();
    assert_eq!(counts(s, "batch-1").await.0, counted(600, 430, 70));
}

pub async fn duplicates_within_one_group_count_once(store: Arc<dyn Store>) {
    let s = store.as_ref();
    running_batch(s, "p1", "batch-1", 3, 1).await;
    let second = LineResult {
        output_line: "{\"second\":true}".into(),
        ..result("batch-1", 7, true)
    };
    store
        .record_results(&[result("batch-1", 7, false), second, result("batch-1", 8, false)])
        .await
        .unwrap();
    assert_eq!(counts(s, "batch-1").await, (counted(3, 2, 0), Some(summed(2))));
    // The first one sent is the one kept.
    assert_eq!(
        store.result_page("batch-1", false, 0, 10, u64::MAX).await.unwrap(),
        [
            (7, "{\"custom_id\":\"line-7\"}".to_owned()),
            (8, "{\"custom_id\":\"line-8\"}".to_owned())
        ]
    );
    assert!(
        store
            .result_page("batch-1", true, 0, 10, u64::MAX)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn concurrent_duplicate_groups_count_once(store: Arc<dyn Store>) {
    let s = store.as_ref();
    running_batch(s, "p1", "batch-1", 300, 1).await;
    // Overlapping groups from two writers at once (a resume racing the old run).
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let group: Vec<LineResult> = (1 + w * 50..=150 + w * 50)
                    .map(|l| result("batch-1", l, false))
                    .collect();
                store.record_results(&group).await.unwrap();
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    // Lines 1..=300, each counted once.
    assert_eq!(counts(s, "batch-1").await, (counted(300, 300, 0), Some(summed(300))));
    assert_eq!(store.finished_lines("batch-1").await.unwrap().len(), 300);
}

pub async fn results_are_scoped_by_batch(store: Arc<dyn Store>) {
    let s = store.as_ref();
    running_batch(s, "p1", "batch-1", 2, 1).await;
    running_batch(s, "p2", "batch-2", 2, 1).await;
    // One group, two batches, the same line numbers.
    store
        .record_results(&[
            result("batch-1", 1, false),
            result("batch-2", 1, true),
            result("batch-2", 2, false),
        ])
        .await
        .unwrap();
    assert_eq!(counts(s, "batch-1").await, (counted(2, 1, 0), Some(summed(1))));
    assert_eq!(counts(s, "batch-2").await, (counted(2, 1, 1), Some(summed(2))));
    assert_eq!(store.finished_lines("batch-1").await.unwrap(), [1]);
    assert_eq!(store.finished_lines("batch-2").await.unwrap(), [1, 2]);
    assert!(store.finished_lines("batch-none").await.unwrap().is_empty());
    assert!(
        store
            .result_page("batch-1", true, 0, 10, u64::MAX)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn results_go_when_the_batch_ends(store: Arc<dyn Store>) {
    let s = store.as_ref();
    running_batch(s, "p1", "batch-1", 3, 1).await;
    running_batch(s, "p1", "batch-2", 3, 1).await;
    let both: Vec<LineResult> = (1..=3)
        .flat_map(|l| [result("batch-1", l, false), result("batch-2", l, l == 3)])
        .collect();
    store.record_results(&both).await.unwrap();
    // Moving to finalizing keeps them: the files are written from them.
    assert!(store.transition("batch-1", BatchStatus::Finalizing, 5).await.unwrap());
    assert_eq!(store.finished_lines("batch-1").await.unwrap(), [1, 2, 3]);
    assert!(
        store
            .finish("batch-1", BatchStatus::Finalizing, BatchStatus::Completed, &[], 6)
            .await
            .unwrap()
    );
    assert!(store.finished_lines("batch-1").await.unwrap().is_empty());
    assert!(
        store
            .result_page("batch-1", false, 0, 10, u64::MAX)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(counts(s, "batch-1").await, (counted(3, 3, 0), Some(summed(3))));
    // The other batch's results stay until it ends too.
    assert_eq!(store.finished_lines("batch-2").await.unwrap(), [1, 2, 3]);
    store.mark_failing("batch-2", &[]).await.unwrap();
    assert!(
        store
            .finish_failed("batch-2", BatchStatus::InProgress, &[], 7)
            .await
            .unwrap()
    );
    assert!(store.finished_lines("batch-2").await.unwrap().is_empty());
    assert_eq!(counts(s, "batch-2").await.0, counted(3, 2, 1));
}

pub async fn results_for_an_ended_batch_are_ignored(store: Arc<dyn Store>) {
    let s = store.as_ref();
    running_batch(s, "p1", "batch-1", 2, 1).await;
    running_batch(s, "p1", "batch-2", 2, 1).await;
    store.record_results(&[result("batch-1", 1, false)]).await.unwrap();
    assert!(
        store
            .finish("batch-1", BatchStatus::InProgress, BatchStatus::Expired, &[], 5)
            .await
            .unwrap()
    );
    // A late duplicate of line 1 and a late line 2, in a group with another
    // batch's result: the ended batch's are neither stored nor counted.
    store
        .record_results(&[
            result("batch-1", 1, false),
            result("batch-1", 2, true),
            result("batch-2", 1, false),
        ])
        .await
        .unwrap();
    assert_eq!(counts(s, "batch-1").await, (counted(2, 1, 0), Some(summed(1))));
    assert!(store.finished_lines("batch-1").await.unwrap().is_empty());
    assert_eq!(counts(s, "batch-2").await, (counted(2, 1, 0), Some(summed(1))));
}

pub async fn result_pages_in_line_order_bounded_by_bytes(store: Arc<dyn Store>) {
    let s = store.as_ref();
    running_batch(s, "p1", "batch-1", 6, 1).await;
    // Recorded out of order; line n is 100 * n bytes (line 6 is an error).
    let results: Vec<LineResult> = [5u64, 1, 3, 2, 4, 6]
        .into_iter()
        .map(|line| LineResult {
            output_line: "x".repeat(100 * line as usize),
            ..result("batch-1", line, line == 6)
        })
        .collect();
    store.record_results(&results).await.unwrap();
    let lines = |page: Vec<(u64, String)>| page.into_iter().map(|(l, _)| l).collect::<Vec<_>>();
    let page = |after, limit, max_bytes| {
        let store = store.clone();
        async move {
            lines(
                store
                    .result_page("batch-1", false, after, limit, max_bytes)
                    .await
                    .unwrap(),
            )
        }
    };
    assert_eq!(page(0, 10, u64::MAX).await, [1, 2, 3, 4, 5]);
    // 100 + 200 fit in 350 bytes, 300 more would not; exactly 300 fits too.
    assert_eq!(page(0, 10, 350).await, [1, 2]);
    assert_eq!(page(0, 10, 300).await, [1, 2]);
    // A line larger than the budget still comes, alone.
    assert_eq!(page(3, 10, 50).await, [4]);
    assert_eq!(page(0, 2, u64::MAX).await, [1, 2]);
    assert_eq!(page(2, 2, u64::MAX).await, [3, 4]);
    assert!(page(5, 10, 50).await.is_empty());
    assert_eq!(lines(store.result_page("batch-1", true, 0, 10, 1).await.unwrap()), [6]);
    let first = store.result_page("batch-1", false, 0, 1, u64::MAX).await.unwrap();
    assert_eq!(first, [(1, "x".repeat(100))]);
}

pub async fn large_and_unicode_values_round_trip(store: Arc<dyn Store>) {
    let s = store.as_ref();
    running_batch(s, "p1", "batch-1", 4, 1).await;
    // Lines whose bytes are two and three times their characters, a 4 MB
    // response, and escapes.
    let euros = "€".repeat(100); // 300 bytes
    let accents = "é".repeat(150); // 300 bytes
    let large = format!("{{\"body\":\"{}\"}}", "y".repeat(4 << 20));
    let odd = "{\"s\":\"\\u0000 quote \\\" tab\t ✓ 𝄞\"}".to_owned();
    let huge_usage = Usage {
        input_tokens: i64::MAX / 2 + 1,
        total_tokens: i64::MAX / 2 + 1,
        ..Usage::default()
    };
    let line = |line, output_line: &String, usage| LineResult {
        output_line: output_line.clone(),
        usage,
        ..result("batch-1", line, false)
    };
    store
        .record_results(&[
            line(1, &euros, crate::usage(10)),
            line(2, &accents, Usage::default()),
            line(3, &large, huge_usage),
            line(4, &odd, huge_usage),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.result_page("batch-1", false, 0, 10, u64::MAX).await.unwrap(),
        [(1, euros), (2, accents), (3, large), (4, odd)]
    );
    // The budget is in bytes, not characters: 600 bytes (250 characters) do
    // not fit in 599.
    let lines = |page: Vec<(u64, String)>| page.into_iter().map(|(l, _)| l).collect::<Vec<_>>();
    assert_eq!(
        lines(store.result_page("batch-1", false, 0, 10, 599).await.unwrap()),
        [1]
    );
    assert_eq!(
        lines(store.result_page("batch-1", false, 0, 10, 600).await.unwrap()),
        [1, 2]
    );
    // Counters saturate at i64::MAX instead of overflowing.
    let (_, usage) = counts(s, "batch-1").await;
    let usage = usage.unwrap();
    assert_eq!((usage.input_tokens, usage.total_tokens), (i64::MAX, i64::MAX));
    assert_eq!(usage.output_tokens, 20, "only the first line had output tokens");
}
