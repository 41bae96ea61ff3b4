//! Transform: materialized views. A view is a SQL `SELECT` over a table, run with DataFusion on
//! every batch that lands in that table (every flush); its result is written to the view's
//! target table and committed in the same commit as the source's parts and offset.
//!
//! * [`Views::compile`] plans every view once, at start-up, against its source table's schema,
//!   and refuses a view that does not parse or plan, that needs more than one batch at a time
//!   (sorting, limits, joins, windows, `HAVING`, `count(DISTINCT ...)`), or whose output does not
//!   fit its target table (column names, types, nullability, aggregate states).
//! * [`Views::apply`] runs the views downstream of a table over one of its batches: every view
//!   reading the table, then every view reading their targets (chains), and so on. Each view's
//!   output is a batch of its target table. A view that fails on a batch is run again on halves
//!   of it until the rows it fails on are isolated; those go to the target table's quarantine
//!   with the view's name and the error, and everything else is written. Nothing is half-written:
//!   a row's result is in the output or the row is in quarantine.
//!
//! Aggregations store partial states per batch (a count, a sum, a minimum, a maximum, a
//! HyperLogLog sketch for `approx_distinct`, see [`udaf`]), so reading the table (`sluice query`)
//! merges them into totals that are exact whatever the batches were.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::{provider_as_source, MemTable};
use datafusion::error::DataFusionError;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::prelude::{SessionConfig, SessionContext};
use sluice_config::{Aggregate, Config, TableConfig, ViewConfig};
use sluice_decode::{Origins, QuarantineReason, QuarantineRow};

pub mod hll;
pub mod udaf;

/// Why a view was refused at start-up.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    #[error("view `{view}`: its SQL does not plan against table `{source_table}`: {reason}")]
    Plan {
        view: String,
        source_table: String,
        reason: String,
    },
    #[error("view `{view}`: {reason}; a view runs on each batch on its own, so it may filter, compute columns and aggregate with count, sum, min, max and approx_distinct, but not {what}")]
    Shape {
        view: String,
        what: String,
        reason: String,
    },
    #[error("view `{view}`: its output does not fit table `{target}`: {reason}; fix: {fix}")]
    Output {
        view: String,
        target: String,
        reason: String,
        fix: String,
    },
}

/// The session a view is planned and run in: one partition (a batch is small, and the flush
/// runs on a thread of its own), and `approx_distinct` giving sketches, the partial state.
fn view_session() -> SessionContext {
    let config = SessionConfig::new()
        .with_target_partitions(1)
        .with_information_schema(false);
    let ctx = SessionContext::new_with_config(config);
    ctx.register_udaf(udaf::approx_distinct_state());
    ctx
}

/// One view, planned.
struct CompiledView {
    name: String,
    source: String,
    target: Arc<TableConfig>,
    target_schema: SchemaRef,
    state: SessionState,
    plan: LogicalPlan,
    /// For each target column in order, its position in the plan's output.
    columns: Vec<usize>,
}

/// What a view made of one batch.
#[derive(Debug)]
pub struct ViewOutput {
    pub view: String,
    pub target: Arc<TableConfig>,
    /// Rows of the target table (possibly none).
    pub batch: RecordBatch,
    /// Input rows the view failed on.
    pub quarantine: Vec<QuarantineRow>,
}

/// Every view of a configuration, planned.
pub struct Views {
    views: Vec<CompiledView>,
}

impl std::fmt::Debug for Views {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.views.iter().map(|v| &v.name))
            .finish()
    }
}

impl Views {
    /// Plans and checks every view of `config` (whose structure `Config::validate` checked).
    pub async fn compile(config: &Config) -> Result<Views, TransformError> {
        let mut views = Vec::with_capacity(config.views.len());
        for v in &config.views {
            views.push(compile(config, v).await?);
        }
        Ok(Views { views })
    }

    pub fn is_empty(&self) -> bool {
        self.views.is_empty()
    }

    /// The names of the tables some view reads.
    pub fn sources(&self) -> impl Iterator<Item = &str> {
        self.views.iter().map(|v| v.source.as_str())
    }

    /// Runs every view downstream of `table` over `batch`, chains included, on the calling
    /// thread (blocking on `runtime`). `origins` name each row's Kafka offset, for quarantine
    /// rows of the views reading `table` directly.
    pub fn apply(
        &self,
        runtime: &tokio::runtime::Handle,
        table: &str,
        batch: &RecordBatch,
        origins: Option<&Origins>,
    ) -> Vec<ViewOutput> {
        let mut outputs = Vec::new();
        let mut pending: Vec<(String, RecordBatch, Option<&Origins>)> =
            vec![(table.to_string(), batch.clone(), origins)];
        while let Some((source, input, origins)) = pending.pop() {
            for view in self.views.iter().filter(|v| v.source == source) {
                let out = view.apply(runtime, &input, origins);
                pending.push((view.target.name.clone(), out.batch.clone(), None));
                outputs.push(out);
            }
        }
        outputs
    }
}

async fn compile(config: &Config, v: &ViewConfig) -> Result<CompiledView, TransformError> {
    let (Some(source), Some(target)) = (config.table(&v.source), config.table(&v.target)) else {
        unreachable!("Config::validate checks that a view's tables exist");
    };
    let plan_err = |e: DataFusionError| TransformError::Plan {
        view: v.name.clone(),
        source_table: v.source.clone(),
        reason: e.to_string(),
    };
    let ctx = view_session();
    let empty = MemTable::try_new(source.arrow_schema(), vec![vec![]]).map_err(plan_err)?;
    ctx.register_table(v.source.as_str(), Arc::new(empty))
        .map_err(plan_err)?;
    let plan = ctx
        .state()
        .create_logical_plan(&v.sql)
        .await
        .map_err(plan_err)?;
    let states = check_shape(v, target, &plan)?;
    let columns = check_output(v, target, &plan, &states)?;
    let state = ctx.state();
    let plan = state.optimize(&plan).map_err(plan_err)?;
    Ok(CompiledView {
        name: v.name.clone(),
        source: v.source.clone(),
        target: Arc::new(target.clone()),
        target_schema: target.arrow_schema(),
        state,
        plan,
        columns,
    })
}

/// Refuses plans a batch cannot answer on its own; returns the aggregate states the plan
/// computes (output name -> function) if it aggregates.
fn check_shape(
    v: &ViewConfig,
    target: &TableConfig,
    plan: &LogicalPlan,
) -> Result<Option<BTreeMap<String, String>>, TransformError> {
    let refuse = |what: &str, reason: String| TransformError::Shape {
        view: v.name.clone(),
        what: what.to_string(),
        reason,
    };
    let mut aggregate: Option<BTreeMap<String, String>> = None;
    let mut problem: Option<TransformError> = None;
    // The allowed plans are chains (no joins, no unions), visited from the top: a filter met
    // before the aggregation is above it (HAVING), one met after it is a WHERE.
    let mut filter_above = false;
    plan.apply(|node| {
        let bad = |what: &str| Some(refuse(what, format!("its query has {}", node.display())));
        problem = match node {
            LogicalPlan::Projection(_) | LogicalPlan::SubqueryAlias(_) => None,
            LogicalPlan::TableScan(_) => None,
            LogicalPlan::Filter(_) => {
                filter_above |= aggregate.is_none();
                None
            }
            LogicalPlan::Aggregate(_) if aggregate.is_some() => bad("more than one aggregation"),
            LogicalPlan::Aggregate(_) if filter_above => {
                bad("filters on aggregated totals (HAVING)")
            }
            LogicalPlan::Aggregate(a) => match aggregate_states(&a.aggr_expr) {
                Ok(states) => {
                    aggregate = Some(states);
                    None
                }
                Err((what, reason)) => Some(refuse(&what, reason)),
            },
            LogicalPlan::Sort(_) => bad("ORDER BY"),
            LogicalPlan::Limit(_) => bad("LIMIT"),
            LogicalPlan::Join(_) => bad("joins"),
            LogicalPlan::Window(_) => bad("window functions"),
            LogicalPlan::Distinct(_) => bad("DISTINCT"),
            LogicalPlan::Union(_) => bad("UNION"),
            _ => bad("anything but a SELECT over the source table"),
        };
        Ok(if problem.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    })
    .map_err(|e| refuse("this", e.to_string()))?;
    if let Some(p) = problem {
        return Err(p);
    }
    match (&aggregate, target.is_aggregating()) {
        (Some(_), false) => Err(TransformError::Output {
            view: v.name.clone(),
            target: target.name.clone(),
            reason: "the query aggregates, and the table has no aggregate columns".into(),
            fix: "mark the table's aggregated columns with `aggregate = \"count\"` (or sum, min, max, approx_distinct)".into(),
        }),
        (None, true) => Err(TransformError::Output {
            view: v.name.clone(),
            target: target.name.clone(),
            reason: "the table holds aggregate states, and the query does not aggregate".into(),
            fix: "GROUP BY the table's other columns, or write to a table without `aggregate` columns".into(),
        }),
        _ => Ok(aggregate),
    }
}

/// Matches the plan's output to the target's columns; returns each target column's position.
fn check_output(
    v: &ViewConfig,
    target: &TableConfig,
    plan: &LogicalPlan,
    states: &Option<BTreeMap<String, String>>,
) -> Result<Vec<usize>, TransformError> {
    let output = |reason: String, fix: String| TransformError::Output {
        view: v.name.clone(),
        target: target.name.clone(),
        reason,
        fix,
    };
    let schema = plan.schema();
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let extra: Vec<&String> = names
        .iter()
        .filter(|n| target.column(n).is_none())
        .collect();
    if !extra.is_empty() {
        return Err(output(
            format!("the query gives columns the table does not have: {extra:?}"),
            "name every output column after a column of the table (`... AS name`), or add the columns to the table".into(),
        ));
    }
    // The projection's expressions, to see what computes an aggregate column.
    let exprs: Option<Vec<Expr>> = match plan {
        LogicalPlan::Projection(p) => Some(p.expr.clone()),
        _ => None,
    };
    let mut columns = Vec::with_capacity(target.columns.len());
    for col in &target.columns {
        let Some(i) = names.iter().position(|n| *n == col.name) else {
            return Err(output(
                format!("the query gives no column `{}`", col.name),
                format!("select a value `AS {}`", col.name),
            ));
        };
        let field = schema.field(i);
        if field.data_type() != &col.stored_type() {
            return Err(output(
                format!(
                    "column `{}` is {} in the query and {} in the table ({})",
                    col.name,
                    field.data_type(),
                    col.stored_type(),
                    col.column_type
                ),
                "cast it in the query (`CAST(... AS ...)`), or declare the column's type to match"
                    .into(),
            ));
        }
        if field.is_nullable() && !col.nullable {
            return Err(output(
                format!("column `{}` may be null in the query, and the table declares it `nullable = false`", col.name),
                "declare it nullable, or make the query's value non-null (e.g. `coalesce(...)`)".into(),
            ));
        }
        if let (Some(states), Some(exprs)) = (states, &exprs) {
            let state = match exprs[i].clone().unalias_nested().data {
                Expr::Column(c) => states.get(&c.name).cloned(),
                _ => None,
            };
            match (col.aggregate, state) {
                (Some(agg), Some(f)) if f == agg.function() => {}
                (Some(agg), _) => {
                    return Err(output(
                        format!("column `{}` holds `{}` states, and the query does not give it exactly `{}(...)`", col.name, agg.function(), agg.function()),
                        format!("select `{}(...) AS {}`, with no arithmetic around it", agg.function(), col.name),
                    ));
                }
                (None, Some(f)) => {
                    return Err(output(
                        format!("column `{}` is a grouping column in the table, and the query gives it `{f}(...)`", col.name),
                        format!("mark it `aggregate = \"{f}\"` in the table, or give it a GROUP BY expression"),
                    ));
                }
                (None, None) => {
                    if references_state(&exprs[i], states) {
                        return Err(output(
                            format!("column `{}` is a grouping column and the query computes it from aggregates", col.name),
                            "compute grouping columns from the GROUP BY expressions only".into(),
                        ));
                    }
                }
            }
        }
        columns.push(i);
    }
    if let Some(states) = states {
        let wanted: Vec<Aggregate> = target.columns.iter().filter_map(|c| c.aggregate).collect();
        if wanted.is_empty() || states.is_empty() {
            return Err(output(
                "the query aggregates nothing into the table's aggregate columns".into(),
                "select count(...), sum(...), min(...), max(...) or approx_distinct(...) AS each of them".into(),
            ));
        }
    }
    Ok(columns)
}

/// The aggregation's output names and functions, if each is a mergeable partial state.
fn aggregate_states(exprs: &[Expr]) -> Result<BTreeMap<String, String>, (String, String)> {
    let mut states = BTreeMap::new();
    for e in exprs {
        let Expr::AggregateFunction(f) = e.clone().unalias_nested().data else {
            return Err((
                e.to_string(),
                format!("`{e}` is not an aggregate function call"),
            ));
        };
        let name = f.func.name().to_string();
        if !["count", "sum", "min", "max", "approx_distinct"].contains(&name.as_str()) {
            return Err((
                format!("{name}(...)"),
                format!("it aggregates with {name}, which has no mergeable partial state here"),
            ));
        }
        if f.params.distinct {
            return Err((
                format!("{name}(DISTINCT ...)"),
                "a distinct count over one batch does not add up across batches; use approx_distinct".into(),
            ));
        }
        if !f.params.order_by.is_empty() {
            return Err((
                "ordered aggregates".into(),
                format!("{name} has an ORDER BY"),
            ));
        }
        states.insert(e.schema_name().to_string(), name);
    }
    Ok(states)
}

fn references_state(e: &Expr, states: &BTreeMap<String, String>) -> bool {
    let mut found = false;
    let _ = e.apply(|e| {
        if let Expr::Column(c) = e {
            found |= states.contains_key(&c.name);
        }
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

impl CompiledView {
    /// The view over one batch; rows it fails on are isolated by halving and quarantined.
    fn apply(
        &self,
        runtime: &tokio::runtime::Handle,
        input: &RecordBatch,
        origins: Option<&Origins>,
    ) -> ViewOutput {
        let mut batches = Vec::new();
        let mut quarantine = Vec::new();
        if input.num_rows() > 0 {
            self.isolate(
                runtime,
                input,
                0,
                input.num_rows(),
                origins,
                &mut batches,
                &mut quarantine,
            );
        }
        if !quarantine.is_empty() {
            tracing::warn!(view = %self.name, failed_rows = quarantine.len(), rows = input.num_rows(), "view failed on some rows; they go to the quarantine of its target table");
        }
        let batch = concat_batches(&self.target_schema, &batches)
            .unwrap_or_else(|_| RecordBatch::new_empty(Arc::clone(&self.target_schema)));
        ViewOutput {
            view: self.name.clone(),
            target: Arc::clone(&self.target),
            batch,
            quarantine,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn isolate(
        &self,
        runtime: &tokio::runtime::Handle,
        input: &RecordBatch,
        start: usize,
        len: usize,
        origins: Option<&Origins>,
        batches: &mut Vec<RecordBatch>,
        quarantine: &mut Vec<QuarantineRow>,
    ) {
        let slice = input.slice(start, len);
        match runtime.block_on(self.run(&slice)) {
            Ok(out) => batches.push(out),
            Err(e) if len == 1 => quarantine.push(QuarantineRow {
                offset: origins.and_then(|o| o.offsets.get(start).copied()),
                timestamp_ms: origins.and_then(|o| o.timestamps_ms.get(start).copied().flatten()),
                raw: row_json(&slice),
                reason: QuarantineReason::ViewFailed,
                error: format!("view `{}`: {e}", self.name),
                view: Some(self.name.clone()),
            }),
            Err(_) => {
                let half = len / 2;
                self.isolate(runtime, input, start, half, origins, batches, quarantine);
                self.isolate(
                    runtime,
                    input,
                    start + half,
                    len - half,
                    origins,
                    batches,
                    quarantine,
                );
            }
        }
    }

    /// The planned query over `batch`: the plan's scan is pointed at the batch, and the plan
    /// is turned into an executable one (no parsing or logical optimization again).
    async fn run(&self, batch: &RecordBatch) -> Result<RecordBatch, DataFusionError> {
        let table = Arc::new(MemTable::try_new(
            batch.schema(),
            vec![vec![batch.clone()]],
        )?);
        let plan = self
            .plan
            .clone()
            .transform_up(|node| match node {
                LogicalPlan::TableScan(mut scan) => {
                    scan.source = provider_as_source(Arc::clone(&table) as _);
                    Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
                }
                other => Ok(Transformed::no(other)),
            })?
            .data;
        let physical = self
            .state
            .query_planner()
            .create_physical_plan(&plan, &self.state)
            .await?;
        let out = datafusion::physical_plan::collect(physical, self.state.task_ctx()).await?;
        let schema = Arc::new(plan.schema().as_arrow().clone());
        let out = concat_batches(&schema, &out)?;
        let columns: Vec<ArrayRef> = self
            .columns
            .iter()
            .map(|&i| Arc::clone(out.column(i)))
            .collect();
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.target_schema),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(out.num_rows())),
        )?)
    }
}

/// One row as a JSON object: what a view failed on, kept for the quarantine.
fn row_json(row: &RecordBatch) -> Vec<u8> {
    let mut out = Vec::new();
    let mut writer = arrow::json::LineDelimitedWriter::new(&mut out);
    if writer.write(row).and_then(|()| writer.finish()).is_err() {
        return format!("{row:?}").into_bytes();
    }
    while out.last() == Some(&b'\n') {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        AsArray, Float64Array, StringArray, TimestampMillisecondArray, UInt64Array,
    };
    use arrow::datatypes::{Int64Type, UInt64Type};

    /// A landing table, an error-only view, a per-minute aggregation and a chained aggregation
    /// over the errors; `extra` is appended (more tables and views).
    fn config(extra: &str) -> String {
        format!(
            r#"
[kafka]
bootstrap_servers = "x:1"

[[table]]
name = "events"
topic = "events"
[[table.column]]
name = "seq"
type = "uint64"
nullable = false
[[table.column]]
name = "ts"
type = "timestamp_ms"
nullable = false
[[table.column]]
name = "country"
type = "string"
[[table.column]]
name = "duration_ms"
type = "float64"
[[table.column]]
name = "ok"
type = "boolean"

[[table]]
name = "errors"
sorting_key = ["seq"]
[[table.column]]
name = "seq"
type = "uint64"
nullable = false
[[table.column]]
name = "country"
type = "string"

[[view]]
name = "errors_only"
source = "events"
target = "errors"
sql = "SELECT seq, country FROM events WHERE NOT ok"

[[table]]
name = "per_minute"
sorting_key = ["minute", "country"]
[[table.column]]
name = "minute"
type = "timestamp_ms"
[[table.column]]
name = "country"
type = "string"
[[table.column]]
name = "events"
type = "int64"
aggregate = "count"
[[table.column]]
name = "duration_ms"
type = "float64"
aggregate = "sum"
[[table.column]]
name = "users"
type = "uint64"
aggregate = "approx_distinct"

[[view]]
name = "minutes"
source = "events"
target = "per_minute"
sql = """
SELECT date_trunc('minute', ts) AS minute, country, count(*) AS events,
       sum(duration_ms) AS duration_ms, approx_distinct(seq) AS users
FROM events GROUP BY date_trunc('minute', ts), country
"""

[[table]]
name = "errors_by_country"
[[table.column]]
name = "country"
type = "string"
[[table.column]]
name = "errors"
type = "int64"
aggregate = "count"

[[view]]
name = "error_countries"
source = "errors"
target = "errors_by_country"
sql = "SELECT country, count(*) AS errors FROM errors GROUP BY country"
{extra}"#
        )
    }

    fn parse(text: &str) -> Config {
        Config::from_toml_str(text, "test").unwrap()
    }

    fn events(n: u64) -> RecordBatch {
        let c = parse(&config(""));
        let schema = c.table("events").unwrap().arrow_schema();
        let countries = ["de", "fr", "us"];
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(UInt64Array::from_iter_values(0..n)),
                Arc::new(
                    TimestampMillisecondArray::from_iter_values(
                        (0..n).map(|i| 1_795_132_800_000 + i as i64 * 7_000),
                    )
                    .with_timezone("UTC"),
                ),
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| countries[(i % 3) as usize]),
                )),
                Arc::new(Float64Array::from_iter_values(
                    (0..n).map(|i| i as f64 + 0.5),
                )),
                Arc::new(arrow::array::BooleanArray::from_iter(
                    (0..n).map(|i| Some(i % 4 != 1)),
                )),
            ],
        )
        .unwrap()
    }

    async fn compile_err(extra: &str) -> String {
        let c = parse(&config(extra));
        Views::compile(&c).await.unwrap_err().to_string()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn views_filter_aggregate_and_chain() {
        let c = parse(&config(""));
        let views = Views::compile(&c).await.unwrap();
        let batch = events(200);
        let runtime = tokio::runtime::Handle::current();
        let out =
            tokio::task::spawn_blocking(move || views.apply(&runtime, "events", &batch, None))
                .await
                .unwrap();
        let by = |name: &str| out.iter().find(|o| o.view == name).unwrap();
        let errors = &by("errors_only").batch;
        let seqs: Vec<u64> = errors
            .column(0)
            .as_primitive::<UInt64Type>()
            .values()
            .to_vec();
        assert_eq!(seqs, (0..200).filter(|i| i % 4 == 1).collect::<Vec<_>>());
        let minutes = &by("minutes").batch;
        let counts: i64 = minutes
            .column_by_name("events")
            .unwrap()
            .as_primitive::<Int64Type>()
            .values()
            .iter()
            .sum();
        assert_eq!(counts, 200);
        assert_eq!(
            minutes.column_by_name("users").unwrap().data_type(),
            &arrow::datatypes::DataType::Binary,
            "approx_distinct stores a sketch"
        );
        // The chain: counted from the errors view's output.
        let chained: i64 = by("error_countries")
            .batch
            .column_by_name("errors")
            .unwrap()
            .as_primitive::<Int64Type>()
            .values()
            .iter()
            .sum();
        assert_eq!(chained, 50);
        assert!(out.iter().all(|o| o.quarantine.is_empty()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rows_a_view_fails_on_are_quarantined_and_the_rest_written() {
        let extra = r#"
[[table]]
name = "ratios"
[[table.column]]
name = "seq"
type = "uint64"
nullable = false
[[table.column]]
name = "ratio"
type = "int64"

[[view]]
name = "ratio_view"
source = "events"
target = "ratios"
sql = "SELECT seq, 1000 / (CAST(seq AS BIGINT) % 7) AS ratio FROM events"
"#;
        let c = parse(&config(extra));
        let views = Views::compile(&c).await.unwrap();
        let batch = events(100);
        let origins = Origins {
            offsets: (1_000..1_100).collect(),
            timestamps_ms: vec![Some(5); 100],
        };
        let runtime = tokio::runtime::Handle::current();
        let out = tokio::task::spawn_blocking(move || {
            views.apply(&runtime, "events", &batch, Some(&origins))
        })
        .await
        .unwrap();
        let r = out.iter().find(|o| o.view == "ratio_view").unwrap();
        let failed: Vec<i64> = r.quarantine.iter().map(|q| q.offset.unwrap()).collect();
        let expected: Vec<i64> = (0..100).filter(|i| i % 7 == 0).map(|i| 1_000 + i).collect();
        assert_eq!(failed, expected);
        assert_eq!(
            r.batch.num_rows() + r.quarantine.len(),
            100,
            "counts add up"
        );
        let q = &r.quarantine[1];
        assert_eq!(q.view.as_deref(), Some("ratio_view"));
        assert_eq!(q.reason, QuarantineReason::ViewFailed);
        assert!(
            q.error.contains("view `ratio_view`")
                && q.error.to_lowercase().contains("divide by zero"),
            "{}",
            q.error
        );
        let raw: serde_json::Value = serde_json::from_slice(&q.raw).unwrap();
        assert_eq!(raw["seq"], 7);
        // The other views were not affected.
        assert!(out
            .iter()
            .filter(|o| o.view != "ratio_view")
            .all(|o| o.quarantine.is_empty()));
    }

    /// The documented example's and the quickstart's views plan against their tables.
    #[tokio::test]
    async fn checked_in_configs_views_compile() {
        for file in ["sluice.example.toml", "quickstart.toml"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../config")
                .join(file);
            let config = Config::load(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(!config.views.is_empty(), "{file} has no views");
            let views = Views::compile(&config)
                .await
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(views.sources().count(), config.views.len());
        }
    }

    #[tokio::test]
    async fn invalid_views_are_refused_naming_the_view_and_the_problem() {
        let view = |name: &str, target: &str, sql: &str, table: &str| {
            format!("\n[[view]]\nname = \"{name}\"\nsource = \"events\"\ntarget = \"{target}\"\nsql = \"\"\"{sql}\"\"\"\n{table}")
        };
        let plain = |t: &str| {
            format!("\n[[table]]\nname = \"{t}\"\n[[table.column]]\nname = \"seq\"\ntype = \"uint64\"\n")
        };
        let counted = |t: &str| {
            format!("\n[[table]]\nname = \"{t}\"\n[[table.column]]\nname = \"country\"\ntype = \"string\"\n[[table.column]]\nname = \"n\"\ntype = \"int64\"\naggregate = \"count\"\n")
        };
        let cases: Vec<(String, &[&str])> = vec![
            (view("bad", "t", "SELEC seq FROM events", &plain("t")), &["view `bad`", "does not plan"]),
            (view("bad", "t", "SELECT nope AS seq FROM events", &plain("t")), &["view `bad`", "nope"]),
            (view("bad", "t", "SELECT seq FROM other", &plain("t")), &["view `bad`", "other"]),
            (view("bad", "t", "SELECT seq FROM events ORDER BY seq", &plain("t")), &["view `bad`", "ORDER BY"]),
            (view("bad", "t", "SELECT seq FROM events LIMIT 3", &plain("t")), &["view `bad`", "LIMIT"]),
            (view("bad", "t", "SELECT a.seq FROM events a JOIN events b ON a.seq = b.seq", &plain("t")), &["view `bad`", "joins"]),
            (view("bad", "c", "SELECT country, count(*) AS n FROM events GROUP BY country HAVING count(*) > 1", &counted("c")), &["view `bad`", "HAVING"]),
            (view("bad", "c", "SELECT country, count(DISTINCT seq) AS n FROM events GROUP BY country", &counted("c")), &["view `bad`", "approx_distinct"]),
            (view("bad", "c", "SELECT country, CAST(avg(seq) AS BIGINT) AS n FROM events GROUP BY country", &counted("c")), &["view `bad`", "avg"]),
            (view("bad", "c", "SELECT country, max(CAST(seq AS BIGINT)) AS n FROM events GROUP BY country", &counted("c")), &["view `bad`", "`count`"]),
            (view("bad", "c", "SELECT country, count(*) * 2 AS n FROM events GROUP BY country", &counted("c")), &["view `bad`", "exactly `count(...)`"]),
            (view("bad", "t", "SELECT CAST(seq AS INT) AS seq FROM events", &plain("t")), &["view `bad`", "column `seq`", "Int32"]),
            (view("bad", "t", "SELECT seq, country FROM events", &plain("t")), &["view `bad`", "country"]),
            (view("bad", "t", "SELECT seq AS other FROM events", &plain("t")), &["view `bad`", "other"]),
            (view("bad", "t", "SELECT seq FROM events GROUP BY seq", &plain("t")), &["view `bad`", "aggregates"]),
            (view("bad", "c", "SELECT country, CAST(seq AS BIGINT) AS n FROM events", &counted("c")), &["view `bad`", "does not aggregate"]),
        ];
        for (extra, wanted) in cases {
            let e = compile_err(&extra).await;
            for w in wanted {
                assert!(e.contains(w), "expected `{w}` in: {e}\nfor {extra}");
            }
        }
    }
}
