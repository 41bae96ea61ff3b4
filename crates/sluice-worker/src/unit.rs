//! One owned source partition: its lease, the buffers of every table reading its topic, and the
//! flush that turns them into committed parts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_config::TableConfig;
use sluice_coord::{Commit, CoordError, Coordinator, Lease, UnitId};
use sluice_decode::TableBuffer;
use sluice_sink::{build_parts, EncodedPart, FlushSource, Storage};
use sluice_source::SourceMessage;
use sluice_telemetry::metrics as m;

use crate::{Failpoints, RunSummary, WorkerError};

/// Uploads in flight per flush.
const UPLOAD_CONCURRENCY: usize = 8;

/// A source partition this worker holds the lease of.
pub(crate) struct OwnedUnit {
    pub(crate) id: UnitId,
    pub(crate) lease: Lease,
    pub(crate) tables: Vec<(Arc<TableConfig>, TableBuffer)>,
    /// Offsets of the first and last buffered message.
    pub(crate) buffered: Option<(i64, i64)>,
    /// Kafka timestamp of the first buffered message: the oldest uncommitted one, for lag.
    pub(crate) first_timestamp_ms: Option<i64>,
    /// With `stop_at_end`: the high watermark to reach.
    pub(crate) end: Option<i64>,
    /// Next offset to consume: committed or buffered.
    pub(crate) position: Option<i64>,
    consumed_events: metrics::Counter,
    consumed_bytes: metrics::Counter,
}

impl OwnedUnit {
    pub(crate) fn new(lease: Lease, tables: &[Arc<TableConfig>], position: Option<i64>) -> Self {
        let labels = [
            ("topic", lease.unit.topic.clone()),
            ("partition", lease.unit.partition.to_string()),
        ];
        OwnedUnit {
            consumed_events: metrics::counter!(m::PARTITION_CONSUMED_EVENTS, &labels),
            consumed_bytes: metrics::counter!(m::PARTITION_CONSUMED_BYTES, &labels),
            id: lease.unit.clone(),
            lease,
            tables: tables
                .iter()
                .map(|t| (Arc::clone(t), TableBuffer::new(t)))
                .collect(),
            buffered: None,
            first_timestamp_ms: None,
            end: None,
            position,
        }
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.tables.iter().map(|(_, b)| b.bytes()).sum()
    }

    pub(crate) fn over_size_limits(&self) -> bool {
        self.tables.iter().any(|(t, b)| {
            b.rows() + b.quarantined() >= t.flush.max_rows || b.bytes() >= t.flush.max_bytes
        })
    }

    pub(crate) fn over_age_limit(&self, now: Instant) -> bool {
        self.tables.iter().any(|(t, b)| {
            b.oldest()
                .is_some_and(|o| now.duration_since(o) >= Duration::from_millis(t.flush.max_age_ms))
        })
    }

    pub(crate) fn reached_end(&self) -> bool {
        match (self.end, self.position) {
            (Some(end), Some(pos)) => pos >= end,
            (Some(end), None) => end <= 0,
            (None, _) => false,
        }
    }

    /// Whether the message is one this unit still needs: not before its position (a restarted
    /// source may hand over messages it already had).
    pub(crate) fn wants(&self, m: &SourceMessage) -> bool {
        self.position.is_none_or(|p| m.offset >= p)
    }

    pub(crate) fn push(&mut self, m: &SourceMessage) {
        self.consumed_events.increment(1);
        self.consumed_bytes
            .increment(m.payload.as_ref().map_or(0, |p| p.len() as u64));
        for (_, buffer) in &mut self.tables {
            buffer.push(m.offset, m.timestamp_ms, m.payload.as_deref());
        }
        self.buffered = Some(match self.buffered {
            Some((first, _)) => (first, m.offset),
            None => {
                tracing::debug!(unit = %self.id, offset = m.offset, "buffering");
                self.first_timestamp_ms = m.timestamp_ms;
                (m.offset, m.offset)
            }
        });
        self.position = Some(m.offset + 1);
    }

    /// Maps a failed commit: losing the lease or the session means another worker owns the
    /// partition now, which is not an error of this worker but the end of its ownership.
    fn refused(&self, e: CoordError, first_offset: i64, last_offset: i64) -> WorkerError {
        match e {
            CoordError::LeaseLost { .. } | CoordError::SessionEnded { .. } => {
                tracing::warn!(unit = %self.id, epoch = self.lease.epoch, first_offset, last_offset, error = %e, "commit refused: this worker no longer owns the partition; its buffered events are left to the new owner");
                WorkerError::LeaseLost {
                    unit: self.id.clone(),
                }
            }
            other => other.into(),
        }
    }

    /// Writes the buffers out as parts and commits them with the unit's next offset, under the
    /// unit's lease. Nothing buffered: nothing to do.
    pub(crate) async fn flush(
        &mut self,
        coord: &dyn Coordinator,
        storage: &Storage,
        failpoints: &mut Failpoints,
        summary: &mut RunSummary,
    ) -> Result<(), WorkerError> {
        let Some((first_offset, last_offset)) = self.buffered else {
            return Ok(());
        };
        let flush_started = Instant::now();
        let source = FlushSource {
            unit: self.id.clone(),
            first_offset,
            last_offset,
            lease_epoch: self.lease.epoch,
        };
        let mut drained = Vec::with_capacity(self.tables.len());
        for (table, buffer) in &mut self.tables {
            drained.push((Arc::clone(table), buffer.drain()?));
        }
        let rows: u64 = drained.iter().map(|(_, d)| d.batch.num_rows() as u64).sum();
        let quarantined: u64 = drained.iter().map(|(_, d)| d.quarantine.len() as u64).sum();
        // Counted per (table, reason) now, recorded only once the commit succeeds.
        let mut by_reason: std::collections::BTreeMap<(String, &'static str), u64> =
            std::collections::BTreeMap::new();
        for (table, d) in &drained {
            for q in &d.quarantine {
                *by_reason
                    .entry((table.name.clone(), q.reason.code()))
                    .or_default() += 1;
            }
        }

        // Sorting and Parquet encoding are CPU work: off the async runtime.
        let parts: Vec<EncodedPart> = tokio::task::spawn_blocking(move || {
            let mut all = Vec::new();
            for (table, d) in &drained {
                all.extend(build_parts(table, &source, &d.batch, &d.quarantine)?);
            }
            Ok::<_, sluice_sink::SinkError>(all)
        })
        .await
        .map_err(|e| WorkerError::Task(e.to_string()))??;

        use futures::stream::{StreamExt, TryStreamExt};
        futures::stream::iter(
            parts
                .iter()
                .map(|p| storage.put(&p.record.path, p.bytes.clone())),
        )
        .buffer_unordered(UPLOAD_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
        failpoints.hit("after_upload");
        failpoints.hit("before_commit");

        let commit = Commit {
            next_offset: last_offset + 1,
            parts: parts.iter().map(|p| p.record.clone()).collect(),
        };
        let commit_started = Instant::now();
        let committed = coord.commit(&self.lease, &commit).await;
        metrics::histogram!(m::COMMIT_DURATION).record(commit_started.elapsed().as_secs_f64());
        match committed {
            Ok(()) => {}
            Err(CoordError::Ambiguous { reason, .. }) => {
                // The reply was lost; the registry knows whether the commit happened.
                match coord.committed_offset(&self.id).await {
                    Ok(Some(o)) if o == commit.next_offset => {}
                    Ok(committed) => {
                        return Err(CoordError::Ambiguous {
                            unit: self.id.clone(),
                            reason: format!("{reason}; the committed offset is {committed:?}, so the commit did not happen"),
                        }
                        .into())
                    }
                    Err(e) => return Err(self.refused(e, first_offset, last_offset)),
                }
            }
            Err(e) => return Err(self.refused(e, first_offset, last_offset)),
        }
        failpoints.hit("after_commit");

        let part_bytes: u64 = commit.parts.iter().map(|p| p.bytes).sum();
        summary.rows += rows;
        summary.quarantined += quarantined;
        summary.parts += commit.parts.len() as u64;
        summary.part_bytes += part_bytes;
        summary.commits += 1;
        self.buffered = None;
        self.first_timestamp_ms = None;
        metrics::histogram!(m::FLUSH_DURATION).record(flush_started.elapsed().as_secs_f64());
        for p in &commit.parts {
            let table = [("table", p.table.clone())];
            metrics::counter!(m::TABLE_PARTS_WRITTEN, &table).increment(1);
            metrics::counter!(m::TABLE_BYTES_COMMITTED, &table).increment(p.bytes);
            if p.kind == sluice_coord::PartKind::Data {
                metrics::counter!(m::TABLE_ROWS_COMMITTED, &table).increment(p.rows);
            }
        }
        for ((table, reason), n) in by_reason {
            metrics::counter!(m::TABLE_QUARANTINED_ROWS, "table" => table, "reason" => reason)
                .increment(n);
        }
        tracing::info!(
            unit = %self.id,
            epoch = self.lease.epoch,
            first_offset,
            last_offset,
            rows,
            quarantined,
            parts = commit.parts.len(),
            bytes = part_bytes,
            took_ms = flush_started.elapsed().as_millis() as u64,
            "committed"
        );
        Ok(())
    }
}
