//! Planning and checking a view, once at start-up: the SQL is planned with DataFusion against an
//! empty table of the source's schema, then refused if a batch cannot answer it on its own
//! ([`check_shape`]) or if its output does not fit the target table ([`check_output`]). Every
//! refusal names the view, what is wrong and how to fix it.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::{Field, SchemaRef};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::prelude::{SessionConfig, SessionContext};
use sluice_config::{Aggregate, ColumnConfig, Config, TableConfig, ViewConfig};

use crate::{udaf, TransformError};

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
pub(crate) struct CompiledView {
    pub(crate) name: String,
    pub(crate) source: String,
    pub(crate) target: Arc<TableConfig>,
    pub(crate) target_schema: SchemaRef,
    pub(crate) state: SessionState,
    pub(crate) plan: LogicalPlan,
    /// For each target column in order, its position in the plan's output.
    pub(crate) columns: Vec<usize>,
}

/// Plans view `v` against its source table and checks it (see the module docs).
pub(crate) async fn compile(
    config: &Config,
    v: &ViewConfig,
) -> Result<CompiledView, TransformError> {
    let (Some(source), Some(target)) = (config.table(&v.source), config.table(&v.target)) else {
        unreachable!("Config::validate checks that a view's tables exist");
    };
    let plan_err = |e: DataFusionError| TransformError::Plan {
        view: v.name.clone(),
        source_table: v.source.clone(),
        reason: e.strip_backtrace(),
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
        (Some(_), false) => Err(misfit(v, target, (
            "the query aggregates, and the table has no aggregate columns".into(),
            "mark the table's aggregated columns with `aggregate = \"count\"` (or sum, min, max, approx_distinct)".into(),
        ))),
        (None, true) => Err(misfit(v, target, (
            "the table holds aggregate states, and the query does not aggregate".into(),
            "GROUP BY the table's other columns, or write to a table without `aggregate` columns".into(),
        ))),
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
    let output = |problem: (String, String)| misfit(v, target, problem);
    let schema = plan.schema();
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let extra: Vec<&String> = names
        .iter()
        .filter(|n| target.column(n).is_none())
        .collect();
    if !extra.is_empty() {
        return Err(output((
            format!("the query gives columns the table does not have: {extra:?}"),
            "name every output column after a column of the table (`... AS name`), or add the columns to the table".into(),
        )));
    }
    // The projection's expressions, to see what computes an aggregate column.
    let exprs: Option<Vec<Expr>> = match plan {
        LogicalPlan::Projection(p) => Some(p.expr.clone()),
        _ => None,
    };
    let mut columns = Vec::with_capacity(target.columns.len());
    for col in &target.columns {
        let Some(i) = names.iter().position(|n| *n == col.name) else {
            return Err(output((
                format!("the query gives no column `{}`", col.name),
                format!("select a value `AS {}`", col.name),
            )));
        };
        check_field(col, schema.field(i)).map_err(output)?;
        if let (Some(states), Some(exprs)) = (states, &exprs) {
            check_state(col, &exprs[i], states).map_err(output)?;
        }
        columns.push(i);
    }
    if let Some(states) = states {
        let wanted: Vec<Aggregate> = target.columns.iter().filter_map(|c| c.aggregate).collect();
        if wanted.is_empty() || states.is_empty() {
            return Err(output((
                "the query aggregates nothing into the table's aggregate columns".into(),
                "select count(...), sum(...), min(...), max(...) or approx_distinct(...) AS each of them".into(),
            )));
        }
    }
    Ok(columns)
}

/// The refusal of a view whose output does not fit its target table; `problem` is the reason
/// and the fix.
fn misfit(v: &ViewConfig, target: &TableConfig, problem: (String, String)) -> TransformError {
    let (reason, fix) = problem;
    TransformError::Output {
        view: v.name.clone(),
        target: target.name.clone(),
        reason,
        fix,
    }
}

/// The query's output field against its target column: the same type, and not nullable where
/// the column is not. Err: the reason and the fix.
fn check_field(col: &ColumnConfig, field: &Field) -> Result<(), (String, String)> {
    if field.data_type() != &col.stored_type() {
        return Err((
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
        return Err((
            format!("column `{}` may be null in the query, and the table declares it `nullable = false`", col.name),
            "declare it nullable, or make the query's value non-null (e.g. `coalesce(...)`)".into(),
        ));
    }
    Ok(())
}

/// In an aggregating view, what the query computes for a target column (`expr`) against what
/// the column holds: an aggregate column exactly its function's state, a grouping column no
/// aggregate at all. Err: the reason and the fix.
fn check_state(
    col: &ColumnConfig,
    expr: &Expr,
    states: &BTreeMap<String, String>,
) -> Result<(), (String, String)> {
    let state = match expr.clone().unalias_nested().data {
        Expr::Column(c) => states.get(&c.name).cloned(),
        _ => None,
    };
    match (col.aggregate, state) {
        (Some(agg), Some(f)) if f == agg.function() => Ok(()),
        (Some(agg), _) => Err((
            format!(
                "column `{}` holds `{}` states, and the query does not give it exactly `{}(...)`",
                col.name,
                agg.function(),
                agg.function()
            ),
            format!(
                "select `{}(...) AS {}`, with no arithmetic around it",
                agg.function(),
                col.name
            ),
        )),
        (None, Some(f)) => Err((
            format!(
                "column `{}` is a grouping column in the table, and the query gives it `{f}(...)`",
                col.name
            ),
            format!("mark it `aggregate = \"{f}\"` in the table, or give it a GROUP BY expression"),
        )),
        (None, None) if references_state(expr, states) => Err((
            format!(
                "column `{}` is a grouping column and the query computes it from aggregates",
                col.name
            ),
            "compute grouping columns from the GROUP BY expressions only".into(),
        )),
        (None, None) => Ok(()),
    }
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

/// Whether `e` reads an aggregate's output.
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
