//! A table of committed parts, for DataFusion: parts whose partition-key value cannot match the
//! query's filters are dropped before any file is opened, the rest are read by DataFusion's
//! Parquet scan, which skips row groups and pages by their statistics.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, BooleanArray};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use async_trait::async_trait;
use chrono::{DateTime, Months, NaiveDate, NaiveDateTime, TimeZone, Utc};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::Result;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::object_store::path::Path as ObjectPath;
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::ExecutionPlan;
use sluice_config::{Granularity, TableConfig};
use sluice_coord::PartRecord;
use sluice_sink::Storage;

use crate::QueryError;

/// What the scans of a session read: parts kept after partition pruning, out of those the
/// tables hold, and their bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanStats {
    pub parts_read: usize,
    pub parts_total: usize,
    pub bytes_read: u64,
    /// The object paths read, for `--verbose` output and tests.
    pub paths: Vec<String>,
}

/// One part: its object, size and the partition-key range it covers (if the table has a key).
#[derive(Debug, Clone)]
struct Part {
    /// The object's location in the store (the store's own key: it escapes some characters of
    /// partition values, so it is kept as a path, never re-parsed from a string).
    object: ObjectPath,
    /// The part's path relative to the storage root, as the registry names it.
    path: String,
    bytes: u64,
    /// Minimum and maximum value of the partition-key column any row of the part can have;
    /// `None` when unknown (no partition key, or a value that does not parse). From the record's
    /// partition value, which a merged part shares with the parts it replaced (a merge never
    /// leaves its scope), so merged parts prune like flushed ones.
    range: Option<(ScalarValue, ScalarValue)>,
}

impl Part {
    /// The part as DataFusion's scan reads it: at its location as it is, not re-parsed from a
    /// string (which would escape the store's escapes again).
    fn file(&self) -> PartitionedFile {
        let mut file = PartitionedFile::new(String::new(), self.bytes);
        file.object_meta.location = self.object.clone();
        file
    }
}

/// A table of committed parts.
#[derive(Debug)]
pub struct PartsTable {
    schema: SchemaRef,
    store_url: String,
    parts: Vec<Part>,
    /// The partition-key column, if pruning by it is possible.
    key: Option<String>,
    stats: Arc<Mutex<ScanStats>>,
}

impl PartsTable {
    /// The data parts of `table`.
    pub fn new(
        table: &TableConfig,
        storage: &Storage,
        store_url: &str,
        parts: &[&PartRecord],
        stats: Arc<Mutex<ScanStats>>,
    ) -> Result<PartsTable, QueryError> {
        let schema = table.arrow_schema();
        let key = table.partition_key.as_ref().and_then(|pk| {
            let dt = schema.field_with_name(&pk.column).ok()?.data_type().clone();
            Some((pk.column.clone(), pk.granularity, dt))
        });
        let parts = parts
            .iter()
            .map(|p| Part {
                object: storage.object_path(&p.path),
                path: p.path.clone(),
                bytes: p.bytes,
                range: key
                    .as_ref()
                    .and_then(|(_, g, dt)| partition_range(&p.partition_value, *g, dt)),
            })
            .collect();
        Ok(PartsTable {
            schema,
            store_url: store_url.to_string(),
            parts,
            key: key.map(|(c, _, _)| c),
            stats,
        })
    }

    /// The quarantine parts of `table`.
    pub fn quarantine(
        table: &TableConfig,
        storage: &Storage,
        store_url: &str,
        parts: &[&PartRecord],
        stats: Arc<Mutex<ScanStats>>,
    ) -> Result<PartsTable, QueryError> {
        let mut t = PartsTable::new(table, storage, store_url, parts, stats)?;
        t.schema = sluice_sink::quarantine_schema();
        t.key = None;
        for p in &mut t.parts {
            p.range = None;
        }
        Ok(t)
    }

    /// The parts that may hold rows matching `filters`.
    fn prune(&self, state: &dyn Session, filters: &[Expr]) -> Result<Vec<&Part>> {
        let all: Vec<&Part> = self.parts.iter().collect();
        let (Some(key), Some(predicate)) = (&self.key, conjunction(filters.to_vec())) else {
            return Ok(all);
        };
        let df_schema = DFSchema::try_from(Arc::clone(&self.schema))?;
        let physical = state.create_physical_expr(predicate, &df_schema)?;
        let pruning = PruningPredicateBuilder::new()
            .with_file_schema(Arc::clone(&self.schema))
            .try_build(physical)?;
        if pruning.always_true() {
            return Ok(all);
        }
        let keep = pruning.prune(&KeyRanges {
            key,
            parts: &all,
            data_type: self.schema.field_with_name(key)?.data_type().clone(),
        })?;
        Ok(all
            .into_iter()
            .zip(keep)
            .filter_map(|(p, k)| k.then_some(p))
            .collect())
    }
}

#[async_trait]
impl TableProvider for PartsTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Inexact: DataFusion still filters the rows; the filters prune parts here, and the
        // Parquet scan prunes row groups and pages with them too.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let kept = self.prune(state, filters)?;
        if let Ok(mut s) = self.stats.lock() {
            s.parts_total += self.parts.len();
            s.parts_read += kept.len();
            s.bytes_read += kept.iter().map(|p| p.bytes).sum::<u64>();
            let known: HashSet<String> = s.paths.iter().cloned().collect();
            for p in &kept {
                if !known.contains(&p.path) {
                    s.paths.push(p.path.clone());
                }
            }
        }
        if kept.is_empty() {
            let schema = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => Arc::clone(&self.schema),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        let files: Vec<PartitionedFile> = kept.iter().map(|p| p.file()).collect();
        let format = ParquetFormat::default();
        let source = format.file_source(TableSchema::from(Arc::clone(&self.schema)));
        let config = FileScanConfigBuilder::new(ObjectStoreUrl::parse(&self.store_url)?, source)
            .with_file_groups(vec![FileGroup::new(files)])
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        format.create_physical_plan(state, config).await
    }
}

/// The partition-key ranges of parts, as pruning statistics of the key column.
struct KeyRanges<'a> {
    key: &'a str,
    parts: &'a [&'a Part],
    data_type: DataType,
}

impl KeyRanges<'_> {
    fn bound(&self, column: &Column, max: bool) -> Option<ArrayRef> {
        if column.name != self.key {
            return None;
        }
        let values = self.parts.iter().map(|p| match &p.range {
            Some((lo, hi)) => {
                if max {
                    hi.clone()
                } else {
                    lo.clone()
                }
            }
            None => ScalarValue::try_from(&self.data_type).unwrap_or(ScalarValue::Null),
        });
        ScalarValue::iter_to_array(values).ok()
    }
}

impl PruningStatistics for KeyRanges<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.bound(column, false)
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.bound(column, true)
    }

    fn num_containers(&self) -> usize {
        self.parts.len()
    }

    fn null_counts(&self, _column: &Column) -> Option<ArrayRef> {
        None
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        None
    }

    fn contained(&self, _column: &Column, _values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        None
    }
}

/// The smallest and largest value of the key column a part with this partition value can
/// hold, as scalars of the column's type; `None` if the value does not parse (no pruning).
fn partition_range(
    value: &str,
    granularity: Granularity,
    data_type: &DataType,
) -> Option<(ScalarValue, ScalarValue)> {
    if value == "__null__" {
        return None;
    }
    if granularity == Granularity::Identity {
        let v = ScalarValue::try_from_string(value.to_string(), data_type).ok()?;
        return Some((v.clone(), v));
    }
    let (start, end): (NaiveDateTime, NaiveDateTime) = match granularity {
        Granularity::Hour => {
            let s = NaiveDateTime::parse_from_str(&format!("{value}:00:00"), "%Y-%m-%dT%H:%M:%S")
                .ok()?;
            (s, s + chrono::Duration::hours(1))
        }
        Granularity::Day => {
            let d = NaiveDate::parse_from_str(value, "%Y-%m-%d").ok()?;
            (d.and_hms_opt(0, 0, 0)?, d.succ_opt()?.and_hms_opt(0, 0, 0)?)
        }
        Granularity::Month => {
            let d = NaiveDate::parse_from_str(&format!("{value}-01"), "%Y-%m-%d").ok()?;
            (
                d.and_hms_opt(0, 0, 0)?,
                (d + Months::new(1)).and_hms_opt(0, 0, 0)?,
            )
        }
        Granularity::Identity => return None,
    };
    let start = Utc.from_utc_datetime(&start);
    let end = Utc.from_utc_datetime(&end);
    let scalar = |t: DateTime<Utc>, last: bool| -> Option<ScalarValue> {
        Some(match data_type {
            DataType::Timestamp(unit, tz) => {
                let v = match unit {
                    TimeUnit::Second => t.timestamp(),
                    TimeUnit::Millisecond => t.timestamp_millis(),
                    TimeUnit::Microsecond => t.timestamp_micros(),
                    TimeUnit::Nanosecond => t.timestamp_nanos_opt()?,
                } - i64::from(last);
                match unit {
                    TimeUnit::Second => ScalarValue::TimestampSecond(Some(v), tz.clone()),
                    TimeUnit::Millisecond => ScalarValue::TimestampMillisecond(Some(v), tz.clone()),
                    TimeUnit::Microsecond => ScalarValue::TimestampMicrosecond(Some(v), tz.clone()),
                    TimeUnit::Nanosecond => ScalarValue::TimestampNanosecond(Some(v), tz.clone()),
                }
            }
            DataType::Date32 => {
                let days = (t.date_naive() - NaiveDate::from_ymd_opt(1970, 1, 1)?).num_days();
                ScalarValue::Date32(Some(i32::try_from(days - i64::from(last)).ok()?))
            }
            _ => return None,
        })
    };
    Some((scalar(start, false)?, scalar(end, true)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_read_at_their_store_location_whatever_their_partition_value() {
        let config = sluice_config::Config::from_toml_str(
            "[kafka]\nbootstrap_servers = \"127.0.0.1:9\"\n[[table]]\nname = \"t\"\n\
             topic = \"ev\"\npartition_key = { column = \"path\", granularity = \"identity\" }\n\
             [[table.column]]\nname = \"path\"\ntype = \"string\"\n",
            "test",
        )
        .unwrap();
        let dir = std::env::temp_dir().join(format!("sluice-query-{}", std::process::id()));
        let storage = Storage::open(&sluice_config::StorageConfig {
            url: format!("file://{}", dir.display()),
            ..Default::default()
        })
        .unwrap();
        let record = sluice_coord::PartRecord {
            table: "t".into(),
            kind: sluice_coord::PartKind::Data,
            partition_value: "/docs".into(),
            path: "t/data/%2Fdocs/m1-ab-e1-v1.parquet".into(),
            rows: 1,
            bytes: 10,
            topic: String::new(),
            partition: -1,
            first_offset: -1,
            last_offset: -1,
            definition_version: 1,
            lease_epoch: 1,
            created_at_ms: 1,
            level: 1,
            inputs: 2,
            spans: Vec::new(),
            checksum: String::new(),
            flushed_at_ms: 1,
            replicas: Vec::new(),
        };
        let stats = Arc::new(Mutex::new(ScanStats::default()));
        let table =
            PartsTable::new(&config.tables[0], &storage, "sluice://s", &[&record], stats).unwrap();
        let file = table.parts[0].file();
        assert_eq!(file.object_meta.location, storage.object_path(&record.path));
        assert_eq!(
            file.object_meta.location.as_ref(),
            "t/data/%252Fdocs/m1-ab-e1-v1.parquet"
        );
        let key = ScalarValue::Utf8(Some("/docs".into()));
        assert_eq!(
            table.parts[0].range,
            Some((key.clone(), key)),
            "a merged part prunes"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn day_partitions_cover_their_day() {
        let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
        let (lo, hi) = partition_range("2026-11-20", Granularity::Day, &ts).unwrap();
        assert_eq!(
            lo,
            ScalarValue::TimestampMillisecond(Some(1_795_132_800_000), Some("UTC".into()))
        );
        assert_eq!(
            hi,
            ScalarValue::TimestampMillisecond(Some(1_795_219_199_999), Some("UTC".into()))
        );
        let (lo, hi) = partition_range("2026-11", Granularity::Month, &DataType::Date32).unwrap();
        assert_eq!(
            (lo, hi),
            (
                ScalarValue::Date32(Some(20_758)),
                ScalarValue::Date32(Some(20_787))
            )
        );
        assert!(partition_range("__null__", Granularity::Day, &ts).is_none());
        assert!(partition_range("garbage", Granularity::Day, &ts).is_none());
    }
}
