//! Running a planned view over one batch: the plan's scan is pointed at the batch and the plan
//! executed. A view that fails on a batch is run again on halves of it until the rows it fails
//! on are isolated; those become quarantine rows naming the view, the rest is the output.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::compute::concat_batches;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::{provider_as_source, MemTable};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use sluice_decode::{Origins, QuarantineReason, QuarantineRow};

use crate::compile::CompiledView;
use crate::ViewOutput;

impl CompiledView {
    /// The view over one batch; rows it fails on are isolated by halving and quarantined.
    pub(crate) fn apply(
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
