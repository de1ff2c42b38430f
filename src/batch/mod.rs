//! Batches: validation of input files, the worker that runs lines on
//! backends, finalization into result files, and the supervisor that owns all
//! of it in the background. The record and its status machine are in
//! `domain`.

pub mod failpoint;
pub mod finalize;
pub mod input;
pub mod lines;
pub mod output_line;
pub mod request_line;
pub mod response_usage;
pub mod result_writer;
pub mod runner;
pub mod service;
pub mod supervisor;
pub mod validation;
pub mod worker;

use std::sync::Arc;

use crate::backends::ModelRegistry;
use crate::config::LimitsConfig;
use crate::files::Blobs;
use crate::store::Store;

pub use service::BatchService;

/// What batch workers share: persistence, stored bytes, backends and limits.
#[derive(Clone)]
pub struct Runtime {
    pub store: Arc<dyn Store>,
    pub blobs: Blobs,
    pub models: ModelRegistry,
    /// Turns on models, and starting/stopping managed model servers.
    pub manager: crate::models::ModelManager,
    pub limits: LimitsConfig,
    pub writer: result_writer::ResultWriter,
    /// How long in-flight lines may take to finish when the server stops.
    pub shutdown_grace: std::time::Duration,
}
