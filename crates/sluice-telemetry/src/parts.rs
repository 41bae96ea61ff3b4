//! Part counts per scope (a table's partition value), from the registry alone: what the
//! dashboard's "Parts per scope" panel draws and the registry gauges report.
//!
//! A scope's live part records are znodes in ZooKeeper; merges keep their number under
//! `merge.soft_parts_per_scope`, and ingestion pauses the partitions feeding a table whose
//! fullest scope reaches `merge.hard_parts_per_scope`. Each refresh lists every table's scopes
//! once ([`Coordinator::list_scopes`]) and keeps the fullest few.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sluice_config::{Config, MergeConfig};
use sluice_coord::{Coordinator, ScopeSummary};

use crate::metrics as m;
use crate::TelemetryError;

/// How many of a table's fullest scopes a report keeps.
pub const LARGEST_SCOPES: usize = 8;

/// One scope among a table's fullest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScopeParts {
    /// The scope's partition value (empty for a table without a partition key).
    pub partition_value: String,
    /// Live part records the scope keeps in the registry.
    pub live_parts: usize,
    /// Whether older parts of the scope were sealed into a manifest.
    pub sealed: bool,
}

/// The part registry of one table, as the merge limits see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableParts {
    pub table: String,
    /// Scopes the registry knows of the table.
    pub scopes: usize,
    /// Live part records of every scope together.
    pub part_records: usize,
    /// Scopes sealed into manifests.
    pub sealed_scopes: usize,
    /// The most live parts one scope holds.
    pub max_scope_parts: usize,
    /// `merge.soft_parts_per_scope`: merges fall behind above it.
    pub soft_limit: usize,
    /// `merge.hard_parts_per_scope`: ingestion pauses the table's partitions at it.
    pub hard_limit: usize,
    /// `merge.enabled`: without merges nothing brings a scope's count down.
    pub merges_enabled: bool,
    /// The fullest scopes holding live parts (at most [`LARGEST_SCOPES`]), fullest first, ties
    /// in partition value order.
    pub largest: Vec<ScopeParts>,
}

/// Every table's part registry at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartsReport {
    pub taken_at_ms: i64,
    /// In the config's table order.
    pub tables: Vec<TableParts>,
}

/// Summarizes one table's scope listing against the merge limits.
pub fn summarize(table: &str, scopes: &[ScopeSummary], merge: &MergeConfig) -> TableParts {
    let mut largest: Vec<ScopeParts> = scopes
        .iter()
        .filter(|s| s.live_parts > 0)
        .map(|s| ScopeParts {
            partition_value: s.partition_value.clone(),
            live_parts: s.live_parts,
            sealed: s.state.sealed.is_some(),
        })
        .collect();
    largest.sort_by(|a, b| {
        b.live_parts
            .cmp(&a.live_parts)
            .then_with(|| a.partition_value.cmp(&b.partition_value))
    });
    largest.truncate(LARGEST_SCOPES);
    TableParts {
        table: table.to_string(),
        scopes: scopes.len(),
        part_records: scopes.iter().map(|s| s.live_parts).sum(),
        sealed_scopes: scopes.iter().filter(|s| s.state.sealed.is_some()).count(),
        max_scope_parts: scopes.iter().map(|s| s.live_parts).max().unwrap_or(0),
        soft_limit: merge.soft_parts_per_scope,
        hard_limit: merge.hard_parts_per_scope,
        merges_enabled: merge.enabled,
        largest,
    }
}

/// Lists the scopes of every table of the config: one [`Coordinator::list_scopes`] per table.
pub async fn parts_report(
    config: &Config,
    coord: &dyn Coordinator,
) -> Result<PartsReport, TelemetryError> {
    let mut tables = Vec::with_capacity(config.tables.len());
    for t in &config.tables {
        let scopes = coord.list_scopes(&t.name).await?;
        tables.push(summarize(&t.name, &scopes, &config.merge));
    }
    let taken_at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    Ok(PartsReport {
        taken_at_ms,
        tables,
    })
}

/// Sets the fleet-wide registry gauges from a report, as the merge check does from its own
/// listing: refreshed at every telemetry refresh too, they stay in the exposition when the merge
/// check runs less often than gauges idle out (three refreshes).
pub fn record_gauges(report: &PartsReport) {
    for t in &report.tables {
        let labels = [("table", t.table.clone())];
        metrics::gauge!(m::TABLE_SCOPE_PARTS_MAX, &labels).set(t.max_scope_parts as f64);
        metrics::gauge!(m::TABLE_PART_RECORDS, &labels).set(t.part_records as f64);
        metrics::gauge!(m::TABLE_SEALED_SCOPES, &labels).set(t.sealed_scopes as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_coord::{ScopeState, SealedManifest};

    fn scope(value: &str, live_parts: usize, sealed: bool) -> ScopeSummary {
        ScopeSummary {
            partition_value: value.into(),
            live_parts,
            state: ScopeState {
                merge_epoch: 0,
                sealed: sealed.then(|| SealedManifest {
                    path: format!("t/manifests/{value}/m.json"),
                    checksum: "00".into(),
                    parts: 3,
                    rows: 30,
                    sealed_at_ms: 1,
                }),
            },
        }
    }

    #[test]
    fn keeps_the_fullest_scopes_with_parts_fullest_first_and_totals_all() {
        let mut scopes: Vec<ScopeSummary> = (0..12)
            .map(|i| scope(&format!("2026-11-{:02}", i + 1), i * 10, false))
            .collect();
        scopes.push(scope("2026-10-31", 0, true));
        scopes.push(scope("2026-10-30", 110, true));
        let merge = MergeConfig::default();
        let t = summarize("events", &scopes, &merge);
        assert_eq!(t.scopes, 14);
        assert_eq!(t.part_records, (0..12).map(|i| i * 10).sum::<usize>() + 110);
        assert_eq!((t.sealed_scopes, t.max_scope_parts), (2, 110));
        assert_eq!(
            (t.soft_limit, t.hard_limit, t.merges_enabled),
            (300, 1000, true)
        );
        assert_eq!(t.largest.len(), LARGEST_SCOPES);
        // Ties (110) in partition value order; the sealed flag kept.
        let first: Vec<(&str, usize, bool)> = t
            .largest
            .iter()
            .take(3)
            .map(|s| (s.partition_value.as_str(), s.live_parts, s.sealed))
            .collect();
        assert_eq!(
            first,
            [
                ("2026-10-30", 110, true),
                ("2026-11-12", 110, false),
                ("2026-11-11", 100, false)
            ]
        );
        assert!(t
            .largest
            .windows(2)
            .all(|w| w[0].live_parts >= w[1].live_parts));
    }

    #[test]
    fn scopes_without_live_parts_are_not_among_the_largest() {
        let t = summarize(
            "t",
            &[scope("a", 0, true), scope("b", 2, false)],
            &MergeConfig::default(),
        );
        assert_eq!(t.largest.len(), 1);
        assert_eq!((t.sealed_scopes, t.part_records), (1, 2));
        let empty = summarize("t", &[], &MergeConfig::default());
        assert_eq!((empty.max_scope_parts, empty.largest.len()), (0, 0));
    }
}
