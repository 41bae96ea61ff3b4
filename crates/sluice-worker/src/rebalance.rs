//! Membership and rebalancing: who is in the fleet, which partitions rendezvous hashing gives
//! this worker, handing over what is no longer ours and taking over what now is.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use sluice_config::{StartFrom, TableConfig};
use sluice_coord::{assignment, CoordError, Lease, Member, UnitId};
use sluice_sink::{collect_table_garbage, GcScope};
use sluice_telemetry::{metrics as m, Dependency};

use crate::retry::chain;
use crate::session::Session;
use crate::unit::OwnedUnit;
use crate::{kafka_ready, now_ms, WorkerError};

/// How often a partition a backfill claims is tried again, waiting for its handoff.
const HANDOFF_RECHECK: Duration = Duration::from_secs(2);
/// How long a takeover garbage collection that failed waits before it is tried again.
const GC_RETRY: Duration = Duration::from_secs(5);

pub(crate) type UnitSignal = Pin<Box<dyn Future<Output = UnitId> + Send>>;

/// This worker's view of the fleet.
#[derive(Debug)]
pub(crate) struct Fleet {
    pub(crate) me: Member,
    pub(crate) members: Vec<Member>,
    /// Every partition of every topic a table reads.
    pub(crate) universe: BTreeSet<UnitId>,
    /// Units assigned to this worker whose lease another worker still holds, since when, and
    /// whether that was reported.
    pub(crate) waiting: HashMap<UnitId, (Instant, bool)>,
    /// Units assigned to this worker that a backfill claims until its handoff: the backfill,
    /// and since when.
    pub(crate) claimed: BTreeMap<UnitId, (String, Instant)>,
}

impl Fleet {
    pub(crate) fn new(id: &str, weight: f64, address: Option<String>, views: Vec<String>) -> Fleet {
        Fleet {
            me: Member {
                id: id.to_string(),
                weight,
                address,
                host: crate::hostname(),
                pid: std::process::id(),
                joined_at_ms: now_ms(),
                views,
            },
            members: Vec::new(),
            universe: BTreeSet::new(),
            waiting: HashMap::new(),
            claimed: BTreeMap::new(),
        }
    }

    /// The units rendezvous hashing assigns to this worker.
    pub(crate) fn assigned(&self) -> impl Iterator<Item = &UnitId> {
        self.universe
            .iter()
            .filter(|u| assignment::owner(u, &self.members).is_some_and(|m| m.id == self.me.id))
    }

    /// Reports units this worker should own that someone else has held for too long: a warning
    /// in a fleet, an error with `stop_at_end` (nothing else would end the run). With
    /// `stop_at_end`, a unit a backfill has claimed for as long is an error too.
    pub(crate) fn check_waiting(
        &mut self,
        lease_wait_ms: u64,
        stop_at_end: bool,
    ) -> Result<(), WorkerError> {
        let limit = Duration::from_millis(lease_wait_ms);
        if stop_at_end {
            let overdue = self
                .claimed
                .iter()
                .find(|(_, (_, since))| since.elapsed() >= limit);
            if let Some((unit, (backfill, _))) = overdue {
                return Err(WorkerError::ClaimedByBackfill {
                    unit: unit.clone(),
                    backfill: backfill.clone(),
                });
            }
        }
        for (unit, (since, reported)) in self.waiting.iter_mut() {
            if *reported || since.elapsed() < limit {
                continue;
            }
            if stop_at_end {
                return Err(WorkerError::LeaseWait {
                    unit: unit.clone(),
                    waited: since.elapsed(),
                });
            }
            tracing::warn!(unit = %unit, waited_ms = since.elapsed().as_millis() as u64, "a partition assigned to this worker is still leased by another; is a worker with a stale view of the fleet stuck?");
            *reported = true;
        }
        Ok(())
    }
}

impl Session<'_> {
    /// Registers as a member. A member of the same id from an earlier session (this worker
    /// before a crash) blocks it until that session expires.
    pub(crate) async fn join(&mut self) -> Result<(), WorkerError> {
        let started = Instant::now();
        let wait = Duration::from_millis(self.config.worker.lease_wait_ms);
        let mut logged = false;
        loop {
            let (_, changed) = self.coord.watch_members().await?;
            match self.coord.join(&self.fleet.me).await {
                Ok(()) => {
                    tracing::info!(worker = %self.fleet.me.id, weight = self.fleet.me.weight, "joined the fleet");
                    return Ok(());
                }
                Err(CoordError::MemberExists { id }) => {
                    let left = wait.saturating_sub(started.elapsed());
                    if left.is_zero() {
                        return Err(CoordError::MemberExists { id }.into());
                    }
                    if !logged {
                        tracing::info!(worker = %id, "a member with this id is still registered (an earlier run whose session has not expired?); waiting for it to go");
                        logged = true;
                    }
                    let _ = tokio::time::timeout(left, changed).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A periodic refresh of the partitions failed: ingestion goes on with the partitions
    /// known so far, and Kafka counts as unavailable (refusing: needing an operator) until a
    /// refresh succeeds.
    pub(crate) fn kafka_failed(&self, e: &WorkerError) {
        let operator = matches!(e, WorkerError::Source(s) if kafka_ready::needs_operator(s));
        let failures = self
            .ingest
            .ctx()
            .health
            .failed(Dependency::Kafka, &chain(e), operator);
        tracing::warn!(error = %chain(e), failures, "cannot re-read the topics' partitions; ingesting the ones known, trying again at the next refresh");
    }

    /// Re-reads the topics' partitions; true if the set of units changed.
    pub(crate) async fn refresh_universe(&mut self) -> Result<bool, WorkerError> {
        let mut universe = BTreeSet::new();
        for topic in self.tables_by_topic.keys() {
            let partitions = self.services.source.partitions(topic).await?;
            universe.extend(
                partitions
                    .into_iter()
                    .map(|p| UnitId::new(topic.clone(), p)),
            );
        }
        if universe == self.fleet.universe {
            return Ok(false);
        }
        if !self.fleet.universe.is_empty() {
            let added: Vec<String> = universe
                .difference(&self.fleet.universe)
                .map(ToString::to_string)
                .collect();
            tracing::info!(?added, "partitions added to the topics");
        }
        if let Some(ends) = &mut self.ends {
            ends.learn(&*self.services.source, &universe).await?;
        }
        // Partitions are never removed from a Kafka topic; keep what we knew if a broker
        // answered with less.
        self.fleet.universe.extend(universe);
        Ok(true)
    }

    /// Hands over what is no longer ours, takes what now is, and restarts the reader if the
    /// owned set changed. Returns signals for the leases still to wait for.
    pub(crate) async fn rebalance(&mut self) -> Result<FuturesUnordered<UnitSignal>, WorkerError> {
        metrics::counter!(m::REBALANCES).increment(1);
        let desired: BTreeSet<UnitId> = self.fleet.assigned().cloned().collect();
        let mut changed = self.hand_over_all_but(&desired).await?;
        let (acquired, signals) = self.acquire(&desired).await?;
        if !acquired.is_empty() {
            self.take_over(acquired).await?;
            changed = true;
        }
        if changed {
            self.restart_reader().await?;
            tracing::info!(
                members = self.fleet.members.len(),
                owned = self.ingest.owned.len(),
                waiting = self.fleet.waiting.len(),
                units = self.fleet.universe.len(),
                "rebalanced"
            );
        }
        self.report(true);
        Ok(signals)
    }

    /// Gives up every owned unit not in `desired` (and takes back those given up that are
    /// desired again): each is read no more and flushes what it buffered; its lease is released
    /// once that has committed ([`Session::release_left`]), so the next owner resumes exactly
    /// there. Never waits for storage. True if the set of units read changed.
    async fn hand_over_all_but(&mut self, desired: &BTreeSet<UnitId>) -> Result<bool, WorkerError> {
        let mut changed = false;
        for i in 0..self.ingest.owned.len() {
            let wanted = desired.contains(&self.ingest.owned[i].id);
            if wanted == self.ingest.owned[i].leaving {
                if wanted {
                    tracing::info!(unit = %self.ingest.owned[i].id, "assigned here again before it was handed over; reading it on");
                    self.ingest.keep(i);
                } else {
                    tracing::info!(unit = %self.ingest.owned[i].id, "handing over: flushing what is buffered, then releasing the lease");
                    self.ingest.give_up(i)?;
                }
                changed = true;
            }
        }
        self.release_left().await?;
        Ok(changed)
    }

    /// Releases the leases of the units given up whose last flush has committed. Returns
    /// whether one of them is assigned here again (a rebalance then takes it back).
    pub(crate) async fn release_left(&mut self) -> Result<bool, WorkerError> {
        let mut again = false;
        for unit in self.ingest.take_left() {
            // A lease left held would block its new owner for as long as this session lives:
            // failing here ends the session (and so the lease), and the worker rejoins.
            self.coord.release_lease(&unit.lease).await?;
            metrics::counter!(m::HANDOVERS).increment(1);
            tracing::info!(unit = %unit.id, epoch = unit.lease.epoch, committed = ?unit.position, "handed over");
            again |= self.fleet.assigned().any(|u| *u == unit.id);
        }
        Ok(again)
    }

    /// Takes the leases of the desired units not held yet; for those another worker still
    /// holds, returns a signal for when that lease changes.
    async fn acquire(
        &mut self,
        desired: &BTreeSet<UnitId>,
    ) -> Result<(Vec<Lease>, FuturesUnordered<UnitSignal>), WorkerError> {
        let signals = FuturesUnordered::new();
        let held: BTreeSet<UnitId> = self.ingest.owned.iter().map(|u| u.id.clone()).collect();
        let mut acquired = Vec::new();
        self.fleet
            .waiting
            .retain(|u, _| desired.contains(u) && !held.contains(u));
        for unit in desired.difference(&held) {
            match self.coord.acquire_lease(unit, &self.fleet.me.id).await {
                Ok(lease) => {
                    self.fleet.waiting.remove(unit);
                    acquired.push(lease);
                }
                Err(CoordError::LeaseHeld { holder, .. }) => {
                    let (now_holder, signal) = self.coord.watch_lease(unit).await?;
                    if self
                        .fleet
                        .waiting
                        .insert(unit.clone(), (Instant::now(), false))
                        .is_none()
                    {
                        tracing::info!(unit = %unit, holder = %holder, "waiting for the previous owner to hand the partition over (or for its session to expire)");
                    }
                    let unit = unit.clone();
                    signals.push(Box::pin(async move {
                        // Released between the attempt and the watch: look again at once.
                        if now_holder.is_some() {
                            signal.await;
                        }
                        unit
                    }) as UnitSignal);
                }
                Err(CoordError::HandoffPending { backfill, .. }) => {
                    if !self.fleet.claimed.contains_key(unit) {
                        tracing::info!(unit = %unit, backfill = %backfill, "the partition is claimed by a backfill; consuming it once the backfill hands it over");
                        let since = (backfill, Instant::now());
                        self.fleet.claimed.insert(unit.clone(), since);
                    }
                    // The handoff deletes the claim without a watch to tell: look again soon.
                    let unit = unit.clone();
                    signals.push(Box::pin(async move {
                        tokio::time::sleep(HANDOFF_RECHECK).await;
                        unit
                    }) as UnitSignal);
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.fleet
            .claimed
            .retain(|u, _| desired.contains(u) && !acquired.iter().any(|l| l.unit == *u));
        Ok((acquired, signals))
    }

    /// Sets up freshly leased units: committed offsets, garbage of earlier leases, where to
    /// start, and with `stop_at_end` where to stop.
    async fn take_over(&mut self, leases: Vec<Lease>) -> Result<(), WorkerError> {
        let mut epochs = HashMap::new();
        let mut new_units = Vec::with_capacity(leases.len());
        for lease in leases {
            let position = self.coord.committed_offset(&lease.unit).await?;
            tracing::info!(unit = %lease.unit, epoch = lease.epoch, committed = ?position, "lease acquired");
            epochs.insert(lease.unit.clone(), lease.epoch);
            let tables = &self.tables_by_topic[&lease.unit.topic];
            let views = self.ingest.ctx().views.as_deref();
            new_units.push(OwnedUnit::new(lease, tables, position, views));
        }
        self.pending_gc.extend(epochs);
        self.collect_pending_garbage().await;
        if let Some(ends) = &self.ends {
            for u in &mut new_units {
                if let Some((low, high)) = ends.of(&u.id) {
                    u.end = Some(high);
                    // An empty or fully-deleted partition has nothing to reach.
                    if u.position.is_none() && high <= low {
                        u.position = Some(high);
                    }
                }
            }
        }
        self.resolve_fresh_starts(&mut new_units).await?;
        self.skip_retention_gaps(&mut new_units).await?;
        self.ingest.owned.extend(new_units);
        self.ingest.reindex();
        Ok(())
    }

    /// Objects uploaded under earlier leases of the units taken over (in `pending_gc`) and never
    /// committed can go now: those leases can no longer commit. The current lease's objects are
    /// never touched. A unit's flushes write the tables reading its topic and their views'
    /// targets. If storage or the registry cannot answer now, the units stay pending and the
    /// next tick tries again: garbage waits, ingestion does not.
    pub(crate) async fn collect_pending_garbage(&mut self) {
        if self.pending_gc.is_empty() || Instant::now() < self.next_gc_attempt {
            return;
        }
        match self.collect_earlier_leases_garbage().await {
            Ok(()) => self.pending_gc.clear(),
            Err(e) => {
                self.next_gc_attempt = Instant::now() + GC_RETRY;
                tracing::warn!(error = &e as &dyn std::error::Error, retry_in_s = GC_RETRY.as_secs(), "cannot collect the uncommitted objects of earlier leases now (ingestion goes on; they are collected once storage answers)");
            }
        }
    }

    async fn collect_earlier_leases_garbage(&mut self) -> Result<(), WorkerError> {
        let mut tables: Vec<&TableConfig> = Vec::new();
        for topic in self.pending_gc.keys().map(|u| u.topic.as_str()) {
            for t in self.config.tables_fed_by(topic) {
                if !tables.iter().any(|k| k.name == t.name) {
                    tables.push(t);
                }
            }
        }
        for table in tables {
            let report = collect_table_garbage(
                &self.services.storage,
                &*self.coord,
                &table.name,
                GcScope::EarlierLeases(&self.pending_gc),
            )
            .await?;
            tracing::info!(
                table = %table.name,
                deleted = report.deleted.len(),
                sealed_scopes_skipped = report.sealed_scopes,
                "takeover garbage collection: uncommitted objects of earlier leases deleted; sealed scopes are not read (sluice gc covers them)"
            );
            self.garbage_collected += report.deleted.len();
        }
        Ok(())
    }

    /// Partitions never committed start at an offset resolved here from the watermarks, one
    /// request per topic (`kafka.start_from`).
    async fn resolve_fresh_starts(&mut self, units: &mut [OwnedUnit]) -> Result<(), WorkerError> {
        let fresh = units
            .iter()
            .filter(|u| u.position.is_none())
            .map(|u| (u.id.topic.clone(), u.id.partition));
        let marks = sluice_source::watermarks_of(&*self.services.source, fresh).await?;
        for u in units.iter_mut().filter(|u| u.position.is_none()) {
            let (low, high) = *marks
                .get(&(u.id.topic.clone(), u.id.partition))
                .ok_or_else(|| WorkerError::NoWatermarks { unit: u.id.clone() })?;
            u.position = Some(match self.config.kafka.start_from {
                StartFrom::Earliest => low,
                StartFrom::Latest => high,
            });
            tracing::info!(unit = %u.id, start = ?u.position, from = ?self.config.kafka.start_from, "nothing committed yet; starting from the topic's watermark");
        }
        Ok(())
    }
}
