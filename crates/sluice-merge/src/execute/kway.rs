//! The k-way merge: the inputs' rows in key order, a batch at a time.
//!
//! Each input has a cursor on its current batch, whose key columns are converted once to
//! Arrow's row format, so comparing two rows is comparing two byte strings. The next row is
//! the smallest head among the cursors; a merge has at most `fan_in` inputs (ten by default),
//! for which a linear scan costs about what a heap's sift would, without its bookkeeping.
//! Rows are picked as (batch, row) pairs and gathered into the output batch with
//! `interleave_record_batch`, so every column is copied once, whatever its type.

use std::cmp::Ordering;
use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef};
use arrow::compute::{interleave_record_batch, SortOptions};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use arrow::row::{Row, RowConverter, Rows, SortField};

use super::input::Input;
use super::{column_indices, MergeError};

/// The sink's order: ascending, nulls first.
pub(super) const ORDER: SortOptions = SortOptions {
    descending: false,
    nulls_first: true,
};

/// An input with rows left, positioned at its next row.
struct Cursor {
    input: Input,
    /// The input's place in the merge's list: ties between equal keys go to the earlier one.
    order: usize,
    batch: RecordBatch,
    keys: Rows,
    pos: usize,
    /// Where `batch` is in [`Merger::staged`].
    slot: usize,
}

impl Cursor {
    fn head(&self) -> Row<'_> {
        self.keys.row(self.pos)
    }
}

pub(super) struct Merger {
    table: String,
    output: String,
    key_names: String,
    key: Key,
    cursors: Vec<Cursor>,
    /// Every batch the picked rows come from: the cursors' current batches, and batches they
    /// have finished since the last output batch.
    staged: Vec<RecordBatch>,
    /// The rows of the next output batch, as (index into `staged`, row).
    picks: Vec<(usize, usize)>,
    batch_rows: usize,
}

impl Merger {
    /// Reads the first batch of every input; inputs without rows are done at once.
    pub(super) async fn new(
        table: &str,
        output: &str,
        schema: &SchemaRef,
        inputs: Vec<Input>,
        key: &[String],
        batch_rows: usize,
    ) -> Result<Merger, MergeError> {
        let mut merger = Merger {
            table: table.to_string(),
            output: output.to_string(),
            key_names: key.join(", "),
            key: Key::new(schema, key).map_err(|e| rows_err(table, output, e))?,
            cursors: Vec::with_capacity(inputs.len()),
            staged: Vec::with_capacity(inputs.len() * 2),
            picks: Vec::with_capacity(batch_rows),
            batch_rows,
        };
        for (order, mut input) in inputs.into_iter().enumerate() {
            if let Some(batch) = input.next_batch().await? {
                let keys = merger.keys(&input, &batch, None)?;
                merger.cursors.push(Cursor {
                    input,
                    order,
                    batch: batch.clone(),
                    keys,
                    pos: 0,
                    slot: merger.staged.len(),
                });
                merger.staged.push(batch);
            }
        }
        Ok(merger)
    }

    /// The next up to `batch_rows` rows in key order; `None` once every input is done (and
    /// has been found to hold its registered rows).
    pub(super) async fn next_batch(&mut self) -> Result<Option<RecordBatch>, MergeError> {
        while self.picks.len() < self.batch_rows {
            let Some(i) = self.smallest() else { break };
            let c = &mut self.cursors[i];
            self.picks.push((c.slot, c.pos));
            c.pos += 1;
            if c.pos == c.batch.num_rows() {
                self.advance(i).await?;
            }
        }
        if self.picks.is_empty() {
            return Ok(None);
        }
        let sources: Vec<&RecordBatch> = self.staged.iter().collect();
        let batch = interleave_record_batch(&sources, &self.picks)
            .map_err(|e| rows_err(&self.table, &self.output, e))?;
        self.restage();
        Ok(Some(batch))
    }

    /// The cursor with the smallest head, the earliest input among equals.
    fn smallest(&self) -> Option<usize> {
        (0..self.cursors.len()).min_by(|&a, &b| {
            let (a, b) = (&self.cursors[a], &self.cursors[b]);
            a.head().cmp(&b.head()).then(a.order.cmp(&b.order))
        })
    }

    /// Moves cursor `i` to its input's next batch, or drops it at the input's end.
    async fn advance(&mut self, i: usize) -> Result<(), MergeError> {
        let Some(batch) = self.cursors[i].input.next_batch().await? else {
            // Order among the remaining cursors is by `order`, not position: any removal works.
            self.cursors.swap_remove(i);
            return Ok(());
        };
        let c = &self.cursors[i];
        let last = c.keys.row(c.keys.num_rows() - 1);
        let keys = self.keys(&c.input, &batch, Some(last))?;
        let slot = self.staged.len();
        self.staged.push(batch.clone());
        let c = &mut self.cursors[i];
        (c.batch, c.keys, c.pos, c.slot) = (batch, keys, 0, slot);
        Ok(())
    }

    /// After an output batch: only the cursors' current batches stay staged.
    fn restage(&mut self) {
        self.picks.clear();
        self.staged.clear();
        for c in &mut self.cursors {
            c.slot = self.staged.len();
            self.staged.push(c.batch.clone());
        }
    }

    /// The key rows of a new batch of `input`, checked to continue its order from `last`, the
    /// previous batch's last key.
    fn keys(
        &self,
        input: &Input,
        batch: &RecordBatch,
        last: Option<Row<'_>>,
    ) -> Result<Rows, MergeError> {
        let keys = self
            .key
            .rows(batch)
            .map_err(|e| rows_err(&self.table, &self.output, e))?;
        let mut previous = last;
        for (i, row) in keys.iter().enumerate() {
            if previous.is_some_and(|p| p.cmp(&row) == Ordering::Greater) {
                let first = input.read - batch.num_rows() as u64;
                return Err(MergeError::Unsorted {
                    table: self.table.clone(),
                    path: input.path.clone(),
                    key: self.key_names.clone(),
                    row: first + i as u64,
                });
            }
            previous = Some(row);
        }
        Ok(keys)
    }
}

/// Some columns of the schema (a merge key, a sorting key, a group key) and their converter to
/// the row format, ascending with nulls first.
pub(super) struct Key {
    pub(super) columns: Vec<usize>,
    pub(super) converter: RowConverter,
}

impl Key {
    pub(super) fn new(schema: &SchemaRef, names: &[String]) -> Result<Key, ArrowError> {
        let columns = column_indices(schema, names)?;
        // No columns (a table without a sorting key): every row compares equal on a null
        // column, so the merge takes the inputs one after the other.
        let types: Vec<DataType> = match columns.is_empty() {
            true => vec![DataType::Null],
            false => columns
                .iter()
                .map(|&i| schema.field(i).data_type().clone())
                .collect(),
        };
        let fields = types
            .into_iter()
            .map(|t| SortField::new_with_options(t, ORDER))
            .collect();
        Ok(Key {
            columns,
            converter: RowConverter::new(fields)?,
        })
    }

    pub(super) fn rows(&self, batch: &RecordBatch) -> Result<Rows, ArrowError> {
        let arrays: Vec<ArrayRef> = match self.columns.is_empty() {
            true => vec![new_null_array(&DataType::Null, batch.num_rows())],
            false => self
                .columns
                .iter()
                .map(|&i| Arc::clone(batch.column(i)))
                .collect(),
        };
        self.converter.convert_columns(&arrays)
    }
}

fn rows_err(table: &str, output: &str, source: ArrowError) -> MergeError {
    MergeError::Rows {
        table: table.to_string(),
        path: output.to_string(),
        source,
    }
}
