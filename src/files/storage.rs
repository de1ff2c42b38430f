//! Opens the object store that `[storage]` names: the local directory
//! `<data_dir>/blobs` by default, or an S3-compatible bucket (AWS, MinIO,
//! Ceph, Garage, s3s...) through `object_store`'s own S3 client. Everything
//! above `Blobs` is the same for both.

use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use object_store::RetryConfig;
use object_store::aws::AmazonS3Builder;
use object_store::client::{ClientOptions, HttpClient, HttpConnector};
use object_store::prefix::PrefixStore;

use crate::config::StorageConfig;

/// The configured store, with the prefix of an `s3://bucket/prefix` url
/// applied (every key batchd writes lands under it).
pub fn open(config: &StorageConfig, data_dir: &std::path::Path) -> anyhow::Result<super::Blobs> {
    let Some((bucket, prefix)) = config.s3_location()? else {
        return super::Blobs::local(&data_dir.join("blobs"));
    };
    // `from_env` reads the standard AWS_* variables; what the config file
    // gives wins over them.
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(&bucket)
        .with_http_connector(BatchdConnector)
        .with_retry(RetryConfig {
            max_retries: 10,
            retry_timeout: Duration::from_secs(config.retry_timeout_secs),
            ..RetryConfig::default()
        });
    if let Some(endpoint) = &config.endpoint {
        builder = builder
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"));
    }
    if let Some(region) = &config.region {
        builder = builder.with_region(region);
    }
    if let Some(key) = &config.access_key_id {
        builder = builder.with_access_key_id(key);
    }
    if let Some(secret) = &config.secret_access_key {
        builder = builder.with_secret_access_key(secret);
    }
    let s3 = builder
        .build()
        .map_err(|e| anyhow::anyhow!("storage.url s3://{bucket}: {e}"))?;
    tracing::info!(
        bucket,
        prefix,
        endpoint = config.endpoint.as_deref().unwrap_or("AWS"),
        "file bytes in S3"
    );
    let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
        Arc::new(s3)
    } else {
        Arc::new(PrefixStore::new(s3, prefix.as_str()))
    };
    Ok(super::Blobs::new(store))
}

/// S3 requests go through a client from `http_client::builder()`, like every
/// other outgoing request: the same rustls roots (system plus
/// `SSL_CERT_FILE`, for a private CA in front of an on-premises store) and
/// no proxy. `object_store` retries and times out requests itself.
#[derive(Debug)]
struct BatchdConnector;

impl HttpConnector for BatchdConnector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        let client = crate::http_client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(300))
            .build()
            .map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: Box::new(e),
            })?;
        Ok(HttpClient::new(client))
    }
}
