//! Query: SQL over the committed parts of a deployment's tables, with DataFusion.
//!
//! * [`Snapshot::take`]: the parts to read, a consistent cut of every table at once. The
//!   committed offsets are read first, then the part lists, and a part counts only if the commit
//!   that registered it is at or below its source partition's offset read first. Commits are
//!   atomic per source partition (all tables' parts and the offset together), so every table
//!   shows the same commits, whatever commits land while the lists are read.
//! * [`QueryEngine::open`]: every table is a [`PartsTable`]; an aggregating table is shown
//!   finalized (its partial states merged per grouping key: counts and sums summed, minimums
//!   and maximums taken, `approx_distinct` sketches united), and its raw states are
//!   `states.<table>`; each table's quarantine is `quarantine.<table>`.
//! * Pruning: a [`PartsTable`] drops the parts whose partition-key value cannot match the query's
//!   filters before opening any file (a query over one day reads that day's parts), and the
//!   Parquet scan then skips row groups and pages by their statistics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use datafusion::catalog::MemorySchemaProvider;
use datafusion::error::DataFusionError;
use datafusion::prelude::{SessionConfig, SessionContext};
use sluice_config::{Aggregate, Config, TableConfig};
use sluice_coord::{CoordError, Coordinator, PartKind, PartRecord};
use sluice_sink::Storage;

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
}

impl From<DataFusionError> for QueryError {
    fn from(e: DataFusionError) -> Self {
        QueryError::Sql(e.strip_backtrace())
    }
}

/// The parts of every table as of one moment, consistent across tables.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Committed parts (both kinds) by table.
    pub parts: HashMap<String, Vec<PartRecord>>,
}

impl Snapshot {
    /// Reads the committed offsets, then every table's parts, keeping those the offsets cover.
    pub async fn take(coord: &dyn Coordinator, config: &Config) -> Result<Snapshot, QueryError> {
        let offsets: HashMap<(String, i32), i64> = coord
            .list_units()
            .await?
            .into_iter()
            .filter_map(|u| Some(((u.unit.topic, u.unit.partition), u.next_offset?)))
            .collect();
        let mut parts = HashMap::new();
        for t in &config.tables {
            let listed = coord.list_parts(&t.name).await?;
            let kept: Vec<PartRecord> = listed
                .into_iter()
                .filter(|p| {
                    offsets
                        .get(&(p.topic.clone(), p.partition))
                        .is_some_and(|&next| p.last_offset < next)
                })
                .collect();
            parts.insert(t.name.clone(), kept);
        }
        Ok(Snapshot { parts })
    }
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
