//! A backfill run: claim the partitions, take the backfill lease, collect what an earlier run
//! left unstaged, convert and upload the files not staged yet (several at a time), stage each,
//! and hand the partitions over to the stream in one atomic change.
//!
//! Everything before the handoff is invisible to readers, so a run killed at any step leaves
//! nothing visible; the next run with the same snapshot resumes at the first file not staged.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{StreamExt, TryStreamExt};
use sluice_config::Config;
use sluice_coord::{BackfillLease, BackfillPlan, CoordError, Coordinator, StagedFile};
use sluice_sink::{parse_backfill_name, Storage};
use sluice_transform::Views;
use sluice_worker::{put_until_stored, Failpoints, Health};

use crate::progress::Progress;
use crate::{read_chunks, snapshot_spans, BackfillError, Converted, Converter, Snapshot};

/// Converted chunks waiting for their upload, per file. With the chunk being converted and the
/// one being uploaded, a file holds at most three chunks in memory.
const CHUNKS_IN_FLIGHT: usize = 1;
/// Uploads in flight per chunk.
const UPLOADS_IN_FLIGHT: usize = 8;
/// How often a held backfill lease is asked for again.
const LEASE_RETRY: Duration = Duration::from_millis(500);
/// How long a handoff whose reply was lost waits before reading the outcome.
const AMBIGUOUS_RETRY: Duration = Duration::from_millis(500);

/// Everything a run works with.
pub struct Run {
    pub config: Arc<Config>,
    pub snapshot: Snapshot,
    pub plan: BackfillPlan,
    pub coord: Arc<dyn Coordinator>,
    pub storage: Storage,
    pub views: Option<Arc<Views>>,
    pub failpoints: Failpoints,
    /// Names this process in the backfill lease.
    pub holder: String,
    /// Files converted at once.
    pub parallel_files: usize,
}

/// What a run did, and what the backfill it finished holds.
#[derive(Debug, Default)]
pub struct Report {
    /// The backfill had been handed off before this run: nothing was done.
    pub already_handed_off: bool,
    /// Files this run converted.
    pub files_converted: u64,
    /// Files an earlier run had staged.
    pub files_resumed: u64,
    /// Over every file of the backfill: rows of the table, events quarantined, parts of every
    /// table (views' included) and their bytes.
    pub rows: u64,
    pub quarantined: u64,
    pub parts: u64,
    pub part_bytes: u64,
    /// Bytes of the files this run read.
    pub bytes_read: u64,
    /// Objects of earlier runs never staged, deleted.
    pub swept: usize,
    pub elapsed: Duration,
}

impl Report {
    fn add(&mut self, file: &StagedFile) {
        self.rows += file.rows;
        self.quarantined += file.quarantined;
        self.parts += file.parts.len() as u64;
        self.part_bytes += file.parts.iter().map(|p| p.bytes).sum::<u64>();
    }
}

fn coord_err(what: &'static str) -> impl Fn(CoordError) -> BackfillError {
    move |source| BackfillError::Coordination {
        what,
        source: Box::new(source),
    }
}

impl Run {
    pub async fn run(self) -> Result<Report, BackfillError> {
        let started = Instant::now();
        // The claim moves the view registry's version, which serialises it with a view going
        // live; the registry must exist for that (a backfill may come before any worker).
        sluice_worker::ensure_view_registry(&*self.coord, &self.config)
            .await
            .map_err(coord_err("reading the view registry"))?;
        self.coord
            .claim_backfill(&self.plan)
            .await
            .map_err(coord_err("claiming the partitions"))?;
        let patience = Duration::from_millis(self.config.coordination.session_timeout_ms * 2);
        let lease = take_lease(&*self.coord, &self.plan.id, &self.holder, patience).await?;
        let outcome = self.with_lease(&lease).await;
        if let Err(e) = self.coord.release_backfill_lease(&lease).await {
            tracing::warn!(backfill = %self.plan.id, error = %e, "cannot release the backfill lease; it ends with the session");
        }
        let mut report = outcome?;
        report.elapsed = started.elapsed();
        Ok(report)
    }

    async fn with_lease(&self, lease: &BackfillLease) -> Result<Report, BackfillError> {
        let status = self
            .coord
            .read_backfill(&self.plan.id)
            .await
            .map_err(coord_err("reading the backfill"))?
            .ok_or_else(|| BackfillError::Coordination {
                what: "reading the backfill",
                source: Box::new(CoordError::NoBackfill {
                    id: self.plan.id.clone(),
                }),
            })?;
        if status.state.handed_off_at_ms.is_some() {
            return Ok(Report {
                already_handed_off: true,
                ..Report::default()
            });
        }
        if status.state.cancelled_at_ms.is_some() {
            return Err(BackfillError::Cancelled {
                id: self.plan.id.clone(),
            });
        }
        let mut report = Report {
            files_resumed: status.staged.len() as u64,
            ..Report::default()
        };
        for file in status.staged.values() {
            report.add(file);
        }
        if lease.epoch > 1 {
            report.swept = self.sweep(lease, &status.staged).await?;
        }
        let snapshot = self.snapshot.clone();
        let sizes = tokio::task::spawn_blocking(move || snapshot.sizes())
            .await
            .map_err(|_| BackfillError::Stopped)??;
        let resumed_bytes = status.staged.keys().map(|&i| sizes[i as usize]).sum();
        let progress = Arc::new(Progress::new(
            sizes.len() as u64,
            sizes.iter().sum(),
            report.files_resumed,
            resumed_bytes,
        ));
        let (stop_bar, stopped) = tokio::sync::oneshot::channel();
        let bar = progress.draw_until(stopped);
        let todo: Vec<u32> = (0..self.plan.files)
            .filter(|i| !status.staged.contains_key(i))
            .collect();
        // Read after the claim: views go live only while no backfill of the topic is claimed
        // (the claim and an activation are serialised on the registry's version), so the set
        // read here holds until the handoff.
        let registry = self
            .coord
            .read_views()
            .await
            .map_err(coord_err("reading the view registry"))?;
        let live_views = registry.exists().then(|| {
            let configured = self.config.views.iter().map(|v| v.name.clone());
            configured.filter(|n| registry.applied(n)).collect()
        });
        let converter = Converter {
            table: Arc::new(self.table()?.clone()),
            views: self.views.clone(),
            live_views,
            id: self.plan.id.clone(),
            epoch: lease.epoch,
            topic: self.plan.topic.clone(),
            spans: snapshot_spans(&self.plan.topic, &self.plan.offsets),
            runtime: tokio::runtime::Handle::current(),
        };
        let health = Health::new();
        let staged: Result<Vec<StagedFile>, BackfillError> = futures::stream::iter(todo)
            .map(|i| self.file(lease, &converter, &health, &progress, i))
            .buffer_unordered(self.parallel_files.max(1))
            .try_collect()
            .await;
        let _ = stop_bar.send(());
        let _ = bar.await;
        for file in staged? {
            report.files_converted += 1;
            report.bytes_read += file.bytes_read;
            report.add(&file);
        }
        self.failpoints.hit("backfill_before_handoff");
        self.hand_off(lease).await?;
        Ok(report)
    }

    fn table(&self) -> Result<&sluice_config::TableConfig, BackfillError> {
        self.config
            .table(&self.plan.table)
            .ok_or_else(|| BackfillError::Plan {
                table: self.plan.table.clone(),
                problem: "the configuration has no such table".into(),
            })
    }

    /// Converts, uploads and stages one file.
    async fn file(
        &self,
        lease: &BackfillLease,
        converter: &Converter,
        health: &Health,
        progress: &Progress,
        index: u32,
    ) -> Result<StagedFile, BackfillError> {
        let started = Instant::now();
        let entry = &self.snapshot.files[index as usize];
        let location = self.snapshot.location(entry);
        let label = entry.path.display().to_string();
        let (tx, mut rx) =
            tokio::sync::mpsc::channel::<Result<Converted, BackfillError>>(CHUNKS_IN_FLIGHT);
        let (conv, format, label_for_reader) = (converter.clone(), entry.format, label.clone());
        let origins = self.views.is_some();
        let reader = tokio::task::spawn_blocking(move || {
            let mut each = |chunk| {
                let converted = conv.convert(index, &label_for_reader, chunk)?;
                tx.blocking_send(Ok(converted))
                    .map_err(|_| BackfillError::Stopped)
            };
            if let Err(e) = read_chunks(&conv.table, &location, format, origins, &mut each) {
                let _ = tx.blocking_send(Err(e));
            }
        });
        let mut file = StagedFile {
            index,
            parts: Vec::new(),
            rows: 0,
            quarantined: 0,
            bytes_read: 0,
        };
        while let Some(converted) = rx.recv().await {
            let converted = converted?;
            let uploads: Vec<_> = converted
                .parts
                .iter()
                .map(|p| put_until_stored(health, &self.storage, &p.record.path, p.bytes.clone()))
                .collect();
            let stored: Vec<Vec<String>> = futures::stream::iter(uploads)
                .buffered(UPLOADS_IN_FLIGHT)
                .collect()
                .await;
            for (mut part, replicas) in converted.parts.into_iter().zip(stored) {
                if self.storage.is_replicated() {
                    part.record.replicas = replicas;
                }
                file.parts.push(part.record);
            }
            self.failpoints.hit("backfill_after_upload");
            file.rows += converted.rows;
            file.quarantined += converted.quarantined;
            file.bytes_read += converted.bytes_read;
            progress.add(converted.bytes_read, converted.rows);
        }
        reader.await.map_err(|_| BackfillError::Stopped)?;
        self.coord
            .stage_backfill_file(lease, &file)
            .await
            .map_err(coord_err("staging a file's parts"))?;
        progress.file_done();
        if !progress.drawn() {
            tracing::info!(backfill = %self.plan.id, file = %label, index, rows = file.rows, quarantined = file.quarantined, parts = file.parts.len(), secs = started.elapsed().as_secs_f64(), "staged a file");
        }
        self.failpoints.hit("backfill_after_file");
        Ok(file)
    }

    /// Deletes the objects earlier runs of this backfill uploaded and never staged: their
    /// leases can never stage them now.
    async fn sweep(
        &self,
        lease: &BackfillLease,
        staged: &std::collections::BTreeMap<u32, StagedFile>,
    ) -> Result<usize, BackfillError> {
        let referenced: HashSet<&str> = staged
            .values()
            .flat_map(|f| f.parts.iter().map(|p| p.path.as_str()))
            .collect();
        let tables = self.config.tables_fed_by(&self.plan.topic);
        let deleted = delete_objects(&self.storage, &tables, &self.plan.id, |path, epoch| {
            epoch < lease.epoch && !referenced.contains(path)
        })
        .await?;
        if deleted > 0 {
            tracing::info!(backfill = %self.plan.id, deleted, "deleted objects an earlier run uploaded and never staged");
        }
        Ok(deleted)
    }

    /// The handoff; a reply that was lost is resolved by reading the backfill back.
    async fn hand_off(&self, lease: &BackfillLease) -> Result<(), BackfillError> {
        loop {
            match self.coord.hand_off(lease).await {
                Ok(()) => return Ok(()),
                Err(CoordError::Ambiguous { .. }) => {
                    tokio::time::sleep(AMBIGUOUS_RETRY).await;
                    let status = self
                        .coord
                        .read_backfill(&self.plan.id)
                        .await
                        .map_err(coord_err("reading the backfill after a lost reply"))?;
                    if status.is_some_and(|s| s.state.handed_off_at_ms.is_some()) {
                        return Ok(());
                    }
                }
                Err(e) => return Err(coord_err("handing the partitions over")(e)),
            }
        }
    }
}

/// Takes the backfill lease, waiting while another holds it for up to `patience`: as long as a
/// killed holder's session can outlive it.
pub(crate) async fn take_lease(
    coord: &dyn Coordinator,
    id: &str,
    holder: &str,
    patience: Duration,
) -> Result<BackfillLease, BackfillError> {
    let started = Instant::now();
    let mut told = false;
    loop {
        match coord.acquire_backfill_lease(id, holder).await {
            Err(CoordError::BackfillHeld { holder, .. }) if started.elapsed() < patience => {
                if !told {
                    tracing::info!(backfill = %id, holder = %holder, wait_ms = patience.as_millis() as u64, "the backfill is held by another process; waiting for it to end or for its session to expire");
                    told = true;
                }
                tokio::time::sleep(LEASE_RETRY).await;
            }
            other => return other.map_err(coord_err("taking the backfill lease")),
        }
    }
}

/// Deletes the objects of backfill `id` under the tables' directories for which `doomed(path,
/// epoch)` holds; returns how many.
pub(crate) async fn delete_objects(
    storage: &Storage,
    tables: &[&sluice_config::TableConfig],
    id: &str,
    doomed: impl Fn(&str, u64) -> bool,
) -> Result<usize, BackfillError> {
    let mut deleted = 0;
    for table in tables {
        for dir in ["data", "quarantine"] {
            let prefix = format!("{}/{dir}/", table.name);
            let listed = storage
                .list(&prefix)
                .await
                .map_err(|source| BackfillError::Storage {
                    path: prefix.clone(),
                    source: Box::new(source),
                })?;
            for object in listed {
                let ours = parse_backfill_name(&object.path)
                    .is_some_and(|(of, epoch)| of == id && doomed(&object.path, epoch));
                if ours {
                    storage.delete(&object.path).await.map_err(|source| {
                        BackfillError::Storage {
                            path: object.path.clone(),
                            source: Box::new(source),
                        }
                    })?;
                    deleted += 1;
                }
            }
        }
    }
    Ok(deleted)
}
