//! A view's history: the view run over every data part of its source committed before it went
//! live (the parts wholly below its points), written as the view target's parts and registered
//! in one step with the record that the history is done.
//!
//! Steps, each safe to die at: sweep what earlier runs of this history uploaded (older lease
//! epochs); per source scope, read its records and its manifest's, keep the history's parts,
//! read them, run the view, upload (failpoint `view_history_after_upload`); then register
//! (failpoint `view_history_before_register`). A run that finds the history registered by
//! another deletes its own objects. A part merged away while being read (its object retired
//! and deleted) makes the scope be read again: merges keep every row in some part.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use sluice_config::TableConfig;
use sluice_coord::{
    CoordError, Coordinator, LiveView, OffsetSpan, PartKind, PartRecord, ViewHistory,
    ViewHistoryLease, ViewRegistry,
};
use sluice_sink::{
    build_history_parts, parse_history_name, read_manifest, EncodedPart, HistorySource, Storage,
};
use sluice_telemetry::Health;
use sluice_transform::Views;

use crate::retry::{chain, put_until_stored};
use crate::{now_ms, Failpoints};

/// Source rows per run of the view: bounded memory whatever the part sizes.
const CHUNK_ROWS: usize = 256 * 1024;
/// Times a scope is read again when one of its parts was merged away meanwhile.
const SCOPE_ATTEMPTS: usize = 5;

/// What a history run needs.
pub(crate) struct HistoryCtx {
    pub(crate) coord: Arc<dyn Coordinator>,
    pub(crate) storage: Storage,
    pub(crate) views: Arc<Views>,
    pub(crate) tables: BTreeMap<String, Arc<TableConfig>>,
    pub(crate) failpoints: Failpoints,
    pub(crate) worker_id: String,
    pub(crate) health: Arc<Health>,
}

/// Runs the history of `view` under `lease` to its registration, logging the outcome; the
/// lease is given back either way (a failed run is tried again at a later check). Returns
/// whether the history is registered now.
pub(crate) async fn run(
    ctx: Arc<HistoryCtx>,
    view: LiveView,
    lease: ViewHistoryLease,
    stop: Arc<AtomicBool>,
) -> bool {
    tracing::info!(view = %view.name, epoch = lease.epoch, "computing the view's history over the data committed before it went live");
    let run = Run {
        ctx: &ctx,
        view: &view,
        stop: &stop,
    };
    let registered = match run.compute_and_register(&lease).await {
        Ok(Some(h)) => {
            tracing::info!(view = %view.name, source_parts = h.source_parts, parts = h.parts, rows = h.rows, "the view's history is registered: its table now covers all of its source");
            true
        }
        Ok(None) => {
            tracing::info!(view = %view.name, "another worker registered the view's history first; this run's objects are deleted");
            true
        }
        Err(_) if stop.load(Ordering::SeqCst) => {
            tracing::info!(view = %view.name, "the view's history computation stopped with its session; this run's objects are deleted, and it starts again under a new lease");
            false
        }
        Err(e) => {
            tracing::warn!(view = %view.name, error = %e, "computing the view's history failed; it is tried again (meanwhile the view's table lacks the rows from before it went live)");
            false
        }
    };
    if let Err(e) = ctx.coord.release_view_history_lease(&lease).await {
        tracing::warn!(view = %view.name, error = %chain(&e), "cannot release the history lease; it ends with the session");
    }
    registered
}

/// One run of a history: what it reads with, and the flag that stops it (its session ended).
struct Run<'a> {
    ctx: &'a HistoryCtx,
    view: &'a LiveView,
    stop: &'a AtomicBool,
}

impl Run<'_> {
    /// Computes and registers; on any failure before registering, deletes what it wrote (a
    /// later run's sweep gets whatever cannot be deleted now).
    async fn compute_and_register(
        &self,
        lease: &ViewHistoryLease,
    ) -> Result<Option<ViewHistory>, String> {
        let mut written = Vec::new();
        match compute(self, lease, &mut written).await {
            Ok(history) => register(self.ctx, self.view, lease, &written, &history).await,
            Err(e) => {
                delete_all(&self.ctx.storage, &written).await;
                Err(e)
            }
        }
    }

    fn stopped(&self) -> Result<(), String> {
        if self.stop.load(Ordering::SeqCst) {
            return Err("stopped: the session ended".into());
        }
        Ok(())
    }
}

async fn delete_all(storage: &Storage, written: &[PartRecord]) {
    for p in written {
        let _ = storage.delete(&p.path).await;
    }
}

/// Reads the history's source parts and writes its parts (into `written`); returns what to
/// register.
async fn compute(
    run: &Run<'_>,
    lease: &ViewHistoryLease,
    written: &mut Vec<PartRecord>,
) -> Result<ViewHistory, String> {
    let (ctx, view) = (run.ctx, run.view);
    let source = ctx
        .tables
        .get(&view.source)
        .ok_or_else(|| format!("table `{}` is not configured here", view.source))?;
    sweep_earlier_runs(ctx, view, lease).await?;
    let spans = history_spans(view);
    let topic = spans.first().map(|s| s.topic.clone()).unwrap_or_default();
    let scopes = ctx
        .coord
        .list_scopes(&view.source)
        .await
        .map_err(|e| chain(&e))?;
    let mut source_parts = 0;
    for (i, scope) in scopes.iter().enumerate() {
        let at = HistorySource {
            view: view.name.clone(),
            epoch: lease.epoch,
            scope: i as u32,
            chunk: 0,
            topic: topic.clone(),
            spans: spans.clone(),
        };
        let (read, parts) = scope_history(run, source, &scope.partition_value, at).await?;
        source_parts += read;
        written.extend(parts);
    }
    ctx.failpoints.hit("view_history_before_register");
    run.stopped()?;
    Ok(ViewHistory {
        completed_at_ms: now_ms(),
        worker: ctx.worker_id.clone(),
        source_parts,
        parts: written.len() as u64,
        rows: written
            .iter()
            .filter(|p| p.kind == PartKind::Data)
            .map(|p| p.rows)
            .sum(),
    })
}

/// Registers the history; `None` if another run registered one first. This run's objects are
/// deleted whenever its registration surely did not happen; a lost reply is resolved by
/// reading the registry back, and if even that fails they are left to the next run's sweep.
async fn register(
    ctx: &HistoryCtx,
    view: &LiveView,
    lease: &ViewHistoryLease,
    written: &[PartRecord],
    history: &ViewHistory,
) -> Result<Option<ViewHistory>, String> {
    let delete_ours = || delete_all(&ctx.storage, written);
    match ctx
        .coord
        .complete_view_history(lease, written, history)
        .await
    {
        Ok(()) => Ok(Some(history.clone())),
        Err(e @ (CoordError::Ambiguous { .. } | CoordError::Conflict { .. })) => {
            let registry = ctx.coord.read_views().await.map_err(|e| chain(&e))?;
            match registry.histories.get(&view.name) {
                Some(h) if h == history => Ok(Some(history.clone())),
                Some(_) => {
                    delete_ours().await;
                    Ok(None)
                }
                None => Err(format!("registering the history failed: {}", chain(&e))),
            }
        }
        Err(e @ CoordError::SessionEnded { .. }) => {
            delete_ours().await;
            Err(format!(
                "the session ended before the history registered (this process was paused or cut off); this run's objects are deleted: {}",
                chain(&e)
            ))
        }
        Err(e) => Err(chain(&e)),
    }
}

/// What the history stands for: each source partition from 0 to its point, exclusive.
fn history_spans(view: &LiveView) -> Vec<OffsetSpan> {
    view.points
        .iter()
        .filter(|p| p.next_offset > 0)
        .map(|p| OffsetSpan {
            topic: p.topic.clone(),
            partition: p.partition,
            first_offset: 0,
            last_offset: p.next_offset - 1,
        })
        .collect()
}

/// Deletes the history objects of this view that earlier leases uploaded: they were never
/// registered (the history is not), and their runs are over.
async fn sweep_earlier_runs(
    ctx: &HistoryCtx,
    view: &LiveView,
    lease: &ViewHistoryLease,
) -> Result<(), String> {
    for dir in ["data", "quarantine"] {
        let listed = ctx
            .storage
            .list(&format!("{}/{dir}/", view.target))
            .await
            .map_err(|e| chain(&e))?;
        for object in listed {
            let earlier = parse_history_name(&object.path)
                .is_some_and(|(v, epoch)| v == view.name && epoch < lease.epoch);
            if earlier {
                ctx.storage
                    .delete(&object.path)
                    .await
                    .map_err(|e| chain(&e))?;
            }
        }
    }
    Ok(())
}

/// The history of one source scope: how many source parts it read, and the parts written.
async fn scope_history(
    run: &Run<'_>,
    source: &TableConfig,
    value: &str,
    at: HistorySource,
) -> Result<(u64, Vec<PartRecord>), String> {
    let (ctx, view) = (run.ctx, run.view);
    let mut last = String::new();
    for _ in 0..SCOPE_ATTEMPTS {
        run.stopped()?;
        let listing = ctx
            .coord
            .read_scope(&source.name, value)
            .await
            .map_err(|e| chain(&e))?;
        let mut parts = match &listing.state.sealed {
            Some(m) => read_manifest(&ctx.storage, m)
                .await
                .map_err(|e| chain(&e))?,
            None => Vec::new(),
        };
        parts.extend(listing.parts);
        parts.retain(|p| p.kind == PartKind::Data && ViewRegistry::before_point(view, p));
        if let Some(p) = parts
            .iter()
            .find(|p| p.definition_version != source.version)
        {
            return Err(format!(
                "part {} has definition version {} and the table is at {}: a view's history reads parts of the current definition only; wait until they are merged or sealed into the current one",
                p.path, p.definition_version, source.version
            ));
        }
        let mut written = Vec::new();
        match scope_parts(run, source, &parts, at.clone(), &mut written).await {
            Ok(()) => return Ok((parts.len() as u64, written)),
            Err(e) => {
                delete_all(&ctx.storage, &written).await;
                last = e;
            }
        }
    }
    Err(format!(
        "scope `{value}` of `{}` kept changing while it was read: {last}",
        source.name
    ))
}

/// Reads `parts`, runs the view over them a chunk at a time, uploads what it makes.
async fn scope_parts(
    run: &Run<'_>,
    source: &TableConfig,
    parts: &[PartRecord],
    mut at: HistorySource,
    written: &mut Vec<PartRecord>,
) -> Result<(), String> {
    let (ctx, view) = (run.ctx, run.view);
    let mut chunk: Vec<RecordBatch> = Vec::new();
    let mut rows = 0;
    for (i, part) in parts.iter().enumerate() {
        run.stopped()?;
        let batches = read_part(&ctx.storage, part).await?;
        rows += batches.iter().map(RecordBatch::num_rows).sum::<usize>();
        chunk.extend(batches);
        if rows >= CHUNK_ROWS || i + 1 == parts.len() {
            let made = run_view(ctx, source, view, std::mem::take(&mut chunk), &at).await?;
            for mut part in made {
                part.record.replicas = put_until_stored(
                    &ctx.health,
                    &ctx.storage,
                    &part.record.path,
                    part.bytes.clone(),
                )
                .await;
                if !ctx.storage.is_replicated() {
                    part.record.replicas.clear();
                }
                written.push(part.record);
            }
            ctx.failpoints.hit("view_history_after_upload");
            at.chunk += 1;
            rows = 0;
        }
    }
    Ok(())
}

async fn read_part(storage: &Storage, part: &PartRecord) -> Result<Vec<RecordBatch>, String> {
    let bytes = if part.checksum.is_empty() {
        storage.get(&part.path).await
    } else {
        storage
            .get_verified(&part.path, &part.checksum)
            .await
            .map(|(b, _)| b)
    }
    .map_err(|e| format!("cannot read part {}: {}", part.path, chain(&e)))?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| format!("cannot decode part {}: {e}", part.path))?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot decode part {}: {e}", part.path))
}

/// The view over one chunk of source rows, encoded as its target's parts, on a blocking
/// thread.
async fn run_view(
    ctx: &HistoryCtx,
    source: &TableConfig,
    view: &LiveView,
    chunk: Vec<RecordBatch>,
    at: &HistorySource,
) -> Result<Vec<EncodedPart>, String> {
    if chunk.is_empty() {
        return Ok(Vec::new());
    }
    let views = Arc::clone(&ctx.views);
    let schema = chunk[0].schema();
    let source_name = source.name.clone();
    let name = view.name.clone();
    let at = at.clone();
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let batch = arrow::compute::concat_batches(&schema, &chunk)
            .map_err(|e| format!("cannot combine source rows: {e}"))?;
        let mut made = Vec::new();
        for out in views.apply_where(&runtime, &source_name, &batch, None, &|v| v == name) {
            made.extend(
                build_history_parts(&out.target, &at, &out.batch, &out.quarantine)
                    .map_err(|e| chain(&e))?,
            );
        }
        Ok(made)
    })
    .await
    .map_err(|e| format!("the history's view task failed: {e}"))?
}
