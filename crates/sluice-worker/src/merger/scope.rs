//! One scope's merge work, as a task of its own: under the scope's merge lease, run the merges
//! the policy plans one after another (each re-reading the scope), then seal the scope if it has
//! gone quiet. Every merge is uploaded and verified before the fenced swap; a refused swap or a
//! failed merge leaves only an object that garbage collection removes, never a change to the
//! registry, and never stops ingestion.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use sluice_config::TableConfig;
use sluice_coord::{
    CoordError, LiveView, MergeLease, OffsetSpan, PartKind, PartRecord, Retired, ViewRegistry,
};
use sluice_merge::execute::{merge_parts, MergeInput, MergeLimits};
use sluice_merge::policy::{self, Candidate, Plan};
use sluice_sink::{collect_merge_orphans, path_segment, read_manifest, write_manifest};
use sluice_telemetry::metrics as m;

use super::MergeCtx;
use crate::now_ms;
use crate::retry::chain;

/// Merges run under one lease before the scope is given up for others to get a turn.
const MERGES_PER_TURN: usize = 8;
/// Rows read from each input at a time.
const BATCH_ROWS: usize = 8192;

/// What one turn on a scope did.
#[derive(Debug, Default)]
pub(crate) struct Turn {
    pub(crate) merges: usize,
    pub(crate) sealed: bool,
    /// Merges the policy still planned when the turn ended.
    pub(crate) backlog: usize,
    /// Another worker held the scope's merge lease.
    pub(crate) busy: bool,
    /// Why the turn stopped early, if it did.
    pub(crate) failure: Option<String>,
    /// Objects of earlier merge leases deleted, if the turn looked for them.
    pub(crate) swept: Option<usize>,
    /// The worker is stopping: end the turn after the merge in progress.
    pub(crate) stopped: bool,
}

/// Takes the scope's merge lease, merges, seals, and gives the lease back. On a worker's first
/// turn on a scope (`sweep`), it first deletes the objects earlier merge leases uploaded and
/// never registered.
pub(crate) async fn turn(
    ctx: Arc<MergeCtx>,
    table: Arc<TableConfig>,
    value: String,
    sweep: bool,
) -> Turn {
    let lease = match ctx
        .coord
        .acquire_merge_lease(&table.name, &value, &ctx.worker_id)
        .await
    {
        Ok(lease) => lease,
        Err(CoordError::ScopeLeaseHeld { .. }) => {
            return Turn {
                busy: true,
                ..Turn::default()
            }
        }
        Err(e) => {
            return Turn {
                failure: Some(format!("cannot take the merge lease: {}", chain(&e))),
                ..Turn::default()
            }
        }
    };
    let mut turn = Turn::default();
    if sweep {
        match collect_merge_orphans(&ctx.storage, &*ctx.coord, &lease).await {
            Ok(deleted) => turn.swept = Some(deleted.len()),
            Err(e) => {
                turn.failure = Some(format!(
                    "cannot collect unregistered merge objects: {}",
                    chain(&e)
                ))
            }
        }
    }
    if turn.failure.is_none() {
        if let Err(e) = work(&ctx, &table, &lease, &mut turn).await {
            metrics::counter!(m::MERGE_FAILURES, "table" => table.name.clone()).increment(1);
            turn.failure = Some(e);
        }
    }
    if let Err(e) = ctx.coord.release_merge_lease(&lease).await {
        tracing::warn!(table = %table.name, value = %value, error = &e as &dyn std::error::Error, "cannot release the merge lease; it ends with the session");
    }
    turn
}

async fn work(
    ctx: &MergeCtx,
    table: &TableConfig,
    lease: &MergeLease,
    turn: &mut Turn,
) -> Result<(), String> {
    for _ in 0..MERGES_PER_TURN {
        if ctx.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            turn.stopped = true;
            return Ok(());
        }
        let listing = ctx
            .coord
            .read_scope(&table.name, &lease.partition_value)
            .await
            .map_err(|e| chain(&e))?;
        // Read after the listing: a view that went live after this reading has only parts
        // from before its points in the listing, which may merge together.
        let pending = if ctx.view_sources.contains(&table.name) {
            let views = ctx.coord.read_views().await.map_err(|e| chain(&e))?;
            views.pending_on(&table.name).into_iter().cloned().collect()
        } else {
            Vec::new()
        };
        let kept = kept_for_rollback(ctx, &listing.parts).await?;
        let mergeable: Vec<PartRecord> = listing
            .parts
            .iter()
            .filter(|p| !kept.contains(&p.path))
            .cloned()
            .collect();
        let plans = plans_of(ctx, table, &mergeable, &pending);
        turn.backlog = plans.len();
        let Some(plan) = plans.into_iter().next() else {
            if kept.is_empty() {
                turn.sealed = seal_if_quiet(ctx, table, lease, &listing).await?;
            }
            return Ok(());
        };
        merge_one(ctx, table, lease, &listing.parts, &plan).await?;
        turn.merges += 1;
        turn.backlog = turn.backlog.saturating_sub(1);
    }
    Ok(())
}

/// The paths of the parts a recorded replay swapped in: a rollback removes them, so they are
/// neither merged nor sealed until the replay is collected. Read only when the scope holds
/// replayed parts at all.
async fn kept_for_rollback(
    ctx: &MergeCtx,
    parts: &[PartRecord],
) -> Result<std::collections::HashSet<String>, String> {
    if !parts
        .iter()
        .any(|p| sluice_sink::parse_replay_name(&p.path).is_some())
    {
        return Ok(Default::default());
    }
    let recorded: std::collections::HashSet<String> = ctx
        .coord
        .list_replays()
        .await
        .map_err(|e| chain(&e))?
        .into_iter()
        .map(|g| g.id)
        .collect();
    Ok(parts
        .iter()
        .filter(|p| {
            sluice_sink::parse_replay_name(&p.path).is_some_and(|id| recorded.contains(&id))
        })
        .map(|p| p.path.clone())
        .collect())
}

/// The merges the policy plans for a scope's records: one scope per kind, and only parts of
/// the table's current definition version (older parts keep their schema until sealed). While
/// a view's history is `pending`, parts from before its points and parts after are planned
/// apart, so every part stays wholly on one side.
pub(crate) fn plans_of(
    ctx: &MergeCtx,
    table: &TableConfig,
    parts: &[PartRecord],
    pending: &[LiveView],
) -> Vec<Plan> {
    let now = now_ms();
    let mut by_kind: BTreeMap<(PartKind, Vec<bool>), Vec<Candidate>> = BTreeMap::new();
    for p in parts
        .iter()
        .filter(|p| p.definition_version == table.version)
    {
        let sides = pending
            .iter()
            .map(|v| ViewRegistry::before_point(v, p))
            .collect();
        by_kind.entry((p.kind, sides)).or_default().push(Candidate {
            name: p.name(),
            bytes: p.bytes,
            level: p.level,
            created_at_ms: p.flushed_at(),
        });
    }
    by_kind
        .values()
        .flat_map(|candidates| policy::plan(&ctx.merge, candidates, now))
        .collect()
}

/// One merge: the merged part written and verified, then swapped in for its inputs.
async fn merge_one(
    ctx: &MergeCtx,
    table: &TableConfig,
    lease: &MergeLease,
    parts: &[PartRecord],
    plan: &Plan,
) -> Result<(), String> {
    let started = Instant::now();
    let inputs: Vec<PartRecord> = plan
        .inputs
        .iter()
        .map(|n| parts.iter().find(|p| p.name() == *n).cloned())
        .collect::<Option<_>>()
        .ok_or("the plan names a part the scope does not hold")?;
    let kind = inputs[0].kind;
    let path = merged_path(table, &lease.partition_value, kind, plan, lease.epoch);
    let metadata = vec![
        ("level".to_string(), plan.level.to_string()),
        ("inputs".to_string(), inputs.len().to_string()),
        ("merge_epoch".to_string(), lease.epoch.to_string()),
        ("partition_value".to_string(), lease.partition_value.clone()),
    ];
    let merge_inputs: Vec<MergeInput> = inputs
        .iter()
        .map(|p| MergeInput {
            path: p.path.clone(),
            rows: p.rows,
        })
        .collect();
    // Every input copy read is checked against its record before its rows are merged.
    ctx.storage.expect_checksums(
        inputs
            .iter()
            .map(|p| (p.path.as_str(), p.checksum.as_str())),
    );
    let limits = MergeLimits {
        batch_rows: BATCH_ROWS,
    };
    let out = merge_parts(
        &ctx.storage,
        table,
        kind,
        &merge_inputs,
        &path,
        metadata,
        limits,
    )
    .await
    .map_err(|e| chain(&e))?;
    ctx.failpoints.hit("merge_after_upload");
    let now = now_ms();
    let record = PartRecord {
        table: table.name.clone(),
        kind,
        partition_value: lease.partition_value.clone(),
        path: path.clone(),
        rows: out.rows,
        bytes: out.bytes,
        topic: String::new(),
        partition: -1,
        first_offset: -1,
        last_offset: -1,
        definition_version: table.version,
        lease_epoch: lease.epoch,
        created_at_ms: now,
        level: plan.level,
        inputs: inputs.len() as u32,
        spans: merged_spans(&inputs),
        checksum: out.checksum,
        flushed_at_ms: inputs
            .iter()
            .map(PartRecord::flushed_at)
            .max()
            .unwrap_or(now),
        replicas: replicas_written(&ctx.storage, &path),
    };
    swap(ctx, lease, &inputs, &record).await?;
    ctx.failpoints.hit("merge_after_swap");
    let labels = [("table", table.name.clone())];
    metrics::counter!(m::MERGES, &labels).increment(1);
    metrics::counter!(m::MERGE_INPUT_PARTS, &labels).increment(inputs.len() as u64);
    metrics::counter!(m::MERGE_BYTES_WRITTEN, &labels).increment(record.bytes);
    crate::written::add(&table.name, 0, record.bytes);
    metrics::histogram!(m::MERGE_DURATION).record(started.elapsed().as_secs_f64());
    tracing::info!(table = %table.name, value = %lease.partition_value, level = plan.level, inputs = inputs.len(), rows = record.rows, bytes = record.bytes, reason = ?plan.reason, took_ms = started.elapsed().as_millis() as u64, path = %record.path, "merged");
    Ok(())
}

/// The endpoints that took a merged part's upload, when parts are replicated.
fn replicas_written(storage: &sluice_sink::Storage, path: &str) -> Vec<String> {
    let written = storage.take_written(path);
    if storage.is_replicated() {
        written
    } else {
        Vec::new()
    }
}

/// The fenced swap; a lost reply is resolved by reading the scope back.
async fn swap(
    ctx: &MergeCtx,
    lease: &MergeLease,
    inputs: &[PartRecord],
    record: &PartRecord,
) -> Result<(), String> {
    let retired = Retired {
        table: record.table.clone(),
        // The path is unique within the table, a file name only within a scope.
        name: record.path.clone(),
        partition_value: record.partition_value.clone(),
        paths: inputs.iter().map(|p| p.path.clone()).collect(),
        retired_at_ms: record.created_at_ms,
        kept_for: None,
    };
    match ctx.coord.swap(lease, inputs, record, &retired).await {
        Ok(()) => Ok(()),
        Err(CoordError::Ambiguous { .. }) => {
            let listing = ctx
                .coord
                .read_scope(&record.table, &record.partition_value)
                .await
                .map_err(|e| chain(&e))?;
            if listing.parts.iter().any(|p| p.name() == record.name()) {
                Ok(())
            } else {
                Err(format!(
                    "the swap's reply was lost and {} is not registered: it did not happen",
                    record.path
                ))
            }
        }
        Err(e) => {
            // Logged here too: if the session ended, nobody books the turn's failure.
            tracing::warn!(table = %record.table, value = %record.partition_value, path = %record.path, error = %chain(&e), "the swap was refused; the merged object is collected by the scope's next merger");
            Err(format!("the swap was refused: {}", chain(&e)))
        }
    }
}

/// Seals a quiet scope: nothing left to merge, and nothing flushed for `merge.quiet_after_ms`.
/// Its records (and the parts of its earlier manifest) go into a new manifest object, which the
/// scope then points at; the earlier manifest object is retired.
async fn seal_if_quiet(
    ctx: &MergeCtx,
    table: &TableConfig,
    lease: &MergeLease,
    listing: &sluice_coord::ScopeListing,
) -> Result<bool, String> {
    let now = now_ms();
    let quiet_since = now - ctx.merge.quiet_after_ms as i64;
    if listing.parts.is_empty() || listing.parts.iter().any(|p| p.flushed_at() > quiet_since) {
        return Ok(false);
    }
    let mut parts = match &listing.state.sealed {
        Some(old) => read_manifest(&ctx.storage, old)
            .await
            .map_err(|e| chain(&e))?,
        None => Vec::new(),
    };
    parts.extend(listing.parts.iter().cloned());
    let manifest = write_manifest(
        &ctx.storage,
        &table.name,
        &lease.partition_value,
        lease.epoch,
        &parts,
        now,
    )
    .await
    .map_err(|e| chain(&e))?;
    ctx.failpoints.hit("seal_after_manifest");
    let retired = listing.state.sealed.as_ref().map(|old| Retired {
        table: table.name.clone(),
        name: format!(
            "manifest-{}",
            manifest.path.rsplit('/').next().unwrap_or_default()
        ),
        partition_value: lease.partition_value.clone(),
        paths: vec![old.path.clone()],
        retired_at_ms: now,
        kept_for: None,
    });
    ctx.coord
        .seal(lease, &listing.parts, &manifest, retired.as_ref())
        .await
        .map_err(|e| format!("the seal was refused: {}", chain(&e)))?;
    tracing::info!(table = %table.name, value = %lease.partition_value, records = listing.parts.len(), parts = manifest.parts, manifest = %manifest.path, "sealed a quiet scope");
    Ok(true)
}

/// The merged part's object path: deterministic from the scope, the inputs (by name), the
/// level, the merge lease's epoch and the definition version, so a retried merge rewrites the
/// same object and a zombie's never overwrites another lease's.
fn merged_path(
    table: &TableConfig,
    value: &str,
    kind: PartKind,
    plan: &Plan,
    epoch: u64,
) -> String {
    let mut names = plan.inputs.clone();
    names.sort();
    // A flush's parts of different partition values share a file name: the scope goes into the
    // hash too, so merges of two scopes never share one.
    let scope = fnv1a(
        fnv1a(fnv1a(FNV_OFFSET, table.name.as_bytes()), &[0]),
        value.as_bytes(),
    );
    let hash = names.iter().fold(fnv1a(scope, &[0]), |h, n| {
        fnv1a(fnv1a(h, n.as_bytes()), &[0])
    });
    let file = format!(
        "m{}-{hash:016x}-e{epoch}-v{}.parquet",
        plan.level, table.version
    );
    match kind {
        PartKind::Data => format!("{}/data/{}/{file}", table.name, path_segment(value)),
        PartKind::Quarantine => format!("{}/quarantine/{file}", table.name),
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Per source partition, the range of offsets the inputs' rows came from.
fn merged_spans(inputs: &[PartRecord]) -> Vec<OffsetSpan> {
    let mut spans: BTreeMap<(String, i32), (i64, i64)> = BTreeMap::new();
    for s in inputs.iter().flat_map(PartRecord::source_spans) {
        let e = spans
            .entry((s.topic, s.partition))
            .or_insert((s.first_offset, s.last_offset));
        e.0 = e.0.min(s.first_offset);
        e.1 = e.1.max(s.last_offset);
    }
    spans
        .into_iter()
        .map(
            |((topic, partition), (first_offset, last_offset))| OffsetSpan {
                topic,
                partition,
                first_offset,
                last_offset,
            },
        )
        .collect()
}
