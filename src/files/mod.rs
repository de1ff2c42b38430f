//! Stored files: their bytes in the object store, and the operations the
//! Files and Uploads APIs offer on them. The File record is in `domain`.

pub mod blobs;
pub mod service;
pub mod storage;
pub mod sweeper;
pub mod uploads;

pub use blobs::Blobs;
pub use service::FileService;
