//! Garbage collection: objects under a table's directory that nothing references and nothing can
//! reference any more. They are never read (readers go through the registry), so deleting them
//! only frees space; deleting anything else would lose rows or break a running query.
//!
//! # What a pass never deletes
//!
//! * **Live parts**: every scope's live records, read with [`Coordinator::read_scope`].
//! * **Sealed parts**: the parts listed in a scope's current manifest, and that manifest object.
//! * **Retired objects in their grace period**: every path of every [`Retired`] set not
//!   forgotten ([`Coordinator::list_retired`]); the merging worker deletes them itself once the
//!   grace period is over.
//! * **Objects whose commit may still be in flight**: an object is deleted only once the lease
//!   that wrote it can no longer register it. A flushed part's unit lease (its name's epoch) is
//!   dead once the unit's epoch is above it, or the unit's lease is free at that epoch; a merged
//!   part's (or a manifest's) merge lease likewise once the scope's merge epoch is above it, or
//!   nobody holds the scope's merge lease.
//!
//! # How a pass reads
//!
//! The registry changes while a pass lists storage. The objects of a scope (one partition
//! value) are those of `data/<segment>/`, `manifests/<segment>/`, and `quarantine/` for the
//! value `""`; directories no scope was committed to yet are examined too (a crash before a
//! scope's first commit leaves its uploads there).
//!
//! * `sluice gc` ([`GcScope::OlderThan`]) reads the units' leases first, then per scope reads
//!   it, lists its objects, and reads it again: if the scope's generation changed (a merge
//!   swap, a seal or a merge lease happened meanwhile), the scope is skipped this pass
//!   ([`GcReport::skipped_scopes`]). Ingest commits do not change the generation, and are
//!   covered by the lease rule: an object whose lease was already dead when the leases were
//!   read was either committed before (and is in the readings, a manifest or a retired set) or
//!   never will be.
//! * A worker taking over units ([`GcScope::EarlierLeases`]) skips sealed scopes, lists the
//!   others' part directories, and reads a scope only if its directory holds a flushed part of
//!   an earlier lease of one of its units: such a part can no longer be committed, so one
//!   consistent reading after the listing finds it if it ever was (live, or sealed meanwhile,
//!   which skips the scope), unless a merge retired it. Most takeovers read nothing but the
//!   scope list.
//!
//! In both, the retired sets are read after every listing: an object listed during its grace
//! period is in its set until the merging worker deletes it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use sluice_coord::{CoordError, Coordinator, ScopeListing, UnitId, UnitState};

use crate::{path_segment, read_manifest, SinkError, Storage};

mod names;
mod objects;
mod scope;
#[cfg(test)]
mod tests;

use names::{classify, ObjectKind};
pub use names::{parse_merged_name, parse_part_name, MergedName, PartName};
pub(crate) use objects::percent_decode;
use objects::{segment_values, Listed, Objects};
pub use scope::collect_merge_orphans;

/// What one collection pass did, and why it left what it left. Every object examined outside a
/// skipped or sealed scope is counted in exactly one of `deleted` and the counts after it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Objects listed.
    pub examined: usize,
    /// The objects deleted, as paths relative to the storage root.
    pub deleted: Vec<String>,
    /// Objects referenced by the registry: live parts, sealed parts and current manifests
    /// ([`GcScope::EarlierLeases`] looks up only the objects it could otherwise delete).
    pub referenced: usize,
    /// Objects a merge or a re-seal replaced, kept for queries until the grace period ends.
    pub retired: usize,
    /// Unreferenced objects left because they were younger than the minimum age.
    pub too_young: usize,
    /// Unreferenced objects left because the lease that wrote them may still register them.
    pub in_flight: usize,
    /// Unreferenced objects this kind of pass never deletes ([`GcScope::EarlierLeases`]: other
    /// units', merged parts and manifests).
    pub not_eligible: usize,
    /// Objects that are neither parts nor manifests: left alone.
    pub unrecognised: usize,
    /// Scopes a merge swap, a seal or a merge lease changed while their objects were listed:
    /// left for the next pass.
    pub skipped_scopes: usize,
    /// Sealed scopes a [`GcScope::EarlierLeases`] pass does not look at (`sluice gc` does).
    pub sealed_scopes: usize,
}

/// Which unreferenced objects a pass may delete.
#[derive(Debug, Clone, Copy)]
pub enum GcScope<'a> {
    /// `sluice gc`: every object under the table's directory, older than a minimum age, whose
    /// writer can no longer register it (see the module docs).
    OlderThan(Duration),
    /// What a new unit lease holder may delete at any age: flushed parts of the given units
    /// written under a lease epoch below the given one (those leases can no longer commit), in
    /// unsealed scopes only. Never merged parts or manifests; cheap (no sealed scope is read).
    EarlierLeases(&'a HashMap<UnitId, u64>),
}

/// The objects of one directory segment: the scopes (partition values) writing there.
#[derive(Debug, Default)]
pub(super) struct Group {
    values: BTreeSet<String>,
    /// Whether one of them was sealed when the scopes were listed.
    sealed: bool,
}

impl Group {
    /// The directories holding the group's objects: `data/<segment>/`, `quarantine/` for the
    /// segment `_` (quarantine parts have the value `""`), and `manifests/<segment>/`.
    pub(super) fn prefixes(table: &str, segment: &str, manifests: bool) -> Vec<String> {
        let mut prefixes = vec![format!("{table}/data/{segment}/")];
        if segment == "_" {
            prefixes.push(format!("{table}/quarantine/"));
        }
        if manifests {
            prefixes.push(format!("{table}/manifests/{segment}/"));
        }
        prefixes
    }
}

/// What examining one directory segment left to decide: the objects its scopes do not
/// reference, and those scopes as read after the objects were listed.
struct Examined {
    scopes: Vec<ScopeListing>,
    unreferenced: Vec<Listed>,
}

/// What a pass knows besides an object and its scopes: the kind of pass, the time, and the
/// units' leases read before any scope.
struct Judge<'a> {
    table: &'a str,
    scope: GcScope<'a>,
    now: chrono::DateTime<chrono::Utc>,
    units: HashMap<UnitId, UnitState>,
}

impl Judge<'_> {
    /// What to do with an object no live record, manifest or retired set references.
    fn verdict(&self, object: &Listed, kind: &ObjectKind, scopes: &[ScopeListing]) -> Verdict {
        match (self.scope, kind) {
            (_, ObjectKind::Other) => Verdict::Unrecognised,
            (_, ObjectKind::Spanned) => Verdict::NotEligible,
            (GcScope::EarlierLeases(leases), ObjectKind::Flushed(name)) => {
                match leases.get(&name.unit) {
                    Some(&epoch) if name.lease_epoch < epoch => Verdict::Delete,
                    Some(_) => Verdict::InFlight,
                    None => Verdict::NotEligible,
                }
            }
            (GcScope::EarlierLeases(_), _) => Verdict::NotEligible,
            (GcScope::OlderThan(min_age), _) => {
                let age = (self.now - object.last_modified)
                    .to_std()
                    .unwrap_or_default();
                if age < min_age {
                    Verdict::TooYoung
                } else if writer_is_done(kind, &self.units, scopes) {
                    Verdict::Delete
                } else {
                    Verdict::InFlight
                }
            }
        }
    }

    fn count(&self, verdict: &Verdict, object: &Listed, report: &mut GcReport) {
        match verdict {
            Verdict::Delete => {}
            Verdict::Unrecognised => {
                tracing::warn!(table = self.table, path = %object.path, "object under a table directory is neither a part nor a manifest; leaving it alone");
                report.unrecognised += 1;
            }
            Verdict::TooYoung => report.too_young += 1,
            Verdict::InFlight => report.in_flight += 1,
            Verdict::NotEligible => report.not_eligible += 1,
        }
    }
}

/// Deletes the objects of `table` that the registry does not reference and that `scope`
/// allows; see the module docs for what is never deleted.
pub async fn collect_table_garbage(
    storage: &Storage,
    coord: &dyn Coordinator,
    table: &str,
    scope: GcScope<'_>,
) -> Result<GcReport, SinkError> {
    let registry = |source: CoordError| SinkError::Registry {
        table: table.to_string(),
        source,
    };
    let objects = Objects::new(storage);
    let mut report = GcReport::default();
    let whole_table = matches!(scope, GcScope::OlderThan(_));
    // The leases first: an object whose lease was dead by now cannot be committed later.
    let units: HashMap<UnitId, UnitState> = if whole_table {
        let units = coord.list_units().await.map_err(registry)?;
        units.into_iter().map(|u| (u.unit.clone(), u)).collect()
    } else {
        HashMap::new()
    };
    let judge = Judge {
        table,
        scope,
        now: chrono::Utc::now(),
        units,
    };
    let groups = groups(&objects, coord, table, whole_table, &mut report).await?;
    let mut examined = Vec::new();
    for (segment, group) in &groups {
        let found = if whole_table {
            examine_bracketed(storage, coord, &objects, table, segment, group, &mut report).await?
        } else {
            examine_candidates(coord, &objects, &judge, segment, group, &mut report).await?
        };
        examined.extend(found);
    }
    if examined.iter().all(|e| e.unreferenced.is_empty()) {
        return Ok(report);
    }

    // The retired sets after every listing: an object listed while in its grace period is
    // still in its set then, unless it was deleted meanwhile.
    let retired: HashSet<String> = coord
        .list_retired(table)
        .await
        .map_err(registry)?
        .into_iter()
        .flat_map(|r| r.paths)
        .collect();
    for e in examined {
        for object in e.unreferenced {
            if retired.contains(&object.path) {
                report.retired += 1;
                continue;
            }
            let kind = classify(table, &object.path);
            let verdict = judge.verdict(&object, &kind, &e.scopes);
            if let Verdict::Delete = verdict {
                objects.delete(&object).await?;
                tracing::info!(table, path = %object.path, kind = ?kind, "deleted unreferenced object");
                report.deleted.push(object.path);
            } else {
                judge.count(&verdict, &object, &mut report);
            }
        }
    }
    Ok(report)
}

/// `sluice gc`: reads the group's scopes, lists its objects (manifests included), and reads the
/// scopes again; a scope whose generation changed meanwhile (a swap, a seal, a merge lease) is
/// left for the next pass. Referenced: both readings' live records, the current manifests and
/// the parts they list.
async fn examine_bracketed(
    storage: &Storage,
    coord: &dyn Coordinator,
    objects: &Objects,
    table: &str,
    segment: &str,
    group: &Group,
    report: &mut GcReport,
) -> Result<Option<Examined>, SinkError> {
    let registry = |source: CoordError| SinkError::Registry {
        table: table.to_string(),
        source,
    };
    let first = read_scopes(coord, table, &group.values)
        .await
        .map_err(registry)?;
    let mut listed = Vec::new();
    for prefix in Group::prefixes(table, segment, true) {
        listed.extend(objects.list(&prefix).await?);
    }
    report.examined += listed.len();
    let second = read_scopes(coord, table, &group.values)
        .await
        .map_err(registry)?;
    let changed = first
        .iter()
        .zip(&second)
        .filter(|(a, b)| a.generation != b.generation)
        .count();
    if changed > 0 {
        tracing::info!(
            table,
            segment,
            "partition value changed while its objects were listed; collecting it next pass"
        );
        report.skipped_scopes += changed;
        return Ok(None);
    }
    let mut referenced: HashSet<String> = first
        .iter()
        .chain(&second)
        .flat_map(|s| s.parts.iter().map(|p| p.path.clone()))
        .collect();
    for manifest in second.iter().filter_map(|s| s.state.sealed.as_ref()) {
        referenced.insert(manifest.path.clone());
        let parts = read_manifest(storage, manifest).await?;
        referenced.extend(parts.into_iter().map(|p| p.path));
    }
    let (kept, unreferenced): (Vec<Listed>, Vec<Listed>) = listed
        .into_iter()
        .partition(|o| referenced.contains(&o.path));
    report.referenced += kept.len();
    Ok(Some(Examined {
        scopes: second,
        unreferenced,
    }))
}

/// A worker taking over units: skips sealed scopes, lists the group's part directories, and
/// reads the registry only if an object there is one it may delete (a flushed part of an
/// earlier lease of one of its units). Those can no longer be committed, so one reading after
/// the listing decides: a part committed before is then a live record, in the manifest (the
/// scope was sealed meanwhile: skipped), or in a retired set (read after this), or deleted.
async fn examine_candidates(
    coord: &dyn Coordinator,
    objects: &Objects,
    judge: &Judge<'_>,
    segment: &str,
    group: &Group,
    report: &mut GcReport,
) -> Result<Option<Examined>, SinkError> {
    if group.sealed {
        report.sealed_scopes += 1;
        return Ok(None);
    }
    let mut candidates = Vec::new();
    for prefix in Group::prefixes(judge.table, segment, false) {
        for object in objects.list(&prefix).await? {
            report.examined += 1;
            let kind = classify(judge.table, &object.path);
            match judge.verdict(&object, &kind, &[]) {
                Verdict::Delete => candidates.push(object),
                other => judge.count(&other, &object, report),
            }
        }
    }
    if candidates.is_empty() {
        return Ok(None);
    }
    let scopes = read_scopes(coord, judge.table, &group.values)
        .await
        .map_err(|source| SinkError::Registry {
            table: judge.table.to_string(),
            source,
        })?;
    if scopes.iter().any(|s| s.state.sealed.is_some()) {
        report.sealed_scopes += 1;
        return Ok(None);
    }
    let referenced: HashSet<&str> = scopes
        .iter()
        .flat_map(|s| s.parts.iter().map(|p| p.path.as_str()))
        .collect();
    let (kept, unreferenced): (Vec<Listed>, Vec<Listed>) = candidates
        .into_iter()
        .partition(|o| referenced.contains(o.path.as_str()));
    report.referenced += kept.len();
    Ok(Some(Examined {
        scopes,
        unreferenced,
    }))
}

enum Verdict {
    Delete,
    TooYoung,
    InFlight,
    NotEligible,
    Unrecognised,
}

/// Whether the lease that wrote an unreferenced object can no longer register it: its epoch is
/// below the current one, or equal to it with the lease free (a lease taken later has a larger
/// epoch). For merged parts and manifests, in every scope of the object's directory.
fn writer_is_done(
    kind: &ObjectKind,
    units: &HashMap<UnitId, UnitState>,
    scopes: &[ScopeListing],
) -> bool {
    let merge_done = |epoch: Option<u64>| {
        scopes.iter().all(|s| {
            let current = s.state.merge_epoch;
            let free = s.merge_holder.is_none();
            match epoch {
                Some(e) => e < current || (free && e <= current),
                None => free,
            }
        })
    };
    match kind {
        ObjectKind::Flushed(name) => units.get(&name.unit).is_some_and(|u| {
            name.lease_epoch < u.epoch || (u.holder.is_none() && name.lease_epoch <= u.epoch)
        }),
        ObjectKind::Merged(name) => merge_done(Some(name.merge_epoch)),
        ObjectKind::Manifest(epoch) => merge_done(*epoch),
        ObjectKind::Replayed => merge_done(None),
        ObjectKind::Spanned | ObjectKind::Other => false,
    }
}

/// One consistent reading of each of `values`' scopes, in order.
async fn read_scopes(
    coord: &dyn Coordinator,
    table: &str,
    values: &BTreeSet<String>,
) -> Result<Vec<ScopeListing>, CoordError> {
    let mut out = Vec::with_capacity(values.len());
    for value in values {
        out.push(coord.read_scope(table, value).await?);
    }
    Ok(out)
}

/// The directory segments to examine, with their scopes: every scope the registry lists, the
/// segment `_` (the empty value's, which also holds the quarantine), and every segment found
/// under `data/` (and, for `sluice gc`, `manifests/`): a directory whose scope was never
/// committed to holds only uncommitted objects. For `sluice gc`, objects elsewhere under the
/// table are counted as unrecognised here.
async fn groups(
    objects: &Objects,
    coord: &dyn Coordinator,
    table: &str,
    whole_table: bool,
    report: &mut GcReport,
) -> Result<BTreeMap<String, Group>, SinkError> {
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    let scopes = coord
        .list_scopes(table)
        .await
        .map_err(|source| SinkError::Registry {
            table: table.to_string(),
            source,
        })?;
    for s in scopes {
        let group = groups.entry(path_segment(&s.partition_value)).or_default();
        group.sealed |= s.state.sealed.is_some();
        group.values.insert(s.partition_value);
    }
    let mut add = |segment: String, values: Vec<String>| {
        groups.entry(segment).or_default().values.extend(values);
    };
    add("_".to_string(), segment_values("_"));
    let mut dirs = vec!["data"];
    if whole_table {
        dirs.push("manifests");
    }
    for dir in dirs {
        let (segments, strays) = objects.children(&format!("{table}/{dir}/")).await?;
        for segment in segments {
            let values = segment_values(&segment);
            add(segment, values);
        }
        if whole_table {
            count_strays(table, &strays, report);
        }
    }
    if whole_table {
        let (dirs, strays) = objects.children(&format!("{table}/")).await?;
        count_strays(table, &strays, report);
        for dir in dirs {
            if !matches!(dir.as_str(), "data" | "manifests" | "quarantine") {
                let listed = objects.list(&format!("{table}/{dir}/")).await?;
                count_strays(table, &listed, report);
            }
        }
    }
    Ok(groups)
}

fn count_strays(table: &str, strays: &[Listed], report: &mut GcReport) {
    for s in strays {
        tracing::warn!(table, path = %s.path, "object under a table directory is neither a part nor a manifest; leaving it alone");
    }
    report.examined += strays.len();
    report.unrecognised += strays.len();
}
