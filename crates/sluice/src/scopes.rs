//! `sluice scopes`: the part registry per table and partition value (scope): how many live
//! records each scope keeps in the registry, of which merge levels, how much data, whether it
//! was sealed into a manifest, who merges it, and how many merges the policy would plan now.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use sluice_config::MergeConfig;
use sluice_coord::{Coordinator, PartKind, PartRecord, SealedManifest};
use sluice_merge::policy::{plan, Candidate};
use sluice_query::{read_table, ScopeParts};
use sluice_sink::Storage;
use sluice_worker::open_coordinator;

use crate::common::{load, now_ms, print_out, selected_tables};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "A scope is one table's partition value (e.g. one day). Flushes add \
    parts (level 0) to it; merges replace groups of its parts by one part a level up; once \
    quiet for `merge.quiet_after_ms`, it gets its final merges and is sealed: its part records \
    move out of the registry into a manifest object, and the scope keeps one pointer. Late \
    events for a sealed scope add live records beside the manifest until it is sealed again.\n\n\
    Columns: live = part records the scope keeps in the registry (ZooKeeper znodes; ingestion \
    pauses a scope that reaches `merge.hard_parts_per_scope`), levels = those parts by merge \
    level, bytes = live and sealed parts together, sealed = the manifest's part count, merging \
    = the worker holding the scope's merge lease and the lease's epoch, backlog = the merges \
    the policy would plan now for the live parts (per kind and definition version)."
)]
pub struct ScopesArgs {
    /// The configuration file: its tables, merge policy, ZooKeeper and storage.
    #[arg(short, long, env = "SLUICE_CONFIG")]
    config: PathBuf,
    /// Only this table [default: all tables of the config].
    #[arg(long)]
    table: Option<String>,
    /// One JSON document instead of tables.
    #[arg(long)]
    json: bool,
}

pub async fn scopes(args: ScopesArgs) -> Result<()> {
    let config = load(&args.config)?;
    let tables = selected_tables(&config, &args.config, args.table)?;
    let storage = Storage::open(&config.storage)?;
    let coord = open_coordinator(&config.coordination).await?;
    let read = read_tables(&*coord, &storage, &tables, &config.merge).await;
    let _ = coord.close().await;
    let tables = read?;
    if args.json {
        let doc = json!({
            "at_ms": now_ms(),
            "tables": tables.iter().map(TableScopes::to_json).collect::<Vec<_>>(),
        });
        print_out(&format!("{}\n", serde_json::to_string_pretty(&doc)?))?;
    } else {
        let text: String = tables.iter().map(TableScopes::render).collect();
        print_out(&text)?;
    }
    Ok(())
}

async fn read_tables(
    coord: &dyn Coordinator,
    storage: &Storage,
    tables: &[String],
    merge: &MergeConfig,
) -> Result<Vec<TableScopes>> {
    let now = now_ms();
    let mut out = Vec::new();
    for t in tables {
        let scopes = read_table(coord, storage, t)
            .await
            .with_context(|| format!("reading the scopes of table {t}"))?;
        let mut rows: Vec<ScopeRow> = scopes
            .iter()
            .map(|s| ScopeRow::new(s, merge, now))
            .collect();
        rows.sort_by(|a, b| {
            (b.live, b.bytes())
                .cmp(&(a.live, a.bytes()))
                .then_with(|| a.value.cmp(&b.value))
        });
        out.push(TableScopes {
            table: t.clone(),
            scopes: rows,
        });
    }
    Ok(out)
}

/// One scope, summarised.
#[derive(Debug, Clone, PartialEq)]
struct ScopeRow {
    value: String,
    /// Live part records (both kinds).
    live: usize,
    /// Live parts by level.
    levels: BTreeMap<u32, usize>,
    live_bytes: u64,
    /// The manifest, and the bytes of the parts it lists.
    sealed: Option<(SealedManifest, u64)>,
    merge_epoch: u64,
    merge_holder: Option<String>,
    /// Merges the policy would plan now.
    backlog: usize,
}

impl ScopeRow {
    fn new(scope: &ScopeParts, merge: &MergeConfig, now_ms: i64) -> ScopeRow {
        let parts = &scope.listing.parts;
        let mut levels = BTreeMap::new();
        for p in parts {
            *levels.entry(p.level).or_insert(0) += 1;
        }
        let sealed = scope.listing.state.sealed.clone().map(|m| {
            let bytes = scope.sealed.iter().map(|p| p.bytes).sum();
            (m, bytes)
        });
        ScopeRow {
            value: scope.listing.partition_value.clone(),
            live: parts.len(),
            levels,
            live_bytes: parts.iter().map(|p| p.bytes).sum(),
            sealed,
            merge_epoch: scope.listing.state.merge_epoch,
            merge_holder: scope.listing.merge_holder.clone(),
            backlog: backlog(parts, merge, now_ms),
        }
    }

    fn bytes(&self) -> u64 {
        self.live_bytes + self.sealed.as_ref().map_or(0, |(_, b)| *b)
    }

    fn levels_cell(&self) -> String {
        if self.levels.is_empty() {
            return "-".to_string();
        }
        let cells: Vec<String> = self
            .levels
            .iter()
            .map(|(level, n)| format!("L{level} {n}"))
            .collect();
        cells.join(", ")
    }

    fn to_json(&self) -> Value {
        let levels: serde_json::Map<String, Value> = self
            .levels
            .iter()
            .map(|(level, n)| (level.to_string(), json!(n)))
            .collect();
        json!({
            "partition_value": self.value,
            "live_parts": self.live,
            "levels": levels,
            "bytes": self.bytes(),
            "live_bytes": self.live_bytes,
            "sealed": self.sealed.as_ref().map(|(m, bytes)| json!({
                "path": m.path,
                "parts": m.parts,
                "rows": m.rows,
                "bytes": bytes,
                "sealed_at_ms": m.sealed_at_ms,
            })),
            "merge_epoch": self.merge_epoch,
            "merge_holder": self.merge_holder,
            "backlog": self.backlog,
        })
    }
}

/// How many merges the policy would plan now for a scope's live records: the policy is given
/// one group of mergeable parts at a time (one kind, one definition version).
fn backlog(parts: &[PartRecord], merge: &MergeConfig, now_ms: i64) -> usize {
    let mut groups: HashMap<(PartKind, u32), Vec<Candidate>> = HashMap::new();
    for p in parts {
        groups
            .entry((p.kind, p.definition_version))
            .or_default()
            .push(Candidate {
                name: p.name(),
                bytes: p.bytes,
                level: p.level,
                created_at_ms: p.flushed_at(),
            });
    }
    groups
        .values()
        .map(|candidates| plan(merge, candidates, now_ms).len())
        .sum()
}

/// A table's scopes, largest first (most live records, then most bytes).
#[derive(Debug)]
struct TableScopes {
    table: String,
    scopes: Vec<ScopeRow>,
}

impl TableScopes {
    fn live_records(&self) -> usize {
        self.scopes.iter().map(|s| s.live).sum()
    }

    fn sealed_scopes(&self) -> usize {
        self.scopes.iter().filter(|s| s.sealed.is_some()).count()
    }

    fn backlog(&self) -> usize {
        self.scopes.iter().map(|s| s.backlog).sum()
    }

    fn render(&self) -> String {
        let mut out = format!(
            "table {}: {} scopes, {} live records (registry znodes of parts), {} sealed; backlog {} merges\n",
            self.table,
            self.scopes.len(),
            self.live_records(),
            self.sealed_scopes(),
            self.backlog()
        );
        if self.scopes.is_empty() {
            return out;
        }
        out.push_str(&format!(
            "  {:<20} {:>6}  {:<24} {:>14}  {:<14} {:<20} {:>7}\n",
            "partition", "live", "levels", "bytes", "sealed", "merging", "backlog"
        ));
        for s in &self.scopes {
            let sealed = s
                .sealed
                .as_ref()
                .map_or("-".to_string(), |(m, _)| format!("{} parts", m.parts));
            let merging = s
                .merge_holder
                .as_ref()
                .map_or("-".to_string(), |h| format!("{h} (e{})", s.merge_epoch));
            out.push_str(&format!(
                "  {:<20} {:>6}  {:<24} {:>14}  {:<14} {:<20} {:>7}\n",
                if s.value.is_empty() { "-" } else { &s.value },
                s.live,
                s.levels_cell(),
                s.bytes(),
                sealed,
                merging,
                s.backlog
            ));
        }
        out
    }

    fn to_json(&self) -> Value {
        json!({
            "table": self.table,
            "scopes": self.scopes.len(),
            "live_records": self.live_records(),
            "sealed_scopes": self.sealed_scopes(),
            "backlog": self.backlog(),
            "bytes": self.scopes.iter().map(ScopeRow::bytes).sum::<u64>(),
            "partition_values": self.scopes.iter().map(ScopeRow::to_json).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_coord::{ScopeListing, ScopeState};

    fn part(name: &str, kind: PartKind, level: u32, bytes: u64, flushed_at_ms: i64) -> PartRecord {
        PartRecord {
            table: "t".into(),
            kind,
            partition_value: "2026-11-20".into(),
            path: format!("t/data/2026-11-20/{name}.parquet"),
            rows: 1,
            bytes,
            topic: "ev".into(),
            partition: 0,
            first_offset: 0,
            last_offset: 0,
            definition_version: 1,
            lease_epoch: 1,
            created_at_ms: 1,
            level,
            inputs: 0,
            spans: Vec::new(),
            checksum: String::new(),
            flushed_at_ms,
            replicas: Vec::new(),
        }
    }

    fn config() -> MergeConfig {
        MergeConfig {
            fan_in: 4,
            target_part_bytes: 1000,
            quiet_after_ms: 1_000_000,
            ..MergeConfig::default()
        }
    }

    #[test]
    fn the_backlog_plans_each_kind_apart() {
        let mut parts: Vec<PartRecord> = (0..9)
            .map(|i| part(&format!("d{i}"), PartKind::Data, 0, 10, i))
            .collect();
        // Three quarantine parts and one data part of another definition version: no full
        // group of four in either, so nothing more is planned.
        parts.extend((0..3).map(|i| part(&format!("q{i}"), PartKind::Quarantine, 0, 10, i)));
        parts.push(PartRecord {
            definition_version: 2,
            ..part("d-v2", PartKind::Data, 0, 10, 0)
        });
        assert_eq!(
            backlog(&parts, &config(), 100),
            2,
            "two full groups of 4 data parts"
        );
        assert_eq!(
            backlog(
                &parts,
                &MergeConfig {
                    enabled: false,
                    ..config()
                },
                100
            ),
            0
        );
    }

    #[test]
    fn a_scope_row_counts_levels_bytes_and_the_manifest() {
        let listing = ScopeListing {
            table: "t".into(),
            partition_value: "2026-11-20".into(),
            state: ScopeState {
                merge_epoch: 3,
                sealed: Some(SealedManifest {
                    path: "t/manifests/2026-11-20/seal-e3-5.json".into(),
                    checksum: String::new(),
                    parts: 2,
                    rows: 2,
                    sealed_at_ms: 5,
                }),
            },
            generation: 7,
            parts: vec![
                part("a", PartKind::Data, 0, 10, 1),
                part("b", PartKind::Data, 2, 20, 1),
                part("c", PartKind::Quarantine, 0, 30, 1),
            ],
            merge_holder: Some("w1".into()),
        };
        let scope = ScopeParts {
            listing,
            sealed: vec![
                part("s1", PartKind::Data, 1, 100, 1),
                part("s2", PartKind::Data, 1, 200, 1),
            ],
        };
        let row = ScopeRow::new(&scope, &config(), 100);
        assert_eq!((row.live, row.live_bytes, row.bytes()), (3, 60, 360));
        assert_eq!(row.levels_cell(), "L0 2, L2 1");
        let table = TableScopes {
            table: "t".into(),
            scopes: vec![row],
        };
        let text = table.render();
        assert!(text.starts_with(
            "table t: 1 scopes, 3 live records (registry znodes of parts), 1 sealed; backlog 0 merges\n"
        ));
        assert!(
            text.contains("2 parts") && text.contains("w1 (e3)"),
            "{text}"
        );
        let json = table.to_json();
        assert_eq!(json["partition_values"][0]["levels"]["2"], 1);
        assert_eq!(json["partition_values"][0]["sealed"]["bytes"], 300);
    }
}
