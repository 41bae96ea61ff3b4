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
//!
//! How to read it: this file holds the API the worker uses ([`Views`], [`ViewOutput`],
//! [`TransformError`]); `compile.rs` plans a view and refuses what cannot work; `apply.rs` runs
//! a planned view over a batch and quarantines the rows it fails on; [`udaf`] and [`hll`] are
//! the `approx_distinct` partial state and its sketch; `tests.rs` has the tests.

use std::sync::Arc;

use arrow::array::RecordBatch;
use sluice_config::{Config, TableConfig};
use sluice_decode::{Origins, QuarantineRow};

mod apply;
mod compile;
pub mod hll;
#[cfg(test)]
mod tests;
pub mod udaf;

use compile::CompiledView;

/// Why a view was refused at start-up. DataFusion's own errors are kept as their message, not
/// as a source: they repeat themselves through their sources, so a printed chain would show
/// the same text several times.
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
            views.push(compile::compile(config, v).await?);
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
        self.apply_where(runtime, table, batch, origins, &|_| true)
    }

    /// [`Self::apply`] with only the views `wanted` names: the ones live in the fleet's view
    /// registry for a flush, one view for its history. A chain goes on only through views that
    /// ran.
    pub fn apply_where(
        &self,
        runtime: &tokio::runtime::Handle,
        table: &str,
        batch: &RecordBatch,
        origins: Option<&Origins>,
        wanted: &dyn Fn(&str) -> bool,
    ) -> Vec<ViewOutput> {
        let mut outputs = Vec::new();
        let mut pending: Vec<(String, RecordBatch, Option<&Origins>)> =
            vec![(table.to_string(), batch.clone(), origins)];
        while let Some((source, input, origins)) = pending.pop() {
            for view in self
                .views
                .iter()
                .filter(|v| v.source == source && wanted(&v.name))
            {
                let out = view.apply(runtime, &input, origins);
                pending.push((view.target.name.clone(), out.batch.clone(), None));
                outputs.push(out);
            }
        }
        outputs
    }
}
