//! The executor over `file://` storage in a temporary directory: input parts built by the
//! sink from the test kit's events (or from partial states written here), merged, and the
//! merged object read back and judged against what the inputs held.

mod aggregate;
mod plain;
mod quarantine;

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray};
use arrow::compute::concat_batches;
use arrow::datatypes::{Float64Type, Int64Type, SchemaRef, TimestampMillisecondType, UInt64Type};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::metadata::ParquetMetaData;
use sluice_config::{Config, StorageConfig, TableConfig};
use sluice_coord::{PartKind, UnitId};
use sluice_decode::TableBuffer;
use sluice_sink::{build_parts, EncodedPart, FlushSource, Storage};
use sluice_testkit::fixture;
use tempfile::TempDir;

use super::{merge_parts, MergeError, MergeInput, MergeLimits, MergeOutput};

/// Where every test writes its merged part, under its table's directory.
pub(super) fn output_path(table: &TableConfig) -> String {
    format!("{}/merged/level-1.parquet", table.name)
}

/// `file://` storage in a fresh directory (kept alive by the returned guard).
pub(super) fn storage() -> (TempDir, Storage) {
    let dir = tempfile::tempdir().unwrap();
    let config = StorageConfig {
        url: format!("file://{}", dir.path().display()),
        ..StorageConfig::default()
    };
    let storage = Storage::open(&config).unwrap();
    (dir, storage)
}

/// The shared events table plus `extra` tables and views; the table named `name`.
pub(super) fn table(extra: &str, name: &str) -> TableConfig {
    let config = Config::from_toml_str(&fixture::config_with(extra), "test").unwrap();
    config.tables.into_iter().find(|t| t.name == name).unwrap()
}

/// The parts of one flush of `events` (decoded as the worker decodes them), at offsets from
/// `first_offset` of partition `partition`.
pub(super) fn flush(
    table: &TableConfig,
    partition: i32,
    first_offset: i64,
    events: &[fixture::Event],
) -> Vec<EncodedPart> {
    let mut buf = TableBuffer::new(table);
    for (i, e) in events.iter().enumerate() {
        buf.push(first_offset + i as i64, None, e.payload.as_deref());
    }
    let drained = buf.drain().unwrap();
    build_parts(
        table,
        &source(partition, first_offset, events.len()),
        &drained.batch,
        &drained.quarantine,
    )
    .unwrap()
}

pub(super) fn source(partition: i32, first_offset: i64, len: usize) -> FlushSource {
    FlushSource {
        unit: UnitId::new("events", partition),
        first_offset,
        last_offset: first_offset + len.max(1) as i64 - 1,
        lease_epoch: 1,
    }
}

/// `events` split by partition, each partition's events into flushes of `per_flush`: the
/// parts of every flush, with their offsets as a real partition would give them.
pub(super) fn flushes(
    table: &TableConfig,
    events: &[fixture::Event],
    per_flush: usize,
) -> Vec<EncodedPart> {
    let mut by_partition: BTreeMap<i32, Vec<fixture::Event>> = BTreeMap::new();
    for e in events {
        by_partition.entry(e.partition).or_default().push(e.clone());
    }
    let mut parts = Vec::new();
    for (partition, events) in by_partition {
        for (i, chunk) in events.chunks(per_flush).enumerate() {
            parts.extend(flush(table, partition, (i * per_flush) as i64, chunk));
        }
    }
    parts
}

/// Uploads the parts; their inputs to a merge, with the rows their records say.
pub(super) async fn upload(storage: &Storage, parts: &[EncodedPart]) -> Vec<MergeInput> {
    let mut inputs = Vec::new();
    for p in parts {
        storage.put(&p.record.path, p.bytes.clone()).await.unwrap();
        inputs.push(MergeInput {
            path: p.record.path.clone(),
            rows: p.record.rows,
        });
    }
    inputs
}

/// Merges with the given batch size and a level in the footer.
pub(super) async fn merge(
    storage: &Storage,
    table: &TableConfig,
    kind: PartKind,
    inputs: &[MergeInput],
    batch_rows: usize,
) -> Result<MergeOutput, MergeError> {
    let metadata = vec![("level".to_string(), "1".to_string())];
    let limits = MergeLimits { batch_rows };
    let out = output_path(table);
    merge_parts(storage, table, kind, inputs, &out, metadata, limits).await
}

/// A stored part read back whole: its rows in one batch and its footer.
pub(super) struct ReadBack {
    pub(super) batch: RecordBatch,
    pub(super) metadata: ParquetMetaData,
    pub(super) bytes: Bytes,
}

pub(super) async fn read_back(storage: &Storage, path: &str) -> ReadBack {
    let bytes = storage.get(path).await.unwrap();
    read_bytes(bytes)
}

pub(super) fn read_bytes(bytes: Bytes) -> ReadBack {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes.clone()).unwrap();
    let metadata = builder.metadata().as_ref().clone();
    let schema: SchemaRef = builder.schema().clone();
    let batches: Vec<RecordBatch> = builder.build().unwrap().map(|b| b.unwrap()).collect();
    ReadBack {
        batch: concat_batches(&schema, &batches).unwrap(),
        metadata,
        bytes,
    }
}

/// SHA-256 of `bytes`, lowercase hex, computed here independently of the writer's hashing.
pub(super) fn sha256(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The footer's `key` value.
pub(super) fn footer_value(metadata: &ParquetMetaData, key: &str) -> Option<String> {
    metadata
        .file_metadata()
        .key_value_metadata()?
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone())
}

/// Every column of an events row.
pub(super) type EventRow = (
    u64,
    i64,
    Option<i64>,
    String,
    Option<String>,
    Option<f64>,
    Option<bool>,
);

/// The rows of an events batch, every column.
pub(super) fn event_rows(batch: &RecordBatch) -> Vec<EventRow> {
    let c = |name: &str| batch.column_by_name(name).unwrap();
    let (seq, ts) = (
        c("seq").as_primitive::<UInt64Type>(),
        c("ts").as_primitive::<TimestampMillisecondType>(),
    );
    let (user, country, path) = (
        c("user_id").as_primitive::<Int64Type>(),
        c("country").as_string::<i32>(),
        c("path").as_string::<i32>(),
    );
    let (duration, ok) = (
        c("duration_ms").as_primitive::<Float64Type>(),
        c("ok").as_boolean(),
    );
    (0..batch.num_rows())
        .map(|i| {
            (
                seq.value(i),
                ts.value(i),
                user.is_valid(i).then(|| user.value(i)),
                country.value(i).to_string(),
                path.is_valid(i).then(|| path.value(i).to_string()),
                duration.is_valid(i).then(|| duration.value(i)),
                ok.is_valid(i).then(|| ok.value(i)),
            )
        })
        .collect()
}

/// What the test kit says event `seq` decodes to, every column.
pub(super) fn fixture_row(seq: u64) -> EventRow {
    let r = fixture::row(seq);
    (
        r.seq,
        r.ts,
        Some(r.user_id),
        r.country.to_string(),
        Some(r.path.to_string()),
        Some(r.duration_ms),
        Some(r.ok),
    )
}
