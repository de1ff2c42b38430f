//! The records batchd keeps and the values they are made of: batches and
//! their status machine, token usage, endpoints, files, uploads, API keys,
//! pages of lists. Services and the store both speak in these types, so
//! they live below both.
//!
//! `domain` depends on nothing else in the crate (only std, serde and
//! serde_json): a store implementation can use it without pulling in the
//! services, the worker or the HTTP edge. `tests/boundaries.rs` checks this.

mod api_key;
mod batch;
mod batch_status;
mod endpoint;
mod file;
mod page;
mod upload;
mod usage;

pub use api_key::ApiKey;
pub use batch::{BatchError, BatchRecord, RequestCounts};
pub use batch_status::BatchStatus;
pub use endpoint::Endpoint;
pub use file::{DEFAULT_BATCH_FILE_TTL_SECS, FileListQuery, FileRecord, MAX_EXPIRES_AFTER_SECS, Purpose};
pub use page::{Order, Page};
pub use upload::{UploadPart, UploadRecord, UploadStatus};
pub use usage::Usage;
