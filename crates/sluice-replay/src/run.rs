//! A replay run: resolve the range, take the merge leases of what it meets and widen it, check
//! the topic still holds it, rebuild it, then swap the new records in for the old in one change.
//! Nothing before the swap is visible; a run that fails deletes what it uploaded.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::StreamExt;
use sluice_config::{Config, TableConfig};
use sluice_coord::{
    CoordError, Coordinator, MergeLease, OffsetSpan, PartKind, PartRecord, ReplayGeneration,
    Resealed, ViewRegistry,
};
use sluice_sink::{EncodedPart, Storage};
use sluice_source::Source;
use sluice_transform::Views;
use sluice_worker::{put_until_stored, Failpoints, Health};

use crate::range::Ranges;
use crate::rebuild::{Chunk, Rebuilder};
use crate::scan::{release_all, Scan, Scanner, ScopeKey, SealedTouch};
use crate::{asked_range, coord_err, now_ms, ReplayError};

/// Uploads in flight per chunk.
const UPLOADS_IN_FLIGHT: usize = 8;

/// Everything a run works with.
pub struct Run {
    pub config: Arc<Config>,
    pub table: String,
    /// Source timestamps (ms since the epoch): from, inclusive, to, exclusive (`None`: up to
    /// what was committed when the run started).
    pub from_ms: i64,
    pub to_ms: Option<i64>,
    pub id: String,
    /// How long the old generation is kept for a rollback.
    pub keep_ms: i64,
    pub coord: Arc<dyn Coordinator>,
    pub storage: Storage,
    pub source: Arc<dyn Source>,
    pub views: Option<Arc<Views>>,
    pub failpoints: Failpoints,
    /// Names this process in the merge leases it takes.
    pub holder: String,
    /// How long a merge lease held by a worker is waited for.
    pub lease_wait: Duration,
}

/// What a run swapped in.
#[derive(Debug)]
pub struct Report {
    pub generation: ReplayGeneration,
    /// The range asked for, before widening.
    pub asked: Ranges,
    /// Rows of the replayed table (views' not counted), before and after; quarantined events.
    pub old_rows: u64,
    pub new_rows: u64,
    pub quarantined: u64,
    pub elapsed: Duration,
}

impl Run {
    pub async fn run(self) -> Result<Report, ReplayError> {
        let started = Instant::now();
        if !sluice_coord::valid_replay_id(&self.id) {
            return Err(self.refused(format!(
                "`{}` cannot name a replay: use 1 to 64 letters, digits, `-` and `_`",
                self.id
            )));
        }
        let table = self.table_config()?;
        let topic = table.topic.clone().ok_or_else(|| {
            self.refused("it reads no topic (a view's target is replayed with its source)".into())
        })?;
        if self
            .coord
            .read_replay(&self.id)
            .await
            .map_err(coord_err("reading the replays"))?
            .is_some()
        {
            return Err(self.refused(format!(
                "a replay `{}` is recorded already; give this one another --id",
                self.id
            )));
        }
        let registry = sluice_worker::ensure_view_registry(&*self.coord, &self.config)
            .await
            .map_err(coord_err("reading the view registry"))?;
        let tables = self.tables(&registry)?;
        let (asked, _) = asked_range(
            &self.config.kafka,
            &*self.coord,
            &topic,
            self.from_ms,
            self.to_ms,
        )
        .await?;
        if asked.is_empty() {
            return Err(ReplayError::Nothing {
                table: self.table.clone(),
            });
        }
        let mut leases = BTreeMap::new();
        let outcome = self
            .with_leases(&table, &topic, &tables, &registry, &asked, &mut leases)
            .await;
        release_all(&*self.coord, &leases).await;
        let (generation, quarantined) = outcome?;
        let rows = |records: &[PartRecord]| -> u64 {
            records
                .iter()
                .filter(|r| r.table == self.table && r.kind == PartKind::Data)
                .map(|r| r.rows)
                .sum()
        };
        Ok(Report {
            old_rows: rows(&generation.old),
            new_rows: rows(&generation.new),
            quarantined,
            asked,
            generation,
            elapsed: started.elapsed(),
        })
    }

    fn refused(&self, problem: String) -> ReplayError {
        ReplayError::Plan {
            table: self.table.clone(),
            problem,
        }
    }

    fn table_config(&self) -> Result<Arc<TableConfig>, ReplayError> {
        self.config
            .table(&self.table)
            .map(|t| Arc::new(t.clone()))
            .ok_or_else(|| self.refused("the configuration has no such table".into()))
    }

    /// The replayed table, then the targets of the live views it feeds (and theirs). Refused
    /// while such a view's history is pending, or when this configuration lacks one.
    fn tables(&self, registry: &ViewRegistry) -> Result<Vec<String>, ReplayError> {
        let mut tables = vec![self.table.clone()];
        let mut i = 0;
        while i < tables.len() {
            let source = tables[i].clone();
            for view in registry.views.iter().filter(|v| v.source == source) {
                if !registry.applied(&view.name) {
                    continue;
                }
                if registry.history_pending(&view.name) {
                    return Err(self.refused(format!("the history of view `{}` is still being computed; replay once `sluice views` says it is done", view.name)));
                }
                if !self.config.views.iter().any(|v| v.name == view.name) {
                    return Err(self.refused(format!("view `{}` is live in the fleet but not in this configuration: run the replay with the configuration the workers run", view.name)));
                }
                if !tables.contains(&view.target) {
                    tables.push(view.target.clone());
                }
            }
            i += 1;
        }
        Ok(tables)
    }

    async fn with_leases(
        &self,
        table: &Arc<TableConfig>,
        topic: &str,
        tables: &[String],
        registry: &ViewRegistry,
        asked: &Ranges,
        leases: &mut BTreeMap<ScopeKey, MergeLease>,
    ) -> Result<(ReplayGeneration, u64), ReplayError> {
        let scanner = Scanner {
            coord: &*self.coord,
            storage: &self.storage,
            holder: &self.holder,
            tables,
            topic,
            lease_wait: self.lease_wait,
        };
        let scan = scanner.scan(asked, leases).await?;
        let widened = &scan.widened;
        self.check_retained(topic, &widened.ranges).await?;
        let spans: Vec<OffsetSpan> = widened
            .ranges
            .iter()
            .map(|(&partition, &(first_offset, last_offset))| OffsetSpan {
                topic: topic.to_string(),
                partition,
                first_offset,
                last_offset,
            })
            .collect();
        let rebuilder = Rebuilder {
            table: Arc::clone(table),
            views: self.views.clone(),
            live: registry
                .views
                .iter()
                .filter(|v| registry.applied(&v.name))
                .map(|v| v.name.clone())
                .collect(),
            id: self.id.clone(),
            run: now_ms(),
            topic: topic.to_string(),
            runtime: tokio::runtime::Handle::current(),
        };
        let mut uploaded = Vec::new();
        let outcome = self
            .rebuild_and_swap(
                &rebuilder,
                &scanner,
                &scan,
                spans,
                registry,
                leases,
                &mut uploaded,
            )
            .await;
        if let Err(e) = &outcome {
            self.clean_up(e, &uploaded).await;
        }
        outcome
    }

    /// Refuses a range the topic no longer holds in full.
    async fn check_retained(&self, topic: &str, ranges: &Ranges) -> Result<(), ReplayError> {
        let partitions: Vec<i32> = ranges.keys().copied().collect();
        let marks = self
            .source
            .watermarks(topic, &partitions)
            .await
            .map_err(|source| ReplayError::Source {
                what: "reading the topic's watermarks".into(),
                source,
            })?;
        for (&p, &(first, _)) in ranges {
            let low = marks.get(&p).map_or(0, |&(low, _)| low);
            if first < low {
                return Err(ReplayError::Retention {
                    topic: topic.to_string(),
                    partition: p,
                    first,
                    low,
                });
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn rebuild_and_swap(
        &self,
        rebuilder: &Rebuilder,
        scanner: &Scanner<'_>,
        scan: &Scan,
        spans: Vec<OffsetSpan>,
        registry: &ViewRegistry,
        leases: &mut BTreeMap<ScopeKey, MergeLease>,
        uploaded: &mut Vec<String>,
    ) -> Result<(ReplayGeneration, u64), ReplayError> {
        let widened = &scan.widened;
        let health = Health::new();
        let mut new = Vec::new();
        let mut quarantined = 0;
        for (&partition, &range) in &widened.ranges {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Chunk>(1);
            let read = async move {
                let outcome = rebuilder.read(&*self.source, partition, range, &tx).await;
                drop(tx);
                outcome
            };
            let consume = async {
                while let Some(chunk) = rx.recv().await {
                    quarantined += chunk.drained.quarantine.len() as u64;
                    let parts = self.convert(rebuilder, chunk).await?;
                    for part in self.upload(&health, parts, uploaded).await {
                        new.push(part);
                    }
                    self.failpoints.hit("replay_after_upload");
                }
                Ok::<(), ReplayError>(())
            };
            let (read, consumed) = tokio::join!(read, consume);
            consumed?;
            read?;
            tracing::info!(replay = %self.id, partition, first = range.0, last = range.1, "rebuilt a partition's range");
        }
        // Scopes the rebuilt rows land in that held none of the old ones are leased too, so the
        // swap fences every scope it writes to.
        for r in &new {
            let key = (r.table.clone(), r.partition_value.clone());
            if let std::collections::btree_map::Entry::Vacant(slot) = leases.entry(key) {
                let (table, value) = slot.key();
                let lease = scanner.take(table, value).await?;
                slot.insert(lease);
            }
        }
        let resealed = self.reseal(&scan.sealed, leases, uploaded).await?;
        self.failpoints.hit("replay_before_swap");
        let now = now_ms();
        let generation = ReplayGeneration {
            id: self.id.clone(),
            table: self.table.clone(),
            from_ms: self.from_ms,
            to_ms: self.to_ms,
            ranges: spans,
            swapped_at_ms: now,
            keep_until_ms: now.saturating_add(self.keep_ms),
            old: widened.touched.clone(),
            new,
            old_sealed: scan.sealed.iter().flat_map(|s| s.touched.clone()).collect(),
            resealed,
        };
        let held: Vec<MergeLease> = leases.values().cloned().collect();
        self.swap(&held, registry.version, &generation).await?;
        Ok((generation, quarantined))
    }

    /// Per sealed scope the range meets, a manifest of the parts it keeps (none if it keeps
    /// none), written under the scope's merge lease.
    async fn reseal(
        &self,
        sealed: &[SealedTouch],
        leases: &BTreeMap<ScopeKey, MergeLease>,
        uploaded: &mut Vec<String>,
    ) -> Result<Vec<Resealed>, ReplayError> {
        let mut out = Vec::new();
        for s in sealed {
            let kept: Vec<PartRecord> = s
                .parts
                .iter()
                .filter(|p| {
                    !s.touched
                        .iter()
                        .any(|t| t.path == p.path && t.kind == p.kind)
                })
                .cloned()
                .collect();
            let epoch = leases.get(&s.scope).map_or(0, |l| l.epoch);
            let manifest = if kept.is_empty() {
                None
            } else {
                let (table, value) = &s.scope;
                let written = sluice_sink::write_manifest(
                    &self.storage,
                    table,
                    value,
                    epoch,
                    &kept,
                    now_ms(),
                )
                .await
                .map_err(|e| ReplayError::Storage {
                    path: format!("{table}/manifests/{value}"),
                    source: Box::new(e),
                })?;
                uploaded.push(written.path.clone());
                Some(written)
            };
            out.push(Resealed {
                table: s.scope.0.clone(),
                partition_value: s.scope.1.clone(),
                replaced: s.manifest.clone(),
                manifest,
            });
        }
        Ok(out)
    }

    async fn convert(
        &self,
        rebuilder: &Rebuilder,
        chunk: Chunk,
    ) -> Result<Vec<EncodedPart>, ReplayError> {
        let r = rebuilder.clone();
        tokio::task::spawn_blocking(move || r.convert(&chunk))
            .await
            .map_err(|_| ReplayError::Plan {
                table: self.table.clone(),
                problem: "the conversion of a chunk stopped".into(),
            })?
    }

    /// Uploads parts, retrying until storage holds them; returns their records.
    async fn upload(
        &self,
        health: &Health,
        parts: Vec<EncodedPart>,
        uploaded: &mut Vec<String>,
    ) -> Vec<PartRecord> {
        uploaded.extend(parts.iter().map(|p| p.record.path.clone()));
        let stored: Vec<Vec<String>> = futures::stream::iter(
            parts
                .iter()
                .map(|p| put_until_stored(health, &self.storage, &p.record.path, p.bytes.clone())),
        )
        .buffered(UPLOADS_IN_FLIGHT)
        .collect()
        .await;
        parts
            .into_iter()
            .zip(stored)
            .map(|(mut p, replicas)| {
                if self.storage.is_replicated() {
                    p.record.replicas = replicas;
                }
                p.record
            })
            .collect()
    }

    /// The swap; a lost reply is resolved by reading the replay back.
    async fn swap(
        &self,
        leases: &[MergeLease],
        views_version: i64,
        generation: &ReplayGeneration,
    ) -> Result<(), ReplayError> {
        match self
            .coord
            .replace_range(leases, views_version, generation)
            .await
        {
            Ok(()) => Ok(()),
            Err(CoordError::Ambiguous { .. }) => match self.coord.read_replay(&self.id).await {
                Ok(Some(g)) if g.new == generation.new => Ok(()),
                Ok(_) => Err(ReplayError::Superseded {
                    id: self.id.clone(),
                    source: Box::new(CoordError::NoReplay {
                        id: self.id.clone(),
                    }),
                }),
                Err(e) => Err(ReplayError::Unknown {
                    id: self.id.clone(),
                    source: Box::new(e),
                }),
            },
            Err(e @ (CoordError::ScopeLeaseLost { .. } | CoordError::SessionEnded { .. })) => {
                Err(ReplayError::Superseded {
                    id: self.id.clone(),
                    source: Box::new(e),
                })
            }
            Err(e) => Err(coord_err("swapping the replay in")(e)),
        }
    }

    /// Deletes what a failed run uploaded, unless the swap's outcome is unknown (then the
    /// objects may be registered).
    async fn clean_up(&self, error: &ReplayError, uploaded: &[String]) {
        if matches!(error, ReplayError::Unknown { .. }) {
            return;
        }
        let mut left = 0;
        for path in uploaded {
            if let Err(e) = self.storage.delete(path).await {
                left += 1;
                tracing::debug!(path = %path, error = %e, "cannot delete an object of a failed replay");
            }
        }
        if left > 0 {
            tracing::warn!(replay = %self.id, objects = left, "cannot delete every object of the failed replay; `sluice gc` collects them (nothing references them)");
        }
    }
}
