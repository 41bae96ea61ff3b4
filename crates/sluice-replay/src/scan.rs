//! Reading what a replay replaces: every scope of the tables it rebuilds, read again after the
//! merge leases of the scopes the range meets are taken, until a reading needs no lease more.
//! Under a scope's merge lease nothing but ingest commits change it, and those only add records
//! of offsets past the range.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use sluice_coord::{CoordError, Coordinator, MergeLease, PartRecord, SealedManifest};
use sluice_sink::Storage;

use crate::range::{widen, Ranges, Widened};
use crate::{coord_err, ReplayError};

/// A scope: table and partition value.
pub(crate) type ScopeKey = (String, String);

/// Readings before the leases stop changing what the range meets: the second normally does.
const ROUNDS: usize = 8;
/// How often a held merge lease is asked for again.
const LEASE_RETRY: Duration = Duration::from_millis(250);

/// What a scan works with.
pub(crate) struct Scanner<'a> {
    pub coord: &'a dyn Coordinator,
    pub storage: &'a Storage,
    pub holder: &'a str,
    /// The replayed table first, then the targets of the views it feeds.
    pub tables: &'a [String],
    pub topic: &'a str,
    /// How long a merge lease held by a worker is waited for.
    pub lease_wait: Duration,
}

impl Scanner<'_> {
    /// The range widened over a consistent reading, with the leases of every scope it meets
    /// added to `leases`.
    pub(crate) async fn scan(
        &self,
        asked: &Ranges,
        leases: &mut BTreeMap<ScopeKey, MergeLease>,
    ) -> Result<Widened, ReplayError> {
        let mut manifests: HashMap<String, Vec<PartRecord>> = HashMap::new();
        for _ in 0..ROUNDS {
            let (records, sealed) = self.read_all().await?;
            let widened = widen(&self.tables[0], self.topic, asked, &records)?;
            self.refuse_sealed(&widened.ranges, &sealed, &mut manifests)
                .await?;
            let needed: BTreeSet<ScopeKey> = widened
                .touched
                .iter()
                .map(|r| (r.table.clone(), r.partition_value.clone()))
                .collect();
            let missing: Vec<ScopeKey> = needed
                .into_iter()
                .filter(|k| !leases.contains_key(k))
                .collect();
            if missing.is_empty() {
                return Ok(widened);
            }
            for key in missing {
                let lease = self.take(&key.0, &key.1).await?;
                leases.insert(key, lease);
            }
        }
        Err(ReplayError::Plan {
            table: self.tables[0].clone(),
            problem: format!("the parts the range meets kept changing over {ROUNDS} readings"),
        })
    }

    /// Every live record of every table, and the sealed manifests' pointers.
    async fn read_all(
        &self,
    ) -> Result<(Vec<PartRecord>, Vec<(ScopeKey, SealedManifest)>), ReplayError> {
        let mut records = Vec::new();
        let mut sealed = Vec::new();
        for table in self.tables {
            let scopes = self
                .coord
                .list_scopes(table)
                .await
                .map_err(coord_err("listing the scopes"))?;
            for scope in scopes {
                let listing = self
                    .coord
                    .read_scope(table, &scope.partition_value)
                    .await
                    .map_err(coord_err("reading a scope"))?;
                if let Some(m) = listing.state.sealed {
                    sealed.push(((table.clone(), scope.partition_value.clone()), m));
                }
                records.extend(listing.parts);
            }
        }
        Ok((records, sealed))
    }

    /// Refuses a range that meets parts sealed into a manifest: a replay replaces live records
    /// only.
    async fn refuse_sealed(
        &self,
        ranges: &Ranges,
        sealed: &[(ScopeKey, SealedManifest)],
        cache: &mut HashMap<String, Vec<PartRecord>>,
    ) -> Result<(), ReplayError> {
        for ((table, value), manifest) in sealed {
            if !cache.contains_key(&manifest.path) {
                let parts = sluice_sink::read_manifest(self.storage, manifest)
                    .await
                    .map_err(|e| ReplayError::Storage {
                        path: manifest.path.clone(),
                        source: Box::new(e),
                    })?;
                cache.insert(manifest.path.clone(), parts);
            }
            let parts = cache.get(&manifest.path).map_or(&[][..], Vec::as_slice);
            let w = widen(table, self.topic, ranges, parts)?;
            if let Some(part) = w.touched.first() {
                return Err(ReplayError::Plan {
                    table: self.tables[0].clone(),
                    problem: format!(
                        "the range meets part {} of `{table}` at {value:?}, sealed into manifest {}; sealed scopes are not replayed: replay a range whose rows were flushed after the seal",
                        part.path, manifest.path
                    ),
                });
            }
        }
        Ok(())
    }

    /// The merge lease of a scope, waiting while a worker merges it.
    pub(crate) async fn take(&self, table: &str, value: &str) -> Result<MergeLease, ReplayError> {
        take_lease(self.coord, self.holder, (table, value), self.lease_wait).await
    }
}

/// The merge lease of a scope for `holder`, waiting up to `wait` while a worker merges it.
pub(crate) async fn take_lease(
    coord: &dyn Coordinator,
    holder: &str,
    (table, value): (&str, &str),
    wait: Duration,
) -> Result<MergeLease, ReplayError> {
    let started = Instant::now();
    loop {
        match coord.acquire_merge_lease(table, value, holder).await {
            Ok(lease) => return Ok(lease),
            Err(CoordError::ScopeLeaseHeld { holder, .. }) => {
                if started.elapsed() >= wait {
                    return Err(ReplayError::Busy {
                        table: table.to_string(),
                        value: value.to_string(),
                        holder,
                        waited_s: wait.as_secs(),
                    });
                }
                tracing::debug!(table, value, holder = %holder, "waiting for a merge to end");
                tokio::time::sleep(LEASE_RETRY).await;
            }
            Err(e) => return Err(coord_err("taking a merge lease")(e)),
        }
    }
}

/// Gives every lease up; one already lost is no matter.
pub(crate) async fn release_all(coord: &dyn Coordinator, leases: &BTreeMap<ScopeKey, MergeLease>) {
    for lease in leases.values() {
        if let Err(e) = coord.release_merge_lease(lease).await {
            tracing::warn!(table = %lease.table, value = %lease.partition_value, error = %e, "cannot release a merge lease; it ends with the session");
        }
    }
}
