//! Object storage behind object_store: the local filesystem or S3.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sluice_config::StorageConfig;

use crate::SinkError;

/// Attempts per upload; a retried upload rewrites the same object name, so retrying is safe.
const PUT_ATTEMPTS: u32 = 4;

/// One listed object, with its path relative to the storage root.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub path: String,
    pub size: u64,
    pub last_modified: chrono::DateTime<chrono::Utc>,
}

/// A storage root: every path Sluice uses is relative to it.
#[derive(Debug, Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    root: Path,
    url: String,
    /// The access key id in use, if any: what an error about credentials names (the secret
    /// key never).
    key_id: Option<String>,
}

fn storage_err(path: &str, source: object_store::Error) -> SinkError {
    SinkError::Storage {
        path: path.to_string(),
        source,
    }
}

impl Storage {
    /// Opens the storage a config names. `file://` directories are created if missing.
    pub fn open(config: &StorageConfig) -> Result<Storage, SinkError> {
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
                return Err(bad("`storage.options` apply to s3:// only; remove them"));
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
            return Ok(Storage {
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
            // endpoint, web identity), then `storage.options`, which override them.
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
            for (key, value) in &config.options {
                let parsed =
                    AmazonS3ConfigKey::from_str(key).map_err(|source| SinkError::BadOption {
                        key: key.clone(),
                        source,
                    })?;
                builder = builder.with_config(parsed, value.expose());
            }
            let key_id = builder.get_config_value(&AmazonS3ConfigKey::AccessKeyId);
            let store = builder.build().map_err(|e| bad(&e.to_string()))?;
            return Ok(Storage {
                store: Arc::new(store),
                root: Path::from(prefix.trim_matches('/')),
                url: url.to_string(),
                key_id,
            });
        }
        Err(bad("use file:// or s3://"))
    }

    /// The access key id the store signs with (from `storage.options` or the environment),
    /// if one is configured.
    pub fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }

    /// The URL this storage was opened with (absolute for `file://`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The underlying store and the root prefix, for readers such as Parquet engines.
    pub fn object_store(&self) -> (Arc<dyn ObjectStore>, &Path) {
        (Arc::clone(&self.store), &self.root)
    }

    /// The object store path of a path relative to the storage root (for readers of parts
    /// through [`Storage::object_store`]).
    pub fn object_path(&self, rel: &str) -> Path {
        self.full(rel)
    }

    fn full(&self, rel: &str) -> Path {
        let mut p = self.root.clone();
        for part in rel.split('/').filter(|s| !s.is_empty()) {
            p = p.clone().join(part);
        }
        p
    }

    fn relative(&self, full: &Path) -> String {
        match full.prefix_match(&self.root) {
            Some(parts) => parts
                .map(|p| p.as_ref().to_string())
                .collect::<Vec<_>>()
                .join("/"),
            None => full.to_string(),
        }
    }

    /// Writes an object whole, retrying transient failures with backoff.
    pub async fn put(&self, rel: &str, bytes: Bytes) -> Result<(), SinkError> {
        let path = self.full(rel);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .store
                .put(&path, PutPayload::from_bytes(bytes.clone()))
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if attempt < PUT_ATTEMPTS => {
                    tracing::warn!(path = rel, attempt, error = %e, "upload failed, retrying");
                    tokio::time::sleep(Duration::from_millis(100 * 2u64.pow(attempt))).await;
                }
                Err(e) => return Err(storage_err(rel, e)),
            }
        }
    }

    /// Writes an object whole, once: for callers that retry themselves (the worker retries
    /// uploads for as long as it owns what they hold).
    pub async fn put_once(&self, rel: &str, bytes: Bytes) -> Result<(), SinkError> {
        self.store
            .put(&self.full(rel), PutPayload::from_bytes(bytes))
            .await
            .map(drop)
            .map_err(|e| storage_err(rel, e))
    }

    pub async fn get(&self, rel: &str) -> Result<Bytes, SinkError> {
        let path = self.full(rel);
        let result = self
            .store
            .get(&path)
            .await
            .map_err(|e| storage_err(rel, e))?;
        result.bytes().await.map_err(|e| storage_err(rel, e))
    }

    pub async fn delete(&self, rel: &str) -> Result<(), SinkError> {
        match self.store.delete(&self.full(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(storage_err(rel, e)),
        }
    }

    /// Every object under `rel_prefix` (a directory-like prefix), recursively.
    pub async fn list(&self, rel_prefix: &str) -> Result<Vec<ObjectInfo>, SinkError> {
        let prefix = self.full(rel_prefix);
        let metas: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| storage_err(rel_prefix, e))?;
        Ok(metas
            .into_iter()
            .map(|m| ObjectInfo {
                path: self.relative(&m.location),
                size: m.size,
                last_modified: m.last_modified,
            })
            .collect())
    }
}
