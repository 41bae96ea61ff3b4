//! One storage endpoint behind object_store: a local directory or an S3 bucket and prefix.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{BackoffConfig, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use sluice_config::EndpointConfig;

use super::ObjectInfo;
use crate::SinkError;

/// Retries of one request to one of several endpoints, and how long they may take in all.
const REPLICA_RETRIES: usize = 2;
const REPLICA_RETRY_TIMEOUT: Duration = Duration::from_secs(5);

/// A storage root: every path Sluice uses is relative to it.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) name: String,
    /// Read from, never placed on (see `EndpointConfig::drain`).
    pub(crate) drain: bool,
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) root: Path,
    pub(crate) url: String,
    /// The access key id in use, if any: what an error about credentials names (the secret
    /// key never).
    pub(crate) key_id: Option<String>,
}

pub(crate) fn storage_err(path: &str, source: object_store::Error) -> SinkError {
    SinkError::Storage {
        path: path.to_string(),
        source,
    }
}

impl Endpoint {
    /// Opens the endpoint a config names. `file://` directories are created if missing. One of
    /// several (`replicated`) gives up on a request within seconds: another copy can answer,
    /// and the client's own default (ten retries over up to three minutes) would hold every
    /// read of a part placed first on a dead endpoint that long before it fails over.
    pub(crate) fn open(config: &EndpointConfig, replicated: bool) -> Result<Endpoint, SinkError> {
        let url = config.url.as_str();
        let bad = |problem: &str| SinkError::BadUrl {
            url: url.to_string(),
            problem: problem.to_string(),
            source: None,
        };
        let failed = |problem: String, e: crate::Cause| SinkError::BadUrl {
            url: url.to_string(),
            problem,
            source: Some(e),
        };
        if let Some(rest) = url.strip_prefix("file://") {
            if !config.options.is_empty() {
                return Err(bad("`options` apply to s3:// only; remove them"));
            }
            if rest.is_empty() {
                return Err(bad("no directory given"));
            }
            let dir = std::path::absolute(rest)
                .map_err(|e| failed(format!("`{rest}` is not a usable path"), e.into()))?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| failed(format!("cannot create {}", dir.display()), e.into()))?;
            let store = LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| failed(format!("cannot open {}", dir.display()), e.into()))?;
            return Ok(Endpoint {
                name: config.name.clone(),
                drain: config.drain,
                store: Arc::new(store),
                root: Path::default(),
                url: format!("file://{}", dir.display()),
                key_id: None,
            });
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket given; write s3://bucket/prefix"));
            }
            // The usual chain: `AWS_*` variables of the worker's environment first (keys, region,
            // endpoint, web identity), then the options, which override them.
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
            for (key, value) in &config.options {
                let parsed =
                    AmazonS3ConfigKey::from_str(key).map_err(|source| SinkError::BadOption {
                        key: key.clone(),
                        source,
                    })?;
                builder = builder.with_config(parsed, value.expose());
            }
            if replicated {
                builder = builder.with_retry(RetryConfig {
                    backoff: BackoffConfig::default(),
                    max_retries: REPLICA_RETRIES,
                    retry_timeout: REPLICA_RETRY_TIMEOUT,
                });
            }
            let key_id = builder.get_config_value(&AmazonS3ConfigKey::AccessKeyId);
            let store = builder.build().map_err(|e| bad(&e.to_string()))?;
            return Ok(Endpoint {
                name: config.name.clone(),
                drain: config.drain,
                store: Arc::new(store),
                root: Path::from(prefix.trim_matches('/')),
                url: url.to_string(),
                key_id,
            });
        }
        Err(bad("use file:// or s3://"))
    }

    /// Where an object of the storage's namespace (a path relative to the storage root, its
    /// segments already encoded) lives in this endpoint's store.
    pub(crate) fn locate(&self, location: &Path) -> Path {
        Path::from_iter(self.root.parts().chain(location.parts()))
    }

    /// The inverse of [`Endpoint::locate`].
    pub(crate) fn strip(&self, full: &Path) -> Path {
        match full.prefix_match(&self.root) {
            Some(parts) => Path::from_iter(parts),
            None => full.clone(),
        }
    }

    /// Writes an object whole, once, and checks the stored size.
    pub(crate) async fn put(&self, location: &Path, bytes: Bytes) -> Result<(), SinkError> {
        let len = bytes.len() as u64;
        self.store
            .put(&self.locate(location), PutPayload::from_bytes(bytes))
            .await
            .map_err(|e| storage_err(location.as_ref(), e))?;
        let stored = self.size(location).await?;
        if stored != len {
            return Err(SinkError::Corrupt {
                endpoint: self.name.clone(),
                path: location.to_string(),
                problem: format!("{stored} bytes stored of the {len} written"),
            });
        }
        Ok(())
    }

    pub(crate) async fn size(&self, location: &Path) -> Result<u64, SinkError> {
        self.store
            .head(&self.locate(location))
            .await
            .map(|m| m.size)
            .map_err(|e| storage_err(location.as_ref(), e))
    }

    pub(crate) async fn get(&self, location: &Path) -> Result<Bytes, SinkError> {
        let err = |e| storage_err(location.as_ref(), e);
        let result = self.store.get(&self.locate(location)).await.map_err(err)?;
        result.bytes().await.map_err(err)
    }

    pub(crate) async fn delete(&self, location: &Path) -> Result<(), SinkError> {
        match self.store.delete(&self.locate(location)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(storage_err(location.as_ref(), e)),
        }
    }

    /// Every object under `prefix` (a directory-like prefix), recursively; paths relative to
    /// the storage root, segments as the store encodes them.
    pub(crate) async fn list(&self, prefix: &Path) -> Result<Vec<ObjectInfo>, SinkError> {
        Ok(self
            .list_located(prefix)
            .await?
            .into_iter()
            .map(|(_, info)| info)
            .collect())
    }

    /// [`Endpoint::list`], with each object's location in the storage's namespace.
    pub(crate) async fn list_located(
        &self,
        prefix: &Path,
    ) -> Result<Vec<(Path, ObjectInfo)>, SinkError> {
        let metas: Vec<_> = self
            .store
            .list(Some(&self.locate(prefix)))
            .try_collect()
            .await
            .map_err(|e| storage_err(prefix.as_ref(), e))?;
        Ok(metas
            .into_iter()
            .map(|m| {
                let location = self.strip(&m.location);
                let info = ObjectInfo {
                    path: location.to_string(),
                    size: m.size,
                    last_modified: m.last_modified,
                };
                (location, info)
            })
            .collect())
    }
}
