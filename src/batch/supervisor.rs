//! The supervisor owns every background batch task: it finds batches that need
//! work (at start-up, when told, and on a slow timer as a safety net), runs one
//! worker per batch, routes cancels to them, and drains them on shutdown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Runtime;
use super::worker::{Signals, drive};

const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(300);

pub struct Supervisor {
    rt: Runtime,
    running: Mutex<HashMap<String, Signals>>,
    /// Batches whose worker failed, and when to try them again.
    backoff: Mutex<HashMap<String, (Instant, Duration)>>,
    wake: Notify,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    poll_interval: Duration,
    /// Bounds the batches validating at once (`limits.max_concurrent_validations`).
    validations: Arc<Semaphore>,
}

impl Supervisor {
    /// Starts the scan loop; its handle goes to the server's task owner, which
    /// stops the server if the loop ever ends on its own.
    pub fn start(rt: Runtime, poll_interval: Duration) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let rt_limits = rt.limits.clone();
        let supervisor = Arc::new(Self {
            rt,
            running: Mutex::new(HashMap::new()),
            backoff: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            poll_interval,
            validations: Arc::new(Semaphore::new(validation_slots(&rt_limits))),
        });
        let this = supervisor.clone();
        let scan_loop = supervisor.tasks.spawn(async move { this.scan_loop().await });
        (supervisor, scan_loop)
    }

    /// Asks the supervisor to look for work now (a batch was created or cancelled).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Tells the batch's worker, if one runs, to stop dispatching: the batch's
    /// status is already `cancelling`.
    pub fn cancel(&self, batch_id: &str) {
        if let Some(signals) = self.running.lock().expect("lock").get(batch_id) {
            signals.cancel.cancel();
        }
        self.wake();
    }

    /// Stops taking work, lets workers finish their in-flight lines and store
    /// them, and returns when all have stopped.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    async fn scan_loop(self: Arc<Self>) {
        loop {
            if let Err(e) = self.scan().await {
                tracing::error!(error = %e, "could not look for batches to run");
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.wake.notified() => {},
                _ = tokio::time::sleep(self.poll_interval) => {},
            }
        }
    }

    async fn scan(self: &Arc<Self>) -> crate::error::Result<()> {
        for batch in self.rt.store.active_batches().await? {
            let retry_at = self.backoff.lock().expect("lock").get(&batch.id).map(|(at, _)| *at);
            if retry_at.is_some_and(|at| at > Instant::now()) {
                continue;
            }
            let signals = Signals {
                cancel: CancellationToken::new(),
                shutdown: self.shutdown.child_token(),
            };
            {
                let mut running = self.running.lock().expect("lock");
                if running.contains_key(&batch.id) {
                    continue;
                }
                running.insert(batch.id.clone(), signals.clone());
            }
            let this = self.clone();
            self.tasks.spawn(async move {
                // The worker runs as its own task so that a panic in it is
                // caught here: the batch is retried like any failed worker and
                // its `running` entry is always removed.
                let worker = {
                    let (this, id) = (this.clone(), batch.id.clone());
                    tokio::spawn(async move { drive(&this.rt, &id, &signals, &this.validations).await })
                };
                let outcome = worker.await.unwrap_or_else(|e| {
                    Err(crate::error::Error::internal(anyhow::anyhow!("the batch worker panicked: {e}")))
                });
                match outcome {
                    Ok(()) => {
                        this.backoff.lock().expect("lock").remove(&batch.id);
                    }
                    Err(e) => {
                        // Retry later with a growing delay: a full disk or a lost
                        // database connection may heal, and nothing is lost meanwhile.
                        let mut backoff = this.backoff.lock().expect("lock");
                        let delay = backoff.get(&batch.id).map_or(RETRY_MIN, |(_, d)| (*d * 2).min(RETRY_MAX));
                        backoff.insert(batch.id.clone(), (Instant::now() + delay, delay));
                        tracing::error!(batch_id = %batch.id, error = %e, retry_in_secs = delay.as_secs(), "batch worker failed");
                    }
                }
                this.running.lock().expect("lock").remove(&batch.id);
            });
        }
        Ok(())
    }
}

/// Validation slots: `limits.max_concurrent_validations`, or one per CPU when 0.
fn validation_slots(limits: &crate::config::LimitsConfig) -> usize {
    match limits.max_concurrent_validations {
        0 => std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
        n => n,
    }
}
