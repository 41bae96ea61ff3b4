//! Snapshots written by tests: the first events of each partition as files, one NDJSON and one
//! Parquet, with a manifest; and what the backfill of such a snapshot must produce.
//!
//! The Parquet file is written with `arrow` and `parquet` directly from the fixture's rows, not
//! with Sluice's encoder.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use sluice_testkit::fixture::{row, Expect};

use crate::Prepared;

/// NDJSON: every snapshot event except the well-formed ones of the Parquet partitions.
pub const NDJSON_FILE: &str = "events-0.ndjson";
/// Parquet: the well-formed events of the odd partitions.
pub const PARQUET_FILE: &str = "events-1.parquet";

/// A snapshot on disk, and where each of its events is.
pub struct SnapshotFiles {
    pub manifest: PathBuf,
    /// Per partition, the offset the stream takes over at.
    pub offsets: BTreeMap<i32, i64>,
    /// (file, line from 1) -> seq of every NDJSON line.
    pub backfilled: HashMap<(String, i64), u64>,
    pub events: usize,
}

impl SnapshotFiles {
    pub fn manifest_arg(&self) -> &str {
        self.manifest.to_str().expect("temp paths are UTF-8")
    }

    /// `backfill run` of this snapshot into deployment `d`, then `more`: `sluice`'s arguments.
    pub fn run_args<'a>(&'a self, d: &'a Prepared, more: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "backfill",
            "run",
            "--snapshot",
            self.manifest_arg(),
            "--config",
            d.config_arg(),
        ];
        args.extend(more);
        args
    }
}

/// SHA-256 of `bytes`, lowercase hex, as a manifest gives it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The events `d` produced at the (partition, offset) positions `keep` takes, and where they
/// are: what the exactly-once checker expects of part of a topic.
pub fn events_where(
    d: &Prepared,
    keep: impl Fn(i32, i64) -> bool,
) -> (
    Vec<sluice_testkit::fixture::Event>,
    HashMap<(i32, i64), u64>,
) {
    let located: HashMap<(i32, i64), u64> = d
        .located
        .iter()
        .filter(|((p, o), _)| keep(*p, *o))
        .map(|(&at, &seq)| (at, seq))
        .collect();
    let seqs: std::collections::HashSet<u64> = located.values().copied().collect();
    let events = d
        .events
        .iter()
        .filter(|e| seqs.contains(&e.seq))
        .cloned()
        .collect();
    (events, located)
}

/// Writes a snapshot of the first `take` events of every partition of `d` under
/// `d.dir/snapshot/`: well-formed events of odd partitions as Parquet rows, everything else
/// (malformed events included) as NDJSON lines in offset order.
pub fn write_snapshot(d: &Prepared, take: i64) -> Result<SnapshotFiles> {
    let dir = d.dir.path().join("snapshot");
    std::fs::create_dir_all(&dir)?;
    let offsets: BTreeMap<i32, i64> = d
        .ends()
        .into_iter()
        .map(|(p, end)| (p, end.min(take)))
        .collect();
    let by_seq: HashMap<u64, &sluice_testkit::fixture::Event> =
        d.events.iter().map(|e| (e.seq, e)).collect();
    let mut at: Vec<((i32, i64), u64)> = d
        .located
        .iter()
        .filter(|((p, o), _)| *o < offsets[p])
        .map(|(&k, &v)| (k, v))
        .collect();
    at.sort();
    let (mut ndjson, mut parquet_seqs) = (Vec::new(), Vec::new());
    let mut backfilled = HashMap::new();
    for &((p, _), seq) in &at {
        let e = by_seq[&seq];
        if p % 2 == 1 && e.expect == Expect::Row {
            parquet_seqs.push(seq);
            continue;
        }
        ndjson.extend_from_slice(e.payload.as_deref().unwrap_or_default());
        ndjson.push(b'\n');
        backfilled.insert((NDJSON_FILE.to_string(), backfilled.len() as i64 + 1), seq);
    }
    let parquet = parquet_of(&parquet_seqs)?;
    std::fs::write(dir.join(NDJSON_FILE), &ndjson)?;
    std::fs::write(dir.join(PARQUET_FILE), &parquet)?;
    let offsets_json: serde_json::Map<String, serde_json::Value> = offsets
        .iter()
        .map(|(p, o)| (p.to_string(), (*o).into()))
        .collect();
    let manifest = serde_json::json!({
        "table": "events",
        "offsets": offsets_json,
        "files": [
            {"path": NDJSON_FILE, "format": "ndjson", "sha256": sha256_hex(&ndjson)},
            {"path": PARQUET_FILE, "format": "parquet", "sha256": sha256_hex(&parquet)},
        ],
    });
    let path = dir.join("snapshot.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest)?)?;
    Ok(SnapshotFiles {
        manifest: path,
        offsets,
        backfilled,
        events: at.len(),
    })
}

/// The events table's rows of `seqs`, as a Parquet file with the table's columns.
fn parquet_of(seqs: &[u64]) -> Result<Vec<u8>> {
    let rows: Vec<_> = seqs.iter().map(|&s| row(s)).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("seq", DataType::UInt64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("user_id", DataType::Int64, true),
        Field::new("country", DataType::Utf8, false),
        Field::new("path", DataType::Utf8, true),
        Field::new("duration_ms", DataType::Float64, true),
        Field::new("ok", DataType::Boolean, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.seq))),
        Arc::new(
            TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.ts))
                .with_timezone("UTC"),
        ),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.user_id))),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.country),
        )),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.path))),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.duration_ms),
        )),
        Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.ok)))),
    ];
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, schema, None)?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(out)
}
