//! Object storage: one endpoint (a store that replicates by itself), or several independent
//! endpoints that every part is replicated across.
//!
//! Each object is placed on `replication_factor` endpoints chosen by rendezvous hashing of its
//! path, so every process agrees on a part's placement without recording it, and adding an
//! endpoint moves only its share of the parts. A write succeeds once `write_quorum` of them
//! hold the object at its full size ([`Storage::put_quorum`]); reads go to the placement first
//! and fail over to any other copy on an error, or on a checksum mismatch where the caller
//! registered the checksum it expects ([`Storage::expect_checksums`]). Copies found corrupt
//! are remembered for the repair ([`Storage::take_corrupt`]) and counted ([`Storage::stats`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path;
use object_store::ObjectStore;
use sluice_config::{Replication, StorageConfig};

use crate::{sha256_hex, SinkError};

mod endpoint;
mod replicated;
mod write;

pub(crate) use endpoint::Endpoint;
use replicated::ReplicatedStore;
pub use write::QuorumShort;

/// Attempts per [`Storage::put`]; a retried upload rewrites the same object name, so retrying
/// is safe.
const PUT_ATTEMPTS: u32 = 4;
/// Expected checksums remembered for reads; past this the memory is dropped and objects are
/// verified again on their next read.
const MAX_EXPECTED: usize = 100_000;

/// One listed object, with its path relative to the storage root.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub path: String,
    pub size: u64,
    pub last_modified: chrono::DateTime<chrono::Utc>,
}

/// What the reads of one endpoint found, since the process started.
#[derive(Debug, Default)]
struct EndpointStats {
    checksum_failures: AtomicU64,
    read_failovers: AtomicU64,
}

/// Counters of one endpoint, for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointCounts {
    pub endpoint: String,
    /// Copies read from it whose checksum did not match the part's.
    pub checksum_failures: u64,
    /// Reads that failed on it and went to another copy.
    pub read_failovers: u64,
}

#[derive(Debug)]
struct Inner {
    endpoints: Vec<Endpoint>,
    replication: Replication,
    straggler_wait: Duration,
    root: Path,
    stats: Vec<EndpointStats>,
    /// Per path: the checksum a reader expects, and the endpoint a copy was verified on.
    expected: Mutex<HashMap<String, (String, Option<usize>)>>,
    /// Copies found corrupt by reads (path, endpoint index), until the repair takes them.
    corrupt: Mutex<BTreeSet<(String, usize)>>,
    /// The endpoints that hold each object written through [`Storage::object_store`].
    written: Mutex<HashMap<String, Vec<String>>>,
}

/// The storage parts are written to and read from; cheap to clone.
#[derive(Debug, Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

impl Storage {
    /// Opens the storage a config names. `file://` directories are created if missing.
    pub fn open(config: &StorageConfig) -> Result<Storage, SinkError> {
        let list = config.endpoint_list();
        let replicated = list.len() > 1;
        let endpoints = list
            .iter()
            .map(|e| Endpoint::open(e, replicated))
            .collect::<Result<Vec<_>, _>>()?;
        let replication = config.replication();
        Ok(Storage::from_endpoints(
            endpoints,
            replication,
            Duration::from_millis(config.repair.straggler_wait_ms),
        ))
    }

    fn from_endpoints(
        endpoints: Vec<Endpoint>,
        replication: Replication,
        straggler_wait: Duration,
    ) -> Storage {
        let stats = endpoints.iter().map(|_| EndpointStats::default()).collect();
        Storage {
            inner: Arc::new(Inner {
                endpoints,
                replication,
                straggler_wait,
                root: Path::default(),
                stats,
                expected: Mutex::new(HashMap::new()),
                corrupt: Mutex::new(BTreeSet::new()),
                written: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Each endpoint on its own, as a storage of one (for collection and repair, which look at
    /// every endpoint's contents).
    pub fn each_endpoint(&self) -> Vec<Storage> {
        self.inner
            .endpoints
            .iter()
            .map(|e| {
                Storage::from_endpoints(
                    vec![e.clone()],
                    Replication {
                        factor: 1,
                        quorum: 1,
                    },
                    self.inner.straggler_wait,
                )
            })
            .collect()
    }

    /// Whether parts are replicated by Sluice (several endpoints).
    pub fn is_replicated(&self) -> bool {
        self.inner.endpoints.len() > 1
    }

    /// The endpoints' names, in configuration order.
    pub fn endpoint_names(&self) -> Vec<String> {
        self.inner
            .endpoints
            .iter()
            .map(|e| e.name.clone())
            .collect()
    }

    pub fn replication(&self) -> &Replication {
        &self.inner.replication
    }

    /// The access key id the first endpoint signs with, if one is configured.
    pub fn key_id(&self) -> Option<&str> {
        self.inner
            .endpoints
            .first()
            .and_then(|e| e.key_id.as_deref())
    }

    /// The URL of the storage: the endpoint's (absolute for `file://`), or every endpoint's as
    /// `name=url`.
    pub fn url(&self) -> String {
        match self.inner.endpoints.as_slice() {
            [one] => one.url.clone(),
            many => many
                .iter()
                .map(|e| format!("{}={}", e.name, e.url))
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    /// The store readers such as Parquet engines use (reads fail over between copies and
    /// verify registered checksums), and its root.
    pub fn object_store(&self) -> (Arc<dyn ObjectStore>, &Path) {
        (
            Arc::new(ReplicatedStore::new(Arc::clone(&self.inner))),
            &self.inner.root,
        )
    }

    /// The object store path of a path relative to the storage root (for readers of parts
    /// through [`Storage::object_store`]).
    pub fn object_path(&self, rel: &str) -> Path {
        Path::from_iter(rel.split('/').filter(|s| !s.is_empty()))
    }

    /// The endpoints (indexes) that keep `rel`: the `replication_factor` ranked highest for
    /// it by rendezvous hashing.
    pub(crate) fn placement(&self, rel: &str) -> Vec<usize> {
        self.inner.placement(self.object_path(rel).as_ref())
    }

    /// The names of the endpoints that keep `rel` (a path as the registry writes it).
    pub fn placement_names(&self, rel: &str) -> Vec<String> {
        self.placement(rel)
            .into_iter()
            .map(|i| self.inner.endpoints[i].name.clone())
            .collect()
    }

    /// The URLs of the endpoints that keep `rel`, placement order (the one URL without
    /// replication).
    pub fn placement_urls(&self, rel: &str) -> Vec<String> {
        self.placement(rel)
            .into_iter()
            .map(|i| self.inner.endpoints[i].url.clone())
            .collect()
    }

    /// Reads an object whole from the first copy that answers (placement first).
    pub async fn get(&self, rel: &str) -> Result<Bytes, SinkError> {
        let mut last = None;
        let location = self.object_path(rel);
        for i in self.inner.read_order(location.as_ref()) {
            match self.inner.endpoints[i].get(&location).await {
                Ok(bytes) => return Ok(bytes),
                Err(e) => {
                    self.inner.failed_over(i, rel, &e);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| self.inner.unavailable(rel, Vec::new())))
    }

    /// Reads an object whole from a copy whose SHA-256 is `checksum` (placement first);
    /// returns the bytes and the endpoint they came from. Copies that do not match are
    /// counted and left for the repair. Fails with [`SinkError::Unavailable`] if no copy does.
    pub async fn get_verified(
        &self,
        rel: &str,
        checksum: &str,
    ) -> Result<(Bytes, String), SinkError> {
        let location = self.object_path(rel);
        match self.inner.first_good(&location, checksum).await {
            Ok((bytes, i)) => Ok((bytes, self.inner.endpoints[i].name.clone())),
            Err(problems) => Err(self.inner.unavailable(rel, problems)),
        }
    }

    /// Deletes an object on every endpoint. Missing objects are fine. With several endpoints
    /// an endpoint that cannot be reached is logged and skipped (collection removes the copy
    /// once it is back); it fails only if no endpoint could delete it.
    pub async fn delete(&self, rel: &str) -> Result<(), SinkError> {
        let location = &self.object_path(rel);
        let results = futures::future::join_all(
            self.inner
                .endpoints
                .iter()
                .map(|e| async move { (e, e.delete(location).await) }),
        )
        .await;
        let mut first_err = None;
        let mut deleted = 0;
        for (endpoint, result) in results {
            match result {
                Ok(()) => deleted += 1,
                Err(e) => {
                    tracing::warn!(path = rel, endpoint = %endpoint.name, error = %crate::chain_text(&e), "cannot delete a copy; collection will remove it once the endpoint answers");
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) if deleted == 0 => Err(e),
            _ => Ok(()),
        }
    }

    /// Every object under `rel_prefix` (a directory-like prefix), recursively, on any endpoint
    /// (each path once). Fails if an endpoint cannot list.
    pub async fn list(&self, rel_prefix: &str) -> Result<Vec<ObjectInfo>, SinkError> {
        let mut all = BTreeMap::new();
        let prefix = self.object_path(rel_prefix);
        for endpoint in &self.inner.endpoints {
            for info in endpoint.list(&prefix).await? {
                all.entry(info.path.clone()).or_insert(info);
            }
        }
        Ok(all.into_values().collect())
    }

    /// [`Storage::list`] of a prefix of the store's namespace, with each object's location.
    pub(crate) async fn list_located(
        &self,
        prefix: &Path,
    ) -> object_store::Result<Vec<(Path, ObjectInfo)>> {
        let mut all = BTreeMap::new();
        for endpoint in &self.inner.endpoints {
            let listed =
                endpoint
                    .list_located(prefix)
                    .await
                    .map_err(|e| object_store::Error::Generic {
                        store: "sluice-replicated",
                        source: crate::chain_text(&e).into(),
                    })?;
            for (location, info) in listed {
                all.entry(location.to_string()).or_insert((location, info));
            }
        }
        Ok(all.into_values().collect())
    }

    /// Registers the checksums readers of these paths must find (from the parts' records):
    /// reads through [`Storage::object_store`] then verify a copy before using it.
    pub fn expect_checksums<'a>(&self, parts: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let mut expected = self.inner.lock_expected();
        for (path, checksum) in parts {
            if checksum.is_empty() {
                continue;
            }
            if expected.len() >= MAX_EXPECTED {
                expected.clear();
            }
            expected
                .entry(self.object_path(path).to_string())
                .or_insert_with(|| (checksum.to_string(), None));
        }
    }

    /// The endpoints that hold an object written through [`Storage::object_store`] (a merged
    /// part), forgotten once taken.
    pub fn take_written(&self, rel: &str) -> Vec<String> {
        lock(&self.inner.written)
            .remove(self.object_path(rel).as_ref())
            .unwrap_or_default()
    }

    /// Copies that reads found corrupt since the last call: (path, endpoint name).
    pub fn take_corrupt(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *lock(&self.inner.corrupt))
            .into_iter()
            .map(|(key, i)| {
                let path: Vec<String> = key.split('/').map(crate::gc::percent_decode).collect();
                (path.join("/"), self.inner.endpoints[i].name.clone())
            })
            .collect()
    }

    /// Each endpoint's counters.
    pub fn stats(&self) -> Vec<EndpointCounts> {
        self.inner
            .endpoints
            .iter()
            .zip(&self.inner.stats)
            .map(|(e, s)| EndpointCounts {
                endpoint: e.name.clone(),
                checksum_failures: s.checksum_failures.load(Ordering::Relaxed),
                read_failovers: s.read_failovers.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Asks every endpoint for the top level of its root (one request each): what each
    /// answered, by name and URL.
    pub async fn probe(&self) -> Vec<(String, String, Result<(), SinkError>)> {
        let mut answers = Vec::new();
        for e in &self.inner.endpoints {
            let answer = e
                .store
                .list_with_delimiter(Some(&e.root))
                .await
                .map(drop)
                .map_err(|source| SinkError::Storage {
                    path: e.root.to_string(),
                    source,
                });
            answers.push((e.name.clone(), e.url.clone(), answer));
        }
        answers
    }

    /// Reads one endpoint's copy whole (the repair and the scrub).
    pub(crate) async fn get_from(&self, endpoint: &str, rel: &str) -> Result<Bytes, SinkError> {
        self.endpoint(endpoint)?.get(&self.object_path(rel)).await
    }

    /// Writes one endpoint's copy (the repair).
    pub(crate) async fn put_to(
        &self,
        endpoint: &str,
        rel: &str,
        bytes: Bytes,
    ) -> Result<(), SinkError> {
        self.endpoint(endpoint)?
            .put(&self.object_path(rel), bytes)
            .await
    }

    /// Lists one endpoint (the repair).
    pub(crate) async fn list_on(
        &self,
        endpoint: &str,
        rel_prefix: &str,
    ) -> Result<Vec<ObjectInfo>, SinkError> {
        self.endpoint(endpoint)?
            .list(&self.object_path(rel_prefix))
            .await
    }

    /// Counts a copy found corrupt outside reads (the scrub).
    pub(crate) fn count_corrupt(&self, endpoint: &str) {
        if let Some(i) = self.inner.index(endpoint) {
            self.inner.stats[i]
                .checksum_failures
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn endpoint(&self, name: &str) -> Result<&Endpoint, SinkError> {
        self.inner
            .index(name)
            .map(|i| &self.inner.endpoints[i])
            .ok_or_else(|| SinkError::UnknownEndpoint {
                endpoint: name.to_string(),
            })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Inner {
    fn index(&self, name: &str) -> Option<usize> {
        self.endpoints.iter().position(|e| e.name == name)
    }

    fn placement(&self, rel: &str) -> Vec<usize> {
        let mut ranked: Vec<(u64, usize)> = self
            .endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.drain)
            .map(|(i, e)| (rendezvous_score(&e.name, rel), i))
            .collect();
        ranked.sort_unstable_by(|a, b| b.cmp(a));
        ranked
            .into_iter()
            .take(self.replication.factor)
            .map(|(_, i)| i)
            .collect()
    }

    /// The placement, then every other endpoint (a copy may still be where an earlier
    /// placement put it, or on an endpoint being drained).
    fn read_order(&self, rel: &str) -> Vec<usize> {
        let mut order = self.placement(rel);
        let rest: Vec<usize> = (0..self.endpoints.len())
            .filter(|i| !order.contains(i))
            .collect();
        order.extend(rest);
        order
    }

    fn lock_expected(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Option<usize>)>> {
        lock(&self.expected)
    }

    /// Reads copies of `location` whole, in `order`, until one's SHA-256 is `checksum` (any
    /// copy if `checksum` is empty); returns it and its endpoint, or what each endpoint
    /// answered. A mismatching copy is counted and left for the repair.
    async fn first_good(
        &self,
        location: &Path,
        checksum: &str,
    ) -> Result<(Bytes, usize), Vec<String>> {
        let rel = location.as_ref();
        let mut problems = Vec::new();
        for i in self.read_order(rel) {
            let endpoint = &self.endpoints[i];
            match endpoint.get(location).await {
                Ok(bytes) if checksum.is_empty() || sha256_hex(&bytes) == checksum => {
                    return Ok((bytes, i))
                }
                Ok(_) => {
                    self.found_corrupt(rel, i);
                    problems.push(format!("{}: checksum mismatch", endpoint.name));
                }
                Err(e) => {
                    self.failed_over(i, rel, &e);
                    problems.push(format!("{}: {}", endpoint.name, crate::chain_text(&e)));
                }
            }
        }
        Err(problems)
    }

    fn failed_over(&self, i: usize, rel: &str, e: &SinkError) {
        if self.endpoints.len() > 1 {
            self.stats[i].read_failovers.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(path = rel, endpoint = %self.endpoints[i].name, error = %crate::chain_text(e), "cannot read a copy; trying another endpoint");
        }
    }

    fn found_corrupt(&self, rel: &str, i: usize) {
        self.stats[i]
            .checksum_failures
            .fetch_add(1, Ordering::Relaxed);
        lock(&self.corrupt).insert((rel.to_string(), i));
        tracing::error!(path = rel, endpoint = %self.endpoints[i].name, "a copy does not match its part's checksum; reading another copy, and the repair will replace it");
    }

    fn unavailable(&self, rel: &str, problems: Vec<String>) -> SinkError {
        SinkError::Unavailable {
            path: rel.to_string(),
            problem: if problems.is_empty() {
                "no endpoint configured".to_string()
            } else {
                problems.join("; ")
            },
        }
    }
}

/// The stable score of an endpoint for a path: the first 8 bytes of SHA-256 over both,
/// separated by a 0 byte so that no two pairs hash the same text.
fn rendezvous_score(endpoint: &str, rel: &str) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(endpoint.as_bytes());
    ctx.update(&[0]);
    ctx.update(rel.as_bytes());
    let digest = ctx.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
pub(crate) mod tests;
