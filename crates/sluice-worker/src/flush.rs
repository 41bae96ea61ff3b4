//! One flush, as a task of its own: [`encode`] the drained buffers (and the views over them) into
//! sorted Parquet parts off the async runtime, [`upload`] them, [`commit_in_order`] after the
//! unit's previous flush committed, and [`record`] what was committed.
//!
//! Two rules keep this exactly-once:
//!
//! * A unit's commits happen strictly in order: each flush waits for its predecessor's commit
//!   before committing its own, since the offset it commits presumes everything before it.
//! * A flush whose predecessor failed never commits (that would skip the predecessor's
//!   offsets): the session sees the first failure, ends, and a new owner re-reads from the
//!   committed offset.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use futures::stream::StreamExt;
use sluice_config::TableConfig;
use sluice_coord::{Commit, CoordError, Coordinator, Lease, PartKind, UnitId};
use sluice_decode::{Drained, QuarantineRow};
use sluice_sink::{build_parts, EncodedPart, FlushSource, SinkError, Storage};
use sluice_telemetry::metrics as m;
use sluice_telemetry::Health;
use sluice_transform::Views;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::retry::{chain, put_until_stored, Backoff};
use crate::views::{Applied, LiveViews};
use crate::{Failpoints, WorkerError};

/// Uploads in flight per flush.
const UPLOAD_CONCURRENCY: usize = 8;
/// After an ambiguous commit: the first wait before reading back or committing again.
const AMBIGUOUS_FIRST_RETRY: std::time::Duration = std::time::Duration::from_millis(100);
/// ... and the longest (the session's own timeout ends the loop if the coordinator stays away).
const AMBIGUOUS_MAX_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// What every flush task needs, shared.
#[derive(Clone)]
pub(crate) struct FlushContext {
    pub(crate) coord: Arc<dyn Coordinator>,
    pub(crate) storage: Storage,
    pub(crate) failpoints: Failpoints,
    /// The views, if the configuration has any.
    pub(crate) views: Option<Arc<Views>>,
    /// Which of them are live in the fleet (only those are applied), and the registry version
    /// every commit names.
    pub(crate) live: Arc<LiveViews>,
    /// Told of storage failures and recoveries (`/readyz`, metrics).
    pub(crate) health: Arc<Health>,
}

/// The flush tasks of a session; each ends with its unit's commit or the error that stopped it.
pub(crate) type FlushTasks = JoinSet<Result<Committed, WorkerError>>;

/// Everything one flush works on, taken from its unit when it started.
pub(crate) struct Flush {
    pub(crate) lease: Lease,
    pub(crate) source: FlushSource,
    pub(crate) drained: Vec<(Arc<TableConfig>, Drained)>,
    /// Resolves once the unit's previous flush committed; dropped unresolved if it failed.
    pub(crate) predecessor: Option<oneshot::Receiver<()>>,
    /// Resolved for the unit's next flush once this one committed.
    pub(crate) done: oneshot::Sender<()>,
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

/// The parts of one flush, and its quarantined rows per (table, reason), recorded as metrics
/// only once they commit.
struct Encoded {
    parts: Vec<EncodedPart>,
    quarantined_by_reason: QuarantinedByReason,
}

/// Quarantined rows per (table, reason).
type QuarantinedByReason = BTreeMap<(String, &'static str), u64>;

/// Runs one flush to its commit.
pub(crate) async fn run(ctx: FlushContext, flush: Flush) -> Result<Committed, WorkerError> {
    let started = Instant::now();
    let rows: u64 = flush
        .drained
        .iter()
        .map(|(_, d)| d.batch.num_rows() as u64)
        .sum();
    let quarantined: u64 = flush
        .drained
        .iter()
        .map(|(_, d)| d.quarantine.len() as u64)
        .sum();
    let drained = Arc::new(flush.drained);
    let mut applied = ctx.live.applied();
    let mut predecessor = flush.predecessor;
    let mut made: Option<(Commit, QuarantinedByReason)> = None;
    let (commit, quarantined_by_reason) = loop {
        let (mut commit, quarantined) = match made.take() {
            Some(made) => made,
            None => {
                let mut encoded = encode(&ctx, &flush.source, &drained, &applied).await?;
                upload(&ctx, &mut encoded.parts).await;
                ctx.failpoints.hit("after_upload");
                ctx.failpoints.hit("before_commit");
                let commit = Commit {
                    next_offset: flush.source.last_offset + 1,
                    parts: encoded.parts.into_iter().map(|p| p.record).collect(),
                    views_version: None,
                };
                (commit, encoded.quarantined_by_reason)
            }
        };
        commit.views_version = Some(applied.version);
        let lease = &flush.lease;
        let outcome = commit_in_order(
            &*ctx.coord,
            lease,
            &flush.source,
            &commit,
            predecessor.take(),
        )
        .await;
        match outcome {
            Ok(()) => break (commit, quarantined),
            Err(WorkerError::Coordination(CoordError::ViewsChanged { .. })) => {
                // The registry moved since the flush was made (a view went live or was
                // dropped, or a backfill claimed partitions): committed again under the new
                // version, and made again first if the live views changed.
                let now = ctx.live.refresh(&*ctx.coord).await?;
                if now.names == applied.names {
                    made = Some((commit, quarantined));
                } else {
                    tracing::info!(unit = %lease.unit, first_offset = flush.source.first_offset, before = ?applied.names, now = ?now.names, "the live views changed under the flush; making it again with them");
                }
                applied = now;
            }
            Err(e) => return Err(e),
        }
    };
    ctx.failpoints.hit("after_commit");
    // The next flush of this unit may commit now; it is gone if the session ended meanwhile.
    let _ = flush.done.send(());
    let committed = Committed {
        unit: flush.lease.unit.clone(),
        rows,
        quarantined,
        parts: commit.parts.len() as u64,
        part_bytes: commit.parts.iter().map(|p| p.bytes).sum(),
    };
    record(
        &flush.lease,
        &flush.source,
        &commit,
        &committed,
        quarantined_by_reason,
        started,
    );
    Ok(committed)
}

/// Views, sorting and Parquet encoding: CPU work, on a blocking thread. The views run over each
/// table's batch here, so their parts commit with the table's, all or nothing.
async fn encode(
    ctx: &FlushContext,
    source: &FlushSource,
    drained: &Arc<Vec<(Arc<TableConfig>, Drained)>>,
    applied: &Applied,
) -> Result<Encoded, WorkerError> {
    let source = source.clone();
    let drained = Arc::clone(drained);
    let wanted = applied.names.clone();
    let runtime = tokio::runtime::Handle::current();
    let views = ctx.views.clone();
    tokio::task::spawn_blocking(move || {
        let mut encoded = Encoded {
            parts: Vec::new(),
            quarantined_by_reason: BTreeMap::new(),
        };
        for (table, d) in drained.iter() {
            encoded.add(table, &source, &d.batch, &d.quarantine)?;
            let Some(views) = &views else { continue };
            let live = |name: &str| wanted.contains(name);
            for out in views.apply_where(&runtime, &table.name, &d.batch, d.origins.as_ref(), &live)
            {
                encoded.add(&out.target, &source, &out.batch, &out.quarantine)?;
            }
        }
        Ok::<_, SinkError>(encoded)
    })
    .await
    .map_err(|source| WorkerError::Task {
        task: "encoding a flush",
        source,
    })?
    .map_err(WorkerError::from)
}

impl Encoded {
    fn add(
        &mut self,
        table: &TableConfig,
        source: &FlushSource,
        batch: &arrow::record_batch::RecordBatch,
        quarantine: &[QuarantineRow],
    ) -> Result<(), SinkError> {
        self.parts
            .extend(build_parts(table, source, batch, quarantine)?);
        for q in quarantine {
            *self
                .quarantined_by_reason
                .entry((table.name.clone(), q.reason.code()))
                .or_default() += 1;
        }
        Ok(())
    }
}

/// Uploads the parts, several at a time, each retried until the write quorum holds it (see
/// [`crate::retry`]): a storage outage holds the flush here, uncommitted, for as long as it
/// lasts. Their names are deterministic, so a retried upload rewrites the same object. With
/// replication, each record then names the endpoints that hold its copies.
async fn upload(ctx: &FlushContext, parts: &mut [EncodedPart]) {
    // Collected first: a stream over a borrowing closure is not `Send` enough for a task.
    let uploads: Vec<_> = parts
        .iter()
        .map(|p| put_until_stored(&ctx.health, &ctx.storage, &p.record.path, p.bytes.clone()))
        .collect();
    let stored: Vec<Vec<String>> = futures::stream::iter(uploads)
        .buffered(UPLOAD_CONCURRENCY)
        .collect()
        .await;
    if ctx.storage.is_replicated() {
        for (part, replicas) in parts.iter_mut().zip(stored) {
            part.record.replicas = replicas;
        }
    }
}

/// Commits after the unit's previous flush committed, under the unit's lease. A commit whose
/// reply was lost is resolved by reading the committed offset back: done if it moved, committed
/// again if it did not (the lease still fences it), so no rejoin follows a dropped connection.
async fn commit_in_order(
    coord: &dyn Coordinator,
    lease: &Lease,
    source: &FlushSource,
    commit: &Commit,
    predecessor: Option<oneshot::Receiver<()>>,
) -> Result<(), WorkerError> {
    if let Some(predecessor) = predecessor {
        predecessor
            .await
            .map_err(|_| WorkerError::PredecessorFailed {
                unit: lease.unit.clone(),
                first_offset: source.first_offset,
            })?;
    }
    let mut backoff = Backoff::new(AMBIGUOUS_FIRST_RETRY, AMBIGUOUS_MAX_RETRY);
    loop {
        let commit_started = Instant::now();
        let outcome = coord.commit(lease, commit).await;
        metrics::histogram!(m::COMMIT_DURATION).record(commit_started.elapsed().as_secs_f64());
        let why = match outcome {
            Ok(()) => return Ok(()),
            Err(CoordError::Ambiguous { source, .. }) => source,
            Err(e) => return Err(refused(lease, e, source)),
        };
        // The reply was lost (the connection dropped while the session lives on): what is
        // committed says whether the commit happened. Only this lease's holder moves the
        // offset, so the offset read back is either this commit's or the one before it.
        match read_back(coord, lease, &mut backoff).await {
            Ok(Some(o)) if o == commit.next_offset => {
                tracing::info!(unit = %lease.unit, next_offset = o, "the commit whose reply was lost had succeeded");
                return Ok(());
            }
            Ok(committed) if committed.is_none_or(|c| c < commit.next_offset) => {
                tracing::warn!(unit = %lease.unit, committed = ?committed, error = %chain(&*why), "the commit whose reply was lost did not happen; committing again");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Ok(committed) => {
                return Err(WorkerError::NotCommitted {
                    unit: lease.unit.clone(),
                    first_offset: source.first_offset,
                    committed,
                })
            }
            Err(e) => return Err(refused(lease, e, source)),
        }
    }
}

/// Reads the committed offset back after an ambiguous commit, retrying while the coordinator
/// cannot answer but the session lives (a reconnect within the session timeout).
async fn read_back(
    coord: &dyn Coordinator,
    lease: &Lease,
    backoff: &mut Backoff,
) -> Result<Option<i64>, CoordError> {
    loop {
        match coord.committed_offset(&lease.unit).await {
            Err(CoordError::Backend { path, source }) => {
                tracing::warn!(unit = %lease.unit, path, error = %chain(&*source), "cannot read the committed offset back yet; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            other => return other,
        }
    }
}

/// Maps a failed commit: losing the lease or the session means another worker owns the
/// partition now, which is not an error of this worker but the end of its ownership.
fn refused(lease: &Lease, e: CoordError, source: &FlushSource) -> WorkerError {
    match e {
        CoordError::LeaseLost { .. } | CoordError::SessionEnded { .. } => {
            tracing::warn!(unit = %lease.unit, epoch = lease.epoch, first_offset = source.first_offset, last_offset = source.last_offset, error = &e as &dyn std::error::Error, "commit refused: this worker no longer owns the partition; its buffered events are left to the new owner");
            WorkerError::LeaseLost {
                unit: lease.unit.clone(),
            }
        }
        other => other.into(),
    }
}

/// Metrics and the log line of a committed flush.
fn record(
    lease: &Lease,
    source: &FlushSource,
    commit: &Commit,
    committed: &Committed,
    quarantined_by_reason: BTreeMap<(String, &'static str), u64>,
    started: Instant,
) {
    metrics::histogram!(m::FLUSH_DURATION).record(started.elapsed().as_secs_f64());
    for p in &commit.parts {
        let table = [("table", p.table.clone())];
        metrics::counter!(m::TABLE_PARTS_WRITTEN, &table).increment(1);
        metrics::counter!(m::TABLE_BYTES_COMMITTED, &table).increment(p.bytes);
        crate::written::add(&p.table, p.bytes, 0);
        if p.kind == PartKind::Data {
            metrics::counter!(m::TABLE_ROWS_COMMITTED, &table).increment(p.rows);
        }
    }
    for ((table, reason), n) in quarantined_by_reason {
        metrics::counter!(m::TABLE_QUARANTINED_ROWS, "table" => table, "reason" => reason)
            .increment(n);
    }
    tracing::info!(
        unit = %lease.unit,
        epoch = lease.epoch,
        first_offset = source.first_offset,
        last_offset = source.last_offset,
        rows = committed.rows,
        quarantined = committed.quarantined,
        parts = committed.parts,
        bytes = committed.part_bytes,
        took_ms = started.elapsed().as_millis() as u64,
        "committed"
    );
}
