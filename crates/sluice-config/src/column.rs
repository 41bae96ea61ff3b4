//! `[[table.column]]`: a column's type, where an event gives its value, and the aggregate
//! state it holds in a view's target table.

use std::fmt;

use arrow::datatypes::{DataType, TimeUnit};
use serde::Deserialize;

use crate::{invalid, ConfigError};

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnConfig {
    /// Unique within the table. Required.
    pub name: String,
    /// One of [`ColumnType::NAMES`]. Required.
    #[serde(rename = "type")]
    pub column_type: ColumnType,
    /// Whether the column may be null. A non-nullable column without a default sends events
    /// lacking it to quarantine. Default: true.
    #[serde(default = "default_nullable")]
    pub nullable: bool,
    /// Used when the event lacks the field or has it null. Default: none.
    #[serde(default)]
    pub default: Option<toml::Value>,
    /// The JSON field, or a dotted path into nested objects (`user.geo.country`).
    /// Default: none, which reads the field named like the column.
    #[serde(default)]
    pub source: Option<String>,
    /// In a view's target table: the aggregate whose partial states the column holds (`count`,
    /// `sum`, `min`, `max`, `approx_distinct`); the columns without one are the grouping key.
    /// Default: none.
    #[serde(default)]
    pub aggregate: Option<Aggregate>,
}

// `name` and `type` have no default, so `nullable`'s is declared on its own.
fn default_nullable() -> bool {
    true
}

impl ColumnConfig {
    /// The Arrow type stored in parts: the declared type, or a binary sketch for
    /// `approx_distinct` states.
    pub fn stored_type(&self) -> DataType {
        match self.aggregate {
            Some(Aggregate::ApproxDistinct) => DataType::Binary,
            _ => self.column_type.arrow_type(),
        }
    }

    /// The JSON path this column is read from, split at dots.
    pub fn source_path(&self) -> Vec<String> {
        self.source
            .as_deref()
            .unwrap_or(&self.name)
            .split('.')
            .map(str::to_string)
            .collect()
    }

    /// `field` names the column in errors (`table[0] (events).column.country`); a table that
    /// reads a topic decodes events, the others hold what a view computed.
    pub(crate) fn validate(&self, field: &str, reads_topic: bool) -> Result<(), ConfigError> {
        self.validate_source(field)?;
        self.validate_default(field)?;
        if !reads_topic {
            self.validate_view_target_column(field)?;
        }
        self.validate_aggregate(field, reads_topic)
    }

    fn validate_source(&self, field: &str) -> Result<(), ConfigError> {
        match &self.source {
            Some(src) if src.is_empty() || src.split('.').any(str::is_empty) => Err(invalid(
                format!("{field}.source"),
                format!("`{src}` is not a field name or dotted path"),
                "write e.g. `country` or `user.geo.country`",
            )),
            _ => Ok(()),
        }
    }

    /// A default that does not fit would fail every event lacking the field, at decode time.
    fn validate_default(&self, field: &str) -> Result<(), ConfigError> {
        let Some(default) = &self.default else {
            return Ok(());
        };
        check_default(self.column_type, default).map_err(|problem| {
            invalid(
                format!("{field}.default"),
                problem,
                format!("give a {} value", self.column_type),
            )
        })
    }

    fn validate_view_target_column(&self, field: &str) -> Result<(), ConfigError> {
        if self.source.is_some() || self.default.is_some() {
            return Err(invalid(
                field,
                "`source` and `default` say how to read a JSON event, and a view's target reads none",
                "remove them: the view's query gives the column's values",
            ));
        }
        Ok(())
    }

    fn validate_aggregate(&self, field: &str, reads_topic: bool) -> Result<(), ConfigError> {
        let Some(agg) = self.aggregate else {
            return Ok(());
        };
        if reads_topic {
            return Err(invalid(
                format!("{field}.aggregate"),
                "aggregate states are written by views, and this table reads a topic",
                "remove `aggregate`, or move the column to a view's target table",
            ));
        }
        if !agg.holds(self.column_type) {
            return Err(invalid(
                format!("{field}.type"),
                format!(
                    "{} does not hold `{}` states",
                    self.column_type,
                    agg.function()
                ),
                format!("declare it as {}", agg.state_types()),
            ));
        }
        Ok(())
    }
}

fn check_default(ty: ColumnType, v: &toml::Value) -> Result<(), String> {
    use toml::Value as V;
    let ok = match (ty, v) {
        (ColumnType::Boolean, V::Boolean(_)) => true,
        (ColumnType::Int32, V::Integer(i)) => i32::try_from(*i).is_ok(),
        (ColumnType::Int64, V::Integer(_)) => true,
        (ColumnType::UInt64, V::Integer(i)) => *i >= 0,
        (ColumnType::Float64, V::Integer(_) | V::Float(_)) => true,
        (ColumnType::String, V::String(_)) => true,
        (ColumnType::TimestampMs | ColumnType::TimestampUs, V::Integer(_)) => true,
        (ColumnType::TimestampMs | ColumnType::TimestampUs, V::String(s)) => {
            chrono::DateTime::parse_from_rfc3339(s).is_ok()
        }
        (ColumnType::Date, V::String(s)) => {
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
        }
        (ColumnType::Date, V::Integer(_)) => true,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("default `{v}` does not fit type {ty}"))
    }
}

/// Column types Sluice decodes JSON into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum ColumnType {
    Boolean,
    Int32,
    Int64,
    UInt64,
    Float64,
    String,
    /// Milliseconds since the epoch, UTC; from a JSON integer (ms) or an RFC 3339 string.
    TimestampMs,
    /// Microseconds since the epoch, UTC; from a JSON integer (µs) or an RFC 3339 string.
    TimestampUs,
    /// Days since the epoch; from a `YYYY-MM-DD` string or an integer day number.
    Date,
}

impl ColumnType {
    pub const NAMES: &'static [&'static str] = &[
        "boolean",
        "int32",
        "int64",
        "uint64",
        "float64",
        "string",
        "timestamp_ms",
        "timestamp_us",
        "date",
    ];

    pub fn arrow_type(self) -> DataType {
        match self {
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::Int32 => DataType::Int32,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::UInt64 => DataType::UInt64,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::String => DataType::Utf8,
            ColumnType::TimestampMs => {
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
            }
            ColumnType::TimestampUs => {
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
            }
            ColumnType::Date => DataType::Date32,
        }
    }

    pub fn is_temporal(self) -> bool {
        matches!(
            self,
            ColumnType::TimestampMs | ColumnType::TimestampUs | ColumnType::Date
        )
    }
}

impl TryFrom<String> for ColumnType {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Ok(match s.as_str() {
            "boolean" | "bool" => ColumnType::Boolean,
            "int32" => ColumnType::Int32,
            "int64" => ColumnType::Int64,
            "uint64" => ColumnType::UInt64,
            "float64" | "double" => ColumnType::Float64,
            "string" | "utf8" => ColumnType::String,
            "timestamp_ms" => ColumnType::TimestampMs,
            "timestamp_us" => ColumnType::TimestampUs,
            "date" | "date32" => ColumnType::Date,
            other => {
                return Err(format!(
                    "unknown column type `{other}`; use one of: {}",
                    ColumnType::NAMES.join(", ")
                ))
            }
        })
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ColumnType::Boolean => "boolean",
            ColumnType::Int32 => "int32",
            ColumnType::Int64 => "int64",
            ColumnType::UInt64 => "uint64",
            ColumnType::Float64 => "float64",
            ColumnType::String => "string",
            ColumnType::TimestampMs => "timestamp_ms",
            ColumnType::TimestampUs => "timestamp_us",
            ColumnType::Date => "date",
        };
        f.write_str(name)
    }
}

/// How an aggregating table's column merges across batches and parts. The rows of a view's
/// batch hold partial states; reading the table merges the states of equal keys (the columns
/// without an aggregate) into final values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    /// `count(...)`: an int64, merged by summing.
    Count,
    /// `sum(x)`: merged by summing.
    Sum,
    /// `min(x)`: merged by taking the minimum.
    Min,
    /// `max(x)`: merged by taking the maximum.
    Max,
    /// `approx_distinct(x)`: a HyperLogLog sketch (binary), merged by union; reads as a uint64.
    ApproxDistinct,
}

impl Aggregate {
    /// The SQL function producing the state in a view.
    pub fn function(self) -> &'static str {
        match self {
            Aggregate::Count => "count",
            Aggregate::Sum => "sum",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
            Aggregate::ApproxDistinct => "approx_distinct",
        }
    }

    /// Whether a column declared as `ty` can hold this aggregate's state: the declared type is
    /// what the view's output column is checked against, and what queries read.
    fn holds(self, ty: ColumnType) -> bool {
        match self {
            Aggregate::Count => ty == ColumnType::Int64,
            Aggregate::Sum => matches!(
                ty,
                ColumnType::Int64 | ColumnType::UInt64 | ColumnType::Float64
            ),
            Aggregate::Min | Aggregate::Max => ty != ColumnType::Boolean,
            Aggregate::ApproxDistinct => ty == ColumnType::UInt64,
        }
    }

    /// The types [`Aggregate::holds`] accepts, for the fix of an error.
    fn state_types(self) -> &'static str {
        match self {
            Aggregate::Count => "int64",
            Aggregate::Sum => "int64, uint64 or float64 (the sum's type)",
            Aggregate::Min | Aggregate::Max => "the type of the column it is taken of",
            Aggregate::ApproxDistinct => "uint64 (the estimate's type)",
        }
    }
}
