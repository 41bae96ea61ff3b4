//! Combining the partial states of equal groups in an aggregating table's merged rows.
//!
//! The merged rows come in sorting-key order, and rows of one group share their sorting-key
//! values (the sorting key is made of group columns), so each group lives within one *run* of
//! equal sorting-key values. The run's groups are kept in a map from their group key (in the
//! row format, so a null is a key of its own and equal keys are equal bytes) to a group
//! number; when the run ends its groups are finished in group-key order, which keeps the output
//! sorted by the sorting key, and whole batches of finished groups are handed out.

use std::collections::HashMap;

use arrow::array::{Array, ArrayRef};
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use arrow::row::OwnedRow;
use arrow::util::display::array_value_to_string;
use sluice_config::TableConfig;

use super::kway::Key;
use super::states::{AggState, FoldError, Prepared};
use super::MergeError;

pub(super) struct Combiner {
    table: String,
    /// The merged part's path, for errors.
    output: String,
    schema: SchemaRef,
    /// The sorting key: where runs end.
    run_key: Key,
    /// Every column without an aggregate, in schema order.
    group_key: Key,
    states: Vec<AggState>,
    /// The sorting-key values of the current run.
    run: Option<OwnedRow>,
    /// The current run's groups: group key -> group number.
    open: HashMap<Box<[u8]>, usize>,
    /// Groups of ended runs, in output order, not yet handed out: group key and number.
    finished: Vec<(Box<[u8]>, usize)>,
    batch_rows: usize,
}

impl Combiner {
    pub(super) fn new(
        table: &TableConfig,
        output: &str,
        schema: &SchemaRef,
        batch_rows: usize,
    ) -> Result<Combiner, ArrowError> {
        let mut states = Vec::new();
        let mut group_names = Vec::new();
        for (i, c) in table.columns.iter().enumerate() {
            match c.aggregate {
                Some(a) => states.push(AggState::new(i, &c.name, a, schema.field(i).data_type())?),
                None => group_names.push(c.name.clone()),
            }
        }
        Ok(Combiner {
            table: table.name.clone(),
            output: output.to_string(),
            schema: SchemaRef::clone(schema),
            run_key: Key::new(schema, &table.sorting_key)?,
            group_key: Key::new(schema, &group_names)?,
            states,
            run: None,
            open: HashMap::new(),
            finished: Vec::new(),
            batch_rows,
        })
    }

    /// Folds a batch of merged rows into their groups; returns the batches of finished
    /// groups that are ready.
    pub(super) fn push(&mut self, batch: &RecordBatch) -> Result<Vec<RecordBatch>, MergeError> {
        let runs = self.run_key.rows(batch).map_err(|e| self.rows_err(e))?;
        let groups = self.group_key.rows(batch).map_err(|e| self.rows_err(e))?;
        let prepared: Vec<Prepared<'_>> = self
            .states
            .iter()
            .map(|s| s.prepare(batch.column(s.column)))
            .collect::<Result<_, _>>()
            .map_err(|e| self.rows_err(e))?;
        let mut out = Vec::new();
        for row in 0..batch.num_rows() {
            if self.run.as_ref().is_none_or(|r| r.row() != runs.row(row)) {
                out.extend(self.end_run()?);
                self.run = Some(runs.row(row).owned());
            }
            let group = self.group_of(groups.row(row).data());
            let failed = self
                .states
                .iter_mut()
                .zip(&prepared)
                .find_map(|(s, input)| s.add(group, input, row).err().map(|e| (s.column, e)));
            if let Some((column, e)) = failed {
                return Err(self.fold_err(column, batch, row, e));
            }
        }
        Ok(out)
    }

    /// The groups still held, once the merged rows have all been pushed.
    pub(super) fn finish(&mut self) -> Result<Vec<RecordBatch>, MergeError> {
        let mut out: Vec<RecordBatch> = self.end_run()?.into_iter().collect();
        if !self.finished.is_empty() {
            out.push(self.emit().map_err(|e| self.rows_err(e))?);
        }
        Ok(out)
    }

    /// The number of the group with this key in the current run, a new one if it has none.
    fn group_of(&mut self, key: &[u8]) -> usize {
        if let Some(&g) = self.open.get(key) {
            return g;
        }
        // Numbers continue after the finished groups: the states hold both until emitted.
        let g = self.finished.len() + self.open.len();
        self.open.insert(key.into(), g);
        g
    }

    /// Ends the current run: its groups join the finished ones in group-key order (the row
    /// format's byte order is the sort order). Returns a batch if enough groups are finished.
    fn end_run(&mut self) -> Result<Option<RecordBatch>, MergeError> {
        let mut run: Vec<(Box<[u8]>, usize)> = self.open.drain().collect();
        run.sort_unstable();
        self.finished.extend(run);
        if self.finished.len() < self.batch_rows {
            return Ok(None);
        }
        self.emit().map(Some).map_err(|e| self.rows_err(e))
    }

    /// The finished groups as a batch in the table's schema; called between runs only, so no
    /// open group holds a state.
    fn emit(&mut self) -> Result<RecordBatch, ArrowError> {
        let order: Vec<usize> = self.finished.iter().map(|(_, g)| *g).collect();
        let parser = self.group_key.converter.parser();
        let keys = self
            .group_key
            .converter
            .convert_rows(self.finished.iter().map(|(k, _)| parser.parse(k)))?;
        self.finished.clear();
        let mut columns: Vec<Option<ArrayRef>> = vec![None; self.schema.fields().len()];
        for (&i, array) in self.group_key.columns.iter().zip(keys) {
            columns[i] = Some(array);
        }
        for state in &mut self.states {
            columns[state.column] = Some(state.finish(&order)?);
        }
        let columns = columns
            .into_iter()
            .map(|c| c.expect("every column is a key or a state"));
        RecordBatch::try_new(SchemaRef::clone(&self.schema), columns.collect())
    }

    /// The error of folding row `row` of `batch` into column `column`'s states.
    fn fold_err(&self, column: usize, batch: &RecordBatch, row: usize, e: FoldError) -> MergeError {
        let name = self.schema.field(column).name().clone();
        match e {
            FoldError::Overflow => MergeError::Overflow {
                table: self.table.clone(),
                column: name,
                group: describe_group(&self.group_key, batch, row),
            },
            FoldError::Sketch(source) => MergeError::Sketch {
                table: self.table.clone(),
                path: self.output.clone(),
                column: name,
                source,
            },
        }
    }

    fn rows_err(&self, source: ArrowError) -> MergeError {
        MergeError::Rows {
            table: self.table.clone(),
            path: self.output.clone(),
            source,
        }
    }
}

/// `name=value, ...` of the group columns of one row, for an error.
fn describe_group(group_key: &Key, batch: &RecordBatch, row: usize) -> String {
    group_key
        .columns
        .iter()
        .map(|&i| {
            let column = batch.column(i);
            let value = match column.is_null(row) {
                true => "null".to_string(),
                false => array_value_to_string(column, row).unwrap_or_default(),
            };
            format!("{}={value}", batch.schema().field(i).name())
        })
        .collect::<Vec<_>>()
        .join(", ")
}
