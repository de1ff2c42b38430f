//! The Uploads API: one file sent as many parts (each up to 64 MB, in any
//! order, in parallel), assembled in the order `complete` names, with an
//! optional MD5 check. An upload expires an hour after creation; its parts'
//! bytes are removed when it completes, is cancelled or expires.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::Stream;
use futures::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};

use super::blobs::{BlobError, Blobs};
use super::service::{FileService, blob_error};
use crate::domain::{DEFAULT_BATCH_FILE_TTL_SECS, FileRecord, Purpose, UploadPart, UploadRecord, UploadStatus};
use crate::error::{Error, Result, truncate};
use crate::ids;
use crate::store::{PartAdmission, Store};

/// OpenAI's limits: 64 MB a part, 8 GB an upload (the time to finish one is
/// `limits.upload_ttl_secs`, an hour by default).
pub const MAX_PART_BYTES: u64 = 64 * 1024 * 1024;
pub const MAX_UPLOAD_BYTES: i64 = 8 * 1024 * 1024 * 1024;

#[derive(Clone)]
pub struct UploadService {
    store: Arc<dyn Store>,
    blobs: Blobs,
    files: FileService,
    ttl_secs: i64,
    /// `limits.max_upload_parts`. OpenAI sets no minimum part size, so without
    /// a cap an upload could be made of millions of one-byte parts (rows,
    /// blobs, and at completion one read each).
    max_parts: i64,
}

pub struct NewUpload {
    pub project_id: String,
    pub filename: String,
    pub purpose: Purpose,
    pub mime_type: String,
    pub bytes: i64,
    pub expires_after: Option<i64>,
}

fn no_longer_pending(id: &str, status: UploadStatus) -> Error {
    Error::Conflict {
        message: format!("Upload {id} is {}; it no longer accepts changes.", status.as_str()),
    }
}

fn too_many_parts(max_parts: i64) -> Error {
    Error::invalid(
        format!("An upload takes at most {max_parts} parts."),
        Some("data"),
        Some("invalid_value"),
    )
}

fn over_declared(declared: i64, stored: i64) -> Error {
    Error::invalid(
        format!(
            "The parts would hold more than the {declared} bytes this upload was created for ({stored} bytes are already stored)."
        ),
        Some("data"),
        Some("invalid_value"),
    )
}

fn not_found(id: &str) -> Error {
    Error::NotFound {
        message: format!("No such Upload object: {}", truncate(id)),
        param: Some("upload_id"),
    }
}

impl UploadService {
    pub fn new(store: Arc<dyn Store>, blobs: Blobs, files: FileService, ttl_secs: i64, max_parts: u64) -> Self {
        Self {
            store,
            blobs,
            files,
            ttl_secs,
            max_parts: i64::try_from(max_parts).unwrap_or(i64::MAX),
        }
    }

    pub async fn create(&self, new: NewUpload) -> Result<UploadRecord> {
        if !(1..=MAX_UPLOAD_BYTES).contains(&new.bytes) {
            return Err(Error::invalid(
                format!("'bytes' must be between 1 and {MAX_UPLOAD_BYTES}."),
                Some("bytes"),
                Some("invalid_value"),
            ));
        }
        let created_at = ids::now();
        let upload = UploadRecord {
            id: format!("upload_{}", uuid::Uuid::new_v4().simple()),
            project_id: new.project_id,
            filename: new.filename,
            purpose: new.purpose.as_str().to_owned(),
            mime_type: new.mime_type,
            bytes: new.bytes,
            created_at,
            expires_at: created_at + self.ttl_secs,
            status: UploadStatus::Pending,
            file_expires_after: new.expires_after,
            file_id: None,
        };
        self.store.insert_upload(&upload).await?;
        tracing::info!(upload_id = %upload.id, bytes = upload.bytes, "upload created");
        Ok(upload)
    }

    /// The upload, marked expired first if its hour is over.
    pub async fn get(&self, project_id: &str, id: &str) -> Result<UploadRecord> {
        let mut upload = self
            .store
            .get_upload(project_id, id)
            .await?
            .ok_or_else(|| not_found(id))?;
        if upload.status == UploadStatus::Pending && ids::now() >= upload.expires_at {
            self.end(&upload, UploadStatus::Expired).await?;
            upload.status = UploadStatus::Expired;
        }
        Ok(upload)
    }

    /// The completed upload's file, if any.
    pub async fn file_of(&self, upload: &UploadRecord) -> Result<Option<FileRecord>> {
        match &upload.file_id {
            Some(id) => self.store.get_file_even_deleted(&upload.project_id, id).await,
            None => Ok(None),
        }
    }

    /// A finished upload takes no more changes: a 409 (the state, not the
    /// request, is the problem), which the SDKs are told not to retry.
    fn require_pending(upload: &UploadRecord) -> Result<()> {
        if upload.status == UploadStatus::Pending {
            return Ok(());
        }
        Err(no_longer_pending(&upload.id, upload.status))
    }

    pub async fn add_part<S, E>(&self, project_id: &str, upload_id: &str, data: S) -> Result<UploadPart>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let upload = self.get(project_id, upload_id).await?;
        Self::require_pending(&upload)?;
        // A first look, so a part that cannot fit is refused before its bytes
        // are stored; `UploadRepo::add_part` checks again atomically, which
        // also covers parts sent in parallel.
        let (count, stored) = self.store.part_totals(upload_id).await?;
        if count >= self.max_parts {
            return Err(too_many_parts(self.max_parts));
        }
        let room = u64::try_from(upload.bytes.saturating_sub(stored)).unwrap_or(0);
        if room == 0 {
            return Err(over_declared(upload.bytes, stored));
        }
        let limit = room.min(MAX_PART_BYTES);
        let id = format!("part_{}", uuid::Uuid::new_v4().simple());
        let storage_key = format!("upload_parts/{upload_id}/{id}");
        let bytes = match self.blobs.put_stream(&storage_key, data, limit).await {
            Ok(bytes) => bytes,
            Err(BlobError::TooLarge { .. }) if limit < MAX_PART_BYTES => {
                return Err(over_declared(upload.bytes, stored));
            }
            Err(e) => return Err(blob_error(e, "part")),
        };
        let part = UploadPart {
            id,
            upload_id: upload_id.to_owned(),
            bytes: bytes as i64,
            created_at: ids::now(),
            storage_key,
        };
        let admission = self.store.add_part(&part, self.max_parts).await;
        if !matches!(admission, Ok(PartAdmission::Added)) {
            let _ = self.blobs.delete(&part.storage_key).await;
        }
        match admission? {
            PartAdmission::Added => Ok(part),
            PartAdmission::NotPending(None) => Err(not_found(upload_id)),
            PartAdmission::NotPending(Some(status)) => Err(no_longer_pending(upload_id, status)),
            PartAdmission::TooManyParts => Err(too_many_parts(self.max_parts)),
            PartAdmission::OverDeclared { declared, stored } => Err(over_declared(declared, stored)),
        }
    }

    /// Assembles the parts, in `part_ids` order, into a new File. The upload
    /// is `completing` while its parts are read, so a concurrent complete or
    /// cancel gets a 409 instead of a second File, and the File appears in
    /// the same transaction that marks the upload `completed`.
    pub async fn complete(
        &self,
        project_id: &str,
        upload_id: &str,
        part_ids: &[String],
        md5: Option<&str>,
    ) -> Result<(UploadRecord, FileRecord)> {
        let mut upload = self.get(project_id, upload_id).await?;
        Self::require_pending(&upload)?;
        if part_ids.len() as i64 > self.max_parts {
            return Err(too_many_parts(self.max_parts));
        }
        let ordered = self.ordered_parts(&upload, part_ids).await?;
        if !self
            .store
            .set_upload_status(upload_id, &[UploadStatus::Pending], UploadStatus::Completing)
            .await?
        {
            let now = self.get(project_id, upload_id).await?;
            return Err(no_longer_pending(upload_id, now.status));
        }
        let file = match self.assemble(&upload, ordered, md5).await {
            Ok(file) => file,
            Err(e) => {
                // The request was wrong (an md5 that does not match) or reading
                // failed: the upload takes a corrected complete, unless it was
                // expired meanwhile.
                self.store
                    .set_upload_status(upload_id, &[UploadStatus::Completing], UploadStatus::Pending)
                    .await?;
                return Err(e);
            }
        };
        let completed = match self.store.complete_upload(upload_id, &file).await {
            Ok(completed) => completed,
            Err(e) => {
                self.discard_assembled(&file).await;
                let _ = self
                    .store
                    .set_upload_status(upload_id, &[UploadStatus::Completing], UploadStatus::Pending)
                    .await;
                return Err(e);
            }
        };
        if !completed {
            self.discard_assembled(&file).await;
            return Err(Error::Conflict {
                message: format!("Upload {upload_id} was cancelled or expired while completing."),
            });
        }
        tracing::info!(upload_id, file_id = %file.id, bytes = file.bytes, "upload completed");
        self.remove_parts(upload_id).await;
        upload.status = UploadStatus::Completed;
        upload.file_id = Some(file.id.clone());
        Ok((upload, file))
    }

    /// The listed parts, in order, checked to be this upload's, each once, and
    /// to add up to its declared size.
    async fn ordered_parts(&self, upload: &UploadRecord, part_ids: &[String]) -> Result<Vec<UploadPart>> {
        let parts: HashMap<String, UploadPart> = self
            .store
            .parts(&upload.id)
            .await?
            .into_iter()
            .map(|p| (p.id.clone(), p))
            .collect();
        let mut seen = HashSet::new();
        let mut ordered = vec![];
        for id in part_ids {
            let part = parts.get(id).filter(|_| seen.insert(id.as_str())).ok_or_else(|| {
                Error::invalid(
                    format!("'{}' is not a part of this upload, or is listed twice.", truncate(id)),
                    Some("part_ids"),
                    Some("invalid_value"),
                )
            })?;
            ordered.push(part.clone());
        }
        let total: i64 = ordered.iter().map(|p| p.bytes).sum();
        if total != upload.bytes {
            return Err(Error::invalid(
                format!(
                    "The parts hold {total} bytes, but the upload was created for {} bytes.",
                    upload.bytes
                ),
                Some("part_ids"),
                Some("invalid_value"),
            ));
        }
        Ok(ordered)
    }

    /// Copies the parts into one staged object, checking the md5; returns the
    /// File it will become (not yet recorded).
    async fn assemble(&self, upload: &UploadRecord, ordered: Vec<UploadPart>, md5: Option<&str>) -> Result<FileRecord> {
        let mut hasher = Md5::new();
        // Each part is opened only when the previous one has been read: an
        // upload may have thousands of parts, and an open part holds a file
        // descriptor.
        let blobs = self.blobs.clone();
        let body = futures::stream::iter(ordered)
            .then(move |part| {
                let blobs = blobs.clone();
                async move { blobs.get_stream(&part.storage_key).await }
            })
            .try_flatten()
            // Boxed: the unboxed combinators trip the compiler's higher-ranked
            // `Send` check on the axum handler.
            .boxed()
            .inspect(|chunk| {
                if let Ok(bytes) = chunk {
                    hasher.update(bytes);
                }
            });
        let staged = self.files.stage_limited(body, upload.bytes as u64).await?;
        let digest = hex::encode(hasher.finalize());
        if let Some(expected) = md5
            && !expected.eq_ignore_ascii_case(&digest)
        {
            self.files.discard(staged).await;
            return Err(Error::invalid(
                format!("The md5 of the assembled file is {digest}, not {expected}."),
                Some("md5"),
                Some("invalid_value"),
            ));
        }
        let purpose = Purpose::parse_uploadable(&upload.purpose).unwrap_or(Purpose::UserData);
        let created_at = ids::now();
        let ttl = upload.file_expires_after.or(match purpose {
            Purpose::Batch => Some(DEFAULT_BATCH_FILE_TTL_SECS),
            _ => None,
        });
        Ok(FileRecord {
            id: staged.id,
            project_id: upload.project_id.clone(),
            filename: upload.filename.clone(),
            purpose: purpose.as_str().to_owned(),
            bytes: staged.bytes as i64,
            created_at,
            expires_at: ttl.map(|ttl| created_at + ttl),
            storage_key: staged.storage_key,
        })
    }

    async fn discard_assembled(&self, file: &FileRecord) {
        if let Err(e) = self.blobs.delete(&file.storage_key).await {
            tracing::warn!(file_id = %file.id, error = %e, "could not remove an assembled upload");
        }
    }

    pub async fn cancel(&self, project_id: &str, upload_id: &str) -> Result<UploadRecord> {
        let mut upload = self.get(project_id, upload_id).await?;
        if upload.status == UploadStatus::Cancelled {
            return Ok(upload);
        }
        Self::require_pending(&upload)?;
        self.end(&upload, UploadStatus::Cancelled).await?;
        upload.status = UploadStatus::Cancelled;
        Ok(upload)
    }

    /// Expires pending uploads past their hour (the file sweeper calls this).
    pub async fn expire_old(&self) -> Result<usize> {
        let expired = self.store.expired_uploads(ids::now()).await?;
        for upload in &expired {
            self.end(upload, UploadStatus::Expired).await?;
        }
        Ok(expired.len())
    }

    /// Cancels (from `pending`) or expires (from `pending`, or from a
    /// `completing` left behind by a crash) an upload and removes its parts.
    async fn end(&self, upload: &UploadRecord, status: UploadStatus) -> Result<()> {
        let from: &[UploadStatus] = if status == UploadStatus::Expired {
            &[UploadStatus::Pending, UploadStatus::Completing]
        } else {
            &[UploadStatus::Pending]
        };
        if self.store.set_upload_status(&upload.id, from, status).await? {
            self.remove_parts(&upload.id).await;
        }
        Ok(())
    }

    async fn remove_parts(&self, upload_id: &str) {
        let Ok(parts) = self.store.parts(upload_id).await else {
            return;
        };
        for part in parts {
            if let Err(e) = self.blobs.delete(&part.storage_key).await {
                tracing::warn!(upload_id, error = %e, "could not remove an upload part");
            }
        }
    }
}
