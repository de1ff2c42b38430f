//! Stored bytes, through the `object_store` crate: local disk by default, and the
//! same trait for S3-compatible stores later. Writes go to a staging object and
//! become visible only when complete, so a half-written file is never read.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("the content is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("no space left on the storage device")]
    NoSpace,
    #[error("reading the request body failed: {0}")]
    Source(String),
    #[error(transparent)]
    Store(#[from] object_store::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl BlobError {
    fn from_io(e: std::io::Error) -> Self {
        if crate::error::is_storage_full(&e) {
            BlobError::NoSpace
        } else {
            BlobError::Io(e)
        }
    }

    fn from_store(e: object_store::Error) -> Self {
        if crate::error::is_storage_full(&e) {
            BlobError::NoSpace
        } else {
            BlobError::Store(e)
        }
    }
}

/// Part size of streamed writes: S3's minimum multipart part size, so the
/// same setting works for every object store.
const WRITE_CHUNK: usize = 5 * 1024 * 1024;
/// Parts in flight per writer.
const WRITE_CONCURRENCY: usize = 2;

#[derive(Clone, Debug)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
}

impl Blobs {
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store }
    }

    /// Local-disk store rooted at `dir` (created if missing).
    ///
    /// Every object is fsynced (file and directory) before it appears: its
    /// File row is committed only after that, so an OS crash or power loss can
    /// never leave a File (an upload answered 200, or a terminal batch's
    /// result file) whose bytes are missing or cut short. The cost is one
    /// fsync per object, not per line (docs/durability.md, L10).
    pub fn local(dir: &std::path::Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)?.with_fsync(true);
        Ok(Self::new(Arc::new(store)))
    }

    /// Streams `body` into the object `key` and returns its length. Fails without
    /// leaving an object behind if the stream errors or exceeds `limit` bytes.
    pub async fn put_stream<S, E>(&self, key: &str, body: S, limit: u64) -> Result<u64, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let mut writer = self.writer(key);
        let mut body = std::pin::pin!(body);
        let mut written: u64 = 0;
        let outcome: Result<(), BlobError> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| BlobError::Source(e.to_string()))?;
                written += chunk.len() as u64;
                if written > limit {
                    return Err(BlobError::TooLarge { limit });
                }
                writer.put(chunk).await?;
            }
            Ok(())
        }
        .await;
        match outcome {
            Ok(()) => writer.finish().await.map(|()| written),
            Err(e) => {
                writer.abort().await;
                Err(e)
            }
        }
    }

    /// A streaming writer for `key`; the object appears only when `finish`
    /// succeeds.
    pub fn writer(&self, key: &str) -> BlobWriter {
        BlobWriter {
            inner: BufWriter::with_capacity(self.store.clone(), Path::from(key), WRITE_CHUNK)
                .with_max_concurrency(WRITE_CONCURRENCY),
        }
    }

    /// The object's bytes as a stream of chunks.
    pub async fn get_stream(&self, key: &str) -> Result<BoxStream<'static, Result<Bytes, BlobError>>, BlobError> {
        let result = self.store.get(&Path::from(key)).await?;
        Ok(result.into_stream().map(|r| r.map_err(BlobError::from_store)).boxed())
    }

    /// Removes the object; an object that is already gone is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), BlobError> {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Writes one object in parts. Memory stays near
/// `WRITE_CHUNK * (WRITE_CONCURRENCY + 1)` whatever the object's size.
///
/// Wraps `object_store`'s `BufWriter`, whose `abort` panics once a shutdown was
/// attempted: `finish` consumes the writer (a failed finish cleans up after
/// itself), so `abort` can only be called before it.
pub struct BlobWriter {
    inner: BufWriter,
}

impl BlobWriter {
    pub async fn put(&mut self, chunk: Bytes) -> Result<(), BlobError> {
        self.inner.put(chunk).await.map_err(BlobError::from_store)
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), BlobError> {
        self.inner.write_all(bytes).await.map_err(BlobError::from_io)
    }

    /// Completes the object; on failure nothing is left behind.
    pub async fn finish(mut self) -> Result<(), BlobError> {
        self.inner.shutdown().await.map_err(BlobError::from_io)
    }

    /// Drops what was written so far.
    pub async fn abort(mut self) {
        if let Err(e) = self.inner.abort().await {
            tracing::warn!(error = %e, "could not clean up a partly written object");
        }
    }
}
