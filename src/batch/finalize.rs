//! Writing a batch's output and error files from its stored results and moving
//! it to its terminal status. Finalization can be interrupted and re-run at any
//! point: result files go to fixed keys and become visible (get a File record)
//! in the same transaction that ends the batch.

use super::Runtime;
use super::input::{InputError, input_reader, recover_custom_id, unreadable_error};
use super::output_line;
use super::request_line::parse_line;
use super::runner::result;
use crate::domain::{BatchError, BatchRecord, BatchStatus, DEFAULT_BATCH_FILE_TTL_SECS, Endpoint, FileRecord, Purpose};
use crate::error::{Error, Result};
use crate::files::blobs::BlobError;
use crate::ids;
use crate::store::{FinishedFile, ResultFileKind};

/// Rows read from the database per page while writing a file.
const PAGE: u32 = 256;
/// Most bytes of result lines read per page (a page always holds at least
/// one line): 256 large responses must not be held at once (audit H3).
const PAGE_BYTES: u64 = 16 * 1024 * 1024;

/// Ends the batch as `to` (completed, cancelled, expired or failed) from
/// status `from`. Returns false if the batch was no longer in `from` (another
/// transition won).
pub async fn finalize(rt: &Runtime, batch: &BatchRecord, from: BatchStatus, to: BatchStatus) -> Result<bool> {
    let failing = rt.store.batch_intents(&batch.id).await?.failing;
    let mut errors: Vec<BatchError> = vec![];
    // Lines that never ran still appear once, in the error file, when the batch
    // had started running: every custom_id of the input is accounted for.
    if to != BatchStatus::Completed && batch.in_progress_at.is_some() {
        let (code, message) = unexecuted_reason(to, failing.as_deref());
        if let Some(reason) = record_unexecuted(rt, batch, code, message).await? {
            // The input cannot be read to its end, so the lines past that
            // point cannot be named: the batch says so instead.
            if failing.is_none() {
                errors.push(unreadable_error(&reason));
            }
        }
    }
    let mut files = vec![];
    for kind in [ResultFileKind::Output, ResultFileKind::Error] {
        if let Some(record) = write_result_file(rt, batch, kind).await? {
            files.push(FinishedFile { record, kind });
        }
    }
    if to != BatchStatus::Failed {
        // A cancel that won over a failure still tells why lines did not run.
        if to == BatchStatus::Cancelled {
            errors.splice(0..0, failing.unwrap_or_default());
        }
        if !errors.is_empty() {
            rt.store.set_errors(&batch.id, &errors).await?;
        }
    }
    let finished = if to == BatchStatus::Failed {
        rt.store.finish_failed(&batch.id, from, &files, ids::now()).await?
    } else {
        rt.store.finish(&batch.id, from, to, &files, ids::now()).await?
    };
    if finished {
        tracing::info!(batch_id = %batch.id, status = to.as_str(), "batch finished");
    }
    Ok(finished)
}

/// The error code and message of lines that never ran, by how the batch ends.
fn unexecuted_reason(to: BatchStatus, failing: Option<&[BatchError]>) -> (&'static str, &'static str) {
    let input_unreadable = failing.is_some_and(|f| f.iter().any(|e| e.code == "input_unreadable"));
    match to {
        BatchStatus::Expired => (
            "batch_expired",
            "This request could not be executed before the completion window expired.",
        ),
        BatchStatus::Failed if input_unreadable => (
            "input_unreadable",
            "This request was not executed: the batch's input file could not be read again (see the batch's errors).",
        ),
        BatchStatus::Failed => (
            "model_unavailable",
            "This request was not executed: the model server could not be started or kept running (see the batch's errors).",
        ),
        _ => (
            "batch_cancelled",
            "This request was not executed because the batch was cancelled.",
        ),
    }
}

/// Records a `code` error result for every input line without a result.
/// Returns why the input could not be read to its end, if it could not be;
/// errors that may heal are returned as errors (finalization is retried).
async fn record_unexecuted(rt: &Runtime, batch: &BatchRecord, code: &str, message: &str) -> Result<Option<String>> {
    let Some(endpoint) = Endpoint::parse(&batch.endpoint) else {
        return Ok(None);
    };
    let finished = rt.store.finished_lines(&batch.id).await?;
    let mut finished = finished.into_iter().peekable();
    let mut reader = match input_reader(rt, batch).await {
        Ok(reader) => reader,
        Err(InputError::Unreadable(reason)) => return Ok(Some(reason)),
        Err(InputError::Failed(e)) => return Err(e),
    };
    let mut unreadable = None;
    let mut recorded: u64 = 0;
    while let Some(line) = reader.next_line().await {
        let line = match line.map_err(InputError::from) {
            Ok(line) => line,
            Err(InputError::Unreadable(reason)) => {
                unreadable = Some(reason);
                break;
            }
            Err(InputError::Failed(e)) => {
                rt.writer.flush().await;
                return Err(e);
            }
        };
        while finished.next_if(|&n| n < line.number).is_some() {}
        if finished.next_if_eq(&line.number).is_some() {
            continue;
        }
        // A stored line that no longer parses keeps its line number and
        // whatever custom_id its JSON still has (see docs/compatibility.md).
        let custom_id = match parse_line(&line.bytes, endpoint) {
            Ok(request) => request.custom_id,
            Err(_) => recover_custom_id(&line.bytes),
        };
        let rendered = output_line::error_line(&custom_id, code, message);
        rt.writer.submit(result(&batch.id, line.number, rendered)).await;
        recorded += 1;
        if recorded == 1 {
            // Crash tests: die with some of the rows written, none of the files.
            rt.writer.flush().await;
            super::failpoint::abort_if_set("unexecuted_rows_partly_written");
        }
    }
    rt.writer.flush().await;
    Ok(unreadable)
}

/// Writes one result file; `None` when the batch has no lines for it.
async fn write_result_file(rt: &Runtime, batch: &BatchRecord, kind: ResultFileKind) -> Result<Option<FileRecord>> {
    let is_error = kind == ResultFileKind::Error;
    let mut page = rt.store.result_page(&batch.id, is_error, 0, PAGE, PAGE_BYTES).await?;
    if page.is_empty() {
        return Ok(None);
    }
    let (suffix, key_name) = if is_error {
        ("error", "error.jsonl")
    } else {
        ("output", "output.jsonl")
    };
    let storage_key = format!("batches/{}/{key_name}", batch.id);
    let mut writer = rt.blobs.writer(&storage_key);
    let mut bytes: u64 = 0;
    let write = async {
        while let Some((last_line, _)) = page.last() {
            let last_line = *last_line;
            for (_, text) in &page {
                writer.write_all(text.as_bytes()).await.map_err(blob_failure)?;
                writer.write_all(b"\n").await.map_err(blob_failure)?;
                bytes += text.len() as u64 + 1;
            }
            page = rt
                .store
                .result_page(&batch.id, is_error, last_line, PAGE, PAGE_BYTES)
                .await?;
        }
        Ok::<_, Error>(())
    };
    match write.await {
        Ok(()) => writer.finish().await.map_err(blob_failure)?,
        Err(e) => {
            writer.abort().await;
            return Err(e);
        }
    }
    let created_at = ids::now();
    let ttl = batch.output_expires_after.unwrap_or(DEFAULT_BATCH_FILE_TTL_SECS);
    Ok(Some(FileRecord {
        id: ids::file_id(),
        project_id: batch.project_id.clone(),
        filename: format!("{}_{suffix}.jsonl", batch.id),
        purpose: Purpose::BatchOutput.as_str().to_owned(),
        bytes: bytes as i64,
        created_at,
        expires_at: Some(created_at + ttl),
        storage_key,
    }))
}

/// A result file that cannot be written fails this finalization attempt; a
/// full disk is reported as such so the supervisor's retries make sense in logs.
fn blob_failure(e: BlobError) -> Error {
    match e {
        BlobError::NoSpace => Error::storage_full(),
        other => Error::internal(other),
    }
}
