//! The `in_progress` phase: streams the input file and sends every line that
//! has no durable result yet to the model's backend, with at most the model's
//! concurrency in flight. Memory is bounded by that concurrency, never by the
//! file's size.

use std::sync::Arc;

use bytes::Bytes;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Runtime;
use super::endpoint::Endpoint;
use super::lines::LineReader;
use super::output_line;
use super::record::BatchRecord;
use super::request_line::parse_line;
use crate::backends::{Backend, Outcome};
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
    // Lines with a result survive restarts; only the rest is sent (again).
    let finished = rt.store.finished_lines(&batch.id).await?;
    let mut finished = finished.into_iter().peekable();
    let mut reader = input_reader(rt, batch).await?;
    let mut in_flight = JoinSet::new();
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
        let line = line.map_err(Error::internal)?;
        while finished.next_if(|&n| n < line.number).is_some() {}
        if finished.next_if_eq(&line.number).is_some() {
            continue;
        }
        // Checked with a line in hand, so a batch never yields with nothing left to send.
        if dispatched > 0 && lease.as_ref().is_some_and(Lease::should_yield) {
            break RunEnd::Yielded;
        }
        // The file was validated and files are immutable, so this only fails
        // if the stored bytes were tampered with.
        let (custom_id, body) = match parse_line(&line.bytes, endpoint) {
            Ok(request) => (request.custom_id, slice_of(&line.bytes, request.body.get())),
            Err(problem) => {
                tracing::warn!(batch_id = %batch_id, line = line.number, code = problem.code, "stored input line no longer parses");
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
        let permit = tokio::select! {
            biased;
            _ = stop.cancelled() => break RunEnd::Stopped,
            _ = &mut deadline => break RunEnd::Expired,
            permit = backend.acquire() => permit,
        };
        while in_flight.try_join_next().is_some() {}
        dispatched += 1;
        let writer = rt.writer.clone();
        let batch_id = batch_id.clone();
        let (manager, model) = (rt.manager.clone(), model.clone());
        in_flight.spawn(async move {
            let outcome = send_surviving_crashes(&backend, &manager, &model, endpoint.backend_path(), body).await;
            let rendered = output_line::from_outcome(&custom_id, &outcome);
            count(&model, &rendered);
            writer.submit(result(&batch_id, line.number, rendered)).await;
            // The slot is held until the result is queued for the writer, so
            // results waiting in memory never exceed the concurrency.
            drop(permit);
        });
    };
    // Every line is dispatched: the model's next batch may start while these finish.
    if let Some(lease) = &mut lease {
        lease.end_turn();
    }
    let mut end = end;
    loop {
        tokio::select! {
            next = in_flight.join_next() => if next.is_none() { break },
            _ = shutdown.cancelled() => {
                // Shutting down: in-flight lines get `shutdown_grace` to finish.
                // Lines cut off have no result, so the next start sends them again.
                let drain = async { while in_flight.join_next().await.is_some() {} };
                if tokio::time::timeout(rt.shutdown_grace, drain).await.is_err() {
                    tracing::warn!(batch_id = %batch_id, lines = in_flight.len(), "shutdown grace over; in-flight lines will be re-sent after restart");
                    in_flight.abort_all();
                    while in_flight.join_next().await.is_some() {}
                    end = RunEnd::Stopped;
                }
                break;
            }
        }
    }
    rt.writer.flush().await;
    drop(lease);
    Ok(end)
}

/// Sends one line. If the model's server died meanwhile, waits for the
/// manager to restart it and sends again: the line is retried, not lost, and
/// its result is still stored once.
async fn send_surviving_crashes(
    backend: &Backend,
    manager: &ModelManager,
    model: &str,
    path: &str,
    body: Bytes,
) -> Outcome {
    loop {
        let generation = manager.generation(model);
        let outcome = backend.send(path, body.clone()).await;
        if !matches!(outcome, Outcome::Unreachable { .. }) || manager.recover(model, generation).await.is_err() {
            return outcome;
        }
    }
}

/// Opens the batch's input file as a line reader.
pub(super) async fn input_reader(rt: &Runtime, batch: &BatchRecord) -> Result<LineReader> {
    let file = rt
        .store
        .get_file_even_deleted(&batch.project_id, &batch.input_file_id)
        .await?
        .ok_or_else(|| {
            Error::internal(anyhow::anyhow!(
                "input file {} of batch {} is gone",
                batch.input_file_id,
                batch.id
            ))
        })?;
    let stream = rt.blobs.get_stream(&file.storage_key).await.map_err(Error::internal)?;
    Ok(LineReader::new(stream, rt.limits.max_line_bytes))
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
