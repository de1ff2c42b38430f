//! Drives one batch from whatever status it is in to a terminal status. Each
//! step re-reads the batch, so a cancel that lands between steps, or a restart
//! in the middle of one, is picked up where it left off.

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::Runtime;
use super::finalize::finalize;
use super::input::unreadable_error;
use super::runner::{RunEnd, run};
use super::validation::{Verdict, validate};
use crate::domain::{BatchError, BatchRecord, BatchStatus, Endpoint};
use crate::error::Result;
use crate::ids;
use crate::store::StartOutcome;

/// Signals a running batch listens to.
#[derive(Clone, Default)]
pub struct Signals {
    /// The batch was cancelled: stop dispatching, then end it `cancelled`.
    pub cancel: CancellationToken,
    /// The server is shutting down: stop dispatching and leave the batch to resume.
    pub shutdown: CancellationToken,
}

/// `validations` bounds how many batches validate at once (each reads its
/// whole input, holding one line in memory).
pub async fn drive(rt: &Runtime, batch_id: &str, signals: &Signals, validations: &Semaphore) -> Result<()> {
    // One token that fires for either reason; which one is told by the batch's
    // status (cancelling) or by `shutdown`.
    let stop = CancellationToken::new();
    let _fire_stop = {
        let (stop, signals) = (stop.clone(), signals.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = signals.cancel.cancelled() => {},
                _ = signals.shutdown.cancelled() => {},
                _ = stop.cancelled() => {},
            }
            stop.cancel();
        })
    };
    let _stop_guard = stop.clone().drop_guard();
    loop {
        if signals.shutdown.is_cancelled() {
            return Ok(());
        }
        let Some(batch) = rt.store.get_batch_any_project(batch_id).await? else {
            return Ok(());
        };
        match batch.status {
            BatchStatus::Validating => run_validation(rt, &batch, &stop, validations).await?,
            BatchStatus::InProgress => run_in_progress(rt, &batch, &stop, &signals.shutdown).await?,
            BatchStatus::Finalizing => {
                finalize(rt, &batch, BatchStatus::Finalizing, BatchStatus::Completed).await?;
            }
            BatchStatus::Cancelling => {
                finalize(rt, &batch, BatchStatus::Cancelling, BatchStatus::Cancelled).await?;
            }
            status if status.is_terminal() => return Ok(()),
            _ => return Ok(()),
        }
    }
}

/// One step of an `in_progress` batch. A stored failure decision is resumed
/// before anything else, so a batch that was failing when the process died
/// ends `failed` even if its model would start now.
async fn run_in_progress(
    rt: &Runtime,
    batch: &BatchRecord,
    stop: &CancellationToken,
    shutdown: &CancellationToken,
) -> Result<()> {
    if rt.store.batch_intents(&batch.id).await?.failing.is_some() {
        finalize(rt, batch, BatchStatus::InProgress, BatchStatus::Failed).await?;
        return Ok(());
    }
    if batch.expires_at.is_some_and(|at| at <= ids::now()) {
        // Found past its window (for example after a restart).
        finalize(rt, batch, BatchStatus::InProgress, BatchStatus::Expired).await?;
        return Ok(());
    }
    match run(rt, batch, stop, shutdown).await? {
        RunEnd::AllDone => {
            // Every line must have its one result before the batch may be
            // called done; if one has none (a bug), the next run sends it.
            let counts = rt
                .store
                .get_batch_any_project(&batch.id)
                .await?
                .map(|b| b.request_counts)
                .unwrap_or_default();
            if counts.completed + counts.failed < counts.total {
                return Err(crate::error::Error::internal(anyhow::anyhow!(
                    "batch {} ran every line but has results for {} of {}",
                    batch.id,
                    counts.completed + counts.failed,
                    counts.total
                )));
            }
            rt.store
                .transition(&batch.id, BatchStatus::Finalizing, ids::now())
                .await?;
        }
        RunEnd::Expired => {
            finalize(rt, batch, BatchStatus::InProgress, BatchStatus::Expired).await?;
        }
        RunEnd::ModelFailed(reason) => {
            tracing::error!(batch_id = %batch.id, error = %reason, "the batch's model server failed; failing the batch");
            let error = BatchError::new(
                "model_unavailable",
                format!(
                    "The model server for '{}' could not be started or kept running: {reason}",
                    batch.model.as_deref().unwrap_or_default()
                ),
                None,
                None,
            );
            // The decision is stored first; the next step (now, or after a
            // crash) finalizes the batch as failed.
            rt.store.mark_failing(&batch.id, &[error]).await?;
            super::failpoint::abort_if_set("failure_recorded");
        }
        RunEnd::InputUnreadable(reason) => {
            tracing::error!(batch_id = %batch.id, error = %reason, "the batch's input can no longer be read; failing the batch");
            rt.store.mark_failing(&batch.id, &[unreadable_error(&reason)]).await?;
        }
        // Stopped by cancel: the next step sees `cancelling`; by shutdown:
        // `drive` returns.
        RunEnd::Stopped => {}
        // Gave its model turn to another batch: queue for the next one.
        RunEnd::Yielded => {}
    }
    Ok(())
}

async fn run_validation(
    rt: &Runtime,
    batch: &BatchRecord,
    stop: &CancellationToken,
    validations: &Semaphore,
) -> Result<()> {
    let now = ids::now;
    let fail = |errors: Vec<BatchError>| async move {
        tracing::info!(batch_id = %batch.id, problems = errors.len(), "batch failed validation");
        rt.store.fail_validation(&batch.id, &errors, now()).await.map(|_| ())
    };
    let Some(endpoint) = Endpoint::parse(&batch.endpoint) else {
        return fail(vec![BatchError::new(
            "invalid_value",
            "Unsupported endpoint.",
            Some("endpoint"),
            None,
        )])
        .await;
    };
    let Some(file) = rt.store.get_file(&batch.project_id, &batch.input_file_id).await? else {
        return fail(vec![BatchError::new(
            "invalid_request",
            format!(
                "Cannot find file {}, or organization {} does not have access to it.",
                batch.input_file_id, batch.project_id
            ),
            Some("file_id"),
            None,
        )])
        .await;
    };
    // Waiting for a validation slot holds nothing: the file is opened after.
    let _slot = tokio::select! {
        biased;
        _ = stop.cancelled() => return Ok(()),
        slot = validations.acquire() => slot.map_err(crate::error::Error::internal)?,
    };
    let stream = rt
        .blobs
        .get_stream(&file.storage_key)
        .await
        .map_err(crate::error::Error::internal)?;
    let reader = super::lines::LineReader::new(stream, rt.limits.max_line_bytes);
    let models = rt.models.clone();
    let verdict = tokio::select! {
        biased;
        _ = stop.cancelled() => return Ok(()),
        verdict = validate(reader, file.bytes as u64, endpoint, &rt.limits, |m| models.contains(m)) => verdict,
    };
    match verdict.map_err(crate::error::Error::internal)? {
        Verdict::Invalid(errors) => fail(errors).await,
        Verdict::Valid { model, total } => {
            rt.store.set_line_limit(&batch.id, rt.limits.max_line_bytes).await?;
            let limit = rt.limits.max_enqueued_lines_per_project;
            match rt
                .store
                .start_within_enqueued_limit(&batch.id, &model, total as i64, now(), limit)
                .await?
            {
                StartOutcome::Started => {
                    tracing::info!(batch_id = %batch.id, lines = total, model = %model, "batch validated; running");
                }
                StartOutcome::NotValidating => {}
                StartOutcome::OverEnqueuedLimit { enqueued } => {
                    let error =
                        super::validation::enqueued_limit_error(&model, &batch.project_id, limit, enqueued, total);
                    return fail(vec![error]).await;
                }
            }
            Ok(())
        }
    }
}
