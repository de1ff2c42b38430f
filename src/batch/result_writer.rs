//! The one task that makes results durable. Lines finishing on many tasks send
//! their results here; the writer commits whatever has queued up in a single
//! transaction (group commit), so durability costs one commit per burst rather
//! than one per line. A result is counted in the batch only by that commit.
//!
//! The queue is bounded by count and by bytes (`limits.max_writer_queue_bytes`):
//! a count alone let 4096 huge responses wait in memory during a full-disk
//! stall (audit H3).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::output_line;
use crate::store::{LineResult, Store, Unstorable};

/// Most results committed in one transaction.
const MAX_GROUP: usize = 1024;

enum Message {
    /// A result and its share of the byte budget, given back once it is committed.
    Result(LineResult, OwnedSemaphorePermit),
    /// Answered once every result sent before it is committed.
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct ResultWriter {
    tx: mpsc::Sender<Message>,
    /// Bytes of results that may wait for their commit.
    budget: Arc<Semaphore>,
    max_queue_bytes: u32,
}

impl ResultWriter {
    /// Starts the writer task, with at most `max_queue_bytes` of results
    /// waiting (capped at 4 GiB). It ends when every `ResultWriter` clone is
    /// dropped and the queue is drained.
    pub fn spawn(store: Arc<dyn Store>, max_queue_bytes: u64) -> (Self, tokio::task::JoinHandle<()>) {
        let max_queue_bytes = u32::try_from(max_queue_bytes).unwrap_or(u32::MAX).max(1);
        let (tx, rx) = mpsc::channel(4 * MAX_GROUP);
        let handle = tokio::spawn(run(store, rx));
        let budget = Arc::new(Semaphore::new(max_queue_bytes as usize));
        (
            Self {
                tx,
                budget,
                max_queue_bytes,
            },
            handle,
        )
    }

    /// Queues a result. Waits while the queue is full (in results or in
    /// bytes), which slows dispatch down to what the database can absorb. A
    /// result larger than the whole budget waits for the queue to empty and
    /// then passes alone.
    pub async fn submit(&self, result: LineResult) {
        let cost = u32::try_from(result.output_line.len())
            .unwrap_or(u32::MAX)
            .clamp(1, self.max_queue_bytes);
        let Ok(permit) = self.budget.clone().acquire_many_owned(cost).await else {
            return; // never closed
        };
        if self.tx.send(Message::Result(result, permit)).await.is_err() {
            tracing::error!("result writer is gone; result will be recomputed after restart");
        }
    }

    /// Returns once every result submitted before this call is durable.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Message::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn run(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Message>) {
    let mut group: Vec<LineResult> = Vec::with_capacity(MAX_GROUP);
    let mut permits: Vec<OwnedSemaphorePermit> = Vec::with_capacity(MAX_GROUP);
    let mut waiters: Vec<oneshot::Sender<()>> = vec![];
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Result(r, permit) => {
                    group.push(r);
                    permits.push(permit);
                }
                Message::Flush(w) => waiters.push(w),
            }
            if group.len() < MAX_GROUP {
                next = rx.try_recv().ok();
            }
        }
        commit(store.as_ref(), &mut group).await;
        group.clear();
        permits.clear();
        for waiter in waiters.drain(..) {
            let _ = waiter.send(());
        }
    }
}

/// Commits a group, retrying until it succeeds: results already paid for on the
/// backend are not thrown away because the disk was full for a while. A group
/// that holds a result the database can never store is committed one result
/// at a time instead, so that one result cannot stall every batch of every
/// tenant behind this single writer.
async fn commit(store: &dyn Store, group: &mut [LineResult]) {
    let mut delay = Duration::from_millis(100);
    loop {
        match store.record_results(group).await {
            Ok(()) => return,
            Err(e) if store.unstorable(&e).is_some() => {
                tracing::error!(error = %e, results = group.len(), "a result cannot be stored; storing the group one by one");
                for result in group.iter_mut() {
                    commit_one(store, result).await;
                }
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, results = group.len(), "could not store results; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Commits one result. One the database can never store becomes an error
/// line for the same input line (`response_too_large` or `internal_error`),
/// which still accounts for its custom_id; if even that cannot be stored, the
/// result is dropped with an error in the log.
async fn commit_one(store: &dyn Store, result: &mut LineResult) {
    let mut delay = Duration::from_millis(100);
    let mut replaced = false;
    loop {
        let Err(e) = store.record_results(std::slice::from_ref(result)).await else {
            return;
        };
        match store.unstorable(&e) {
            Some(reason) => {
                let replacement = output_line::unstorable_line(&result.output_line, reason == Unstorable::TooLarge);
                match replacement {
                    Some(line) if !replaced => {
                        tracing::error!(batch_id = %result.batch_id, line = result.line, error = %e, "result cannot be stored; recording an error line instead");
                        result.output_line = line;
                        result.is_error = true;
                        result.usage = Default::default();
                        replaced = true;
                    }
                    _ => {
                        tracing::error!(batch_id = %result.batch_id, line = result.line, error = %e, "result cannot be stored, not even as an error line; dropped");
                        return;
                    }
                }
            }
            None => {
                tracing::error!(error = %e, "could not store a result; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;
    use crate::domain::{BatchRecord, Usage};
    use crate::store::BatchRepo;
    use crate::store::sqlite::SqliteStore;

    fn result(line: u64, bytes: usize) -> LineResult {
        LineResult {
            batch_id: "b1".into(),
            line,
            is_error: false,
            output_line: "x".repeat(bytes),
            usage: Usage::default(),
        }
    }

    // Single-threaded: the writer task runs only when this test awaits
    // something that is not ready, so what is queued is exactly what it sent.
    #[tokio::test(flavor = "current_thread")]
    async fn the_queue_is_bounded_by_bytes_and_a_huge_result_passes_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).await.unwrap();
        let batch = BatchRecord::new_validating(
            "b1".into(),
            "p".into(),
            "/v1/chat/completions".into(),
            "file-x".into(),
            "24h".into(),
            1,
            None,
        );
        store.insert_batch(&batch).await.unwrap();
        let (writer, _task) = ResultWriter::spawn(Arc::new(store), 1000);

        writer
            .submit(result(1, 600))
            .now_or_never()
            .expect("fits in the budget");
        // 600 of 1000 bytes wait for their commit: 600 more must wait too.
        assert!(writer.submit(result(2, 600)).now_or_never().is_none());
        writer.flush().await;
        writer
            .submit(result(2, 600))
            .now_or_never()
            .expect("the budget is free again");
        writer.flush().await;
        // Larger than the whole budget: passes once nothing else waits.
        writer.submit(result(3, 5000)).now_or_never().expect("passes alone");
        assert!(writer.submit(result(4, 1)).now_or_never().is_none());
        writer.flush().await;
        writer.submit(result(4, 1)).now_or_never().expect("after the huge one");
        writer.flush().await;
    }
}
