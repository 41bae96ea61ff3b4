//! The merge executor: the parts of one scope streamed from object storage into one merged
//! part, streamed back.
//!
//! [`merge_parts`] reads every input with the async Parquet reader, [`MergeLimits::batch_rows`]
//! rows at a time, and merges them k-way by their key (`kway.rs`): the table's sorting key for
//! data parts, (topic, partition, offset) for quarantine parts, ascending with nulls first as
//! the sink sorts. Each input must already be in that order; one that is not is refused
//! ([`MergeError::Unsorted`]) rather than merged into a part whose order or groups are wrong.
//! Rows with equal keys come out in input order, so the merge is deterministic.
//!
//! **Aggregating tables** (`combine.rs`, `states.rs`). Their rows are partial states, one per
//! group and part; the merged part holds one row per group. Equal group keys (every column
//! without `aggregate`; a null is a value of its own, as in SQL `GROUP BY`) need not be
//! adjacent when the sorting key is a subset of the group key, but they always fall in one run
//! of equal sorting-key values. So the groups of the current run are kept in a small map and
//! written when the run ends, in group-key order within the run: the output stays sorted by
//! the sorting key. `count` and `sum` states are added, `min` and `max` taken (compared in the
//! sort order: floats by IEEE total order), `approx_distinct` sketches united; nulls are
//! skipped, as the aggregates skip them.
//!
//! **Overflow.** Integer sums (`count`, and `sum` of int64 or uint64) use checked arithmetic.
//! A sum that does not fit its type fails the merge with [`MergeError::Overflow`], naming the
//! table, the column and the group: a wrapped or saturated value would be a wrong answer that
//! no reader could tell from a right one, while the unmerged parts stay readable and the query
//! engine answers for them as it always did. Float sums are added as floats.
//!
//! **After an error** the caller registers nothing. An error while rows are merged (an
//! overflow, say) aborts the upload, so no merged object is completed (one left under the same
//! name by an earlier attempt stays as it was); an error found after the upload completed (the
//! checks below) leaves the object in storage. Either way no record names it, and the garbage
//! collector deletes it as any unregistered object.
//!
//! **Output** (`output.rs`). The merged part is encoded with exactly the writer properties of a
//! flushed part ([`sluice_sink::writer_properties`]) and streamed to the object store (a
//! multipart upload once it outgrows one upload part) while its SHA-256 is computed over the
//! bytes as they go out.
//!
//! **Verified before it is returned.** Each input's rows, in its footer and as read, equal its
//! registered `rows` ([`MergeError::InputRows`]); the stored object's size (a `head`) equals the
//! bytes written ([`MergeError::OutputSize`]); the rows in the stored footer equal the sum of
//! the inputs' registered rows, or for an aggregating table's data parts lie between 1 (if any
//! input had rows) and that sum ([`MergeError::OutputRows`]). Any error means the caller must
//! not swap the records.
//!
//! **Memory** is bounded by the number of inputs and `batch_rows`, not by the parts' sizes:
//! about `inputs × batch_rows` decoded rows (each input's current batch, and until the output
//! batch taking rows from it is built, the one before it: at most twice that), `batch_rows`
//! merged rows, and one output row group being encoded (at most
//! [`sluice_sink::ROW_GROUP_ROWS`] rows, as compressed pages). Besides rows: per input, the
//! compressed column chunks of the row group being read (the async reader fetches a row
//! group's columns at once), and the upload buffer, [`UPLOAD_CHUNK_BYTES`] times
//! ([`UPLOAD_CONCURRENCY`] + 1). For an aggregating table add the groups of one run of equal
//! sorting-key values with their states (4 KiB per `approx_distinct` sketch): a few for a
//! sorting key as fine as a minute, but every group of the part for an empty sorting key.
//!
//! Merging and encoding run on the calling task between awaits, a batch at a time; a caller
//! that must keep its runtime responsive spawns the merge on a runtime or thread of its own.

mod combine;
mod input;
mod kway;
mod output;
mod reader;
mod states;
#[cfg(test)]
mod tests;

use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use parquet::errors::ParquetError;
use parquet::file::metadata::KeyValue;
use sluice_config::TableConfig;
use sluice_coord::PartKind;
use sluice_sink::Storage;
use sluice_transform::hll::BadSketch;

use combine::Combiner;
use input::Input;
use kway::Merger;
use output::{Expected, PartWriter};
pub use output::{UPLOAD_CHUNK_BYTES, UPLOAD_CONCURRENCY};

/// The key of quarantine parts: the order the sink writes them in.
const QUARANTINE_KEY: [&str; 3] = ["topic", "partition", "offset"];

/// A part to merge: its object path (relative to the storage root) and the rows its registry
/// record says it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeInput {
    pub path: String,
    pub rows: u64,
}

/// What the merged part holds, for its registry record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeOutput {
    /// Rows in the merged part (its stored footer's count).
    pub rows: u64,
    /// Size of the stored object.
    pub bytes: u64,
    /// SHA-256 of the object's bytes, lowercase hex.
    pub checksum: String,
}

/// How much a merge holds at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeLimits {
    /// Rows read from each input at a time, and rows per merged batch written. At least 1.
    pub batch_rows: usize,
}

impl Default for MergeLimits {
    /// 8192 rows: the Parquet reader's own default batch size.
    fn default() -> Self {
        MergeLimits { batch_rows: 8192 }
    }
}

/// Why a merge failed. Any of them means the merged part must not be registered.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("a merge of table `{table}` needs at least 2 input parts, and was given {inputs}")]
    TooFewInputs { table: String, inputs: usize },
    #[error("a merge of table `{table}` needs a positive `batch_rows`")]
    BadLimits { table: String },
    #[error("cannot read input part {path} of table `{table}`")]
    Read {
        table: String,
        path: String,
        #[source]
        source: ParquetError,
    },
    #[error("input part {path} does not hold the columns of table `{table}`: {problem}")]
    Schema {
        table: String,
        path: String,
        problem: String,
    },
    #[error("input part {path} of table `{table}` holds {actual} rows, and its record says {registered}")]
    InputRows {
        table: String,
        path: String,
        registered: u64,
        actual: u64,
    },
    #[error("input part {path} of table `{table}` is not sorted by ({key}) at row {row}")]
    Unsorted {
        table: String,
        path: String,
        key: String,
        row: u64,
    },
    #[error("cannot merge the rows of table `{table}` into {path}")]
    Rows {
        table: String,
        path: String,
        #[source]
        source: ArrowError,
    },
    #[error("the partial sums of column `{column}` of table `{table}` overflow its type for group ({group}); merging would wrap them")]
    Overflow {
        table: String,
        column: String,
        group: String,
    },
    #[error("column `{column}` of table `{table}` holds a bad sketch (merging into {path})")]
    Sketch {
        table: String,
        path: String,
        column: String,
        #[source]
        source: BadSketch,
    },
    #[error("cannot write the merged part {path} of table `{table}`")]
    Write {
        table: String,
        path: String,
        #[source]
        source: ParquetError,
    },
    #[error("object storage failed at {path} (merging table `{table}`)")]
    Storage {
        table: String,
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("merged part {path} of table `{table}` is {stored} bytes in storage, and {written} were written")]
    OutputSize {
        table: String,
        path: String,
        written: u64,
        stored: u64,
    },
    #[error(
        "merged part {path} of table `{table}` holds {rows} rows, and {expected} were expected"
    )]
    OutputRows {
        table: String,
        path: String,
        rows: u64,
        expected: String,
    },
}

/// Merges `inputs`, all of one scope of `table` and of `kind`, into the object `output_path`
/// (relative to the storage root), and returns what its registry record needs.
///
/// At least 2 inputs ([`MergeError::TooFewInputs`] otherwise: merging one part would only
/// rewrite it); inputs with no rows are allowed. `metadata` are the caller's footer key-values
/// (level, input count, merge epoch, partition value...), written `sluice.<key>` (a key that
/// already starts with `sluice.` is kept as it is) after `sluice.table` and
/// `sluice.definition_version`, which come from `table` and which the caller's pairs cannot
/// replace. See the module docs for the order, the combining of aggregate states, what is
/// verified and the memory held.
pub async fn merge_parts(
    storage: &Storage,
    table: &TableConfig,
    kind: PartKind,
    inputs: &[MergeInput],
    output_path: &str,
    metadata: Vec<(String, String)>,
    limits: MergeLimits,
) -> Result<MergeOutput, MergeError> {
    check_request(table, inputs, limits)?;
    let schema = match kind {
        PartKind::Data => table.arrow_schema(),
        PartKind::Quarantine => sluice_sink::quarantine_schema(),
    };
    let opened = futures::future::try_join_all(
        inputs
            .iter()
            .map(|i| Input::open(storage, &table.name, &schema, i, limits.batch_rows)),
    )
    .await?;
    let key = merge_key(table, kind);
    let mut merger = Merger::new(
        &table.name,
        output_path,
        &schema,
        opened,
        &key,
        limits.batch_rows,
    )
    .await?;
    let mut combiner = match kind {
        PartKind::Data if table.is_aggregating() => Some(
            Combiner::new(table, output_path, &schema, limits.batch_rows)
                .map_err(|e| rows_err(table, output_path, e))?,
        ),
        _ => None,
    };
    let footer = footer_metadata(table, metadata);
    let sorted = kind == PartKind::Data;
    let mut writer = PartWriter::create(storage, table, &schema, footer, sorted, output_path)?;
    if let Err(e) = pump(&mut merger, combiner.as_mut(), &mut writer).await {
        writer.abort().await;
        return Err(e);
    }
    let written = writer.finish().await?;
    let registered = inputs.iter().fold(0u64, |n, i| n.saturating_add(i.rows));
    let expected = match combiner {
        Some(_) => Expected::Combined {
            at_most: registered,
        },
        None => Expected::Exactly(registered),
    };
    let rows = output::verify(storage, &table.name, output_path, &written, expected).await?;
    tracing::debug!(table = %table.name, path = output_path, inputs = inputs.len(), rows, bytes = written.bytes, "merged parts");
    Ok(MergeOutput {
        rows,
        bytes: written.bytes,
        checksum: written.checksum,
    })
}

fn check_request(
    table: &TableConfig,
    inputs: &[MergeInput],
    limits: MergeLimits,
) -> Result<(), MergeError> {
    if inputs.len() < 2 {
        return Err(MergeError::TooFewInputs {
            table: table.name.clone(),
            inputs: inputs.len(),
        });
    }
    if limits.batch_rows == 0 {
        return Err(MergeError::BadLimits {
            table: table.name.clone(),
        });
    }
    Ok(())
}

/// The columns the parts of `kind` are sorted by.
fn merge_key(table: &TableConfig, kind: PartKind) -> Vec<String> {
    match kind {
        PartKind::Data => table.sorting_key.clone(),
        PartKind::Quarantine => QUARANTINE_KEY.iter().map(|c| c.to_string()).collect(),
    }
}

/// Merged batches, combined per group for an aggregating table, into the writer.
async fn pump(
    merger: &mut Merger,
    mut combiner: Option<&mut Combiner>,
    writer: &mut PartWriter,
) -> Result<(), MergeError> {
    while let Some(batch) = merger.next_batch().await? {
        match combiner.as_deref_mut() {
            Some(c) => write_all(writer, c.push(&batch)?).await?,
            None => writer.write(&batch).await?,
        }
    }
    if let Some(c) = combiner {
        write_all(writer, c.finish()?).await?;
    }
    Ok(())
}

async fn write_all(writer: &mut PartWriter, batches: Vec<RecordBatch>) -> Result<(), MergeError> {
    for b in &batches {
        writer.write(b).await?;
    }
    Ok(())
}

/// `sluice.table` and `sluice.definition_version` from the table, then the caller's pairs.
fn footer_metadata(table: &TableConfig, metadata: Vec<(String, String)>) -> Vec<KeyValue> {
    let mut kv = vec![
        KeyValue::new("sluice.table".into(), table.name.clone()),
        KeyValue::new(
            "sluice.definition_version".into(),
            table.version.to_string(),
        ),
    ];
    for (key, value) in metadata {
        let key = if key.starts_with("sluice.") {
            key
        } else {
            format!("sluice.{key}")
        };
        if kv.iter().all(|k| k.key != key) {
            kv.push(KeyValue::new(key, value));
        }
    }
    kv
}

fn rows_err(table: &TableConfig, path: &str, source: ArrowError) -> MergeError {
    MergeError::Rows {
        table: table.name.clone(),
        path: path.to_string(),
        source,
    }
}

/// The schema's indices of the columns `names` (an error names a missing one).
fn column_indices(schema: &SchemaRef, names: &[String]) -> Result<Vec<usize>, ArrowError> {
    names.iter().map(|n| schema.index_of(n)).collect()
}
