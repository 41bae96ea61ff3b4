//! One chunk of a file into parts: the table's, and those of every view downstream of it, on
//! the same conversion path as a flush (views, sort, split by partition value, Parquet).

use std::sync::Arc;

use sluice_config::TableConfig;
use sluice_coord::OffsetSpan;
use sluice_sink::{build_backfill_parts, BackfillSource, EncodedPart};
use sluice_transform::Views;

use crate::{BackfillError, Chunk};

/// What every chunk of a backfill is converted with.
#[derive(Clone)]
pub struct Converter {
    pub table: Arc<TableConfig>,
    pub views: Option<Arc<Views>>,
    /// The views live in the fleet's view registry: only those are applied (`None`: no
    /// registry yet, every configured view is).
    pub live_views: Option<std::collections::BTreeSet<String>>,
    pub id: String,
    pub epoch: u64,
    pub topic: String,
    /// The offsets the snapshot stands for, recorded in every part.
    pub spans: Vec<OffsetSpan>,
    pub runtime: tokio::runtime::Handle,
}

/// The parts of one chunk, and what it held.
#[derive(Debug)]
pub struct Converted {
    pub parts: Vec<EncodedPart>,
    /// Rows of the backfilled table (views' rows not counted).
    pub rows: u64,
    pub quarantined: u64,
    pub bytes_read: u64,
}

impl Converter {
    /// Converts a chunk of file `file_index` (named `file` in the manifest). Blocking: views run
    /// on the calling thread.
    pub fn convert(
        &self,
        file_index: u32,
        file: &str,
        chunk: Chunk,
    ) -> Result<Converted, BackfillError> {
        let source = BackfillSource {
            id: self.id.clone(),
            epoch: self.epoch,
            file_index,
            chunk: chunk.index,
            file: file.to_string(),
            first_line: chunk.first_line,
            last_line: chunk.last_line,
            spans: self.spans.clone(),
            topic: self.topic.clone(),
        };
        let encode = |table: &TableConfig,
                      batch: &arrow::array::RecordBatch,
                      quarantine: &[sluice_decode::QuarantineRow]| {
            build_backfill_parts(table, &source, batch, quarantine).map_err(|source| {
                BackfillError::Encode {
                    table: table.name.clone(),
                    file: file.to_string(),
                    source: Box::new(source),
                }
            })
        };
        let mut parts = encode(&self.table, &chunk.batch, &chunk.quarantine)?;
        if let Some(views) = &self.views {
            let live = |name: &str| self.live_views.as_ref().is_none_or(|l| l.contains(name));
            let outputs = views.apply_where(
                &self.runtime,
                &self.table.name,
                &chunk.batch,
                chunk.origins.as_ref(),
                &live,
            );
            for out in outputs {
                parts.extend(encode(&out.target, &out.batch, &out.quarantine)?);
            }
        }
        Ok(Converted {
            parts,
            rows: chunk.batch.num_rows() as u64,
            quarantined: chunk.quarantine.len() as u64,
            bytes_read: chunk.bytes_read,
        })
    }
}

/// The spans a backfill's parts record: for each partition, every offset before the one the
/// stream takes over at (from -1, which stands for "before the topic's first offset").
pub fn snapshot_spans(
    topic: &str,
    offsets: &std::collections::BTreeMap<i32, i64>,
) -> Vec<OffsetSpan> {
    offsets
        .iter()
        .map(|(&partition, &next)| OffsetSpan {
            topic: topic.to_string(),
            partition,
            first_offset: -1,
            last_offset: next - 1,
        })
        .collect()
}
