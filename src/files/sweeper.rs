//! The background task that deletes expired files (`expires_after` on
//! uploads, `output_expires_after` and the 30-day default on batch files),
//! and expires Uploads API uploads left unfinished for an hour.

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
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    })
}
