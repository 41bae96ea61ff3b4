//! Writing the merged part to the object store, hashing it on the way, and checking what was
//! stored.

use std::fmt::Write as _;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use futures::future::BoxFuture;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::async_writer::AsyncFileWriter;
use parquet::arrow::AsyncArrowWriter;
use parquet::errors::ParquetError;
use parquet::file::metadata::KeyValue;
use sluice_config::TableConfig;
use sluice_sink::Storage;
use tokio::io::AsyncWriteExt;

use super::reader::ObjectReader;
use super::MergeError;

/// Bytes per part of the multipart upload (and what is buffered before it starts: a smaller
/// part is one plain upload). S3 needs at least 5 MiB per part but the last.
pub const UPLOAD_CHUNK_BYTES: usize = 8 * 1024 * 1024;
/// Upload parts in flight at once.
pub const UPLOAD_CONCURRENCY: usize = 2;

/// The object being written, with the SHA-256 and size of the bytes handed to it so far.
struct HashingWriter {
    inner: BufWriter,
    digest: ring::digest::Context,
    bytes: u64,
}

impl AsyncFileWriter for HashingWriter {
    fn write(&mut self, bs: Bytes) -> BoxFuture<'_, parquet::errors::Result<()>> {
        self.digest.update(&bs);
        self.bytes += bs.len() as u64;
        Box::pin(async move { self.inner.put(bs).await.map_err(external) })
    }

    fn complete(&mut self) -> BoxFuture<'_, parquet::errors::Result<()>> {
        Box::pin(async move { self.inner.shutdown().await.map_err(external) })
    }
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> ParquetError {
    ParquetError::External(Box::new(e))
}

/// What was written: the object's size and SHA-256 (lowercase hex).
pub(super) struct Written {
    pub(super) bytes: u64,
    pub(super) checksum: String,
}

/// The merged part's Parquet writer.
pub(super) struct PartWriter {
    writer: AsyncArrowWriter<HashingWriter>,
    table: String,
    path: String,
}

impl PartWriter {
    /// A writer with the flushed parts' properties ([`sluice_sink::writer_properties`]);
    /// nothing reaches the store before the first row group or the end.
    pub(super) fn create(
        storage: &Storage,
        table: &TableConfig,
        schema: &SchemaRef,
        metadata: Vec<KeyValue>,
        sorted: bool,
        path: &str,
    ) -> Result<PartWriter, MergeError> {
        let err = |source| MergeError::Write {
            table: table.name.clone(),
            path: path.to_string(),
            source,
        };
        let props = sluice_sink::writer_properties(table, schema, metadata, sorted).map_err(err)?;
        let (store, _) = storage.object_store();
        let inner = BufWriter::with_capacity(store, storage.object_path(path), UPLOAD_CHUNK_BYTES)
            .with_max_concurrency(UPLOAD_CONCURRENCY);
        let sink = HashingWriter {
            inner,
            digest: ring::digest::Context::new(&ring::digest::SHA256),
            bytes: 0,
        };
        let writer =
            AsyncArrowWriter::try_new(sink, SchemaRef::clone(schema), Some(props)).map_err(err)?;
        Ok(PartWriter {
            writer,
            table: table.name.clone(),
            path: path.to_string(),
        })
    }

    pub(super) async fn write(&mut self, batch: &RecordBatch) -> Result<(), MergeError> {
        self.writer.write(batch).await.map_err(|e| self.err(e))
    }

    /// Writes the footer and completes the upload.
    pub(super) async fn finish(mut self) -> Result<Written, MergeError> {
        self.writer.finish().await.map_err(|e| self.err(e))?;
        let sink = self.writer.into_inner();
        let checksum =
            sink.digest
                .finish()
                .as_ref()
                .iter()
                .fold(String::with_capacity(64), |mut hex, b| {
                    let _ = write!(hex, "{b:02x}");
                    hex
                });
        Ok(Written {
            bytes: sink.bytes,
            checksum,
        })
    }

    /// Abandons the part before it is finished: a multipart upload in progress is aborted,
    /// so no object appears (a failure to abort only leaves parts the store expires).
    pub(super) async fn abort(self) {
        let mut sink = self.writer.into_inner();
        if let Err(e) = sink.inner.abort().await {
            tracing::warn!(path = %self.path, error = %e, "cannot abort the upload of an abandoned merged part");
        }
    }

    fn err(&self, source: ParquetError) -> MergeError {
        MergeError::Write {
            table: self.table.clone(),
            path: self.path.clone(),
            source,
        }
    }
}

/// The rows a merged part must hold, given its inputs' registered rows.
#[derive(Debug, Clone, Copy)]
pub(super) enum Expected {
    /// Every row kept: plain tables and quarantine parts.
    Exactly(u64),
    /// Groups combined: at most the inputs' rows, and at least one if they had any.
    Combined { at_most: u64 },
}

impl Expected {
    fn holds(self, rows: u64) -> bool {
        match self {
            Expected::Exactly(n) => rows == n,
            Expected::Combined { at_most } => rows <= at_most && (rows > 0 || at_most == 0),
        }
    }

    fn describe(self) -> String {
        match self {
            Expected::Exactly(n) => n.to_string(),
            Expected::Combined { at_most: 0 } => "0".to_string(),
            Expected::Combined { at_most } => format!("1 to {at_most}"),
        }
    }
}

/// Checks the stored object: its size is the bytes written, and the rows in its footer are
/// `expected`. Returns those rows.
pub(super) async fn verify(
    storage: &Storage,
    table: &str,
    path: &str,
    written: &Written,
    expected: Expected,
) -> Result<u64, MergeError> {
    let (store, _) = storage.object_store();
    let location = storage.object_path(path);
    let stored = store
        .head(&location)
        .await
        .map_err(|source| MergeError::Storage {
            table: table.to_string(),
            path: path.to_string(),
            source,
        })?
        .size;
    if stored != written.bytes {
        return Err(MergeError::OutputSize {
            table: table.to_string(),
            path: path.to_string(),
            written: written.bytes,
            stored,
        });
    }
    let rows = footer_rows(store, location, stored)
        .await
        .map_err(|source| MergeError::Read {
            table: table.to_string(),
            path: path.to_string(),
            source,
        })?;
    if !expected.holds(rows) {
        return Err(MergeError::OutputRows {
            table: table.to_string(),
            path: path.to_string(),
            rows,
            expected: expected.describe(),
        });
    }
    Ok(rows)
}

/// The row count in a stored part's footer, read back from the store.
async fn footer_rows(
    store: Arc<dyn ObjectStore>,
    location: Path,
    size: u64,
) -> Result<u64, ParquetError> {
    let mut reader = ObjectReader::new(store, location, size);
    let metadata = ArrowReaderMetadata::load_async(&mut reader, ArrowReaderOptions::new()).await?;
    u64::try_from(metadata.metadata().file_metadata().num_rows())
        .map_err(|_| ParquetError::General("a negative row count in the footer".into()))
}
