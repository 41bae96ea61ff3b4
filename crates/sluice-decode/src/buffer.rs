//! [`TableBuffer`]: the rows of one table for one source partition. `push` decodes a message
//! into a row through the fast path (`fast.rs`) or, when that declines, the reference path
//! (`reference.rs`), or into a quarantine row; `drain` hands everything to a flush.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::ArrayRef;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use sluice_config::{ColumnType, TableConfig};

use crate::column::{Builder, Cell, Column};
use crate::{fast, reference, DecodeError, Drained, Origins, QuarantineReason, QuarantineRow};

/// The buffer of one table for one source partition: rows decoded so far and quarantined
/// events, with the counters the flush policy looks at.
pub struct TableBuffer {
    table: String,
    schema: SchemaRef,
    max_message_bytes: usize,
    columns: Vec<Column>,
    /// The columns' types, in order, for the fast path.
    types: Vec<ColumnType>,
    /// Where the columns sit in an event, for the fast path (`None`: reference path only).
    paths: Option<fast::Node>,
    /// The fast path's per-event cells, kept between events for its allocation.
    scratch: Vec<fast::Found<'static>>,
    /// The fast path's memory of the last event's key layout.
    layout: fast::Layout,
    builders: Vec<Builder>,
    quarantine: Vec<QuarantineRow>,
    /// Each row's origin, when something downstream (a view) needs to name it.
    origins: Option<Origins>,
    rows: usize,
    bytes: u64,
    oldest: Option<Instant>,
}

impl std::fmt::Debug for TableBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableBuffer")
            .field("table", &self.table)
            .field("rows", &self.rows)
            .field("quarantined", &self.quarantine.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl TableBuffer {
    pub fn new(table: &TableConfig) -> TableBuffer {
        let columns: Vec<Column> = table.columns.iter().map(Column::new).collect();
        let builders = columns.iter().map(|c| Builder::new(c.ty)).collect();
        let types = columns.iter().map(|c| c.ty).collect();
        let paths = fast::Node::build(columns.iter().map(|c| c.path.as_slice()).enumerate());
        TableBuffer {
            table: table.name.clone(),
            schema: table.arrow_schema(),
            max_message_bytes: table.max_message_bytes,
            columns,
            types,
            paths,
            scratch: Vec::new(),
            layout: fast::Layout::default(),
            builders,
            quarantine: Vec::new(),
            origins: None,
            rows: 0,
            bytes: 0,
            oldest: None,
        }
    }

    /// A buffer that decodes every event through the reference path (a `serde_json::Value`
    /// per event) instead of the fast path: for benchmarks and tests comparing the two.
    #[doc(hidden)]
    pub fn reference_only(table: &TableConfig) -> TableBuffer {
        let mut b = TableBuffer::new(table);
        b.paths = None;
        b
    }

    /// Whether events may take the fast path (false: the table's column paths keep every
    /// event on the reference path, or the buffer is [`TableBuffer::reference_only`]).
    #[cfg(test)]
    pub(crate) fn has_fast_path(&self) -> bool {
        self.paths.is_some()
    }

    /// Records each row's Kafka offset and timestamp from now on, for views that must name the
    /// event behind a row they fail on.
    pub fn record_origins(&mut self) {
        self.origins.get_or_insert_with(Origins::default);
    }

    fn row_added(&mut self, offset: i64, timestamp_ms: Option<i64>) {
        self.rows += 1;
        if let Some(o) = &mut self.origins {
            o.offsets.push(offset);
            o.timestamps_ms.push(timestamp_ms);
        }
    }

    /// Decodes one message into a row, or into a quarantine row with the reason.
    pub fn push(&mut self, offset: i64, timestamp_ms: Option<i64>, payload: Option<&[u8]>) {
        let len = payload.map_or(0, <[u8]>::len);
        self.bytes += len as u64 + 16;
        if self.oldest.is_none() {
            self.oldest = Some(Instant::now());
        }
        match self.append_row(payload) {
            Ok(()) => self.row_added(offset, timestamp_ms),
            Err((reason, error)) => self.quarantine.push(QuarantineRow {
                offset: Some(offset),
                timestamp_ms,
                raw: payload.map(<[u8]>::to_vec).unwrap_or_default(),
                reason,
                error,
                view: None,
            }),
        }
    }

    /// Appends the message's row to the builders, or says why it cannot be a row (nothing
    /// appended then).
    fn append_row(&mut self, payload: Option<&[u8]>) -> Result<(), (QuarantineReason, String)> {
        let payload = match payload {
            Some(p) if !p.is_empty() => p,
            _ => return Err((QuarantineReason::Empty, "message has no payload".into())),
        };
        if payload.len() > self.max_message_bytes {
            let error = format!(
                "message of {} bytes exceeds max_message_bytes ({})",
                payload.len(),
                self.max_message_bytes
            );
            return Err((QuarantineReason::Oversized, error));
        }
        if self.push_fast(payload) {
            return Ok(());
        }
        self.push_reference(payload)
    }

    /// The row through the fast path, if it is a clean case (see [`fast`]); false: nothing
    /// appended, the reference path decides.
    pub(crate) fn push_fast(&mut self, payload: &[u8]) -> bool {
        let Some(paths) = &self.paths else {
            return false;
        };
        let mut found = recycle(std::mem::take(&mut self.scratch));
        let clean = fast::scan(payload, paths, &self.types, &mut self.layout, &mut found)
            .is_some()
            // Every column must resolve before anything is appended: no half-written rows.
            && resolves(&self.columns, &found);
        if clean {
            for ((builder, col), f) in self
                .builders
                .iter_mut()
                .zip(&self.columns)
                .zip(found.drain(..))
            {
                builder.append(cell_or_default(col, f));
            }
        }
        self.scratch = recycle(found);
        clean
    }

    /// The row through the reference path (see [`reference`](mod@reference)), which decides
    /// every event the fast path does not.
    fn push_reference(&mut self, payload: &[u8]) -> Result<(), (QuarantineReason, String)> {
        let event = reference::parse(payload)?;
        let cells = reference::cells(&self.columns, &event)?;
        for (builder, cell) in self.builders.iter_mut().zip(cells) {
            builder.append(cell);
        }
        Ok(())
    }

    /// Rows decoded (not counting quarantined events).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Events quarantined so far.
    pub fn quarantined(&self) -> usize {
        self.quarantine.len()
    }

    /// Raw bytes of all events pushed since the last drain, plus a small per-event overhead.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// When the oldest event still buffered was pushed.
    pub fn oldest(&self) -> Option<Instant> {
        self.oldest
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0 && self.quarantine.is_empty()
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Takes everything buffered, leaving the buffer empty.
    pub fn drain(&mut self) -> Result<Drained, DecodeError> {
        debug_assert!(self.builders.iter().all(|b| b.len() == self.rows));
        let rows = self.rows;
        let arrays = self.finish_columns();
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), arrays).map_err(|source| {
            DecodeError::Batch {
                table: self.table.clone(),
                source,
            }
        })?;
        self.rows = 0;
        self.bytes = 0;
        self.oldest = None;
        let origins = self.origins.as_mut().map(|o| Origins {
            offsets: std::mem::replace(&mut o.offsets, Vec::with_capacity(rows)),
            timestamps_ms: std::mem::replace(&mut o.timestamps_ms, Vec::with_capacity(rows)),
        });
        Ok(Drained {
            batch,
            quarantine: std::mem::take(&mut self.quarantine),
            origins,
        })
    }

    /// Each builder's array, the builder replaced by an empty one.
    fn finish_columns(&mut self) -> Vec<ArrayRef> {
        // The next batch starts with the room this one needed: flushes of a stream are of
        // similar size, and growing a builder by doubling copies its data each time.
        let rows = self.rows;
        self.builders
            .iter_mut()
            .zip(&self.types)
            .map(|(b, &ty)| {
                let bytes = b.data_bytes();
                let array = b.finish();
                *b = Builder::with_capacity(ty, rows, bytes);
                array
            })
            .collect()
    }
}

/// Whether every column of a scanned row has a cell: its value, or for an absent or null one
/// a default that converts, or else null in a nullable column.
fn resolves(columns: &[Column], found: &[fast::Found<'_>]) -> bool {
    columns.iter().zip(found).all(|(col, f)| {
        matches!(f, fast::Found::Cell(_))
            || col
                .default
                .as_ref()
                .map_or(col.nullable, |d| reference::convert(col, d).is_ok())
    })
}

/// The cell of a scanned value; for an absent or null one, the column's default (null without
/// one).
fn cell_or_default<'a>(col: &'a Column, found: fast::Found<'a>) -> Cell<'a> {
    match found {
        fast::Found::Cell(c) => c,
        fast::Found::Null | fast::Found::Absent => match &col.default {
            Some(d) => match reference::convert(col, d) {
                Ok(c) => c,
                // Checked by `resolves` before anything is appended.
                Err(_) => Cell::Null,
            },
            None => Cell::Null,
        },
    }
}

/// An emptied vector of cells of another lifetime, in the same allocation: the fast path's
/// cells borrow from one event's payload, and their vector is reused for the next event.
fn recycle<'a, 'b>(mut v: Vec<fast::Found<'a>>) -> Vec<fast::Found<'b>> {
    v.clear();
    // Same layout, no elements: the standard library reuses the allocation in place.
    v.into_iter()
        .map(|_| unreachable!("the vector is empty"))
        .collect()
}
