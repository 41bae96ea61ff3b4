//! The storage as one `ObjectStore`, for readers and writers that stream (DataFusion, the
//! Parquet reader of merges, the merged part's multipart upload). Reads fail over between
//! copies, verifying a registered checksum before a copy is first used; writes go to every
//! endpoint of the placement and succeed once the write quorum completed.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};

use super::{lock, Inner};

const STORE: &str = "sluice-replicated";

pub(super) struct ReplicatedStore {
    inner: Arc<Inner>,
}

impl ReplicatedStore {
    pub(super) fn new(inner: Arc<Inner>) -> ReplicatedStore {
        ReplicatedStore { inner }
    }

    fn generic(message: String) -> object_store::Error {
        object_store::Error::Generic {
            store: STORE,
            source: message.into(),
        }
    }

    /// The endpoints to read `location` from, in order: a copy verified against the
    /// registered checksum first (verifying one now if none was), or the read order when no
    /// checksum is registered.
    async fn read_order(&self, location: &Path) -> object_store::Result<Vec<usize>> {
        let rel = location.as_ref();
        let mut order = self.inner.read_order(rel);
        let expected = self.inner.lock_expected().get(rel).cloned();
        let Some((checksum, verified)) = expected else {
            return Ok(order);
        };
        let good = match verified {
            Some(i) => i,
            None => {
                let (_, i) =
                    self.inner
                        .first_good(location, &checksum)
                        .await
                        .map_err(|problems| {
                            Self::generic(format!(
                                "part unavailable: no good copy of {rel} ({})",
                                problems.join("; ")
                            ))
                        })?;
                if let Some(entry) = self.inner.lock_expected().get_mut(rel) {
                    entry.1 = Some(i);
                }
                i
            }
        };
        order.retain(|&i| i != good);
        order.insert(0, good);
        Ok(order)
    }
}

impl ReplicatedStore {
    /// Sends `request` to each copy in read order until one answers. A failure is counted and
    /// the next copy tried, unless it is the request's own answer (a precondition).
    async fn first_answer<T, F, Fut>(&self, location: &Path, request: F) -> object_store::Result<T>
    where
        F: Fn(Arc<dyn ObjectStore>, Path) -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        let rel = location.as_ref();
        let mut last = None;
        for i in self.read_order(location).await? {
            let endpoint = &self.inner.endpoints[i];
            match request(Arc::clone(&endpoint.store), endpoint.locate(location)).await {
                Ok(answer) => return Ok(answer),
                Err(e) if is_answer(&e) => return Err(e),
                Err(e) => {
                    let failed = super::endpoint::storage_err(rel, Self::generic(e.to_string()));
                    self.inner.failed_over(i, rel, &failed);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| Self::generic(format!("no endpoint holds {rel}"))))
    }
}

impl fmt::Debug for ReplicatedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self
            .inner
            .endpoints
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        write!(f, "ReplicatedStore({})", names.join(","))
    }
}

impl fmt::Display for ReplicatedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Whether an error is the answer to the request itself (a precondition), not a failed copy.
fn is_answer(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::Precondition { .. } | object_store::Error::NotModified { .. }
    )
}

#[async_trait]
impl ObjectStore for ReplicatedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        _opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let storage = super::Storage {
            inner: Arc::clone(&self.inner),
        };
        let rel = decoded(location);
        let mut stored = std::collections::BTreeSet::new();
        storage
            .put_quorum(&rel, Bytes::from(payload), &mut stored)
            .await
            .map_err(|short| Self::generic(short.describe()))?;
        lock(&self.inner.written).insert(location.to_string(), stored.into_iter().collect());
        Ok(PutResult {
            e_tag: None,
            version: None,
        })
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let rel = location.as_ref().to_string();
        let mut uploads = Vec::new();
        for i in self.inner.placement(&rel) {
            let endpoint = &self.inner.endpoints[i];
            match endpoint
                .store
                .put_multipart_opts(&endpoint.locate(location), opts.clone())
                .await
            {
                Ok(upload) => uploads.push((i, Some(upload))),
                Err(e) => {
                    tracing::warn!(path = %rel, endpoint = %endpoint.name, error = %e, "cannot start an upload of a copy; the repair will store it");
                }
            }
        }
        if uploads.len() < self.inner.replication.quorum {
            return Err(Self::generic(format!(
                "only {} endpoints accepted the upload of {rel}; the write quorum is {}",
                uploads.len(),
                self.inner.replication.quorum
            )));
        }
        let failed = Arc::new(Mutex::new(vec![false; self.inner.endpoints.len()]));
        Ok(Box::new(FanOut {
            inner: Arc::clone(&self.inner),
            rel,
            uploads,
            failed,
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let mut result = self
            .first_answer(location, |store, at| {
                let options = options.clone();
                async move { store.get_opts(&at, options).await }
            })
            .await?;
        result.meta.location = location.clone();
        Ok(result)
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        let ranges = ranges.to_vec();
        self.first_answer(location, |store, at| {
            let ranges = ranges.clone();
            async move { store.get_ranges(&at, &ranges).await }
        })
        .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let storage = super::Storage {
            inner: Arc::clone(&self.inner),
        };
        locations
            .then(move |location| {
                let storage = storage.clone();
                async move {
                    let location = location?;
                    storage
                        .delete(&decoded(&location))
                        .await
                        .map_err(|e| Self::generic(crate::chain_text(&e)))?;
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let storage = super::Storage {
            inner: Arc::clone(&self.inner),
        };
        let prefix = prefix.cloned().unwrap_or_default();
        futures::stream::once(async move { storage.list_located(&prefix).await })
            .flat_map(|listed| match listed {
                Ok(infos) => futures::stream::iter(infos.into_iter().map(|(location, info)| {
                    Ok(ObjectMeta {
                        location,
                        last_modified: info.last_modified,
                        size: info.size,
                        e_tag: None,
                        version: None,
                    })
                }))
                .boxed(),
                Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let mut objects = std::collections::BTreeMap::new();
        let mut dirs = std::collections::BTreeSet::new();
        let prefix = prefix.cloned().unwrap_or_default();
        for endpoint in &self.inner.endpoints {
            let listed = endpoint
                .store
                .list_with_delimiter(Some(&endpoint.locate(&prefix)))
                .await?;
            for dir in listed.common_prefixes {
                dirs.insert(endpoint.strip(&dir));
            }
            for mut meta in listed.objects {
                meta.location = endpoint.strip(&meta.location);
                objects.entry(meta.location.to_string()).or_insert(meta);
            }
        }
        Ok(ListResult {
            common_prefixes: dirs.into_iter().collect(),
            objects: objects.into_values().collect(),
        })
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        for endpoint in &self.inner.endpoints {
            endpoint
                .store
                .copy_opts(
                    &endpoint.locate(from),
                    &endpoint.locate(to),
                    options.clone(),
                )
                .await?;
        }
        Ok(())
    }
}

/// A path of the store's namespace as the registry writes it (segments decoded).
fn decoded(location: &Path) -> String {
    location
        .parts()
        .map(|p| crate::gc::percent_decode(p.as_ref()))
        .collect::<Vec<_>>()
        .join("/")
}

/// A multipart upload to every endpoint of the placement at once. An endpoint that fails a
/// part is dropped from the upload (its copy is left to the repair); the upload fails once
/// fewer than the write quorum remain.
struct FanOut {
    inner: Arc<Inner>,
    rel: String,
    uploads: Vec<(usize, Option<Box<dyn MultipartUpload>>)>,
    /// Per endpoint index: whether a part failed on it.
    failed: Arc<Mutex<Vec<bool>>>,
}

impl fmt::Debug for FanOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FanOut({})", self.rel)
    }
}

impl FanOut {
    fn alive(failed: &Mutex<Vec<bool>>, uploads: usize) -> usize {
        uploads - lock(failed).iter().filter(|f| **f).count()
    }
}

#[async_trait]
impl MultipartUpload for FanOut {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let failed = Arc::clone(&self.failed);
        let dead = lock(&self.failed).clone();
        let parts: Vec<_> = self
            .uploads
            .iter_mut()
            .filter(|(i, _)| !dead[*i])
            .filter_map(|(i, u)| u.as_mut().map(|u| (*i, u.put_part(data.clone()))))
            .collect();
        let quorum = self.inner.replication.quorum;
        let total = self.uploads.len();
        let inner = Arc::clone(&self.inner);
        let rel = self.rel.clone();
        Box::pin(async move {
            let results = futures::future::join_all(
                parts
                    .into_iter()
                    .map(|(i, part)| async move { (i, part.await) }),
            )
            .await;
            for (i, result) in results {
                if let Err(e) = result {
                    tracing::warn!(path = %rel, endpoint = %inner.endpoints[i].name, error = %e, "an endpoint failed part of an upload; the repair will store its copy");
                    lock(&failed)[i] = true;
                }
            }
            let alive = FanOut::alive(&failed, total);
            if alive < quorum {
                return Err(ReplicatedStore::generic(format!(
                    "only {alive} endpoints still take the upload of {rel}; the write quorum is {quorum}"
                )));
            }
            Ok(())
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let dead = lock(&self.failed).clone();
        let mut stored = Vec::new();
        for (i, upload) in &mut self.uploads {
            let Some(mut u) = upload.take() else { continue };
            if dead[*i] {
                let _ = u.abort().await;
                continue;
            }
            match u.complete().await {
                Ok(_) => stored.push(self.inner.endpoints[*i].name.clone()),
                Err(e) => {
                    tracing::warn!(path = %self.rel, endpoint = %self.inner.endpoints[*i].name, error = %e, "an endpoint failed to complete an upload; the repair will store its copy");
                }
            }
        }
        if stored.len() < self.inner.replication.quorum {
            return Err(ReplicatedStore::generic(format!(
                "only {} endpoints completed the upload of {}; the write quorum is {}",
                stored.len(),
                self.rel,
                self.inner.replication.quorum
            )));
        }
        stored.sort();
        lock(&self.inner.written).insert(self.rel.clone(), stored);
        Ok(PutResult {
            e_tag: None,
            version: None,
        })
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        for (_, upload) in &mut self.uploads {
            if let Some(mut u) = upload.take() {
                let _ = u.abort().await;
            }
        }
        Ok(())
    }
}
