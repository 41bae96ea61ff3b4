//! The widened range read again from the topic, one partition at a time, and made into parts
//! the way a flush makes them: the stream's decoder and quarantine, the live views, sort, split
//! by partition value, Parquet.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use sluice_config::TableConfig;
use sluice_coord::OffsetSpan;
use sluice_decode::{Drained, TableBuffer};
use sluice_sink::{build_replay_parts, EncodedPart, ReplaySource};
use sluice_source::{Assignment, Source};
use sluice_transform::Views;

use crate::ReplayError;

/// Messages per chunk: a chunk's rows and parts are in memory at once.
pub(crate) const CHUNK_ROWS: usize = 200_000;
/// How long the reader may deliver nothing before the replay gives up on it.
const READ_PATIENCE: Duration = Duration::from_secs(60);

/// What every chunk is converted with.
#[derive(Clone)]
pub(crate) struct Rebuilder {
    pub table: Arc<TableConfig>,
    pub views: Option<Arc<Views>>,
    /// The views live in the fleet's registry: only those are applied, as flushes do.
    pub live: BTreeSet<String>,
    pub id: String,
    pub run: i64,
    pub topic: String,
    pub runtime: tokio::runtime::Handle,
}

/// One chunk of a partition, decoded.
pub(crate) struct Chunk {
    pub partition: i32,
    pub index: u32,
    pub first: i64,
    pub last: i64,
    pub drained: Drained,
}

impl Rebuilder {
    fn buffer(&self) -> TableBuffer {
        let mut buffer = TableBuffer::new(&self.table);
        if self.views.is_some() {
            buffer.record_origins();
        }
        buffer
    }

    /// Reads offsets `first..=last` of `partition`, sending each decoded chunk to `out`.
    pub(crate) async fn read(
        &self,
        source: &dyn Source,
        partition: i32,
        (first, last): (i64, i64),
        out: &tokio::sync::mpsc::Sender<Chunk>,
    ) -> Result<(), ReplayError> {
        let assignment = Assignment {
            topic: self.topic.clone(),
            partition,
            start: first,
        };
        let mut reader =
            source
                .open(&[assignment])
                .await
                .map_err(|source| ReplayError::Source {
                    what: format!("reading partition {partition}"),
                    source,
                })?;
        let mut buffer = self.buffer();
        let (mut chunk_first, mut index, mut next) = (first, 0u32, first);
        let outcome = loop {
            let batch = match tokio::time::timeout(READ_PATIENCE, reader.next()).await {
                Ok(Some(Ok(batch))) => batch,
                Ok(Some(Err(source))) => {
                    break Err(ReplayError::Source {
                        what: format!("reading partition {partition}"),
                        source,
                    })
                }
                Ok(None) | Err(_) => {
                    break Err(ReplayError::Stopped {
                        partition,
                        wanted: next,
                    })
                }
            };
            let mut done = false;
            for m in batch.iter() {
                if m.partition != partition || m.offset < next {
                    continue;
                }
                if m.offset > last {
                    done = true;
                    break;
                }
                buffer.push(m.offset, m.timestamp_ms, m.payload);
                next = m.offset + 1;
                let full = buffer.rows() + buffer.quarantined() >= CHUNK_ROWS;
                if full || m.offset == last {
                    let drained = self.drain(&mut buffer)?;
                    let chunk = Chunk {
                        partition,
                        index,
                        first: chunk_first,
                        last: m.offset,
                        drained,
                    };
                    // A closed channel means the consumer failed; it reports why.
                    let closed = out.send(chunk).await.is_err();
                    (chunk_first, index) = (m.offset + 1, index + 1);
                    done = closed || m.offset == last;
                }
                if done {
                    break;
                }
            }
            if done {
                break Ok(());
            }
        };
        reader.stop().await;
        // Offsets past the last message read (none was there) still belong to the chunk made.
        if outcome.is_ok() && (buffer.rows() + buffer.quarantined()) > 0 {
            let drained = self.drain(&mut buffer)?;
            let chunk = Chunk {
                partition,
                index,
                first: chunk_first,
                last,
                drained,
            };
            // A closed channel means the consumer failed; it reports why.
            let _ = out.send(chunk).await;
        }
        outcome
    }

    fn drain(&self, buffer: &mut TableBuffer) -> Result<Drained, ReplayError> {
        buffer.drain().map_err(|source| ReplayError::Decode {
            table: self.table.name.clone(),
            source,
        })
    }

    /// The parts of one chunk: the table's and its live views'. Blocking: views run on the
    /// calling thread.
    pub(crate) fn convert(&self, chunk: &Chunk) -> Result<Vec<EncodedPart>, ReplayError> {
        let source = ReplaySource {
            id: self.id.clone(),
            run: self.run,
            topic: self.topic.clone(),
            partition: chunk.partition,
            chunk: chunk.index,
            first_offset: chunk.first,
            last_offset: chunk.last,
            // Every row of these offsets that falls into a part's scope is in that part, as
            // for a flush: the chunk's range is exactly what each part stands for.
            spans: vec![OffsetSpan {
                topic: self.topic.clone(),
                partition: chunk.partition,
                first_offset: chunk.first,
                last_offset: chunk.last,
            }],
        };
        let encode = |table: &TableConfig,
                      batch: &arrow::array::RecordBatch,
                      quarantine: &[sluice_decode::QuarantineRow]| {
            build_replay_parts(table, &source, batch, quarantine).map_err(|e| ReplayError::Encode {
                table: table.name.clone(),
                source: Box::new(e),
            })
        };
        let d = &chunk.drained;
        let mut parts = encode(&self.table, &d.batch, &d.quarantine)?;
        if let Some(views) = &self.views {
            let live = |name: &str| self.live.contains(name);
            for out in views.apply_where(
                &self.runtime,
                &self.table.name,
                &d.batch,
                d.origins.as_ref(),
                &live,
            ) {
                parts.extend(encode(&out.target, &out.batch, &out.quarantine)?);
            }
        }
        Ok(parts)
    }
}
