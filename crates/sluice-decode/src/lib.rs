//! Decode and batch: JSON messages become rows of Arrow column builders, typed against the
//! table's schema; a message that cannot become a row becomes a quarantine row with the reason.
//!
//! A row is appended only after every column of it converted, so a bad event never leaves a
//! half-written row behind. Nothing is dropped: every message pushed ends up either as a row or
//! as a [`QuarantineRow`].

use std::sync::Arc;
use std::time::Instant;

mod fast;

use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int32Builder,
    Int64Builder, StringBuilder, TimestampMicrosecondBuilder, TimestampMillisecondBuilder,
    UInt64Builder,
};
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use serde_json::Value;
use sluice_config::{ColumnType, TableConfig};

/// Why an event was quarantined; the stable code is what metrics and queries group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuarantineReason {
    /// The message had no payload (a tombstone) or an empty one.
    Empty,
    /// The payload exceeded the table's `max_message_bytes`.
    Oversized,
    /// The payload is not valid JSON.
    NotJson,
    /// Valid JSON, but not an object.
    NotObject,
    /// A non-nullable column without default had no value.
    MissingField,
    /// A value did not convert to its column's type.
    WrongType,
    /// A view's query failed on the row (its `view` names the view).
    ViewFailed,
}

impl QuarantineReason {
    pub fn code(self) -> &'static str {
        match self {
            QuarantineReason::Empty => "empty",
            QuarantineReason::Oversized => "oversized",
            QuarantineReason::NotJson => "not_json",
            QuarantineReason::NotObject => "not_object",
            QuarantineReason::MissingField => "missing_field",
            QuarantineReason::WrongType => "wrong_type",
            QuarantineReason::ViewFailed => "view_failed",
        }
    }
}

/// One event that could not become a row, kept whole with the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct QuarantineRow {
    /// The Kafka offset of the event; unknown for a row a chained view failed on (its input
    /// rows are another view's output).
    pub offset: Option<i64>,
    pub timestamp_ms: Option<i64>,
    /// The event's payload; for a view's failure, the input row as JSON.
    pub raw: Vec<u8>,
    pub reason: QuarantineReason,
    pub error: String,
    /// The view that failed on the row (`reason` [`QuarantineReason::ViewFailed`]).
    pub view: Option<String>,
}

impl QuarantineReason {
    /// Every reason code, for metrics and documentation.
    pub const CODES: &'static [&'static str] = &[
        "empty",
        "oversized",
        "not_json",
        "not_object",
        "missing_field",
        "wrong_type",
        "view_failed",
    ];
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("cannot build the record batch of table `{table}`: {source}")]
    Batch { table: String, source: ArrowError },
}

/// Day 0 of `date` columns.
const EPOCH_DAY: chrono::NaiveDate = match chrono::NaiveDate::from_ymd_opt(1970, 1, 1) {
    Some(d) => d,
    None => panic!("1970-01-01 is a date"),
};

/// A typed cell of one row, held until the whole row converted.
enum Cell<'a> {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(&'a str),
    Owned(String),
}

struct Column {
    name: String,
    ty: ColumnType,
    path: Vec<String>,
    nullable: bool,
    default: Option<Value>,
}

enum Builder {
    Bool(BooleanBuilder),
    I32(Int32Builder),
    I64(Int64Builder),
    U64(UInt64Builder),
    F64(Float64Builder),
    Str(StringBuilder),
    TsMs(TimestampMillisecondBuilder),
    TsUs(TimestampMicrosecondBuilder),
    Date(Date32Builder),
}

impl Builder {
    fn new(ty: ColumnType) -> Builder {
        Builder::with_capacity(ty, 0, 0)
    }

    /// A builder with room for `rows` values (and `bytes` of string data).
    fn with_capacity(ty: ColumnType, rows: usize, bytes: usize) -> Builder {
        match ty {
            ColumnType::Boolean => Builder::Bool(BooleanBuilder::with_capacity(rows)),
            ColumnType::Int32 => Builder::I32(Int32Builder::with_capacity(rows)),
            ColumnType::Int64 => Builder::I64(Int64Builder::with_capacity(rows)),
            ColumnType::UInt64 => Builder::U64(UInt64Builder::with_capacity(rows)),
            ColumnType::Float64 => Builder::F64(Float64Builder::with_capacity(rows)),
            ColumnType::String => Builder::Str(StringBuilder::with_capacity(rows, bytes)),
            ColumnType::TimestampMs => {
                Builder::TsMs(TimestampMillisecondBuilder::with_capacity(rows).with_timezone("UTC"))
            }
            ColumnType::TimestampUs => {
                Builder::TsUs(TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"))
            }
            ColumnType::Date => Builder::Date(Date32Builder::with_capacity(rows)),
        }
    }

    /// String bytes held so far (0 for other types).
    fn data_bytes(&self) -> usize {
        match self {
            Builder::Str(b) => b.values_slice().len(),
            _ => 0,
        }
    }

    /// Appends a cell already converted to this builder's type.
    fn append(&mut self, cell: Cell<'_>) {
        match (self, cell) {
            (Builder::Bool(b), Cell::Bool(v)) => b.append_value(v),
            (Builder::I32(b), Cell::I64(v)) => b.append_value(v as i32),
            (Builder::I64(b), Cell::I64(v)) => b.append_value(v),
            (Builder::U64(b), Cell::U64(v)) => b.append_value(v),
            (Builder::F64(b), Cell::F64(v)) => b.append_value(v),
            (Builder::Str(b), Cell::Str(v)) => b.append_value(v),
            (Builder::Str(b), Cell::Owned(v)) => b.append_value(v),
            (Builder::TsMs(b), Cell::I64(v)) => b.append_value(v),
            (Builder::TsUs(b), Cell::I64(v)) => b.append_value(v),
            (Builder::Date(b), Cell::I64(v)) => b.append_value(v as i32),
            (b, Cell::Null) => b.append_null(),
            _ => unreachable!("cells are converted to their column's type before appending"),
        }
    }

    fn append_null(&mut self) {
        match self {
            Builder::Bool(b) => b.append_null(),
            Builder::I32(b) => b.append_null(),
            Builder::I64(b) => b.append_null(),
            Builder::U64(b) => b.append_null(),
            Builder::F64(b) => b.append_null(),
            Builder::Str(b) => b.append_null(),
            Builder::TsMs(b) => b.append_null(),
            Builder::TsUs(b) => b.append_null(),
            Builder::Date(b) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::I32(b) => Arc::new(b.finish()),
            Builder::I64(b) => Arc::new(b.finish()),
            Builder::U64(b) => Arc::new(b.finish()),
            Builder::F64(b) => Arc::new(b.finish()),
            Builder::Str(b) => Arc::new(b.finish()),
            Builder::TsMs(b) => Arc::new(b.finish()),
            Builder::TsUs(b) => Arc::new(b.finish()),
            Builder::Date(b) => Arc::new(b.finish()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Builder::Bool(b) => b.len(),
            Builder::I32(b) => b.len(),
            Builder::I64(b) => b.len(),
            Builder::U64(b) => b.len(),
            Builder::F64(b) => b.len(),
            Builder::Str(b) => b.len(),
            Builder::TsMs(b) => b.len(),
            Builder::TsUs(b) => b.len(),
            Builder::Date(b) => b.len(),
        }
    }
}

/// What a flush takes out of a buffer.
#[derive(Debug)]
pub struct Drained {
    pub batch: RecordBatch,
    pub quarantine: Vec<QuarantineRow>,
    /// Each row's Kafka offset and timestamp, in row order, if the buffer records them
    /// ([`TableBuffer::record_origins`]).
    pub origins: Option<Origins>,
}

/// Where the rows of a batch came from: their Kafka offsets and timestamps, in row order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Origins {
    pub offsets: Vec<i64>,
    pub timestamps_ms: Vec<Option<i64>>,
}

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
        let columns: Vec<Column> = table
            .columns
            .iter()
            .map(|c| Column {
                name: c.name.clone(),
                ty: c.column_type,
                path: c.source_path(),
                nullable: c.nullable,
                default: c.default.as_ref().map(toml_to_json),
            })
            .collect();
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
        let quarantine = |reason: QuarantineReason, error: String| QuarantineRow {
            offset: Some(offset),
            timestamp_ms,
            raw: payload.map(<[u8]>::to_vec).unwrap_or_default(),
            reason,
            error,
            view: None,
        };
        let payload = match payload {
            Some(p) if !p.is_empty() => p,
            _ => {
                self.quarantine.push(quarantine(
                    QuarantineReason::Empty,
                    "message has no payload".into(),
                ));
                return;
            }
        };
        if payload.len() > self.max_message_bytes {
            let error = format!(
                "message of {} bytes exceeds max_message_bytes ({})",
                payload.len(),
                self.max_message_bytes
            );
            self.quarantine
                .push(quarantine(QuarantineReason::Oversized, error));
            return;
        }
        if self.push_fast(payload) {
            self.row_added(offset, timestamp_ms);
            return;
        }
        let value: Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => {
                self.quarantine.push(quarantine(
                    QuarantineReason::NotJson,
                    format!("not valid JSON: {e}"),
                ));
                return;
            }
        };
        if !value.is_object() {
            self.quarantine.push(quarantine(
                QuarantineReason::NotObject,
                format!("expected a JSON object, found {}", kind_of(&value)),
            ));
            return;
        }
        match self.convert_row(&value) {
            Ok(()) => self.row_added(offset, timestamp_ms),
            Err((reason, error)) => self.quarantine.push(quarantine(reason, error)),
        }
    }

    /// The row through the fast path, if it is a clean case (see [`fast`]); false: nothing
    /// appended, the reference path decides.
    fn push_fast(&mut self, payload: &[u8]) -> bool {
        let Some(paths) = &self.paths else {
            return false;
        };
        let mut found = recycle(std::mem::take(&mut self.scratch));
        if fast::scan(payload, paths, &self.types, &mut self.layout, &mut found).is_none() {
            self.scratch = recycle(found);
            return false;
        }
        // Every column must resolve before anything is appended: no half-written rows.
        let resolves = self.columns.iter().zip(&found).all(|(col, f)| {
            matches!(f, fast::Found::Cell(_))
                || col
                    .default
                    .as_ref()
                    .map_or(col.nullable, |d| convert(col, d).is_ok())
        });
        if !resolves {
            self.scratch = recycle(found);
            return false;
        }
        for ((builder, col), f) in self
            .builders
            .iter_mut()
            .zip(&self.columns)
            .zip(found.drain(..))
        {
            let cell = match f {
                fast::Found::Cell(c) => c,
                fast::Found::Null | fast::Found::Absent => match &col.default {
                    Some(d) => match convert(col, d) {
                        Ok(c) => c,
                        // Checked just above.
                        Err(_) => Cell::Null,
                    },
                    None => Cell::Null,
                },
            };
            builder.append(cell);
        }
        self.scratch = recycle(found);
        true
    }

    /// The reference path: the event as a `serde_json::Value`, then each column looked up and
    /// converted; it decides every event the fast path does not.
    fn convert_row(&mut self, event: &Value) -> Result<(), (QuarantineReason, String)> {
        let mut cells: Vec<Cell<'_>> = Vec::with_capacity(self.columns.len());
        for col in &self.columns {
            let mut found = lookup(event, &col.path);
            if matches!(found, None | Some(Value::Null)) {
                found = col.default.as_ref();
            }
            let cell = match found {
                None | Some(Value::Null) if col.nullable => Cell::Null,
                None | Some(Value::Null) => {
                    return Err((
                        QuarantineReason::MissingField,
                        format!(
                            "missing required field `{}` for column `{}`",
                            col.path.join("."),
                            col.name
                        ),
                    ));
                }
                Some(v) => convert(col, v)?,
            };
            cells.push(cell);
        }
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
        // The next batch starts with the room this one needed: flushes of a stream are of
        // similar size, and growing a builder by doubling copies its data each time.
        let rows = self.rows;
        let arrays: Vec<ArrayRef> = self
            .builders
            .iter_mut()
            .zip(&self.types)
            .map(|(b, &ty)| {
                let bytes = b.data_bytes();
                let array = b.finish();
                *b = Builder::with_capacity(ty, rows, bytes);
                array
            })
            .collect();
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

fn lookup<'v>(event: &'v Value, path: &[String]) -> Option<&'v Value> {
    let mut cur = event;
    for key in path {
        cur = cur.as_object()?.get(key)?;
    }
    Some(cur)
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn convert<'v>(col: &Column, v: &'v Value) -> Result<Cell<'v>, (QuarantineReason, String)> {
    let wrong = |detail: &str| {
        let shown: String = v.to_string().chars().take(80).collect();
        (
            QuarantineReason::WrongType,
            format!(
                "field `{}` for column `{}` ({}): {detail}, found {shown}",
                col.path.join("."),
                col.name,
                col.ty
            ),
        )
    };
    Ok(match col.ty {
        ColumnType::Boolean => Cell::Bool(v.as_bool().ok_or_else(|| wrong("expected a boolean"))?),
        ColumnType::Int32 => {
            let i = v.as_i64().ok_or_else(|| wrong("expected an integer"))?;
            i32::try_from(i).map_err(|_| wrong("integer out of int32 range"))?;
            Cell::I64(i)
        }
        ColumnType::Int64 => Cell::I64(
            v.as_i64()
                .ok_or_else(|| wrong("expected an integer in int64 range"))?,
        ),
        ColumnType::UInt64 => Cell::U64(
            v.as_u64()
                .ok_or_else(|| wrong("expected a non-negative integer"))?,
        ),
        ColumnType::Float64 => Cell::F64(v.as_f64().ok_or_else(|| wrong("expected a number"))?),
        ColumnType::String => match v {
            Value::String(s) => Cell::Str(s.as_str()),
            // Numbers and booleans have one obvious text form; objects and arrays do not.
            Value::Number(_) | Value::Bool(_) => Cell::Owned(v.to_string()),
            _ => return Err(wrong("expected a string")),
        },
        ColumnType::TimestampMs | ColumnType::TimestampUs => {
            let micros = col.ty == ColumnType::TimestampUs;
            match v {
                Value::Number(_) => Cell::I64(
                    v.as_i64()
                        .ok_or_else(|| wrong("expected an integer epoch or an RFC 3339 string"))?,
                ),
                Value::String(s) => {
                    let t = chrono::DateTime::parse_from_rfc3339(s)
                        .map_err(|_| wrong("expected an integer epoch or an RFC 3339 string"))?;
                    Cell::I64(if micros {
                        t.timestamp_micros()
                    } else {
                        t.timestamp_millis()
                    })
                }
                _ => return Err(wrong("expected an integer epoch or an RFC 3339 string")),
            }
        }
        ColumnType::Date => match v {
            Value::Number(_) => {
                let d = v
                    .as_i64()
                    .ok_or_else(|| wrong("expected a day number or YYYY-MM-DD"))?;
                i32::try_from(d).map_err(|_| wrong("day number out of range"))?;
                Cell::I64(d)
            }
            Value::String(s) => {
                let d = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                    .map_err(|_| wrong("expected a day number or YYYY-MM-DD"))?;
                Cell::I64((d - EPOCH_DAY).num_days())
            }
            _ => return Err(wrong("expected a day number or YYYY-MM-DD")),
        },
    })
}

fn toml_to_json(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => Value::from(*f),
        toml::Value::Boolean(b) => Value::Bool(*b),
        // Validation admits only scalars as defaults.
        other => Value::String(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int64Type, TimestampMillisecondType};
    use sluice_config::Config;

    /// The table of these tests: `extra` adds columns; `max_message_bytes` is 200.
    fn table_with(extra: &str) -> TableConfig {
        let text = format!(
            r#"
[kafka]
bootstrap_servers = "x:1"
[[table]]
name = "t"
topic = "t"
max_message_bytes = 200
[[table.column]]
name = "seq"
type = "int64"
nullable = false
[[table.column]]
name = "ts"
type = "timestamp_ms"
nullable = false
[[table.column]]
name = "country"
type = "string"
source = "geo.country"
default = "zz"
[[table.column]]
name = "ok"
type = "boolean"
{extra}"#
        );
        Config::from_toml_str(&text, "t").unwrap().tables.remove(0)
    }

    fn table() -> TableConfig {
        table_with("")
    }

    #[test]
    fn good_rows_decode_with_paths_defaults_and_nulls() {
        let mut b = TableBuffer::new(&table());
        b.push(
            0,
            Some(1),
            Some(br#"{"seq":1,"ts":1700000000000,"geo":{"country":"de"},"ok":true}"#),
        );
        b.push(
            1,
            Some(2),
            Some(br#"{"seq":2,"ts":"2023-11-14T22:13:20Z"}"#),
        );
        assert_eq!((b.rows(), b.quarantined()), (2, 0));
        let d = b.drain().unwrap();
        assert_eq!(d.batch.num_rows(), 2);
        assert_eq!(
            d.batch.column(0).as_primitive::<Int64Type>().values(),
            &[1, 2]
        );
        assert_eq!(
            d.batch
                .column(1)
                .as_primitive::<TimestampMillisecondType>()
                .value(1),
            1_700_000_000_000
        );
        assert_eq!(d.batch.column(2).as_string::<i32>().value(1), "zz");
        assert!(d.batch.column(3).is_null(1));
        assert!(b.is_empty());
    }

    #[test]
    fn every_kind_of_bad_event_is_quarantined_with_its_reason() {
        let mut b = TableBuffer::new(&table());
        let long = format!(r#"{{"seq":1,"ts":1,"pad":"{}"}}"#, "x".repeat(300));
        let cases: Vec<(Option<&[u8]>, QuarantineReason)> = vec![
            (None, QuarantineReason::Empty),
            (Some(b"{\"seq\": 3, broken"), QuarantineReason::NotJson),
            (Some(b"[1,2]"), QuarantineReason::NotObject),
            (Some(br#"{"ts":5}"#), QuarantineReason::MissingField),
            (
                Some(br#"{"seq":"seven","ts":5}"#),
                QuarantineReason::WrongType,
            ),
            (
                Some(br#"{"seq":7,"ts":"yesterday"}"#),
                QuarantineReason::WrongType,
            ),
            (Some(long.as_bytes()), QuarantineReason::Oversized),
        ];
        for (i, (payload, _)) in cases.iter().enumerate() {
            b.push(i as i64, None, *payload);
        }
        // A good row after the bad ones proves no half-written row was left behind.
        b.push(99, None, Some(br#"{"seq":8,"ts":5}"#));
        let d = b.drain().unwrap();
        assert_eq!(d.batch.num_rows(), 1);
        assert_eq!(d.batch.column(0).as_primitive::<Int64Type>().value(0), 8);
        let reasons: Vec<_> = d.quarantine.iter().map(|q| q.reason).collect();
        assert_eq!(reasons, cases.iter().map(|c| c.1).collect::<Vec<_>>());
        assert!(
            d.quarantine[4].error.contains("column `seq`"),
            "{}",
            d.quarantine[4].error
        );
        assert_eq!(d.quarantine[1].raw, b"{\"seq\": 3, broken");
        assert_eq!(d.quarantine[1].offset, Some(1));
    }

    #[test]
    fn typical_events_take_the_fast_path() {
        let mut b = TableBuffer::new(&table());
        for e in [
            r#"{"seq":1,"ts":1700000000000,"geo":{"country":"de"},"ok":true}"#,
            r#"{"seq":2,"ts":"2023-11-14T22:13:20Z","geo":{"country":"caf\u00e9"},"extra":[1,{"a":2}]}"#,
            r#"{"seq":3,"ts":5,"ok":null}"#,
        ] {
            assert!(b.push_fast(e.as_bytes()), "{e}");
        }
        // Anything unusual is left to the reference path, which decides the reason.
        for e in [r#"{"ts":5}"#, r#"{"seq":"x","ts":5}"#, "[1]", "{"] {
            assert!(!b.push_fast(e.as_bytes()), "{e}");
        }
    }

    /// The fast path against the reference path on random events: both must build the same
    /// rows and the same quarantine rows (reason and message), event for event.
    mod fast_matches_reference {
        use super::*;
        use proptest::prelude::*;

        /// Every column type, and a nested path.
        fn wide_table() -> TableConfig {
            let mut t = table_with(
                r#"
[[table.column]]
name = "n"
type = "int32"
[[table.column]]
name = "u"
type = "uint64"
[[table.column]]
name = "f"
type = "float64"
[[table.column]]
name = "d"
type = "date"
[[table.column]]
name = "us"
type = "timestamp_us"
[[table.column]]
name = "s"
type = "string"
"#,
            );
            t.max_message_bytes = 4096;
            t
        }

        fn scalar() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("null".to_string()),
                any::<bool>().prop_map(|b| b.to_string()),
                any::<i64>().prop_map(|i| i.to_string()),
                any::<u64>().prop_map(|u| u.to_string()),
                (-1000i64..1000).prop_map(|i| i.to_string()),
                (0u32..3_000_000_000).prop_map(|i| i.to_string()),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(|f| serde_json::Value::from(f).to_string()),
                Just("1.0".to_string()),
                Just("-0".to_string()),
                Just("1e3".to_string()),
                "[a-z]{0,6}".prop_map(|s| format!("\"{s}\"")),
                Just(r#""caf\u00e9 \"q\"""#.to_string()),
                Just(r#""2023-11-14T22:13:20Z""#.to_string()),
                Just(r#""2023-11-14T22:13:20.123456+02:00""#.to_string()),
                Just(r#""2024-02-29""#.to_string()),
                Just(r#""2023-02-30""#.to_string()),
                Just("[1,2]".to_string()),
                Just("{}".to_string()),
                // Numbers serde_json reads in ways of its own, or refuses.
                prop_oneof![
                    Just("1e400"),
                    Just("-1e400"),
                    Just("1e-400"),
                    Just("2.5E+3"),
                    Just("7e2"),
                    Just("-0.0"),
                    Just("18446744073709551616"),
                    Just("-9223372036854775809"),
                    Just("123456789012345678901234567890"),
                    Just("0.1e1"),
                    Just("01"),
                    Just("1."),
                    Just(".5"),
                    Just("+1"),
                    Just("1e"),
                ]
                .prop_map(str::to_string),
                // Strings with escapes, non-ASCII text, surrogates and broken escapes.
                prop_oneof![
                    Just(r#""a\/b\\c\nd\te""#),
                    Just(r#""\ud83d\ude00 ok""#),
                    Just(r#""\ud83d lone""#),
                    Just(r#""\ude00 lone""#),
                    Just(r#""\x bad""#),
                    Just(r#""\u12 short""#),
                    Just(r#""héllo wörld, ça va 😀""#),
                    Just(r#""2023-11-14T22:13:20\u005a""#),
                    Just(r#""a long string value that spans several eight-byte words""#),
                ]
                .prop_map(str::to_string),
                // Nesting beyond serde_json's recursion limit, and just inside it.
                (1usize..140).prop_map(|d| format!("{}1{}", "[".repeat(d), "]".repeat(d))),
                Just("[1,[true,{\"a\":[null,\"x\"]}],-2.5]".to_string()),
            ]
        }

        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => scalar(),
                1 => proptest::collection::vec(("[a-z]{1,2}|country", scalar()), 0..3).prop_map(
                    |kv| {
                        let inner: Vec<String> =
                            kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                        format!("{{{}}}", inner.join(","))
                    }
                ),
            ]
        }

        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("seq"),
                Just("ts"),
                Just("geo"),
                Just("ok"),
                Just("n"),
                Just("u"),
                Just("f"),
                Just("d"),
                Just("us"),
                Just("s"),
                Just("other"),
                Just("s\\u0065q"),
            ]
            .prop_map(str::to_string)
        }

        fn object() -> impl Strategy<Value = String> {
            proptest::collection::vec((key(), value()), 0..12).prop_map(|kv| {
                let fields: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", fields.join(","))
            })
        }

        fn event() -> impl Strategy<Value = String> {
            // Mostly well-formed rows (seq and ts present), some anything, a few broken.
            let good = (any::<i64>(), any::<i64>(), object()).prop_map(|(seq, ts, rest)| {
                let rest = rest.trim_start_matches('{').to_string();
                let sep = if rest == "}" { "" } else { "," };
                format!(r#"{{"seq":{seq},"ts":{ts}{sep}{rest}"#)
            });
            prop_oneof![
                6 => good,
                3 => object(),
                1 => value(),
                1 => "[ -~]{0,20}",
            ]
        }

        /// An event as bytes, sometimes damaged or reformatted in a way JSON allows or forbids:
        /// whitespace between tokens, a raw control character, an invalid UTF-8 byte, a
        /// byte-order mark, trailing bytes.
        fn event_bytes() -> impl Strategy<Value = Vec<u8>> {
            (event(), 0u8..12, any::<proptest::sample::Index>()).prop_map(|(e, how, at)| {
                let mut b = e.into_bytes();
                let at = at.index(b.len() + 1);
                match how {
                    0 => {
                        for ws in [b"\r\n\t ".as_slice(), b" "] {
                            b.splice(at..at, ws.iter().copied());
                        }
                    }
                    1 => b.insert(at, 0x01),
                    2 => b.insert(at, 0xFF),
                    3 => b.splice(at..at, "é".bytes()).for_each(drop),
                    4 => b.splice(0..0, [0xEF, 0xBB, 0xBF]).for_each(drop),
                    5 => b.extend_from_slice(b" x"),
                    6 => b.extend_from_slice(b"\n "),
                    7 => b.splice(0..0, *b"  ").for_each(drop),
                    _ => {}
                }
                b
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            #[test]
            fn same_rows_and_quarantine(events in proptest::collection::vec(event_bytes(), 1..40)) {
                let table = wide_table();
                let mut fast = TableBuffer::new(&table);
                prop_assert!(fast.paths.is_some());
                let mut reference = TableBuffer::new(&table);
                reference.paths = None;
                for (i, e) in events.iter().enumerate() {
                    fast.push(i as i64, Some(7), Some(e));
                    reference.push(i as i64, Some(7), Some(e));
                }
                let (a, b) = (fast.drain().unwrap(), reference.drain().unwrap());
                prop_assert_eq!(a.batch, b.batch);
                prop_assert_eq!(a.quarantine, b.quarantine);
            }
        }

        /// Corners too narrow for random placement to find often.
        #[test]
        fn corner_cases_agree_with_the_reference() {
            let table = wide_table();
            let cases: [&[u8]; 15] = [
                b"{\"seq\":1,\"ts\":2,\"x\":[1,2}}",
                b"{\"seq\":1,\"ts\":2,\"x\":{\"a\":1]}",
                b"{\"seq\":1,\"ts\":2,\"x\":[[1],{\"a\":[]}]}",
                b"{\"seq\":1,\"ts\":2,\"ot\xFFher\":1}",
                b"{\"seq\":1,\"ts\":2,\"other\":\"\xC3\"}",
                b"{\"seq\":1,\"ts\":2,\"s\":\"caf\xC3\xA9\"}",
                b"{\"seq\":1,\"ts\":2,\"s\":\"a\\\"b\"}",
                b"{\"seq\":1,\"ts\":2,\"geo\":{\"country\":\"d\\u00e9\"}}",
                b"{\"seq\":1,\"ts\":2,\"f\":-0}",
                b"{\"seq\":1,\"ts\":2,\"s\":-0}",
                b"{\"seq\":1,\"ts\":2,\"s\":1.5e3}",
                b"{\"seq\":1,\"ts\":2,\"x\":{\"y\":[1,{\"z\":\"\\ud83d\"}]}}",
                b"{\"seq\":1,\"ts\":2,}",
                b"{\"seq\":1 \"ts\":2}",
                b"{\"seq\":1,\"ts\":\"2023-11-14T22:13:20Z\",\"d\":\"2024-02-29\",\"us\":5}",
            ];
            for e in cases {
                let mut fast = TableBuffer::new(&table);
                let mut reference = TableBuffer::new(&table);
                reference.paths = None;
                fast.push(0, None, Some(e));
                reference.push(0, None, Some(e));
                let (a, b) = (fast.drain().unwrap(), reference.drain().unwrap());
                let shown = String::from_utf8_lossy(e);
                assert_eq!(a.batch, b.batch, "{shown}");
                assert_eq!(a.quarantine, b.quarantine, "{shown}");
            }
        }

        #[test]
        fn a_later_duplicate_key_wins_as_in_the_reference() {
            let table = wide_table();
            for e in [
                r#"{"seq":1,"ts":2,"geo":{"country":"de"},"geo":5}"#,
                r#"{"seq":1,"ts":2,"geo":{"country":"de"},"geo":{"x":1}}"#,
                r#"{"seq":1,"ts":2,"s":"a","s":"b"}"#,
                r#"{"seq":1,"ts":2,"seq":3}"#,
            ] {
                let mut fast = TableBuffer::new(&table);
                let mut reference = TableBuffer::new(&table);
                reference.paths = None;
                fast.push(0, None, Some(e.as_bytes()));
                reference.push(0, None, Some(e.as_bytes()));
                let (a, b) = (fast.drain().unwrap(), reference.drain().unwrap());
                assert_eq!(a.batch, b.batch, "{e}");
                assert_eq!(a.quarantine, b.quarantine, "{e}");
            }
        }
    }
}
