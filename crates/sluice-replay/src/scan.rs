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

/// What a scan found: the live records to replace (in `widened.touched`) and, per sealed
/// scope the range meets, its manifest with the parts to replace.
pub(crate) struct Scan {
    pub widened: Widened,
    pub sealed: Vec<SealedTouch>,
}

/// A sealed scope the range meets.
pub(crate) struct SealedTouch {
    pub scope: ScopeKey,
    pub manifest: SealedManifest,
    /// Every part the manifest holds, and those of them the replay replaces.
    pub parts: Vec<PartRecord>,
    pub touched: Vec<PartRecord>,
}

/// Splits what a widening touched into live records and sealed scopes' parts.
fn split(
    mut widened: Widened,
    live: &[PartRecord],
    sealed: Vec<(ScopeKey, SealedManifest)>,
    manifests: &HashMap<String, Vec<PartRecord>>,
) -> Scan {
    let is_live = |r: &PartRecord| live.iter().any(|l| l.path == r.path && l.kind == r.kind);
    let (touched_live, touched_sealed): (Vec<PartRecord>, Vec<PartRecord>) =
        widened.touched.into_iter().partition(is_live);
    widened.touched = touched_live;
    let sealed = sealed
        .into_iter()
        .filter_map(|(scope, manifest)| {
            let parts = manifests.get(&manifest.path).cloned().unwrap_or_default();
            let touched: Vec<PartRecord> = touched_sealed
                .iter()
                .filter(|t| parts.iter().any(|p| p.path == t.path && p.kind == t.kind))
                .cloned()
                .collect();
            (!touched.is_empty()).then_some(SealedTouch {
                scope,
                manifest,
                parts,
                touched,
            })
        })
        .collect();
    Scan { widened, sealed }
}

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
    /// The range widened over a consistent reading (live records and sealed manifests' parts
    /// alike), with the leases of every scope it meets added to `leases`.
    pub(crate) async fn scan(
        &self,
        asked: &Ranges,
        leases: &mut BTreeMap<ScopeKey, MergeLease>,
    ) -> Result<Scan, ReplayError> {
        let mut manifests: HashMap<String, Vec<PartRecord>> = HashMap::new();
        for _ in 0..ROUNDS {
            let (live, sealed) = self.read_all().await?;
            let mut records = live.clone();
            for (_, manifest) in &sealed {
                records.extend(self.manifest_parts(manifest, &mut manifests).await?);
            }
            let widened = widen(&self.tables[0], self.topic, asked, &records)?;
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
                return Ok(split(widened, &live, sealed, &manifests));
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

    /// Every live record of every table, and the sealed scopes' manifest pointers.
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

    /// A manifest's parts, read once per scan.
    async fn manifest_parts(
        &self,
        manifest: &SealedManifest,
        cache: &mut HashMap<String, Vec<PartRecord>>,
    ) -> Result<Vec<PartRecord>, ReplayError> {
        if !cache.contains_key(&manifest.path) {
            let parts = sluice_sink::read_manifest(self.storage, manifest)
                .await
                .map_err(|e| ReplayError::Storage {
                    path: manifest.path.clone(),
                    source: Box::new(e),
                })?;
            cache.insert(manifest.path.clone(), parts);
        }
        Ok(cache.get(&manifest.path).cloned().unwrap_or_default())
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
