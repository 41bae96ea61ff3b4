//! What both decode paths share: a table's column as the decoder sees it ([`Column`]), the
//! typed [`Cell`] a row holds for it until the whole row converted, and the Arrow [`Builder`]
//! the cells are then appended to.

use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int32Builder,
    Int64Builder, StringBuilder, TimestampMicrosecondBuilder, TimestampMillisecondBuilder,
    UInt64Builder,
};
use serde_json::Value;
use sluice_config::{ColumnConfig, ColumnType};

/// Day 0 of `date` columns.
pub(crate) const EPOCH_DAY: chrono::NaiveDate = match chrono::NaiveDate::from_ymd_opt(1970, 1, 1) {
    Some(d) => d,
    None => panic!("1970-01-01 is a date"),
};

/// A typed cell of one row, held until the whole row converted.
pub(crate) enum Cell<'a> {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(&'a str),
    Owned(String),
}

/// A column of the table as the decoder sees it: where its value sits in an event, its type,
/// and what an absent value becomes.
pub(crate) struct Column {
    pub(crate) name: String,
    pub(crate) ty: ColumnType,
    pub(crate) path: Vec<String>,
    pub(crate) nullable: bool,
    pub(crate) default: Option<Value>,
}

impl Column {
    pub(crate) fn new(c: &ColumnConfig) -> Column {
        Column {
            name: c.name.clone(),
            ty: c.column_type,
            path: c.source_path(),
            nullable: c.nullable,
            default: c.default.as_ref().map(toml_to_json),
        }
    }
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

pub(crate) enum Builder {
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
    pub(crate) fn new(ty: ColumnType) -> Builder {
        Builder::with_capacity(ty, 0, 0)
    }

    /// A builder with room for `rows` values (and `bytes` of string data).
    pub(crate) fn with_capacity(ty: ColumnType, rows: usize, bytes: usize) -> Builder {
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
    pub(crate) fn data_bytes(&self) -> usize {
        match self {
            Builder::Str(b) => b.values_slice().len(),
            _ => 0,
        }
    }

    /// Appends a cell already converted to this builder's type.
    pub(crate) fn append(&mut self, cell: Cell<'_>) {
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

    pub(crate) fn finish(&mut self) -> ArrayRef {
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

    pub(crate) fn len(&self) -> usize {
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
