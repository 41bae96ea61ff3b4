//! One owned source partition: its lease, the buffers of every table reading its topic, where
//! consumption stands, and its flushes in flight (oldest first).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_config::TableConfig;
use sluice_coord::{Lease, UnitId};
use sluice_decode::TableBuffer;
use sluice_sink::FlushSource;
use sluice_source::SourceMessage;
use sluice_telemetry::metrics as m;
use sluice_transform::Views;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use crate::budget::Charge;
use crate::flush::{self, Flush, FlushContext, FlushTasks};
use crate::WorkerError;

/// A flush started and not yet committed.
#[derive(Debug)]
pub(crate) struct InFlight {
    pub(crate) first_offset: i64,
    pub(crate) first_timestamp_ms: Option<i64>,
    /// What it holds against the memory budget until it commits.
    charge: Charge,
    task: AbortHandle,
}

/// A source partition this worker holds the lease of.
pub(crate) struct OwnedUnit {
    pub(crate) id: UnitId,
    pub(crate) lease: Lease,
    tables: Vec<(Arc<TableConfig>, TableBuffer)>,
    /// Offsets of the first and last buffered message.
    pub(crate) buffered: Option<(i64, i64)>,
    /// Kafka timestamp of the first buffered message.
    first_timestamp_ms: Option<i64>,
    /// With `stop_at_end`: the high watermark to reach.
    pub(crate) end: Option<i64>,
    /// Next offset to consume: committed, in flight or buffered.
    pub(crate) position: Option<i64>,
    /// Offsets skipped while reading, `(expected, received)`, not yet told apart: a hole left by
    /// compaction or a transaction marker, or events retention deleted before they were read
    /// (the reader then resumes at the oldest offset left). At most [`MAX_JUMPS`].
    pub(crate) jumps: Vec<(i64, i64)>,
    /// Flushes started and not committed yet, oldest first.
    pub(crate) in_flight: VecDeque<InFlight>,
    /// Given up at a rebalance: no longer read; what it buffered flushes and commits, then its
    /// lease is released (the session goes on meanwhile, however long storage takes).
    pub(crate) leaving: bool,
    /// Resolves once the newest in-flight flush has committed; dropped unresolved if it failed.
    last_commit: Option<oneshot::Receiver<()>>,
    /// Consumption counted since the metrics were last updated (once per source batch).
    pending_events: u64,
    pending_bytes: u64,
    consumed_events: metrics::Counter,
    consumed_bytes: metrics::Counter,
}

/// Skipped offset ranges kept per unit until checked (on a transactional topic every commit
/// marker is one, and they are checked once a second).
pub(crate) const MAX_JUMPS: usize = 256;

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
            jumps: Vec::new(),
            in_flight: VecDeque::new(),
            leaving: false,
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

    /// Whether consumption reached the end this run was asked to reach (never without one).
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

    /// Whether the message is one this unit still needs: not before its position (a reopened
    /// reader may hand over messages it already had), and not past the end this run was asked
    /// to reach (pushing those would commit one message per flush from there on).
    pub(crate) fn wants(&self, m: &SourceMessage<'_>) -> bool {
        self.position.is_none_or(|p| m.offset >= p) && self.end.is_none_or(|end| m.offset < end)
    }

    pub(crate) fn push(&mut self, m: &SourceMessage<'_>) {
        if let Some(expected) = self.position {
            if m.offset > expected && self.jumps.len() < MAX_JUMPS {
                self.jumps.push((expected, m.offset));
            }
        }
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

    /// Starts a flush of everything buffered as a task in `tasks`, holding `charge` until it
    /// commits. The caller checked that something is buffered.
    pub(crate) fn start_flush(
        &mut self,
        ctx: &FlushContext,
        tasks: &mut FlushTasks,
        charge: Charge,
    ) -> Result<(), WorkerError> {
        let (first_offset, last_offset) = self.buffered.take().expect("something is buffered");
        let mut drained = Vec::with_capacity(self.tables.len());
        for (table, buffer) in &mut self.tables {
            drained.push((Arc::clone(table), buffer.drain()?));
        }
        let (done, committed) = oneshot::channel();
        let flush = Flush {
            lease: self.lease.clone(),
            source: FlushSource {
                unit: self.id.clone(),
                first_offset,
                last_offset,
                lease_epoch: self.lease.epoch,
            },
            drained,
            predecessor: self.last_commit.replace(committed),
            done,
        };
        let task = tasks.spawn(flush::run(ctx.clone(), flush));
        self.in_flight.push_back(InFlight {
            first_offset,
            first_timestamp_ms: self.first_timestamp_ms.take(),
            charge,
            task,
        });
        Ok(())
    }

    /// Marks the oldest in-flight flush committed; returns the charge it held.
    pub(crate) fn finish_flush(&mut self) -> Option<Charge> {
        self.in_flight.pop_front().map(|f| f.charge)
    }

    /// Stops this unit's in-flight flushes (their commits may or may not have happened: the
    /// registry says which); returns the charges they held.
    pub(crate) fn abort_flushes(&mut self) -> Vec<Charge> {
        self.last_commit = None;
        self.in_flight
            .drain(..)
            .map(|f| {
                f.task.abort();
                f.charge
            })
            .collect()
    }
}
