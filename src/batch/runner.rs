//! The `in_progress` phase: streams the input file and sends every line that
//! has no durable result yet to the model's servers (its pool picks the
//! least loaded one for each line), with at most the servers' concurrency
//! in flight. Memory is bounded by that concurrency, never by the
//! file's size.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::Either;
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use super::Runtime;
use super::input::{InputError, input_reader, recover_custom_id};
use super::output_line;
use super::request_line::parse_line;
use crate::backends::{BackendPool, Outcome, PoolSlot};
use crate::domain::{BatchRecord, Endpoint};
use crate::error::{Error, Result};
use crate::models::{Lease, ModelManager, TurnRequest};
use crate::store::LineResult;

/// How a run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// Every line has a durable result.
    AllDone,
    /// `stop` fired: dispatch stopped, in-flight lines finished and were stored.
    Stopped,
    /// The completion window ran out: dispatch stopped, in-flight lines
    /// finished and were stored; the rest never ran.
    Expired,
    /// The model server could not be started (or restarted after crashes):
    /// in-flight lines finished; the rest never ran.
    ModelFailed(String),
    /// The turn's time slice is over and another batch goes first (fair
    /// turns across projects): dispatch stopped, in-flight lines finished
    /// and were stored; run again to queue for the next turn.
    Yielded,
    /// The input file can no longer be read as it was validated (its bytes
    /// are gone, a line cannot be split): in-flight lines finished; the batch
    /// cannot go on.
    InputUnreadable(String),
}

/// The moment `expires_at` (Unix seconds) arrives, on tokio's clock.
pub(super) fn deadline_of(expires_at: Option<i64>) -> tokio::time::Instant {
    let now = crate::ids::now();
    let left = expires_at.map_or(i64::from(u32::MAX), |at| (at - now).max(0));
    tokio::time::Instant::now() + std::time::Duration::from_secs(left as u64)
}

/// `stop` fires on cancel or shutdown; `shutdown` tells which.
pub async fn run(
    rt: &Runtime,
    batch: &BatchRecord,
    stop: &CancellationToken,
    shutdown: &CancellationToken,
) -> Result<RunEnd> {
    let endpoint = Endpoint::parse(&batch.endpoint)
        .ok_or_else(|| Error::internal(anyhow::anyhow!("batch {} has unknown endpoint", batch.id)))?;
    let model = batch.model.clone().unwrap_or_default();
    let backend = rt.models.get(&model);
    let batch_id: Arc<str> = Arc::from(batch.id.as_str());
    let deadline = tokio::time::sleep_until(deadline_of(batch.expires_at));
    tokio::pin!(deadline);

    // Wait for this batch's turn on its model (which may mean starting the
    // model's server, or waiting for another model's batches to finish).
    let mut lease = match &backend {
        None => None,
        Some(_) => {
            let turn = rt.manager.turn(TurnRequest {
                batch_id: batch.id.clone(),
                project_id: batch.project_id.clone(),
                model: model.clone(),
                created_at: batch.created_at,
                expires_at: batch.expires_at,
            });
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(RunEnd::Stopped),
                _ = &mut deadline => return Ok(RunEnd::Expired),
                turn = turn => match turn {
                    Ok(lease) => Some(lease),
                    Err(reason) => return Ok(RunEnd::ModelFailed(reason)),
                },
            }
        }
    };

    // Only now, with the turn granted, is the input opened: thousands of
    // queued batches hold no file descriptors (and no read buffers).
    // Lines with a result survive restarts; only the rest is sent (again).
    let finished = rt.store.finished_lines(&batch.id).await?;
    let mut finished = finished.into_iter().peekable();
    let mut reader = match input_reader(rt, batch).await {
        Ok(reader) => reader,
        Err(InputError::Unreadable(reason)) => return Ok(RunEnd::InputUnreadable(reason)),
        Err(InputError::Failed(e)) => return Err(e),
    };
    let mut in_flight = LineTasks::default();
    // An error that may heal, returned once the in-flight lines are stored.
    let mut failed: Option<Error> = None;

    // Lines sent in this turn: a turn yields only after one, so every turn
    // makes progress.
    let mut dispatched: u64 = 0;
    let end = loop {
        let line = tokio::select! {
            biased;
            _ = stop.cancelled() => break RunEnd::Stopped,
            _ = &mut deadline => break RunEnd::Expired,
            line = reader.next_line() => line,
        };
        let Some(line) = line else { break RunEnd::AllDone };
        if let Some(reason) = lease.as_ref().and_then(Lease::failure) {
            break RunEnd::ModelFailed(reason);
        }
        let line = match line.map_err(InputError::from) {
            Ok(line) => line,
            Err(InputError::Unreadable(reason)) => break RunEnd::InputUnreadable(reason),
            Err(InputError::Failed(e)) => {
                failed = Some(e);
                break RunEnd::Stopped;
            }
        };
        while finished.next_if(|&n| n < line.number).is_some() {}
        if finished.next_if_eq(&line.number).is_some() {
            continue;
        }
        // Checked with a line in hand, so a batch never yields with nothing left to send.
        if dispatched > 0 && lease.as_ref().is_some_and(Lease::should_yield) {
            break RunEnd::Yielded;
        }
        // The file was validated and files are immutable, so this only fails
        // if the stored bytes were tampered with. The line still gets its one
        // result, so every line of the input is accounted for.
        let (custom_id, body) = match parse_line(&line.bytes, endpoint) {
            Ok(request) => (request.custom_id, slice_of(&line.bytes, request.body.get())),
            Err(problem) => {
                tracing::warn!(batch_id = %batch_id, line = line.number, code = problem.code, "stored input line no longer parses");
                let rendered = output_line::error_line(
                    &recover_custom_id(&line.bytes),
                    "internal_error",
                    "This request could not be read again from the stored input file, so it was not executed.",
                );
                rt.writer.submit(result(&batch_id, line.number, rendered)).await;
                continue;
            }
        };
        let Some(backend) = backend.clone() else {
            let rendered = output_line::error_line(
                &custom_id,
                "model_not_found",
                &format!("The model '{model}' is no longer configured on this server."),
            );
            rt.writer.submit(result(&batch_id, line.number, rendered)).await;
            continue;
        };
        let mut slot = tokio::select! {
            biased;
            _ = stop.cancelled() => break RunEnd::Stopped,
            _ = &mut deadline => break RunEnd::Expired,
            slot = backend.acquire() => slot,
        };
        in_flight.reap(rt, &batch_id).await;
        dispatched += 1;
        let writer = rt.writer.clone();
        let batch_id = batch_id.clone();
        let (manager, model) = (rt.manager.clone(), model.clone());
        let task_custom_id = custom_id.clone();
        in_flight.spawn(line.number, custom_id, async move {
            let custom_id = task_custom_id;
            if super::failpoint::arg("line_task_panic").is_some_and(|id| id == custom_id) {
                panic!("failpoint line_task_panic");
            }
            let sent = send_surviving_crashes(&backend, &mut slot, &manager, &model, endpoint.backend_path(), body).await;
            let rendered = match sent {
                Sent::Answered(outcome) => output_line::from_outcome(&custom_id, &outcome),
                Sent::CrashedModel => output_line::error_line(
                    &custom_id,
                    "model_crashed",
                    "The model server crashed twice while running this request, the second time with no other request in flight, so it was not sent again.",
                ),
            };
            count(&model, &rendered);
            writer.submit(result(&batch_id, line.number, rendered)).await;
            // The slot is held until the result is queued for the writer, so
            // results waiting in memory never exceed the concurrency.
            drop(slot);
        });
    };
    // Every line is dispatched: the model's next batch may start while these finish.
    if let Some(lease) = &mut lease {
        lease.end_turn();
    }
    let mut end = end;
    loop {
        tokio::select! {
            more = in_flight.join_one(rt, &batch_id) => if !more { break },
            _ = shutdown.cancelled() => {
                // Shutting down: in-flight lines get `shutdown_grace` to finish.
                // Lines cut off have no result, so the next start sends them again.
                let drain = async { while in_flight.join_one(rt, &batch_id).await {} };
                if tokio::time::timeout(rt.shutdown_grace, drain).await.is_err() {
                    tracing::warn!(batch_id = %batch_id, lines = in_flight.len(), "shutdown grace over; in-flight lines will be re-sent after restart");
                    in_flight.abort_all().await;
                    end = RunEnd::Stopped;
                }
                break;
            }
        }
    }
    rt.writer.flush().await;
    drop(lease);
    match failed {
        Some(e) => Err(e),
        None => Ok(end),
    }
}

/// The in-flight line tasks, with the line and custom_id each runs, so a task
/// that panics still gets its line a result (`internal_error`).
#[derive(Default)]
struct LineTasks {
    set: JoinSet<()>,
    lines: HashMap<tokio::task::Id, (u64, String)>,
}

impl LineTasks {
    fn spawn(&mut self, line: u64, custom_id: String, task: impl Future<Output = ()> + Send + 'static) {
        let handle = self.set.spawn(task);
        self.lines.insert(handle.id(), (line, custom_id));
    }

    fn len(&self) -> usize {
        self.set.len()
    }

    /// Collects the tasks that already ended, without waiting.
    async fn reap(&mut self, rt: &Runtime, batch_id: &str) {
        while let Some(joined) = self.set.try_join_next_with_id() {
            self.ended(rt, batch_id, joined).await;
        }
    }

    /// Waits for one task to end; false when none is left.
    async fn join_one(&mut self, rt: &Runtime, batch_id: &str) -> bool {
        match self.set.join_next_with_id().await {
            Some(joined) => {
                self.ended(rt, batch_id, joined).await;
                true
            }
            None => false,
        }
    }

    /// Aborts every task: their lines have no result and are sent again later.
    async fn abort_all(&mut self) {
        self.set.abort_all();
        while self.set.join_next().await.is_some() {}
        self.lines.clear();
    }

    async fn ended(&mut self, rt: &Runtime, batch_id: &str, joined: Result<(tokio::task::Id, ()), JoinError>) {
        let (id, panicked) = match &joined {
            Ok((id, ())) => (*id, false),
            Err(e) => (e.id(), e.is_panic()),
        };
        let Some((line, custom_id)) = self.lines.remove(&id) else {
            return;
        };
        if panicked {
            tracing::error!(
                batch_id,
                line,
                "a line task panicked; recording an internal error for the line"
            );
            let rendered = output_line::error_line(
                &custom_id,
                "internal_error",
                "batchd failed internally while running this request.",
            );
            rt.writer.submit(result(batch_id, line, rendered)).await;
        }
    }
}

/// What sending a line came to.
enum Sent {
    Answered(Outcome),
    /// The line is the likely cause of the model server's crashes: it was in
    /// flight when the server died, and again when it was the only request in
    /// flight. It is not sent again.
    CrashedModel,
}

/// Sends one line. If the model's server died meanwhile, waits for the
/// manager to restart it and sends again: the line is retried, not lost, and
/// its result is still stored once. After one such crash the line is sent
/// alone (no other line of the model in flight), so a second crash is
/// known to be its own and fails only this line.
async fn send_surviving_crashes(
    pool: &BackendPool,
    slot: &mut PoolSlot,
    manager: &ModelManager,
    model: &str,
    path: &str,
    body: Bytes,
) -> Sent {
    let gate = manager.line_gate(model);
    let mut crashes = 0;
    loop {
        let alone = crashes > 0;
        let guard = match &gate {
            None => None,
            Some(gate) if alone => Some(Either::Left(gate.clone().write_owned().await)),
            Some(gate) => Some(Either::Right(gate.clone().read_owned().await)),
        };
        if alone {
            manager.until_up(model).await;
        }
        // The pool may move the line to another replica; `slot` then says
        // which server (and which of its process generations) gave no answer.
        let outcome = pool.send(slot, path, body.clone()).await;
        // The gate is held until the restart is done: the next line sent
        // alone must not find the dead server (and be blamed for it).
        if !matches!(outcome, Outcome::Unreachable { .. })
            || manager
                .recover(model, slot.backend_index(), slot.generation())
                .await
                .is_err()
        {
            return Sent::Answered(outcome);
        }
        drop(guard);
        crashes += 1;
        if alone {
            manager.forgive_crashes(model, crashes);
            return Sent::CrashedModel;
        }
    }
}

/// The body is sent as the user wrote it: a zero-copy slice of the line.
fn slice_of(line: &Bytes, part: &str) -> Bytes {
    line.slice_ref(part.as_bytes())
}

pub(super) fn result(batch_id: &str, line: u64, rendered: output_line::Rendered) -> LineResult {
    LineResult {
        batch_id: batch_id.to_owned(),
        line,
        is_error: rendered.is_error,
        output_line: rendered.line,
        usage: rendered.usage,
    }
}

/// Lines and tokens for `/metrics`.
fn count(model: &str, rendered: &output_line::Rendered) {
    use crate::metrics::{METRICS, labels};
    let outcome = if rendered.is_error { "failed" } else { "completed" };
    METRICS
        .lines
        .get_or_create(&labels(&[("model", model), ("outcome", outcome)]))
        .inc();
    let tokens = |direction, n: i64| {
        METRICS
            .tokens
            .get_or_create(&labels(&[("model", model), ("direction", direction)]))
            .inc_by(n.max(0) as u64);
    };
    tokens("input", rendered.usage.input_tokens);
    tokens("output", rendered.usage.output_tokens);
}
