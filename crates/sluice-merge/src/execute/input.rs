//! One input part, read from the object store a batch at a time and counted.

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use futures::TryStreamExt;
use parquet::arrow::async_reader::ParquetRecordBatchStream;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::errors::ParquetError;
use sluice_sink::Storage;

use super::reader::ObjectReader;
use super::{MergeError, MergeInput};

/// An open input: its rows come out in the table's schema, and reaching its end checks that
/// it held the rows its record says.
pub(super) struct Input {
    pub(super) path: String,
    table: String,
    schema: SchemaRef,
    registered: u64,
    /// Rows read so far.
    pub(super) read: u64,
    stream: ParquetRecordBatchStream<ObjectReader>,
}

impl Input {
    /// Opens the part: reads its footer, and refuses it before any row is merged if its
    /// columns are not `schema`'s or its footer's row count is not the registered one.
    pub(super) async fn open(
        storage: &Storage,
        table: &str,
        schema: &SchemaRef,
        input: &MergeInput,
        batch_rows: usize,
    ) -> Result<Input, MergeError> {
        let read_err = |source| MergeError::Read {
            table: table.to_string(),
            path: input.path.clone(),
            source,
        };
        let (store, _) = storage.object_store();
        let reader = ObjectReader::open(store, storage.object_path(&input.path))
            .await
            .map_err(|source| MergeError::Storage {
                table: table.to_string(),
                path: input.path.clone(),
                source,
            })?;
        let builder = ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(read_err)?;
        check_columns(builder.schema(), schema).map_err(|problem| MergeError::Schema {
            table: table.to_string(),
            path: input.path.clone(),
            problem,
        })?;
        let in_footer = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
        if in_footer != input.rows {
            return Err(MergeError::InputRows {
                table: table.to_string(),
                path: input.path.clone(),
                registered: input.rows,
                actual: in_footer,
            });
        }
        let stream = builder
            .with_batch_size(batch_rows)
            .build()
            .map_err(read_err)?;
        Ok(Input {
            path: input.path.clone(),
            table: table.to_string(),
            schema: SchemaRef::clone(schema),
            registered: input.rows,
            read: 0,
            stream,
        })
    }

    /// The next non-empty batch, in the table's schema; `None` at the end, once the rows read
    /// are known to equal the registered ones.
    pub(super) async fn next_batch(&mut self) -> Result<Option<RecordBatch>, MergeError> {
        while let Some(batch) = self.stream.try_next().await.map_err(|e| self.read_err(e))? {
            self.read += batch.num_rows() as u64;
            if batch.num_rows() == 0 {
                continue;
            }
            // The stored schema may differ from the table's in nullability or metadata only
            // (checked at open); re-labelling also checks a non-nullable column has no nulls.
            let batch =
                RecordBatch::try_new(SchemaRef::clone(&self.schema), batch.columns().to_vec())
                    .map_err(|e| MergeError::Schema {
                        table: self.table.clone(),
                        path: self.path.clone(),
                        problem: e.to_string(),
                    })?;
            return Ok(Some(batch));
        }
        if self.read != self.registered {
            return Err(MergeError::InputRows {
                table: self.table.clone(),
                path: self.path.clone(),
                registered: self.registered,
                actual: self.read,
            });
        }
        Ok(None)
    }

    fn read_err(&self, source: ParquetError) -> MergeError {
        MergeError::Read {
            table: self.table.clone(),
            path: self.path.clone(),
            source,
        }
    }
}

/// Whether a part's columns are the expected ones, by name and type, in order.
fn check_columns(stored: &Schema, expected: &Schema) -> Result<(), String> {
    let describe = |s: &Schema| {
        s.fields()
            .iter()
            .map(|f| format!("{} {}", f.name(), f.data_type()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let same = stored.fields().len() == expected.fields().len()
        && stored
            .fields()
            .iter()
            .zip(expected.fields())
            .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
    if same {
        Ok(())
    } else {
        Err(format!(
            "it has ({}), the table ({})",
            describe(stored),
            describe(expected)
        ))
    }
}
