//! Garbage collection of objects that were uploaded but never committed (a crash between upload
//! and commit, or a zombie's upload). They are never read: readers go through the registry.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sluice_coord::{Coordinator, UnitId};

use crate::{SinkError, Storage};

/// What one collection pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub examined: usize,
    pub deleted: Vec<String>,
    /// Uncommitted objects left because they were younger than the minimum age.
    pub too_young: usize,
}

/// A part object's file name `<topic>-<partition>-<first>-<last>-e<epoch>-v<version>.parquet`,
/// parsed back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartName {
    pub unit: UnitId,
    pub first_offset: i64,
    pub last_offset: i64,
    pub lease_epoch: u64,
    pub definition_version: u32,
}

/// Parses a part object's path (see [`PartName`]); `None` if it is not a part.
pub fn parse_part_name(path: &str) -> Option<PartName> {
    let name = path.rsplit('/').next()?.strip_suffix(".parquet")?;
    let mut it = name.rsplitn(6, '-');
    let definition_version = it.next()?.strip_prefix('v')?.parse().ok()?;
    let lease_epoch = it.next()?.strip_prefix('e')?.parse().ok()?;
    let last_offset = it.next()?.parse().ok()?;
    let first_offset = it.next()?.parse().ok()?;
    let partition = it.next()?.parse().ok()?;
    let topic = it.next()?;
    Some(PartName {
        unit: UnitId::new(topic, partition),
        first_offset,
        last_offset,
        lease_epoch,
        definition_version,
    })
}

/// Which uncommitted objects a pass may delete.
#[derive(Debug, Clone, Copy)]
pub enum GcScope<'a> {
    /// Any unit's, older than a minimum age (`sluice gc`).
    OlderThan(Duration),
    /// Those of the given units written under a lease epoch below the given one: what a new
    /// lease holder may delete at any age, since those leases can no longer commit.
    EarlierLeases(&'a HashMap<UnitId, u64>),
}

/// Deletes the objects of `table` that are not in `committed` and that `scope` allows.
///
/// An object younger than any flush could take may be an in-flight upload of the unit's current
/// holder; [`GcScope::EarlierLeases`] never touches the current lease's objects, and
/// [`GcScope::OlderThan`] needs a minimum age well above a flush's duration.
pub async fn collect_garbage(
    storage: &Storage,
    table: &str,
    committed: &HashSet<String>,
    scope: GcScope<'_>,
) -> Result<GcReport, SinkError> {
    let mut report = GcReport::default();
    let now = chrono::Utc::now();
    for object in storage.list(&format!("{table}/")).await? {
        report.examined += 1;
        if committed.contains(&object.path) {
            continue;
        }
        let Some(name) = parse_part_name(&object.path) else {
            tracing::warn!(path = %object.path, "object under a table directory is not a part; leaving it alone");
            continue;
        };
        match scope {
            GcScope::EarlierLeases(units) => match units.get(&name.unit) {
                Some(&epoch) if name.lease_epoch < epoch => {}
                _ => continue,
            },
            GcScope::OlderThan(min_age) => {
                let age = (now - object.last_modified).to_std().unwrap_or_default();
                if age < min_age {
                    report.too_young += 1;
                    continue;
                }
            }
        }
        storage.delete(&object.path).await?;
        tracing::info!(path = %object.path, unit = %name.unit, epoch = name.lease_epoch, "deleted uncommitted object");
        report.deleted.push(object.path);
    }
    Ok(report)
}

/// [`collect_garbage`] for `table` against the parts the coordinator has committed.
pub async fn collect_table_garbage(
    storage: &Storage,
    coord: &dyn Coordinator,
    table: &str,
    scope: GcScope<'_>,
) -> Result<GcReport, SinkError> {
    let committed: HashSet<String> = coord
        .list_parts(table)
        .await
        .map_err(|source| SinkError::Registry {
            table: table.to_string(),
            source,
        })?
        .into_iter()
        .map(|p| p.path)
        .collect();
    collect_garbage(storage, table, &committed, scope).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_names_parse_back_even_with_dashes_in_the_topic() {
        let name = parse_part_name(
            "t/data/2026-11-23/web-events-3-00000000000000000010-00000000000000000099-e4-v2.parquet",
        )
        .unwrap();
        assert_eq!(
            name,
            PartName {
                unit: UnitId::new("web-events", 3),
                first_offset: 10,
                last_offset: 99,
                lease_epoch: 4,
                definition_version: 2,
            }
        );
        assert!(parse_part_name("t/data/readme.txt").is_none());
    }
}
