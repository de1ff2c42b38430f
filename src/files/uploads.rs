//! The Uploads API: one file sent as many parts (each up to 64 MB, in any
//! order, in parallel), assembled in the order `complete` names, with an
//! optional MD5 check. An upload expires an hour after creation; its parts'
//! bytes are removed when it completes, is cancelled or expires.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::Stream;
use md5::{Digest, Md5};

use super::blobs::Blobs;
use super::record::{FileRecord, Purpose};
use super::service::{FileService, NewFile, blob_error};
use crate::error::{Error, Result};
use crate::ids;
use crate::store::{Store, UploadPart, UploadRecord};

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
}

pub struct NewUpload {
    pub project_id: String,
    pub filename: String,
    pub purpose: Purpose,
    pub mime_type: String,
    pub bytes: i64,
    pub expires_after: Option<i64>,
}

fn not_found(id: &str) -> Error {
    Error::NotFound {
        message: format!("No such Upload object: {}", crate::api::query::truncate(id)),
        param: Some("upload_id"),
    }
}

impl UploadService {
    pub fn new(store: Arc<dyn Store>, blobs: Blobs, files: FileService, ttl_secs: i64) -> Self {
        Self {
            store,
            blobs,
            files,
            ttl_secs,
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
            status: "pending".into(),
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
        if upload.status == "pending" && ids::now() >= upload.expires_at {
            self.end(&upload, "expired").await?;
            upload.status = "expired".into();
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
        if upload.status == "pending" {
            return Ok(());
        }
        Err(Error::Conflict {
            message: format!(
                "Upload {} is {}; it no longer accepts changes.",
                upload.id, upload.status
            ),
        })
    }

    pub async fn add_part<S, E>(&self, project_id: &str, upload_id: &str, data: S) -> Result<UploadPart>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let upload = self.get(project_id, upload_id).await?;
        Self::require_pending(&upload)?;
        let id = format!("part_{}", uuid::Uuid::new_v4().simple());
        let storage_key = format!("upload_parts/{upload_id}/{id}");
        let bytes = self
            .blobs
            .put_stream(&storage_key, data, MAX_PART_BYTES)
            .await
            .map_err(|e| blob_error(e, "part"))?;
        let part = UploadPart {
            id,
            upload_id: upload_id.to_owned(),
            bytes: bytes as i64,
            created_at: ids::now(),
            storage_key,
        };
        if let Err(e) = self.store.insert_part(&part).await {
            let _ = self.blobs.delete(&part.storage_key).await;
            return Err(e);
        }
        Ok(part)
    }

    /// Assembles the parts, in `part_ids` order, into a new File.
    pub async fn complete(
        &self,
        project_id: &str,
        upload_id: &str,
        part_ids: &[String],
        md5: Option<&str>,
    ) -> Result<(UploadRecord, FileRecord)> {
        let mut upload = self.get(project_id, upload_id).await?;
        Self::require_pending(&upload)?;
        let parts: HashMap<String, UploadPart> = self
            .store
            .parts(upload_id)
            .await?
            .into_iter()
            .map(|p| (p.id.clone(), p))
            .collect();
        let mut seen = HashSet::new();
        let mut ordered = vec![];
        for id in part_ids {
            let part = parts.get(id).filter(|_| seen.insert(id.as_str())).ok_or_else(|| {
                Error::invalid(
                    format!(
                        "'{}' is not a part of this upload, or is listed twice.",
                        crate::api::query::truncate(id)
                    ),
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
        let mut hasher = Md5::new();
        // Opened up front (at most 128 parts for 8 GB): each is read in turn.
        let mut streams = Vec::with_capacity(ordered.len());
        for part in &ordered {
            streams.push(
                self.blobs
                    .get_stream(&part.storage_key)
                    .await
                    .map_err(Error::internal)?,
            );
        }
        let body = futures::stream::iter(streams).flatten().inspect(|chunk| {
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
        let file = self
            .files
            .commit(
                staged,
                NewFile {
                    project_id: project_id.to_owned(),
                    filename: upload.filename.clone(),
                    purpose,
                    expires_after: upload.file_expires_after,
                },
            )
            .await?;
        if !self.store.finish_upload(upload_id, "completed", Some(&file.id)).await? {
            return Err(Error::Conflict {
                message: format!("Upload {upload_id} was cancelled or expired while completing."),
            });
        }
        self.remove_parts(upload_id).await;
        upload.status = "completed".into();
        upload.file_id = Some(file.id.clone());
        Ok((upload, file))
    }

    pub async fn cancel(&self, project_id: &str, upload_id: &str) -> Result<UploadRecord> {
        let mut upload = self.get(project_id, upload_id).await?;
        if upload.status == "cancelled" {
            return Ok(upload);
        }
        Self::require_pending(&upload)?;
        self.end(&upload, "cancelled").await?;
        upload.status = "cancelled".into();
        Ok(upload)
    }

    /// Expires pending uploads past their hour (the file sweeper calls this).
    pub async fn expire_old(&self) -> Result<usize> {
        let expired = self.store.expired_uploads(ids::now()).await?;
        for upload in &expired {
            self.end(upload, "expired").await?;
        }
        Ok(expired.len())
    }

    async fn end(&self, upload: &UploadRecord, status: &str) -> Result<()> {
        if self.store.finish_upload(&upload.id, status, None).await? {
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
