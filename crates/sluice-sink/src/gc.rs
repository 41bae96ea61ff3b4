//! Garbage collection of objects that were uploaded but never committed (a crash between upload
//! and commit, or a zombie's upload). They are never read: readers go through the registry.

use std::collections::HashSet;
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

/// Parses a part object's file name `<topic>-<partition>-<first>-<last>-v<version>.parquet`
/// into its unit and offset range.
pub fn parse_part_name(path: &str) -> Option<(UnitId, i64, i64, u32)> {
    let name = path.rsplit('/').next()?.strip_suffix(".parquet")?;
    let mut it = name.rsplitn(5, '-');
    let version = it.next()?.strip_prefix('v')?.parse().ok()?;
    let last = it.next()?.parse().ok()?;
    let first = it.next()?.parse().ok()?;
    let partition = it.next()?.parse().ok()?;
    let topic = it.next()?;
    Some((UnitId::new(topic, partition), first, last, version))
}

/// Deletes the objects of `table` that are not in `committed`, are older than `min_age`, and,
/// when `only_units` is given, belong to one of those units.
///
/// Only a unit's lease holder uploads parts of that unit, so a holder may collect its units'
/// uncommitted objects of any age; collecting other units' objects needs a `min_age` longer
/// than any flush could take, or an in-flight upload could be deleted before its commit.
pub async fn collect_garbage(
    storage: &Storage,
    table: &str,
    committed: &HashSet<String>,
    only_units: Option<&HashSet<UnitId>>,
    min_age: Duration,
) -> Result<GcReport, SinkError> {
    let mut report = GcReport::default();
    let now = chrono::Utc::now();
    for object in storage.list(&format!("{table}/")).await? {
        report.examined += 1;
        if committed.contains(&object.path) {
            continue;
        }
        let Some((unit, ..)) = parse_part_name(&object.path) else {
            tracing::warn!(path = %object.path, "object under a table directory is not a part; leaving it alone");
            continue;
        };
        if only_units.is_some_and(|units| !units.contains(&unit)) {
            continue;
        }
        let age = (now - object.last_modified).to_std().unwrap_or_default();
        if age < min_age {
            report.too_young += 1;
            continue;
        }
        storage.delete(&object.path).await?;
        tracing::info!(path = %object.path, unit = %unit, "deleted uncommitted object");
        report.deleted.push(object.path);
    }
    Ok(report)
}

/// [`collect_garbage`] for `table` against the parts the coordinator has committed.
pub async fn collect_table_garbage(
    storage: &Storage,
    coord: &dyn Coordinator,
    table: &str,
    only_units: Option<&HashSet<UnitId>>,
    min_age: Duration,
) -> Result<GcReport, SinkError> {
    let committed: HashSet<String> = coord
        .list_parts(table)
        .await
        .map_err(|e| SinkError::Registry {
            table: table.to_string(),
            reason: e.to_string(),
        })?
        .into_iter()
        .map(|p| p.path)
        .collect();
    collect_garbage(storage, table, &committed, only_units, min_age).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_names_parse_back_even_with_dashes_in_the_topic() {
        let (unit, first, last, v) = parse_part_name(
            "t/data/2026-11-23/web-events-3-00000000000000000010-00000000000000000099-v2.parquet",
        )
        .unwrap();
        assert_eq!(
            (unit, first, last, v),
            (UnitId::new("web-events", 3), 10, 99, 2)
        );
        assert!(parse_part_name("t/data/readme.txt").is_none());
    }
}
