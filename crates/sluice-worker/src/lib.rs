//! The worker: the exactly-once loop that wires source, decode, sink and coordination.
//!
//! Read [`run`] top to bottom to follow one event: it is polled from Kafka
//! ([`sluice_source::KafkaSource`]), decoded into the buffer of every table reading its topic
//! ([`sluice_decode::TableBuffer`]), and when a flush policy fires the buffers of its source
//! partition become sorted Parquet parts ([`sluice_sink::build_parts`]), are uploaded, and are
//! committed together with the partition's next offset in one coordinator commit that only
//! succeeds under this worker's lease.
//!
//! Exactly-once follows from three facts: parts are invisible until the commit that also moves
//! the offset; a restart resumes from the committed offset and drops whatever was buffered or
//! uploaded but not committed; and a worker that lost its lease cannot commit.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_config::{Config, CoordinationBackend, CoordinationConfig, StartFrom, TableConfig};
use sluice_coord::{
    Commit, CoordError, Coordinator, EmbeddedCoordinator, Lease, UnitId, ZkCoordinator,
};
use sluice_decode::TableBuffer;
use sluice_sink::{build_parts, collect_table_garbage, EncodedPart, FlushSource, Storage};
use sluice_source::{Assignment, KafkaSource, SourceMessage, StartOffset};

mod failpoint;

pub use failpoint::Failpoints;

/// Batches in flight between the Kafka poll thread and the loop.
const SOURCE_CHANNEL_BATCHES: usize = 8;
/// Uploads in flight per flush.
const UPLOAD_CONCURRENCY: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Coordination(#[from] CoordError),
    #[error(transparent)]
    Source(#[from] sluice_source::SourceError),
    #[error(transparent)]
    Sink(#[from] sluice_sink::SinkError),
    #[error(transparent)]
    Decode(#[from] sluice_decode::DecodeError),
    #[error("lease of {unit} is still held by `{holder}` after waiting {waited:?}; if that worker is gone, its ZooKeeper session has not expired yet — raise `worker.lease_wait_ms` or stop the other worker")]
    LeaseWait {
        unit: UnitId,
        holder: String,
        waited: Duration,
    },
    #[error("lease of {unit} was lost while committing; this worker stops so a fresh start resumes from the committed offset")]
    LeaseLost { unit: UnitId },
    #[error("the Kafka source stopped unexpectedly")]
    SourceStopped,
    #[error("a background task failed: {0}")]
    Task(String),
    #[error("invalid failpoint specification `{spec}`: {reason}")]
    Failpoint { spec: String, reason: String },
}

/// How a run behaves beyond its config.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub worker_id: String,
    /// Exit once every owned partition is committed up to the high watermark seen at start.
    pub stop_at_end: bool,
    pub failpoints: Failpoints,
}

/// What a run did, for the CLI's closing line.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub events: u64,
    pub event_bytes: u64,
    pub rows: u64,
    pub quarantined: u64,
    pub parts: u64,
    pub part_bytes: u64,
    pub commits: u64,
    pub garbage_collected: usize,
    pub elapsed: Duration,
}

/// Opens the coordination backend a config names.
pub async fn open_coordinator(
    config: &CoordinationConfig,
) -> Result<Arc<dyn Coordinator>, CoordError> {
    Ok(match config.backend {
        CoordinationBackend::Zookeeper => Arc::new(
            ZkCoordinator::connect(
                &config.zookeeper_connect,
                &config.root,
                Duration::from_millis(config.session_timeout_ms),
                Duration::from_millis(config.connect_timeout_ms),
            )
            .await?,
        ),
        CoordinationBackend::Embedded => Arc::new(EmbeddedCoordinator::open(&config.embedded_dir)?),
    })
}

/// A source partition this worker owns, with the buffers of every table reading its topic.
struct OwnedUnit {
    id: UnitId,
    lease: Lease,
    tables: Vec<(Arc<TableConfig>, TableBuffer)>,
    /// Offsets of the first and last buffered message.
    buffered: Option<(i64, i64)>,
    /// With `stop_at_end`: the high watermark to reach.
    end: Option<i64>,
    /// Next offset to consume: committed or buffered.
    position: Option<i64>,
}

impl OwnedUnit {
    fn bytes(&self) -> u64 {
        self.tables.iter().map(|(_, b)| b.bytes()).sum()
    }

    fn over_size_limits(&self) -> bool {
        self.tables.iter().any(|(t, b)| {
            b.rows() + b.quarantined() >= t.flush.max_rows || b.bytes() >= t.flush.max_bytes
        })
    }

    fn over_age_limit(&self, now: Instant) -> bool {
        self.tables.iter().any(|(t, b)| {
            b.oldest()
                .is_some_and(|o| now.duration_since(o) >= Duration::from_millis(t.flush.max_age_ms))
        })
    }

    fn reached_end(&self) -> bool {
        match (self.end, self.position) {
            (Some(end), Some(pos)) => pos >= end,
            (Some(end), None) => end <= 0,
            (None, _) => false,
        }
    }

    fn push(&mut self, m: &SourceMessage) {
        for (_, buffer) in &mut self.tables {
            buffer.push(m.offset, m.timestamp_ms, m.payload.as_deref());
        }
        self.buffered = Some(match self.buffered {
            Some((first, _)) => (first, m.offset),
            None => {
                tracing::debug!(unit = %self.id, offset = m.offset, "buffering");
                (m.offset, m.offset)
            }
        });
        self.position = Some(m.offset + 1);
    }
}

/// Runs the worker until `shutdown` resolves (then drains: flushes, commits, releases leases),
/// until every partition reached its end with `stop_at_end`, or until an error.
pub async fn run(
    config: Arc<Config>,
    coord: Arc<dyn Coordinator>,
    options: RunOptions,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
) -> Result<RunSummary, WorkerError> {
    let started = Instant::now();
    let storage = Storage::open(&config.storage)?;
    let mut summary = RunSummary::default();
    let mut failpoints = options.failpoints.clone();

    // Which units exist: every partition of every topic a table reads.
    let mut units: Vec<OwnedUnit> = Vec::new();
    for topic in config.topics() {
        let kafka = config.kafka.clone();
        let t = topic.clone();
        let partitions = tokio::task::spawn_blocking(move || sluice_source::partitions(&kafka, &t))
            .await
            .map_err(|e| WorkerError::Task(e.to_string()))??;
        let tables: Vec<Arc<TableConfig>> = config
            .tables
            .iter()
            .filter(|t| t.topic == topic)
            .cloned()
            .map(Arc::new)
            .collect();
        for partition in partitions {
            let id = UnitId::new(topic.clone(), partition);
            let lease = acquire(
                &*coord,
                &id,
                &options.worker_id,
                Duration::from_millis(config.worker.lease_wait_ms),
            )
            .await?;
            let position = coord.committed_offset(&id).await?;
            tracing::info!(unit = %id, epoch = lease.epoch, committed = ?position, "lease acquired");
            units.push(OwnedUnit {
                tables: tables
                    .iter()
                    .map(|t| (Arc::clone(t), TableBuffer::new(t)))
                    .collect(),
                id,
                lease,
                buffered: None,
                end: None,
                position,
            });
        }
    }

    // Uploaded-but-uncommitted objects of our units are garbage now: we hold their leases, so
    // no one else can be about to commit them.
    let owned: HashSet<UnitId> = units.iter().map(|u| u.id.clone()).collect();
    for table in &config.tables {
        let report =
            collect_table_garbage(&storage, &*coord, &table.name, Some(&owned), Duration::ZERO)
                .await?;
        if !report.deleted.is_empty() {
            tracing::info!(table = %table.name, deleted = report.deleted.len(), "collected uncommitted objects");
        }
        summary.garbage_collected += report.deleted.len();
    }

    if options.stop_at_end {
        for topic in config.topics() {
            let ids: Vec<i32> = units
                .iter()
                .filter(|u| u.id.topic == topic)
                .map(|u| u.id.partition)
                .collect();
            let kafka = config.kafka.clone();
            let t = topic.clone();
            let marks =
                tokio::task::spawn_blocking(move || sluice_source::watermarks(&kafka, &t, &ids))
                    .await
                    .map_err(|e| WorkerError::Task(e.to_string()))??;
            for u in units.iter_mut().filter(|u| u.id.topic == topic) {
                let (low, high) = marks.get(&u.id.partition).copied().unwrap_or((0, 0));
                u.end = Some(high);
                // An empty or fully-deleted partition has nothing to reach.
                if u.position.is_none() && high <= low {
                    u.position = Some(high);
                }
            }
        }
    }

    let result = consume(
        &config,
        &*coord,
        &storage,
        &mut units,
        &options,
        &mut failpoints,
        &mut summary,
        shutdown,
    )
    .await;
    let outcome = match result {
        Ok(()) => {
            // Drain: whatever is buffered is committed before the leases go.
            let deadline = Duration::from_millis(config.worker.shutdown_deadline_ms);
            let drain = async {
                for unit in units.iter_mut().filter(|u| u.buffered.is_some()) {
                    flush(&*coord, &storage, unit, &mut failpoints, &mut summary).await?;
                }
                Ok::<(), WorkerError>(())
            };
            match tokio::time::timeout(deadline, drain).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(?deadline, "shutdown deadline passed before everything was committed; the uncommitted rest will be re-read on the next start");
                    Ok(())
                }
            }
        }
        Err(e) => Err(e),
    };
    for u in &units {
        if let Err(e) = coord.release_lease(&u.lease).await {
            tracing::warn!(unit = %u.id, error = %e, "cannot release lease; it ends with the session");
        }
    }
    summary.elapsed = started.elapsed();
    outcome.map(|()| summary)
}

async fn acquire(
    coord: &dyn Coordinator,
    unit: &UnitId,
    worker_id: &str,
    wait: Duration,
) -> Result<Lease, WorkerError> {
    let started = Instant::now();
    let mut logged = false;
    let mut backoff = Duration::from_millis(50);
    loop {
        match coord.acquire_lease(unit, worker_id).await {
            Ok(lease) => return Ok(lease),
            Err(CoordError::LeaseHeld { holder, .. }) => {
                if started.elapsed() >= wait {
                    return Err(WorkerError::LeaseWait {
                        unit: unit.clone(),
                        holder,
                        waited: started.elapsed(),
                    });
                }
                if !logged {
                    tracing::info!(unit = %unit, holder = %holder, "waiting for the lease to be released or its session to expire");
                    logged = true;
                }
                // Polling with backoff: the trait offers no watch, and a held lease frees at
                // most once per session timeout.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn consume(
    config: &Config,
    coord: &dyn Coordinator,
    storage: &Storage,
    units: &mut [OwnedUnit],
    options: &RunOptions,
    failpoints: &mut Failpoints,
    summary: &mut RunSummary,
    mut shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
) -> Result<(), WorkerError> {
    if options.stop_at_end && units.iter().all(OwnedUnit::reached_end) {
        return Ok(());
    }
    let assignments: Vec<Assignment> = units
        .iter()
        .map(|u| Assignment {
            topic: u.id.topic.clone(),
            partition: u.id.partition,
            start: match u.position {
                Some(o) => StartOffset::At(o),
                None => match config.kafka.start_from {
                    StartFrom::Earliest => StartOffset::Earliest,
                    StartFrom::Latest => StartOffset::Latest,
                },
            },
        })
        .collect();
    // Keyed by the topic as the source hands it over, so a lookup clones a pointer, not a string.
    let index: HashMap<(Arc<str>, i32), usize> = units
        .iter()
        .enumerate()
        .map(|(i, u)| ((Arc::from(u.id.topic.as_str()), u.id.partition), i))
        .collect();
    let mut source = KafkaSource::start(&config.kafka, &assignments, SOURCE_CHANNEL_BATCHES)?;
    let mut tick =
        tokio::time::interval(Duration::from_millis(config.worker.flush_check_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let budget = config.worker.memory_budget_bytes;
    // Kept as a running total so the budget is checked after every message, not per batch.
    let mut buffered_bytes: u64 = units.iter().map(OwnedUnit::bytes).sum();

    let result: Result<(), WorkerError> = async {
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    tracing::info!("shutdown requested; draining");
                    return Ok(());
                }
                batch = source.next() => {
                    let messages = batch.ok_or(WorkerError::SourceStopped)??;
                    for m in &messages {
                        let Some(&u) = index.get(&(Arc::clone(&m.topic), m.partition)) else { continue };
                        // Past the end this run was asked to reach: leave it for the next run.
                        // (Pushing it would commit one message per flush from here on.)
                        if options.stop_at_end && units[u].end.is_some_and(|end| m.offset >= end) {
                            continue;
                        }
                        summary.events += 1;
                        summary.event_bytes += m.payload.as_ref().map_or(0, |p| p.len() as u64);
                        let before = units[u].bytes();
                        units[u].push(m);
                        buffered_bytes += units[u].bytes() - before;
                        failpoints.hit("mid_batch");
                        if units[u].over_size_limits() || (options.stop_at_end && units[u].reached_end()) {
                            buffered_bytes -= units[u].bytes();
                            flush(coord, storage, &mut units[u], failpoints, summary).await?;
                        }
                        // Memory pressure: write out the largest buffers until under budget.
                        while buffered_bytes > budget {
                            let Some(largest) = (0..units.len()).max_by_key(|&i| units[i].bytes()) else { break };
                            tracing::debug!(unit = %units[largest].id, bytes = units[largest].bytes(), "memory budget reached; flushing the largest buffer");
                            buffered_bytes -= units[largest].bytes();
                            flush(coord, storage, &mut units[largest], failpoints, summary).await?;
                        }
                    }
                    if options.stop_at_end && units.iter().all(|u| u.reached_end() && u.buffered.is_none()) {
                        return Ok(());
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    for u in units.iter_mut() {
                        if u.buffered.is_some() && u.over_age_limit(now) {
                            flush(coord, storage, u, failpoints, summary).await?;
                        }
                    }
                    buffered_bytes = units.iter().map(OwnedUnit::bytes).sum();
                }
            }
        }
    }
    .await;
    source.stop().await;
    result
}

/// Writes a unit's buffers out as parts and commits them with the unit's next offset.
async fn flush(
    coord: &dyn Coordinator,
    storage: &Storage,
    unit: &mut OwnedUnit,
    failpoints: &mut Failpoints,
    summary: &mut RunSummary,
) -> Result<(), WorkerError> {
    let Some((first_offset, last_offset)) = unit.buffered else {
        return Ok(());
    };
    let flush_started = Instant::now();
    let source = FlushSource {
        unit: unit.id.clone(),
        first_offset,
        last_offset,
        lease_epoch: unit.lease.epoch,
    };
    let mut drained = Vec::with_capacity(unit.tables.len());
    for (table, buffer) in &mut unit.tables {
        drained.push((Arc::clone(table), buffer.drain()?));
    }
    let rows: u64 = drained.iter().map(|(_, d)| d.batch.num_rows() as u64).sum();
    let quarantined: u64 = drained.iter().map(|(_, d)| d.quarantine.len() as u64).sum();

    let encode_source = source.clone();
    let parts: Vec<EncodedPart> = tokio::task::spawn_blocking(move || {
        let mut all = Vec::new();
        for (table, d) in &drained {
            all.extend(build_parts(table, &encode_source, &d.batch, &d.quarantine)?);
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

    let commit = Commit {
        next_offset: last_offset + 1,
        parts: parts.iter().map(|p| p.record.clone()).collect(),
    };
    match coord.commit(&unit.lease, &commit).await {
        Ok(()) => {}
        Err(CoordError::Ambiguous { reason, .. }) => {
            // The reply was lost; the registry knows whether the commit happened.
            let committed = coord.committed_offset(&unit.id).await?;
            if committed != Some(commit.next_offset) {
                return Err(CoordError::Ambiguous {
                    unit: unit.id.clone(),
                    reason: format!("{reason}; the committed offset is {committed:?}, so the commit did not happen"),
                }
                .into());
            }
        }
        Err(CoordError::LeaseLost { .. }) => {
            tracing::error!(unit = %unit.id, epoch = unit.lease.epoch, "lease lost; the commit was refused and this worker stops");
            return Err(WorkerError::LeaseLost {
                unit: unit.id.clone(),
            });
        }
        Err(e) => return Err(e.into()),
    }
    failpoints.hit("after_commit");

    let part_bytes: u64 = commit.parts.iter().map(|p| p.bytes).sum();
    summary.rows += rows;
    summary.quarantined += quarantined;
    summary.parts += commit.parts.len() as u64;
    summary.part_bytes += part_bytes;
    summary.commits += 1;
    unit.buffered = None;
    tracing::info!(
        unit = %unit.id,
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
