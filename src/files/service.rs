//! The Files API's operations, independent of HTTP.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, Stream};

use super::blobs::{BlobError, Blobs};
use crate::domain::{DEFAULT_BATCH_FILE_TTL_SECS, FileListQuery, FileRecord, Page, Purpose};
use crate::error::{Error, Result};
use crate::ids;
use crate::store::Store;

#[derive(Clone)]
pub struct FileService {
    store: Arc<dyn Store>,
    blobs: Blobs,
    max_upload_bytes: u64,
}

/// Bytes of an upload in storage, not yet a file.
#[derive(Debug)]
pub struct StagedFile {
    pub id: String,
    pub storage_key: String,
    pub bytes: u64,
}

/// A validated upload request, minus its bytes.
pub struct NewFile {
    pub project_id: String,
    pub filename: String,
    pub purpose: Purpose,
    /// `expires_after[seconds]`, anchored at creation.
    pub expires_after: Option<i64>,
}

impl FileService {
    pub fn new(store: Arc<dyn Store>, blobs: Blobs, max_upload_bytes: u64) -> Self {
        Self {
            store,
            blobs,
            max_upload_bytes,
        }
    }

    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    /// Streams an upload's bytes to storage. They stay invisible until
    /// `commit` records the file (multipart fields may arrive in any order, so
    /// the bytes can come before the purpose is known).
    pub async fn stage<S, E>(&self, body: S) -> Result<StagedFile>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        self.stage_limited(body, self.max_upload_bytes).await
    }

    /// Like `stage`, with a limit of its own (assembled uploads are bounded
    /// by their declared size, not by `max_upload_bytes`).
    pub async fn stage_limited<S, E>(&self, body: S, limit: u64) -> Result<StagedFile>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let id = ids::file_id();
        let storage_key = format!("uploads/{id}");
        let bytes = self
            .blobs
            .put_stream(&storage_key, body, limit)
            .await
            .map_err(|e| blob_error(e, "file"))?;
        Ok(StagedFile { id, storage_key, bytes })
    }

    /// Removes staged bytes that will not become a file.
    pub async fn discard(&self, staged: StagedFile) {
        if let Err(e) = self.blobs.delete(&staged.storage_key).await {
            tracing::warn!(file_id = %staged.id, error = %e, "could not remove staged upload");
        }
    }

    /// Records a staged upload as a file, making it visible.
    pub async fn commit(&self, staged: StagedFile, new: NewFile) -> Result<FileRecord> {
        let created_at = ids::now();
        let ttl = new.expires_after.or(match new.purpose {
            Purpose::Batch => Some(DEFAULT_BATCH_FILE_TTL_SECS),
            _ => None,
        });
        let record = FileRecord {
            id: staged.id.clone(),
            project_id: new.project_id,
            filename: new.filename,
            purpose: new.purpose.as_str().to_owned(),
            bytes: staged.bytes as i64,
            created_at,
            expires_at: ttl.map(|ttl| created_at + ttl),
            storage_key: staged.storage_key.clone(),
        };
        if let Err(e) = self.store.insert_file(&record).await {
            self.discard(staged).await;
            return Err(e);
        }
        tracing::info!(file_id = %record.id, bytes = record.bytes, purpose = %record.purpose, "file uploaded");
        Ok(record)
    }

    pub async fn get(&self, project_id: &str, id: &str) -> Result<FileRecord> {
        self.store.get_file(project_id, id).await?.ok_or_else(|| not_found(id))
    }

    pub async fn list(&self, project_id: &str, query: &FileListQuery) -> Result<Page<FileRecord>> {
        self.store
            .list_files(project_id, query)
            .await?
            .ok_or_else(|| Error::Invalid {
                message: format!("No such File object: {}", query.after.as_deref().unwrap_or_default()),
                param: Some("after".into()),
                code: None,
            })
    }

    pub async fn delete(&self, project_id: &str, id: &str) -> Result<FileRecord> {
        let record = self
            .store
            .delete_file(project_id, id)
            .await?
            .ok_or_else(|| not_found(id))?;
        if self.store.file_in_use(&record.id).await? {
            // A batch that has not ended still reads these bytes (also after a
            // restart), so they stay until it ends; then the file sweep removes
            // them (`remove_leftover_bytes`).
            tracing::info!(file_id = %record.id, "deleted file is a running batch's input; keeping its bytes until the batch ends");
            return Ok(record);
        }
        self.remove_bytes(&record).await;
        Ok(record)
    }

    /// Removes a deleted file's bytes and records it. A failure is only logged:
    /// the row is already gone from the API, and the sweep tries again.
    async fn remove_bytes(&self, record: &FileRecord) -> bool {
        if let Err(e) = self.blobs.delete(&record.storage_key).await {
            tracing::warn!(file_id = %record.id, error = %e, "could not remove deleted file's bytes; the sweep retries");
            return false;
        }
        match self.store.bytes_removed(&record.id, ids::now()).await {
            Ok(()) => true,
            Err(e) => {
                // The bytes are gone; the sweep removes them again (a no-op) and records it.
                tracing::warn!(file_id = %record.id, error = %e, "could not record that a file's bytes are removed");
                false
            }
        }
    }

    /// Removes the bytes that deleted files left behind: inputs deleted or
    /// expired while a batch read them (now that no unfinished batch does),
    /// and removals that failed. Returns how many files' bytes went.
    pub async fn remove_leftover_bytes(&self) -> Result<usize> {
        const PAGE: u32 = 500;
        let mut removed = 0;
        loop {
            let files = self.store.files_with_bytes_to_remove(PAGE).await?;
            let full = files.len() == PAGE as usize;
            let mut all_went = true;
            for file in &files {
                if self.remove_bytes(file).await {
                    removed += 1;
                } else {
                    all_went = false;
                }
            }
            // A failure would be selected again at once: leave it to the next sweep.
            if !full || !all_went {
                return Ok(removed);
            }
        }
    }

    /// Gives free database pages (left by deleted rows) back to the file system,
    /// a bounded amount per call so a sweep never holds the database long.
    pub async fn release_free_pages(&self) -> Result<u64> {
        /// 16 MB of 4 KB pages per sweep.
        const MAX_PAGES: u32 = 4096;
        self.store.release_free_pages(MAX_PAGES).await
    }

    /// Deletes every file whose `expires_after` has passed (input files still
    /// read by a running batch keep their bytes until it ends). Returns how
    /// many were deleted.
    pub async fn delete_expired(&self, now: i64) -> Result<usize> {
        let mut deleted = 0;
        loop {
            let expired = self.store.expired_files(now, 500).await?;
            if expired.is_empty() {
                return Ok(deleted);
            }
            for file in expired {
                // Another sweep or a user may have deleted it meanwhile: fine.
                match self.delete(&file.project_id, &file.id).await {
                    Ok(_) | Err(Error::NotFound { .. }) => deleted += 1,
                    Err(e) => return Err(e),
                }
            }
        }
    }

    pub async fn content(
        &self,
        project_id: &str,
        id: &str,
    ) -> Result<(FileRecord, BoxStream<'static, Result<Bytes, BlobError>>)> {
        let record = self.get(project_id, id).await?;
        let stream = self
            .blobs
            .get_stream(&record.storage_key)
            .await
            .map_err(|e| blob_error(e, "file"))?;
        Ok((record, stream))
    }
}

pub fn not_found(id: &str) -> Error {
    Error::NotFound {
        message: format!("No such File object: {id}"),
        param: Some("id"),
    }
}

/// Maps storage failures to what the client should be told.
pub fn blob_error(e: BlobError, what: &str) -> Error {
    match e {
        BlobError::TooLarge { limit } => Error::TooLarge {
            message: format!("The {what} is too large: the maximum size is {limit} bytes."),
        },
        BlobError::NoSpace => Error::storage_full(),
        BlobError::Source(msg) => {
            Error::invalid(format!("Could not read the uploaded {what}: {msg}"), Some("file"), None)
        }
        other => Error::internal(other),
    }
}
