//! Stored files: their metadata record, their bytes in the object store, and
//! the operations the Files API offers on them.

pub mod blobs;
pub mod record;
pub mod service;
pub mod sweeper;
pub mod uploads;

pub use blobs::Blobs;
pub use record::{FileRecord, Purpose};
pub use service::FileService;
