//! The background task that deletes expired files (`expires_after` on
//! uploads, `output_expires_after` and the 30-day default on batch files),
//! expires Uploads API uploads left unfinished for an hour, removes the bytes
//! of deleted files once no unfinished batch reads them, and gives free
//! database pages back.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::FileService;
use crate::ids;

pub fn spawn(
    files: FileService,
    uploads: super::uploads::UploadService,
    interval: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match uploads.expire_old().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(uploads = n, "expired unfinished uploads"),
                Err(e) => tracing::error!(error = %e, "could not expire uploads"),
            }
            match files.delete_expired(ids::now()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(files = n, "deleted expired files"),
                Err(e) => tracing::error!(error = %e, "could not delete expired files"),
            }
            // After expiry, so bytes of files that just expired unused go in this pass.
            match files.remove_leftover_bytes().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(files = n, "removed bytes of deleted files no batch reads any more"),
                Err(e) => tracing::error!(error = %e, "could not remove bytes of deleted files"),
            }
            if let Err(e) = files.release_free_pages().await {
                tracing::warn!(error = %e, "could not release free database pages");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    })
}
