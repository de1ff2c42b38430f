//! Re-reading a running batch's input file (to run it, or to account for its
//! unexecuted lines at cancel and expiry), and telling a problem that will not
//! go away (the bytes are gone, a line cannot be split) from one that may (an
//! I/O error): the first ends the batch, the second is retried.

use super::Runtime;
use super::lines::{LineError, LineReader};
use crate::domain::{BatchError, BatchRecord};
use crate::error::{Error, Result};
use crate::files::blobs::BlobError;

/// Why the input cannot be read (further).
#[derive(Debug)]
pub enum InputError {
    /// It never will be again, as it was validated; the reason is for `errors`.
    Unreadable(String),
    /// Reading failed in a way that may heal (I/O, database): try again later.
    Failed(Error),
}

impl From<Error> for InputError {
    fn from(e: Error) -> Self {
        InputError::Failed(e)
    }
}

impl From<LineError> for InputError {
    fn from(e: LineError) -> Self {
        match e {
            LineError::TooLong { line, limit } => InputError::Unreadable(format!(
                "Line {line} of the input file can no longer be read within the line limit of {limit} bytes."
            )),
            LineError::Read(BlobError::Store(object_store::Error::NotFound { .. })) => {
                InputError::Unreadable("The stored bytes of the input file are missing.".into())
            }
            other => InputError::Failed(Error::internal(other)),
        }
    }
}

/// The batch-level error of a batch whose input became unreadable.
pub fn unreadable_error(reason: &str) -> BatchError {
    BatchError::new(
        "input_unreadable",
        format!("The batch's input file could not be read again: {reason}"),
        Some("input_file_id"),
        None,
    )
}

/// Opens the batch's input file as a line reader, split with the line limit
/// it was validated with (so lowering `max_line_bytes` later changes nothing).
pub async fn input_reader(rt: &Runtime, batch: &BatchRecord) -> Result<LineReader, InputError> {
    let intents = rt.store.batch_intents(&batch.id).await?;
    let limit = intents.line_limit.unwrap_or(rt.limits.max_line_bytes);
    let Some(file) = rt
        .store
        .get_file_even_deleted(&batch.project_id, &batch.input_file_id)
        .await?
    else {
        return Err(InputError::Unreadable(format!(
            "The input file {} no longer exists.",
            batch.input_file_id
        )));
    };
    let stream = rt
        .blobs
        .get_stream(&file.storage_key)
        .await
        .map_err(|e| InputError::from(LineError::Read(e)))?;
    Ok(LineReader::new(stream, limit))
}

/// The custom_id of a stored line that no longer parses as a request, if its
/// JSON still has one; otherwise empty (the line number is still recorded).
pub fn recover_custom_id(line: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.get("custom_id")?.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_id_is_recovered_when_the_json_still_has_one() {
        assert_eq!(recover_custom_id(br#"{"custom_id":"a","body":1}"#), "a");
        assert_eq!(recover_custom_id(br#"{"custom_id":7}"#), "");
        assert_eq!(recover_custom_id(b"not json"), "");
    }
}
