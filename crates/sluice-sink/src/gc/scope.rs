//! What the holder of a scope's merge lease collects: the merged parts and manifests of that
//! scope written under earlier merge leases that were never registered (a merger that died or
//! was fenced between its upload and its swap or seal). Holding the lease, nothing else can
//! change the scope's merged parts or manifest meanwhile, and those leases can never register
//! them: they can go at once, at any age.

use std::collections::HashSet;

use sluice_coord::{Coordinator, MergeLease};

use super::names::{classify, ObjectKind};
use super::objects::Objects;
use super::Group;
use crate::{path_segment, read_manifest, SinkError, Storage};

/// Deletes the scope's unregistered merged parts and manifests of merge epochs below
/// `lease.epoch`; returns the paths deleted.
pub async fn collect_merge_orphans(
    storage: &Storage,
    coord: &dyn Coordinator,
    lease: &MergeLease,
) -> Result<Vec<String>, SinkError> {
    let registry = |source| SinkError::Registry {
        table: lease.table.clone(),
        source,
    };
    let listing = coord
        .read_scope(&lease.table, &lease.partition_value)
        .await
        .map_err(registry)?;
    let mut referenced: HashSet<String> = listing.parts.iter().map(|p| p.path.clone()).collect();
    if let Some(m) = &listing.state.sealed {
        referenced.insert(m.path.clone());
        referenced.extend(read_manifest(storage, m).await?.into_iter().map(|p| p.path));
    }
    for r in coord.list_retired(&lease.table).await.map_err(registry)? {
        referenced.extend(r.paths);
    }
    // Listed after the readings: a retired set deleted and forgotten meanwhile was read while
    // it referenced its objects, which are then gone from the listing.
    let objects = Objects::new(storage);
    let segment = path_segment(&lease.partition_value);
    let mut listed = Vec::new();
    for prefix in Group::prefixes(&lease.table, &segment, true) {
        listed.extend(objects.list(&prefix).await?);
    }
    let mut deleted = Vec::new();
    for object in listed.iter().filter(|o| !referenced.contains(&o.path)) {
        let earlier = match classify(&lease.table, &object.path) {
            ObjectKind::Merged(name) => name.merge_epoch < lease.epoch,
            ObjectKind::Manifest(Some(epoch)) => epoch < lease.epoch,
            _ => false,
        };
        // Another scope's merged part can sit in the quarantine directory (value ""), and a
        // segment may stand for several values: only this scope's records vouch for them.
        let ours =
            object.path.contains(&format!("/{segment}/")) || lease.partition_value.is_empty();
        if earlier && ours {
            objects.delete(object).await?;
            tracing::info!(path = %object.path, epoch = lease.epoch, "deleted a merge's object that was never registered");
            deleted.push(object.path.clone());
        }
    }
    Ok(deleted)
}
