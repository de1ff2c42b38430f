//! The one owner of the server's long-lived background tasks (result writer,
//! batch supervisor, model reconcile loop, file sweeper, webhook dispatcher).
//! None of them is meant to end while the server runs, so the first one that
//! ends, by returning or by panicking, is reported and the server stops
//! instead of running on half-alive (for example accepting batches that no
//! supervisor will ever run).

use std::collections::HashMap;
use std::future::Future;

use tokio::task::{Id, JoinHandle, JoinSet};
use tokio_util::task::AbortOnDropHandle;

/// Debug builds only: the background task with this name panics as soon as it
/// starts, so tests can check that a dying task brings the server down.
pub const FAIL_TASK_ENV: &str = "BATCHD_DEBUG_FAIL_TASK";

#[derive(Default)]
pub struct BackgroundTasks {
    set: JoinSet<()>,
    names: HashMap<Id, &'static str>,
}

impl BackgroundTasks {
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let task = fail_if_asked(name, task);
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Takes over a task something else spawned: it is watched like the
    /// others and aborted with them.
    pub fn adopt(&mut self, name: &'static str, handle: JoinHandle<()>) {
        let handle = AbortOnDropHandle::new(handle);
        self.spawn(name, async move {
            if let Err(e) = handle.await
                && e.is_panic()
            {
                // Re-raised so the owner sees a panic, not a quiet return.
                std::panic::resume_unwind(e.into_panic());
            }
        });
    }

    /// Waits until some task ends and says which and how. Never returns while
    /// no task runs.
    pub async fn next_exit(&mut self) -> (&'static str, String) {
        match self.set.join_next_with_id().await {
            Some(Ok((id, ()))) => (self.name(id), "returned".to_owned()),
            Some(Err(e)) => {
                let how = if e.is_panic() { "panicked" } else { "was cancelled" };
                (self.name(e.id()), how.to_owned())
            }
            None => std::future::pending().await,
        }
    }

    fn name(&mut self, id: Id) -> &'static str {
        self.names.remove(&id).unwrap_or("unknown task")
    }

    /// Aborts whatever still runs and waits until it has stopped.
    pub async fn shutdown(mut self) {
        self.set.abort_all();
        while self.set.join_next().await.is_some() {}
    }
}

fn fail_if_asked(
    name: &'static str,
    task: impl Future<Output = ()> + Send + 'static,
) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    #[cfg(debug_assertions)]
    if std::env::var(FAIL_TASK_ENV).as_deref() == Ok(name) {
        return Box::pin(async move { panic!("{name} failed on purpose ({FAIL_TASK_ENV})") });
    }
    let _ = name;
    Box::pin(task)
}
