//! The one task that makes results durable. Lines finishing on many tasks send
//! their results here; the writer commits whatever has queued up in a single
//! transaction (group commit), so durability costs one commit per burst rather
//! than one per line. A result is counted in the batch only by that commit.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::store::{LineResult, Store};

/// Most results committed in one transaction.
const MAX_GROUP: usize = 1024;

enum Message {
    Result(LineResult),
    /// Answered once every result sent before it is committed.
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct ResultWriter {
    tx: mpsc::Sender<Message>,
}

impl ResultWriter {
    /// Starts the writer task. It ends when every `ResultWriter` clone is dropped
    /// and the queue is drained.
    pub fn spawn(store: Arc<dyn Store>) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(4 * MAX_GROUP);
        let handle = tokio::spawn(run(store, rx));
        (Self { tx }, handle)
    }

    /// Queues a result. Waits when the queue is full, which slows dispatch
    /// down to what the database can absorb.
    pub async fn submit(&self, result: LineResult) {
        if self.tx.send(Message::Result(result)).await.is_err() {
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
    let mut waiters: Vec<oneshot::Sender<()>> = vec![];
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Result(r) => group.push(r),
                Message::Flush(w) => waiters.push(w),
            }
            if group.len() < MAX_GROUP {
                next = rx.try_recv().ok();
            }
        }
        commit(store.as_ref(), &group).await;
        group.clear();
        for waiter in waiters.drain(..) {
            let _ = waiter.send(());
        }
    }
}

/// Commits a group, retrying until it succeeds: results already paid for on the
/// backend are not thrown away because the disk was full for a while.
async fn commit(store: &dyn Store, group: &[LineResult]) {
    let mut delay = Duration::from_millis(100);
    loop {
        match store.record_results(group).await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(error = %e, results = group.len(), "could not store results; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}
