//! `[[table]]`: a table's columns, sorting and partition keys, and flush limits.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};
use serde::Deserialize;

use crate::{invalid, is_simple_name, positive, ColumnConfig, ColumnType, ConfigError};

/// One table: a topic decoded into typed columns and written as sorted Parquet parts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// Lowercase letters, digits and `_`; names the table's directory in storage. Required.
    pub name: String,
    /// The Kafka topic this table reads. Default: none, which makes the table a view's target.
    #[serde(default)]
    pub topic: Option<String>,
    /// Definition version, recorded in every part and its object name. Default: 1.
    #[serde(default = "default_version")]
    pub version: u32,
    /// The columns, in order. Written as `[[table.column]]` blocks. Required: at least one.
    #[serde(rename = "column")]
    pub columns: Vec<ColumnConfig>,
    /// Columns every part is sorted by, in order. Default: none.
    #[serde(default)]
    pub sorting_key: Vec<String>,
    /// Splits parts so each holds one value (e.g. one day). Default: none, one part per flush.
    #[serde(default)]
    pub partition_key: Option<PartitionKeyConfig>,
    /// When buffers are written out. Default: every field's own default.
    #[serde(default)]
    pub flush: FlushConfig,
    /// Larger messages go to quarantine. Default: 1048576 (1 MiB).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
}

// `name` and `columns` have no default, so the others are declared one by one instead of in an
// `impl Default`.
fn default_version() -> u32 {
    1
}
fn default_max_message_bytes() -> usize {
    1024 * 1024
}

/// How a part's partition-key value is derived from a column.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionKeyConfig {
    /// The column the value comes from. Required.
    pub column: String,
    /// `hour`, `day`, `month` of a timestamp or date column, or `identity` (the value itself,
    /// for integer, boolean and string columns). Default: `day`.
    #[serde(default = "default_granularity")]
    pub granularity: Granularity,
}

fn default_granularity() -> Granularity {
    Granularity::Day
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    Identity,
    Hour,
    Day,
    Month,
}

/// When a buffer is written out as parts. Whichever limit is reached first triggers the flush.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlushConfig {
    /// Rows buffered per source partition. Default: 200000.
    pub max_rows: usize,
    /// Raw event bytes buffered per source partition. Default: 67108864 (64 MiB).
    pub max_bytes: u64,
    /// Age of the oldest buffered event. Default: 10000 (10 s).
    pub max_age_ms: u64,
}

impl Default for FlushConfig {
    fn default() -> Self {
        FlushConfig {
            max_rows: 200_000,
            max_bytes: 64 * 1024 * 1024,
            max_age_ms: 10_000,
        }
    }
}

impl TableConfig {
    /// The Arrow schema of the table's data parts (for an aggregating table, its partial
    /// states: `approx_distinct` columns are binary sketches).
    pub fn arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(&c.name, c.stored_type(), c.nullable))
                .collect::<Vec<_>>(),
        ))
    }

    /// Whether the table holds partial aggregate states (some column has an `aggregate`).
    pub fn is_aggregating(&self) -> bool {
        self.columns.iter().any(|c| c.aggregate.is_some())
    }

    pub fn column(&self, name: &str) -> Option<&ColumnConfig> {
        self.columns.iter().find(|c| c.name == name)
    }

    fn column_names(&self) -> String {
        self.columns
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Checks every table, and that no two share a name (it is their directory in storage).
pub(crate) fn validate_tables(tables: &[TableConfig]) -> Result<(), ConfigError> {
    if tables.is_empty() {
        return Err(invalid(
            "table",
            "no tables are defined",
            "add at least one `[[table]]` block",
        ));
    }
    let mut names = BTreeSet::new();
    for (i, t) in tables.iter().enumerate() {
        t.validate(i)?;
        if !names.insert(t.name.as_str()) {
            return Err(invalid(
                format!("table[{i}].name"),
                format!("table `{}` is defined twice", t.name),
                "give every table a unique name",
            ));
        }
    }
    Ok(())
}

impl TableConfig {
    /// Each part gets the field it checks spelt out, `table[0] (events).sorting_key`, so an
    /// error points at one line of the file.
    fn validate(&self, index: usize) -> Result<(), ConfigError> {
        self.validate_name(index)?;
        let at = |field: &str| format!("table[{index}] ({}).{field}", self.name);
        self.validate_topic(&at("topic"))?;
        self.validate_columns(&at("column"))?;
        self.validate_sorting_key(&at("sorting_key"))?;
        self.validate_partition_key(&at("partition_key"))?;
        self.flush.validate(&at("flush"))?;
        self.validate_max_message_bytes(&at("max_message_bytes"))
    }

    fn validate_name(&self, index: usize) -> Result<(), ConfigError> {
        if is_simple_name(&self.name) {
            return Ok(());
        }
        Err(invalid(
            format!("table[{index}].name"),
            format!("`{}` is not a valid table name", self.name),
            "use lowercase letters, digits and `_`, starting with a letter",
        ))
    }

    fn validate_topic(&self, field: &str) -> Result<(), ConfigError> {
        match &self.topic {
            Some(topic) if topic.is_empty() || topic.contains('/') => Err(invalid(
                field,
                format!("`{topic}` is not a valid topic name"),
                "name the Kafka topic this table reads",
            )),
            _ => Ok(()),
        }
    }

    fn validate_columns(&self, field: &str) -> Result<(), ConfigError> {
        if self.columns.is_empty() {
            return Err(invalid(
                field,
                "the table has no columns",
                "add `[[table.column]]` blocks",
            ));
        }
        let mut seen = BTreeSet::new();
        for col in &self.columns {
            if col.name.is_empty() || !seen.insert(col.name.as_str()) {
                return Err(invalid(
                    field,
                    format!("column name `{}` is empty or repeated", col.name),
                    "give every column a unique name",
                ));
            }
            col.validate(&format!("{field}.{}", col.name), self.topic.is_some())?;
        }
        Ok(())
    }

    /// Sorting by a partial state would order rows by a value that changes when parts merge.
    fn validate_sorting_key(&self, field: &str) -> Result<(), ConfigError> {
        for key in &self.sorting_key {
            let Some(col) = self.column(key) else {
                return Err(invalid(
                    field,
                    format!("names `{key}`, which is not a column of the table"),
                    format!("use columns of the table: {}", self.column_names()),
                ));
            };
            if col.aggregate.is_some() {
                return Err(invalid(
                    field,
                    format!("names `{key}`, an aggregate state"),
                    "sort by the grouping columns (those without `aggregate`)",
                ));
            }
        }
        Ok(())
    }

    fn validate_partition_key(&self, field: &str) -> Result<(), ConfigError> {
        let Some(pk) = &self.partition_key else {
            return Ok(());
        };
        let Some(col) = self.column(&pk.column) else {
            return Err(invalid(
                format!("{field}.column"),
                format!("names `{}`, which is not a column of the table", pk.column),
                format!("use a column of the table: {}", self.column_names()),
            ));
        };
        if col.aggregate.is_some() {
            return Err(invalid(
                format!("{field}.column"),
                format!("names `{}`, an aggregate state", pk.column),
                "partition by a grouping column (one without `aggregate`)",
            ));
        }
        validate_granularity(pk.granularity, col, &format!("{field}.granularity"))
    }

    fn validate_max_message_bytes(&self, field: &str) -> Result<(), ConfigError> {
        if self.max_message_bytes == 0 {
            return Err(invalid(field, "is 0", "use a positive size"));
        }
        Ok(())
    }
}

/// The partition value names a directory, so it must be one exact value per part.
fn validate_granularity(
    granularity: Granularity,
    col: &ColumnConfig,
    field: &str,
) -> Result<(), ConfigError> {
    match granularity {
        Granularity::Identity if col.column_type == ColumnType::Float64 => Err(invalid(
            field,
            format!(
                "column `{}` is float64, which makes no sensible partition value",
                col.name
            ),
            "partition by an integer, boolean, string or temporal column",
        )),
        Granularity::Hour | Granularity::Day | Granularity::Month
            if !col.column_type.is_temporal() =>
        {
            Err(invalid(
                field,
                format!(
                    "`{granularity:?}` needs a timestamp or date column, and `{}` is {}",
                    col.name, col.column_type
                )
                .to_lowercase(),
                "use `identity`, or partition by a timestamp/date column",
            ))
        }
        Granularity::Hour if col.column_type == ColumnType::Date => Err(invalid(
            field,
            format!("`hour` of date column `{}`", col.name),
            "use `day` or `month`",
        )),
        _ => Ok(()),
    }
}

impl FlushConfig {
    fn validate(&self, field: &str) -> Result<(), ConfigError> {
        if self.max_rows == 0 {
            return Err(invalid(
                format!("{field}.max_rows"),
                "is 0",
                "use a positive row count",
            ));
        }
        positive(&format!("{field}.max_bytes"), self.max_bytes)?;
        positive(&format!("{field}.max_age_ms"), self.max_age_ms)
    }
}
