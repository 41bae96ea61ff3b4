//! The reference path: an event parsed into a `serde_json::Value`, then each column looked up
//! and converted. It decides every event the fast path (`fast.rs`) does not, with the exact
//! quarantine reason and message, and it is what the fast path must agree with (the property
//! test in `tests.rs` compares them). Column defaults are converted here on both paths.

use serde_json::Value;
use sluice_config::ColumnType;

use crate::column::{Cell, Column, EPOCH_DAY};
use crate::QuarantineReason;

/// The payload as a JSON object, or why it is not one.
pub(crate) fn parse(payload: &[u8]) -> Result<Value, (QuarantineReason, String)> {
    let value: Value = serde_json::from_slice(payload)
        .map_err(|e| (QuarantineReason::NotJson, format!("not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err((
            QuarantineReason::NotObject,
            format!("expected a JSON object, found {}", kind_of(&value)),
        ));
    }
    Ok(value)
}

/// The event's row: each column looked up (its default if absent or null) and converted, or
/// the reason of the first column that cannot be.
pub(crate) fn cells<'v>(
    columns: &'v [Column],
    event: &'v Value,
) -> Result<Vec<Cell<'v>>, (QuarantineReason, String)> {
    let mut cells: Vec<Cell<'_>> = Vec::with_capacity(columns.len());
    for col in columns {
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
    Ok(cells)
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

/// A value converted to its column's type, or the reason (`wrong_type`) it does not convert.
pub(crate) fn convert<'v>(
    col: &Column,
    v: &'v Value,
) -> Result<Cell<'v>, (QuarantineReason, String)> {
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
