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
        if e.kind() == std::io::ErrorKind::StorageFull {
            BlobError::NoSpace
        } else {
            BlobError::Io(e)
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
    pub fn local(dir: &std::path::Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)?;
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
                writer.put(chunk).await.map_err(BlobError::Store)?;
            }
            writer.shutdown().await.map_err(BlobError::from_io)
        }
        .await;
        if let Err(e) = outcome {
            let _ = writer.abort().await;
            return Err(e);
        }
        Ok(written)
    }

    /// A buffered writer for `key`; the object appears when it is shut down.
    /// Memory per writer stays near `WRITE_CHUNK * (WRITE_CONCURRENCY + 1)`
    /// whatever the object's size.
    pub fn writer(&self, key: &str) -> BufWriter {
        BufWriter::with_capacity(self.store.clone(), Path::from(key), WRITE_CHUNK)
            .with_max_concurrency(WRITE_CONCURRENCY)
    }

    /// The object's bytes as a stream of chunks.
    pub async fn get_stream(&self, key: &str) -> Result<BoxStream<'static, Result<Bytes, BlobError>>, BlobError> {
        let result = self.store.get(&Path::from(key)).await?;
        Ok(result.into_stream().map(|r| r.map_err(BlobError::Store)).boxed())
    }

    /// Removes the object; an object that is already gone is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), BlobError> {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
