//! Reading a snapshot file as chunks of rows: NDJSON lines decoded (and quarantined) as the
//! stream's events are, Parquet rows checked against the table's columns. Chunks are cut at
//! fixed line or row counts, so a resumed backfill cuts a file the same way and its parts get
//! the same names.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sluice_config::TableConfig;
use sluice_decode::{Origins, QuarantineRow, TableBuffer};

use crate::{BackfillError, FileFormat};

/// Lines (NDJSON) or rows (Parquet) per chunk: one chunk becomes one part per partition value.
pub const CHUNK_ROWS: usize = 500_000;
/// An NDJSON chunk also ends once this many bytes were read, to bound the memory of wide events.
pub const CHUNK_BYTES: u64 = 256 * 1024 * 1024;
/// Rows per Parquet read.
const READ_BATCH_ROWS: usize = 64 * 1024;

/// A chunk of one file: its rows as the table's batch, the events that did not decode, and
/// where in the file they were.
#[derive(Debug)]
pub struct Chunk {
    pub index: u32,
    /// Line (or row) numbers of the chunk, from 1.
    pub first_line: i64,
    pub last_line: i64,
    pub batch: RecordBatch,
    pub quarantine: Vec<QuarantineRow>,
    /// Each row's line number, for views that must name the line behind a row they fail on.
    pub origins: Option<Origins>,
    pub bytes_read: u64,
}

/// Reads `path` chunk by chunk, handing each to `each`. Blocking.
pub fn read_chunks(
    table: &TableConfig,
    path: &Path,
    format: FileFormat,
    origins: bool,
    each: &mut dyn FnMut(Chunk) -> Result<(), BackfillError>,
) -> Result<(), BackfillError> {
    match format {
        FileFormat::Ndjson => read_ndjson(table, path, origins, each),
        FileFormat::Parquet => read_parquet(table, path, origins, each),
    }
}

fn read_err(path: &Path) -> impl Fn(std::io::Error) -> BackfillError + '_ {
    move |source| BackfillError::ReadFile {
        path: path.display().to_string(),
        source,
    }
}

fn read_ndjson(
    table: &TableConfig,
    path: &Path,
    origins: bool,
    each: &mut dyn FnMut(Chunk) -> Result<(), BackfillError>,
) -> Result<(), BackfillError> {
    let mut reader = BufReader::with_capacity(1 << 20, File::open(path).map_err(read_err(path))?);
    let mut buffer = TableBuffer::new(table);
    if origins {
        buffer.record_origins();
    }
    let (mut line_no, mut first, mut index, mut bytes) = (0i64, 1i64, 0u32, 0u64);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(read_err(path))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        bytes += n as u64;
        let event = line.strip_suffix(b"\n").unwrap_or(&line);
        let event = event.strip_suffix(b"\r").unwrap_or(event);
        buffer.push(line_no, None, Some(event));
        if (line_no - first + 1) as usize >= CHUNK_ROWS || bytes >= CHUNK_BYTES {
            each(drain(&mut buffer, table, index, first, line_no, bytes)?)?;
            (first, index, bytes) = (line_no + 1, index + 1, 0);
        }
    }
    if line_no >= first {
        each(drain(&mut buffer, table, index, first, line_no, bytes)?)?;
    }
    Ok(())
}

fn drain(
    buffer: &mut TableBuffer,
    table: &TableConfig,
    index: u32,
    first_line: i64,
    last_line: i64,
    bytes_read: u64,
) -> Result<Chunk, BackfillError> {
    let drained = buffer.drain().map_err(|source| BackfillError::Decode {
        table: table.name.clone(),
        source,
    })?;
    Ok(Chunk {
        index,
        first_line,
        last_line,
        batch: drained.batch,
        quarantine: drained.quarantine,
        origins: drained.origins,
        bytes_read,
    })
}

/// Where each of the table's columns is in a Parquet file's schema; refuses a missing column,
/// another type, or a column the table does not have.
pub fn parquet_columns(table: &TableConfig, path: &Path) -> Result<Vec<usize>, BackfillError> {
    let file = File::open(path).map_err(read_err(path))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| not_parquet(path, e))?;
    projection(table, path, builder.schema())
}

fn not_parquet(path: &Path, e: parquet::errors::ParquetError) -> BackfillError {
    BackfillError::File {
        path: path.display().to_string(),
        problem: format!("is not a readable Parquet file: {e}"),
    }
}

fn projection(
    table: &TableConfig,
    path: &Path,
    schema: &SchemaRef,
) -> Result<Vec<usize>, BackfillError> {
    let refuse = |problem: String| BackfillError::File {
        path: path.display().to_string(),
        problem,
    };
    let wanted = table.arrow_schema();
    let mut indices = Vec::with_capacity(wanted.fields().len());
    for field in wanted.fields() {
        let (i, found) = schema.column_with_name(field.name()).ok_or_else(|| {
            refuse(format!(
                "has no column `{}`, which table `{}` has",
                field.name(),
                table.name
            ))
        })?;
        if found.data_type() != field.data_type() {
            return Err(refuse(format!(
                "column `{}` is {}, table `{}` has {}",
                field.name(),
                found.data_type(),
                table.name,
                field.data_type()
            )));
        }
        indices.push(i);
    }
    if let Some(extra) = schema
        .fields()
        .iter()
        .find(|f| wanted.column_with_name(f.name()).is_none())
    {
        return Err(refuse(format!(
            "has column `{}`, which table `{}` does not have",
            extra.name(),
            table.name
        )));
    }
    Ok(indices)
}

fn read_parquet(
    table: &TableConfig,
    path: &Path,
    origins: bool,
    each: &mut dyn FnMut(Chunk) -> Result<(), BackfillError>,
) -> Result<(), BackfillError> {
    let file = File::open(path).map_err(read_err(path))?;
    let size = file.metadata().map_err(read_err(path))?.len();
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| not_parquet(path, e))?;
    let indices = projection(table, path, builder.schema())?;
    let total_rows = builder.metadata().file_metadata().num_rows().max(1) as u64;
    let shape = Shape {
        path,
        origins,
        bytes_per_row: size as f64 / total_rows as f64,
    };
    let reader = builder
        .with_batch_size(READ_BATCH_ROWS)
        .build()
        .map_err(|e| not_parquet(path, e))?;
    let schema = table.arrow_schema();
    let (mut pending, mut rows, mut first, mut index) = (Vec::new(), 0usize, 1i64, 0u32);
    for batch in reader {
        let batch = batch.map_err(|e| BackfillError::File {
            path: path.display().to_string(),
            problem: format!("cannot be read: {e}"),
        })?;
        let columns = indices
            .iter()
            .map(|&i| Arc::clone(batch.column(i)))
            .collect();
        let batch = RecordBatch::try_new(Arc::clone(&schema), columns).map_err(|e| {
            BackfillError::File {
                path: path.display().to_string(),
                problem: format!("does not fit table `{}`: {e}", table.name),
            }
        })?;
        rows += batch.num_rows();
        pending.push(batch);
        if rows >= CHUNK_ROWS {
            let last = first + rows as i64 - 1;
            each(shape.chunk(&schema, &mut pending, index, first, last)?)?;
            (first, index, rows) = (last + 1, index + 1, 0);
        }
    }
    if rows > 0 {
        let last = first + rows as i64 - 1;
        each(shape.chunk(&schema, &mut pending, index, first, last)?)?;
    }
    Ok(())
}

/// How a Parquet file's chunks are cut out.
struct Shape<'a> {
    path: &'a Path,
    origins: bool,
    /// The file's size over its rows, to count the bytes a chunk stands for.
    bytes_per_row: f64,
}

impl Shape<'_> {
    fn chunk(
        &self,
        schema: &SchemaRef,
        pending: &mut Vec<RecordBatch>,
        index: u32,
        first_line: i64,
        last_line: i64,
    ) -> Result<Chunk, BackfillError> {
        let batch = arrow::compute::concat_batches(schema, pending.iter()).map_err(|e| {
            BackfillError::File {
                path: self.path.display().to_string(),
                problem: e.to_string(),
            }
        })?;
        pending.clear();
        let rows = batch.num_rows();
        let origins = self.origins.then(|| Origins {
            offsets: (first_line..=last_line).collect(),
            timestamps_ms: vec![None; rows],
        });
        Ok(Chunk {
            index,
            first_line,
            last_line,
            batch,
            quarantine: Vec::new(),
            origins,
            bytes_read: (self.bytes_per_row * rows as f64) as u64,
        })
    }
}

#[cfg(test)]
mod tests;
