//! The Batches API's operations, independent of HTTP.

use std::sync::Arc;

use super::supervisor::Supervisor;
use crate::domain::{BatchRecord, Endpoint, Page, Purpose};
use crate::error::{Error, Result};
use crate::ids;
use crate::store::{CancelOutcome, Store};

/// A checked `POST /v1/batches` request.
pub struct NewBatch {
    pub project_id: String,
    pub input_file_id: String,
    pub endpoint: Endpoint,
    /// As the client wrote it ("24h"), and in seconds.
    pub completion_window: String,
    pub window_secs: i64,
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    pub output_expires_after: Option<i64>,
}

#[derive(Clone)]
pub struct BatchService {
    store: Arc<dyn Store>,
    supervisor: Arc<Supervisor>,
    /// `limits.max_active_batches_per_project`.
    max_active_batches: u64,
}

impl BatchService {
    pub fn new(store: Arc<dyn Store>, supervisor: Arc<Supervisor>) -> Self {
        let max_active_batches = crate::config::LimitsConfig::default().max_active_batches_per_project;
        Self {
            store,
            supervisor,
            max_active_batches,
        }
    }

    /// Sets how many active batches one project may have (a create beyond gets 429).
    pub fn with_max_active_batches_per_project(mut self, max: u64) -> Self {
        self.max_active_batches = max;
        self
    }

    /// Records the batch as `validating` and hands it to the supervisor; the
    /// file itself is checked in the background, as on OpenAI.
    pub async fn create(&self, new: NewBatch) -> Result<BatchRecord> {
        if let Some(file) = self.store.get_file(&new.project_id, &new.input_file_id).await?
            && file.purpose != Purpose::Batch.as_str()
        {
            return Err(Error::invalid(
                format!(
                    "The input file {} has purpose '{}'; a batch needs a file uploaded with purpose 'batch'.",
                    file.id, file.purpose
                ),
                Some("input_file_id"),
                Some("invalid_value"),
            ));
        }
        let created_at = ids::now();
        let mut batch = BatchRecord::new_validating(
            ids::batch_id(),
            new.project_id,
            new.endpoint.path().to_owned(),
            new.input_file_id,
            new.completion_window,
            created_at,
            Some(created_at + new.window_secs),
        );
        batch.metadata = new.metadata;
        batch.output_expires_after = new.output_expires_after;
        // Like OpenAI's batch rate limits: 429, and the SDKs retry it with backoff.
        if !self
            .store
            .insert_batch_within_limit(&batch, self.max_active_batches)
            .await?
        {
            return Err(Error::RateLimited {
                message: format!(
                    "Active batch limit reached for project {}. Limit: {} active batches. Please try again once some of your batches have finished.",
                    batch.project_id, self.max_active_batches
                ),
            });
        }
        tracing::info!(batch_id = %batch.id, endpoint = %batch.endpoint, "batch created");
        self.supervisor.wake();
        Ok(batch)
    }

    pub async fn count_by_status(&self) -> Result<Vec<(String, i64)>> {
        self.store.count_by_status().await
    }

    pub async fn get(&self, project_id: &str, id: &str) -> Result<BatchRecord> {
        self.store.get_batch(project_id, id).await?.ok_or_else(|| not_found(id))
    }

    pub async fn list(&self, project_id: &str, after: Option<&str>, limit: u32) -> Result<Page<BatchRecord>> {
        self.store
            .list_batches(project_id, after, limit)
            .await?
            .ok_or_else(|| Error::Invalid {
                message: format!("No batch found with id '{}'.", after.unwrap_or_default()),
                param: Some("after".into()),
                code: None,
            })
    }

    pub async fn cancel(&self, project_id: &str, id: &str) -> Result<BatchRecord> {
        match self.store.request_cancel(project_id, id, ids::now()).await? {
            CancelOutcome::Accepted(batch) => {
                tracing::info!(batch_id = %batch.id, "batch cancel requested");
                self.supervisor.cancel(&batch.id);
                Ok(*batch)
            }
            CancelOutcome::Refused(status) => Err(Error::Conflict {
                message: format!("Cannot cancel a batch with status '{}'.", status.as_str()),
            }),
            CancelOutcome::NotFound => Err(not_found(id)),
        }
    }
}

fn not_found(id: &str) -> Error {
    Error::NotFound {
        message: format!("No batch found with id '{id}'."),
        param: Some("batch_id"),
    }
}
