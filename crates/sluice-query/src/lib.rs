//! Query: SQL over the committed parts of a deployment's tables, with DataFusion.
//!
//! * [`Snapshot::take`]: the parts to read, every committed row exactly once, whatever merges
//!   and seals commit while the snapshot is taken or read. Per table and per scope (partition
//!   value), [`read_table`] reads the scope consistently ([`Coordinator::read_scope`]: never
//!   both a merge's inputs and its output, never neither): its live records plus the parts of
//!   its sealed manifest, if any. The objects of parts a merge or a seal replaces during a query
//!   stay readable for `merge.grace_ms`, so a query that started reading them finishes.
//! * **Across tables**, the committed offsets are read first, and a flushed (level 0) record
//!   counts only if its source partition's offset read first covers it. Commits are atomic per
//!   source partition (all tables' parts and the offset together), so for recent flushes every
//!   table (a landing table and its views alike) shows the same commits, however many land while
//!   the lists are read. Merged records and the parts of manifests always count: their rows are
//!   committed, and a merged part cannot be split back into the commits it came from. So a
//!   table may include rows of commits made after the offsets were read, when a merge folded
//!   them into a merged part before its scope was read, while another table (a view of the
//!   same source, say) does not show them yet. Each table on its own still holds every row
//!   committed before the offsets were read exactly once, and no row twice.
//! * [`QueryEngine::open`]: every table is a [`PartsTable`]; an aggregating table is shown
//!   finalized (its partial states merged per grouping key: counts and sums summed, minimums
//!   and maximums taken, `approx_distinct` sketches united), and its raw states are
//!   `states.<table>`; each table's quarantine is `quarantine.<table>`.
//! * Pruning: a [`PartsTable`] drops the parts whose partition-key value cannot match the query's
//!   filters before opening any file (a query over one day reads that day's parts; a merged
//!   part holds one scope, so it carries that scope's value like a flushed one), and the
//!   Parquet scan then skips row groups and pages by their statistics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use datafusion::catalog::MemorySchemaProvider;
use datafusion::error::DataFusionError;
use datafusion::prelude::{SessionConfig, SessionContext};
use sluice_config::{Aggregate, Config, TableConfig};
use sluice_coord::{CoordError, Coordinator, PartKind, PartRecord, ScopeListing};
use sluice_sink::{SinkError, Storage};

mod table;

pub use table::{PartsTable, ScanStats};

/// Why a query could not run.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Coordination(#[from] CoordError),
    /// A planning or execution error, as one message (DataFusion's errors repeat themselves
    /// through their sources).
    #[error("{0}")]
    Sql(String),
    #[error("cannot read storage {url}")]
    Storage {
        url: String,
        #[source]
        source: url::ParseError,
    },
    #[error("cannot open the storage of the configuration")]
    OpenStorage(#[source] Box<SinkError>),
    #[error("cannot read the sealed parts of table `{table}` at `{value}`")]
    Manifest {
        table: String,
        value: String,
        #[source]
        source: Box<SinkError>,
    },
}

impl From<DataFusionError> for QueryError {
    fn from(e: DataFusionError) -> Self {
        QueryError::Sql(e.strip_backtrace())
    }
}

/// One scope of a table, read consistently: its live records and state, and the parts of its
/// sealed manifest, if any. Every committed row of the scope is in exactly one of them.
#[derive(Debug, Clone)]
pub struct ScopeParts {
    pub listing: ScopeListing,
    /// The parts of the scope's manifest (empty when the scope is not sealed).
    pub sealed: Vec<PartRecord>,
}

impl ScopeParts {
    /// The live records, then the sealed parts, each with whether it came from the manifest.
    pub fn parts(&self) -> impl Iterator<Item = (&PartRecord, bool)> {
        let live = self.listing.parts.iter().map(|p| (p, false));
        live.chain(self.sealed.iter().map(|p| (p, true)))
    }
}

/// Every scope of `table` ([`Coordinator::list_scopes`]), each read with
/// [`Coordinator::read_scope`] and its manifest, if sealed, read and verified. A scope that
/// appears after the listing holds only records committed after it began.
pub async fn read_table(
    coord: &dyn Coordinator,
    storage: &Storage,
    table: &str,
) -> Result<Vec<ScopeParts>, QueryError> {
    let mut out = Vec::new();
    for scope in coord.list_scopes(table).await? {
        let listing = coord.read_scope(table, &scope.partition_value).await?;
        let sealed = match &listing.state.sealed {
            Some(manifest) => sluice_sink::read_manifest(storage, manifest)
                .await
                .map_err(|source| QueryError::Manifest {
                    table: table.to_string(),
                    value: scope.partition_value.clone(),
                    source: Box::new(source),
                })?,
            None => Vec::new(),
        };
        out.push(ScopeParts { listing, sealed });
    }
    Ok(out)
}

/// The parts of every table as of one moment: every committed row exactly once per table,
/// consistent across tables for flushed parts (see the crate docs).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Parts to read (both kinds) by table.
    pub parts: HashMap<String, Vec<PartRecord>>,
}

impl Snapshot {
    /// [`Snapshot::read`] with the configuration's storage (where manifests are read from).
    pub async fn take(coord: &dyn Coordinator, config: &Config) -> Result<Snapshot, QueryError> {
        let storage =
            Storage::open(&config.storage).map_err(|e| QueryError::OpenStorage(Box::new(e)))?;
        Snapshot::read(coord, &storage, config).await
    }

    /// Reads the committed offsets, then every table's scopes ([`read_table`]); keeps the
    /// flushed records those offsets cover, and every merged record and sealed part.
    pub async fn read(
        coord: &dyn Coordinator,
        storage: &Storage,
        config: &Config,
    ) -> Result<Snapshot, QueryError> {
        let tables = config.tables.iter().map(|t| t.name.as_str());
        Snapshot::read_tables(coord, storage, tables).await
    }

    /// [`Snapshot::read`] of some tables only (`sluice parts --paths`).
    pub async fn read_tables<'a>(
        coord: &dyn Coordinator,
        storage: &Storage,
        tables: impl IntoIterator<Item = &'a str>,
    ) -> Result<Snapshot, QueryError> {
        let offsets: HashMap<(String, i32), i64> = coord
            .list_units()
            .await?
            .into_iter()
            .filter_map(|u| Some(((u.unit.topic, u.unit.partition), u.next_offset?)))
            .collect();
        let mut parts = HashMap::new();
        for table in tables {
            let scopes = read_table(coord, storage, table).await?;
            parts.insert(table.to_string(), kept_parts(&offsets, scopes));
        }
        Ok(Snapshot { parts })
    }

    /// The parts of `table` of `kind`.
    pub fn parts_of(&self, table: &str, kind: PartKind) -> impl Iterator<Item = &PartRecord> {
        let parts = self.parts.get(table).map(Vec::as_slice).unwrap_or(&[]);
        parts.iter().filter(move |p| p.kind == kind)
    }
}

/// The parts of `scopes` a snapshot reads: the flushed and backfilled records the offsets read
/// first cover (a backfill's parts and offsets are registered together at its handoff), and
/// every merged record and sealed part.
fn kept_parts(offsets: &HashMap<(String, i32), i64>, scopes: Vec<ScopeParts>) -> Vec<PartRecord> {
    let mut kept = Vec::new();
    for scope in scopes {
        let live = scope.listing.parts.into_iter().filter(|p| {
            p.is_merged()
                || p.source_spans().iter().all(|s| {
                    offsets
                        .get(&(s.topic.clone(), s.partition))
                        .is_some_and(|&next| s.last_offset < next)
                })
        });
        kept.extend(live);
        kept.extend(scope.sealed);
    }
    kept
}

/// A DataFusion session over a snapshot's parts.
pub struct QueryEngine {
    ctx: SessionContext,
    stats: Arc<Mutex<ScanStats>>,
}

impl std::fmt::Debug for QueryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryEngine").finish_non_exhaustive()
    }
}

/// The URL the storage is known by to DataFusion.
const STORE_URL: &str = "sluice://storage";

impl QueryEngine {
    pub async fn open(
        config: &Config,
        storage: &Storage,
        snapshot: &Snapshot,
    ) -> Result<QueryEngine, QueryError> {
        let ctx = SessionContext::new_with_config(
            SessionConfig::new()
                .with_information_schema(true)
                .with_target_partitions(
                    std::thread::available_parallelism().map_or(1, |n| n.get()),
                ),
        );
        // Distinct counts as the views compute them, so a view's merged states and the same
        // SQL over its source give the same estimate.
        ctx.register_udaf(sluice_transform::udaf::approx_distinct_final());
        ctx.register_udaf(sluice_transform::udaf::merge_distinct());
        let url = url::Url::parse(STORE_URL).map_err(|source| QueryError::Storage {
            url: storage.url().to_string(),
            source,
        })?;
        ctx.register_object_store(&url, storage.object_store().0);
        // A copy is read only once it matches its part's checksum; one that does not is
        // counted, skipped for another copy, and left for the repair.
        storage.expect_checksums(
            snapshot
                .parts
                .values()
                .flatten()
                .map(|p| (p.path.as_str(), p.checksum.as_str())),
        );
        let catalog = ctx
            .catalog("datafusion")
            .ok_or_else(|| DataFusionError::Plan("no default catalog".into()))?;
        for schema in ["quarantine", "states"] {
            catalog.register_schema(schema, Arc::new(MemorySchemaProvider::new()))?;
        }
        let stats = Arc::new(Mutex::new(ScanStats::default()));
        let none = Vec::new();
        for t in &config.tables {
            let parts = snapshot.parts.get(&t.name).unwrap_or(&none);
            let (data, quarantine): (Vec<&PartRecord>, Vec<&PartRecord>) =
                parts.iter().partition(|p| p.kind == PartKind::Data);
            let table = PartsTable::new(t, storage, STORE_URL, &data, Arc::clone(&stats))?;
            if t.is_aggregating() {
                ctx.register_table(format!("states.{}", t.name), Arc::new(table))?;
                ctx.sql(&finalized_view(t)).await?.collect().await?;
            } else {
                ctx.register_table(t.name.as_str(), Arc::new(table))?;
            }
            let q = PartsTable::quarantine(t, storage, STORE_URL, &quarantine, Arc::clone(&stats))?;
            ctx.register_table(format!("quarantine.{}", t.name), Arc::new(q))?;
        }
        Ok(QueryEngine { ctx, stats })
    }

    /// Runs one SQL statement; returns its rows.
    pub async fn sql(
        &self,
        sql: &str,
    ) -> Result<(arrow::datatypes::SchemaRef, Vec<RecordBatch>), QueryError> {
        let df = self.ctx.sql(sql).await?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        Ok((schema, batches))
    }

    /// What the queries run so far read.
    pub fn scan_stats(&self) -> ScanStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// The view presenting an aggregating table: its states merged per grouping key.
fn finalized_view(t: &TableConfig) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let keys: Vec<String> = t
        .columns
        .iter()
        .filter(|c| c.aggregate.is_none())
        .map(|c| quote(&c.name))
        .collect();
    let select: Vec<String> = t
        .columns
        .iter()
        .map(|c| {
            let n = quote(&c.name);
            match c.aggregate {
                None => n,
                Some(Aggregate::Count | Aggregate::Sum) => format!("sum({n}) AS {n}"),
                Some(Aggregate::Min) => format!("min({n}) AS {n}"),
                Some(Aggregate::Max) => format!("max({n}) AS {n}"),
                Some(Aggregate::ApproxDistinct) => {
                    format!("{}({n}) AS {n}", sluice_transform::udaf::MERGE_DISTINCT)
                }
            }
        })
        .collect();
    let group = if keys.is_empty() {
        String::new()
    } else {
        format!(" GROUP BY {}", keys.join(", "))
    };
    format!(
        "CREATE VIEW {} AS SELECT {} FROM states.{}{group}",
        quote(&t.name),
        select.join(", "),
        quote(&t.name)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_coord::{OffsetSpan, ScopeState};

    fn flushed(name: &str, partition: i32, last_offset: i64) -> PartRecord {
        PartRecord {
            table: "t".into(),
            kind: PartKind::Data,
            partition_value: "2026-11-20".into(),
            path: format!("t/data/2026-11-20/{name}.parquet"),
            rows: 1,
            bytes: 1,
            topic: "ev".into(),
            partition,
            first_offset: last_offset,
            last_offset,
            definition_version: 1,
            lease_epoch: 1,
            created_at_ms: 1,
            flushed_at_ms: 1,
            ..PartRecord::default()
        }
    }

    fn merged(name: &str, spans: &[(i32, i64, i64)]) -> PartRecord {
        PartRecord {
            topic: String::new(),
            partition: -1,
            first_offset: -1,
            last_offset: -1,
            level: 1,
            inputs: spans.len() as u32,
            spans: spans
                .iter()
                .map(|&(partition, first_offset, last_offset)| OffsetSpan {
                    topic: "ev".into(),
                    partition,
                    first_offset,
                    last_offset,
                })
                .collect(),
            ..flushed(name, 0, 0)
        }
    }

    fn scope(parts: Vec<PartRecord>, sealed: Vec<PartRecord>) -> ScopeParts {
        ScopeParts {
            listing: ScopeListing {
                table: "t".into(),
                partition_value: "2026-11-20".into(),
                state: ScopeState::default(),
                generation: 0,
                parts,
                merge_holder: None,
            },
            sealed,
        }
    }

    #[test]
    fn flushed_parts_count_when_the_offsets_cover_them_merged_and_sealed_ones_always() {
        let offsets = HashMap::from([(("ev".to_string(), 0), 10), (("ev".to_string(), 1), 5)]);
        let scopes = vec![
            scope(
                vec![
                    flushed("covered", 0, 9),
                    flushed("committed-after-the-offsets", 0, 10),
                    flushed("unit-not-committed", 2, 0),
                    // Rows of a commit after the offsets were read, merged meanwhile.
                    merged("merged", &[(0, 0, 19), (1, 0, 9)]),
                ],
                vec![
                    flushed("sealed-late", 1, 7),
                    merged("sealed-merged", &[(1, 0, 3)]),
                ],
            ),
            scope(vec![flushed("other-scope", 1, 4)], Vec::new()),
        ];
        let kept: Vec<String> = kept_parts(&offsets, scopes)
            .iter()
            .map(|p| p.path.rsplit('/').next().unwrap().to_string())
            .collect();
        assert_eq!(
            kept,
            [
                "covered.parquet",
                "merged.parquet",
                "sealed-late.parquet",
                "sealed-merged.parquet",
                "other-scope.parquet"
            ]
        );
    }

    #[test]
    fn a_scope_lists_its_live_records_then_its_sealed_parts() {
        let s = scope(vec![flushed("live", 0, 1)], vec![flushed("sealed", 0, 0)]);
        let parts: Vec<(&str, bool)> = s
            .parts()
            .map(|(p, sealed)| (p.path.as_str(), sealed))
            .collect();
        assert_eq!(
            parts,
            [
                ("t/data/2026-11-20/live.parquet", false),
                ("t/data/2026-11-20/sealed.parquet", true)
            ]
        );
    }
}
