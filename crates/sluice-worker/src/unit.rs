//! One owned source partition: its lease, the buffers of every table reading its topic, and its
//! flushes.
//!
//! A flush takes everything buffered and runs as a task of its own: sort and Parquet encoding on
//! a blocking thread, the uploads, then the commit of the parts with the partition's next
//! offset, under the unit's lease. Meanwhile the session goes on decoding the next events into
//! fresh buffers, so consumption overlaps with encoding and I/O. Two rules keep this
//! exactly-once:
//!
//! * A unit's commits happen strictly in order: each flush waits for its predecessor's commit
//!   before committing its own, since the offset it commits presumes everything before it.
//! * A flush whose predecessor failed never commits (that would skip the predecessor's
//!   offsets): the session sees the first failure, ends, and a new owner re-reads from the
//!   committed offset.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_config::TableConfig;
use sluice_coord::{Commit, CoordError, Coordinator, Lease, PartKind, UnitId};
use sluice_decode::{Drained, TableBuffer};
use sluice_sink::{build_parts, FlushSource, Storage};
use sluice_source::SourceMessage;
use sluice_telemetry::metrics as m;
use tokio::sync::oneshot;
use tokio::task::{AbortHandle, JoinSet};

use crate::{Failpoints, WorkerError};
use sluice_transform::Views;

/// Uploads in flight per flush.
const UPLOAD_CONCURRENCY: usize = 8;

/// What every flush task needs, shared.
#[derive(Clone)]
pub(crate) struct FlushContext {
    pub(crate) coord: Arc<dyn Coordinator>,
    pub(crate) storage: Storage,
    pub(crate) failpoints: Failpoints,
    /// The views, if the configuration has any.
    pub(crate) views: Option<Arc<Views>>,
}

/// The flush tasks of a session; each ends with its unit's commit or the error that stopped it.
pub(crate) type FlushTasks = JoinSet<Result<Committed, WorkerError>>;

/// What a flush in flight is counted for against the memory budget, per raw byte of the events
/// it took from the buffers: besides its decoded columns it holds their sorted copy, the
/// encoder's pages and compressor, and the encoded parts until they are uploaded. Counting
/// only the raw size let peak RSS exceed the budget by up to 100 MiB under backpressure
/// (docs/performance.md).
const IN_FLIGHT_CHARGE: u64 = 2;

/// A flush started and not yet committed.
#[derive(Debug)]
pub(crate) struct InFlight {
    pub(crate) first_offset: i64,
    pub(crate) first_timestamp_ms: Option<i64>,
    /// What it is counted for against the memory budget until it commits.
    pub(crate) charge: u64,
    task: AbortHandle,
}

/// What starting a flush moved: raw bytes out of the buffers, and the charge it holds instead.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Started {
    pub(crate) taken: u64,
    pub(crate) charge: u64,
}

/// What a committed flush did, for the run summary.
#[derive(Debug)]
pub(crate) struct Committed {
    pub(crate) unit: UnitId,
    pub(crate) rows: u64,
    pub(crate) quarantined: u64,
    pub(crate) parts: u64,
    pub(crate) part_bytes: u64,
}

/// A source partition this worker holds the lease of.
pub(crate) struct OwnedUnit {
    pub(crate) id: UnitId,
    pub(crate) lease: Lease,
    pub(crate) tables: Vec<(Arc<TableConfig>, TableBuffer)>,
    /// Offsets of the first and last buffered message.
    pub(crate) buffered: Option<(i64, i64)>,
    /// Kafka timestamp of the first buffered message.
    pub(crate) first_timestamp_ms: Option<i64>,
    /// With `stop_at_end`: the high watermark to reach.
    pub(crate) end: Option<i64>,
    /// Next offset to consume: committed, in flight or buffered.
    pub(crate) position: Option<i64>,
    /// Flushes started and not committed yet, oldest first.
    pub(crate) in_flight: VecDeque<InFlight>,
    /// Resolves once the newest in-flight flush has committed; dropped unresolved if it failed.
    last_commit: Option<oneshot::Receiver<()>>,
    /// Consumption counted since the metrics were last updated (once per source batch).
    pending_events: u64,
    pending_bytes: u64,
    consumed_events: metrics::Counter,
    consumed_bytes: metrics::Counter,
}

impl OwnedUnit {
    pub(crate) fn new(
        lease: Lease,
        tables: &[Arc<TableConfig>],
        position: Option<i64>,
        views: Option<&Views>,
    ) -> Self {
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
                .map(|t| {
                    let mut buffer = TableBuffer::new(t);
                    // A view names the event behind a row it fails on.
                    if views.is_some_and(|v| v.sources().any(|s| s == t.name)) {
                        buffer.record_origins();
                    }
                    (Arc::clone(t), buffer)
                })
                .collect(),
            buffered: None,
            first_timestamp_ms: None,
            end: None,
            position,
            in_flight: VecDeque::new(),
            last_commit: None,
            pending_events: 0,
            pending_bytes: 0,
        }
    }

    /// Raw event bytes buffered (not yet flushing).
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

    /// Nothing buffered and nothing in flight: everything consumed is committed.
    pub(crate) fn settled(&self) -> bool {
        self.buffered.is_none() && self.in_flight.is_empty()
    }

    /// The first offset and Kafka timestamp of the oldest message not committed yet.
    pub(crate) fn oldest_uncommitted(&self) -> Option<(i64, i64)> {
        match self.in_flight.front() {
            Some(f) => Some((f.first_offset, f.first_timestamp_ms?)),
            None => Some((self.buffered?.0, self.first_timestamp_ms?)),
        }
    }

    /// Whether the message is one this unit still needs: not before its position (a restarted
    /// source may hand over messages it already had).
    pub(crate) fn wants(&self, m: &SourceMessage<'_>) -> bool {
        self.position.is_none_or(|p| m.offset >= p)
    }

    pub(crate) fn push(&mut self, m: &SourceMessage<'_>) {
        self.pending_events += 1;
        self.pending_bytes += m.payload.map_or(0, |p| p.len() as u64);
        for (_, buffer) in &mut self.tables {
            buffer.push(m.offset, m.timestamp_ms, m.payload);
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

    /// Moves the consumption counted since the last call into the metrics.
    pub(crate) fn record_consumed(&mut self) {
        if self.pending_events > 0 {
            self.consumed_events.increment(self.pending_events);
            self.consumed_bytes.increment(self.pending_bytes);
            self.pending_events = 0;
            self.pending_bytes = 0;
        }
    }

    /// Starts a flush of everything buffered as a task in `tasks` (nothing if nothing is
    /// buffered).
    pub(crate) fn start_flush(
        &mut self,
        ctx: &FlushContext,
        tasks: &mut FlushTasks,
    ) -> Result<Started, WorkerError> {
        let Some((first_offset, last_offset)) = self.buffered.take() else {
            return Ok(Started::default());
        };
        let taken = self.bytes();
        let charge = taken * IN_FLIGHT_CHARGE;
        let mut drained = Vec::with_capacity(self.tables.len());
        for (table, buffer) in &mut self.tables {
            drained.push((Arc::clone(table), buffer.drain()?));
        }
        let source = FlushSource {
            unit: self.id.clone(),
            first_offset,
            last_offset,
            lease_epoch: self.lease.epoch,
        };
        let (done, committed) = oneshot::channel();
        let predecessor = self.last_commit.replace(committed);
        let task = tasks.spawn(flush(
            ctx.clone(),
            self.lease.clone(),
            source,
            drained,
            predecessor,
            done,
        ));
        self.in_flight.push_back(InFlight {
            first_offset,
            first_timestamp_ms: self.first_timestamp_ms.take(),
            charge,
            task,
        });
        Ok(Started { taken, charge })
    }

    /// Marks the oldest in-flight flush committed; returns the charge it held.
    pub(crate) fn finish_flush(&mut self) -> u64 {
        self.in_flight.pop_front().map_or(0, |f| f.charge)
    }

    /// Stops this unit's in-flight flushes (their commits may or may not have happened: the
    /// registry says which); returns the charge they held.
    pub(crate) fn abort_flushes(&mut self) -> u64 {
        self.last_commit = None;
        self.in_flight
            .drain(..)
            .map(|f| {
                f.task.abort();
                f.charge
            })
            .sum()
    }
}

/// Maps a failed commit: losing the lease or the session means another worker owns the
/// partition now, which is not an error of this worker but the end of its ownership.
fn refused(lease: &Lease, e: CoordError, source: &FlushSource) -> WorkerError {
    match e {
        CoordError::LeaseLost { .. } | CoordError::SessionEnded { .. } => {
            tracing::warn!(unit = %lease.unit, epoch = lease.epoch, first_offset = source.first_offset, last_offset = source.last_offset, error = %e, "commit refused: this worker no longer owns the partition; its buffered events are left to the new owner");
            WorkerError::LeaseLost {
                unit: lease.unit.clone(),
            }
        }
        other => other.into(),
    }
}

/// One flush: parts built off the runtime, uploaded, then committed after the unit's previous
/// flush committed. `done` resolves for the next flush only once this one committed.
async fn flush(
    ctx: FlushContext,
    lease: Lease,
    source: FlushSource,
    drained: Vec<(Arc<TableConfig>, Drained)>,
    predecessor: Option<oneshot::Receiver<()>>,
    done: oneshot::Sender<()>,
) -> Result<Committed, WorkerError> {
    let started = Instant::now();
    let rows: u64 = drained.iter().map(|(_, d)| d.batch.num_rows() as u64).sum();
    let quarantined: u64 = drained.iter().map(|(_, d)| d.quarantine.len() as u64).sum();

    // Views, sorting and Parquet encoding are CPU work: off the async runtime. The views run
    // over each table's batch here, so their parts commit with the table's, all or nothing.
    let encode_source = source.clone();
    let runtime = tokio::runtime::Handle::current();
    let views = ctx.views.clone();
    let (parts, by_reason) = tokio::task::spawn_blocking(move || {
        let mut all = Vec::new();
        // Counted per (table, reason) now, recorded only once the commit succeeds.
        let mut by_reason: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
        let mut count = |table: &str, rows: &[sluice_decode::QuarantineRow]| {
            for q in rows {
                *by_reason
                    .entry((table.to_string(), q.reason.code()))
                    .or_default() += 1;
            }
        };
        for (table, d) in &drained {
            all.extend(build_parts(table, &encode_source, &d.batch, &d.quarantine)?);
            count(&table.name, &d.quarantine);
            let Some(views) = &views else { continue };
            for out in views.apply(&runtime, &table.name, &d.batch, d.origins.as_ref()) {
                all.extend(build_parts(
                    &out.target,
                    &encode_source,
                    &out.batch,
                    &out.quarantine,
                )?);
                count(&out.target.name, &out.quarantine);
            }
        }
        Ok::<_, sluice_sink::SinkError>((all, by_reason))
    })
    .await
    .map_err(|e| WorkerError::Task(e.to_string()))??;

    use futures::stream::{StreamExt, TryStreamExt};
    // Collected first: a stream over a borrowing closure is not `Send` enough for a task.
    let uploads: Vec<_> = parts
        .iter()
        .map(|p| ctx.storage.put(&p.record.path, p.bytes.clone()))
        .collect();
    futures::stream::iter(uploads)
        .buffer_unordered(UPLOAD_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    ctx.failpoints.hit("after_upload");
    ctx.failpoints.hit("before_commit");

    if let Some(predecessor) = predecessor {
        predecessor
            .await
            .map_err(|_| WorkerError::PredecessorFailed {
                unit: lease.unit.clone(),
                first_offset: source.first_offset,
            })?;
    }
    let commit = Commit {
        next_offset: source.last_offset + 1,
        parts: parts.into_iter().map(|p| p.record).collect(),
    };
    let commit_started = Instant::now();
    let committed = ctx.coord.commit(&lease, &commit).await;
    metrics::histogram!(m::COMMIT_DURATION).record(commit_started.elapsed().as_secs_f64());
    match committed {
        Ok(()) => {}
        Err(CoordError::Ambiguous { reason, .. }) => {
            // The reply was lost; the registry knows whether the commit happened.
            match ctx.coord.committed_offset(&lease.unit).await {
                Ok(Some(o)) if o == commit.next_offset => {}
                Ok(committed) => {
                    return Err(CoordError::Ambiguous {
                        unit: lease.unit.clone(),
                        reason: format!("{reason}; the committed offset is {committed:?}, so the commit did not happen"),
                    }
                    .into())
                }
                Err(e) => return Err(refused(&lease, e, &source)),
            }
        }
        Err(e) => return Err(refused(&lease, e, &source)),
    }
    ctx.failpoints.hit("after_commit");
    // The next flush of this unit may commit now; it is gone if the session ended meanwhile.
    let _ = done.send(());

    let part_bytes: u64 = commit.parts.iter().map(|p| p.bytes).sum();
    metrics::histogram!(m::FLUSH_DURATION).record(started.elapsed().as_secs_f64());
    for p in &commit.parts {
        let table = [("table", p.table.clone())];
        metrics::counter!(m::TABLE_PARTS_WRITTEN, &table).increment(1);
        metrics::counter!(m::TABLE_BYTES_COMMITTED, &table).increment(p.bytes);
        if p.kind == PartKind::Data {
            metrics::counter!(m::TABLE_ROWS_COMMITTED, &table).increment(p.rows);
        }
    }
    for ((table, reason), n) in by_reason {
        metrics::counter!(m::TABLE_QUARANTINED_ROWS, "table" => table, "reason" => reason)
            .increment(n);
    }
    tracing::info!(
        unit = %lease.unit,
        epoch = lease.epoch,
        first_offset = source.first_offset,
        last_offset = source.last_offset,
        rows,
        quarantined,
        parts = commit.parts.len(),
        bytes = part_bytes,
        took_ms = started.elapsed().as_millis() as u64,
        "committed"
    );
    Ok(Committed {
        unit: lease.unit,
        rows,
        quarantined,
        parts: commit.parts.len() as u64,
        part_bytes,
    })
}
