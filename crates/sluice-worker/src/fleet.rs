//! One coordination session of a worker: join the fleet, own the partitions rendezvous hashing
//! gives it, consume them, and hand them over when the membership changes.
//!
//! The loop waits on six things at once: the session ending (stop everything at once: the
//! leases are gone), shutdown (leave, drain, release), a membership change (rebalance), a lease
//! this worker waits for changing (rebalance), a batch from Kafka (decode, flush when due), and a
//! tick (age flushes, partition discovery, progress checks).
//!
//! Handover keeps exactly-once without any coordination between the two workers: the old owner
//! flushes, commits and only then releases the lease; the new owner can only take the lease
//! after that (or after the old session expired, when whatever it had not committed is simply
//! re-read from the committed offset) and resumes from the committed offset.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use sluice_config::{Config, StartFrom, TableConfig};
use sluice_coord::{assignment, CoordError, Coordinator, Member, UnitId};
use sluice_sink::{collect_table_garbage, GcScope, Storage};
use sluice_source::{Assignment, KafkaProbe, KafkaSource, SourceBatch, StartOffset};
use sluice_telemetry::{metrics as m, Readiness, Telemetry};
use tokio::task::JoinError;

use crate::unit::{Committed, FlushContext, FlushTasks, OwnedUnit};
use crate::{RunOptions, RunSummary, WorkerError};
use sluice_transform::Views;

/// Batches in flight between the Kafka poll thread and the loop.
const SOURCE_CHANNEL_BATCHES: usize = 8;
/// Flushes in flight at once (each sorting, encoding, uploading or waiting to commit), per core
/// (at least two); more wait. Their data also counts against the memory budget until committed,
/// and each encode holds transient copies and a compressor beyond it: more at once than cores
/// add memory, not throughput.
fn max_flushes_in_flight() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

type UnitSignal = Pin<Box<dyn Future<Output = UnitId> + Send>>;

pub(crate) struct Session<'a> {
    config: &'a Config,
    coord: Arc<dyn Coordinator>,
    storage: &'a Storage,
    options: &'a RunOptions,
    /// What flush tasks share: coordinator, storage, failpoints.
    flush_ctx: FlushContext,
    /// The flushes in flight; dropping the session aborts them.
    flushes: FlushTasks,
    max_flushes: usize,
    summary: &'a mut RunSummary,
    me: Member,
    tables_by_topic: HashMap<String, Vec<Arc<TableConfig>>>,
    /// Every partition of every topic a table reads.
    universe: BTreeSet<UnitId>,
    members: Vec<Member>,
    owned: Vec<OwnedUnit>,
    /// Units assigned to this worker whose lease another worker still holds, since when, and
    /// whether that was reported.
    waiting: HashMap<UnitId, (Instant, bool)>,
    source: Option<KafkaSource>,
    /// (topic as the source hands it over, partition) to the index in `owned`.
    index: HashMap<(Arc<str>, i32), usize>,
    /// Running total of `owned` buffer bytes, so the budget is checked after every message.
    buffered_bytes: u64,
    /// What the flushes in flight are counted for against the budget (see `unit::InFlight`).
    in_flight_bytes: u64,
    /// The unit the last message went to, tried first for the next (messages come in runs).
    last_unit: Option<(Arc<str>, i32, usize)>,
    /// The session's client for metadata and watermarks, made on first use.
    probe: Option<Arc<KafkaProbe>>,
    /// With `stop_at_end`: each unit's (low, high) watermarks when this worker first saw it.
    ends: HashMap<UnitId, (i64, i64)>,
    /// With `stop_at_end`: when the other workers' progress was last read.
    last_fleet_check: Option<Instant>,
    /// Metrics, readiness and the dashboard's state, when the endpoint is enabled.
    telemetry: Option<Arc<Telemetry>>,
}

impl<'a> Session<'a> {
    pub(crate) fn new(
        config: &'a Config,
        coord: Arc<dyn Coordinator>,
        storage: &'a Storage,
        views: &Arc<Views>,
        options: &'a RunOptions,
        summary: &'a mut RunSummary,
        telemetry: Option<Arc<Telemetry>>,
    ) -> Self {
        let mut tables_by_topic: HashMap<String, Vec<Arc<TableConfig>>> = HashMap::new();
        for t in &config.tables {
            if let Some(topic) = &t.topic {
                tables_by_topic
                    .entry(topic.clone())
                    .or_default()
                    .push(Arc::new(t.clone()));
            }
        }
        let host = crate::hostname();
        let me = Member {
            id: options.worker_id.clone(),
            weight: config.worker.weight,
            address: config
                .worker
                .address
                .clone()
                .or_else(|| telemetry.as_ref().and_then(|t| t.url())),
            host,
            pid: std::process::id(),
            joined_at_ms: chrono_now_ms(),
        };
        let flush_ctx = FlushContext {
            coord: Arc::clone(&coord),
            storage: storage.clone(),
            // Shared by every session: a failpoint's count runs across rejoins.
            failpoints: options.failpoints.clone(),
            views: (!views.is_empty()).then(|| Arc::clone(views)),
        };
        Session {
            config,
            coord,
            storage,
            options,
            flush_ctx,
            flushes: FlushTasks::new(),
            max_flushes: max_flushes_in_flight(),
            summary,
            me,
            tables_by_topic,
            universe: BTreeSet::new(),
            members: Vec::new(),
            owned: Vec::new(),
            waiting: HashMap::new(),
            source: None,
            index: HashMap::new(),
            buffered_bytes: 0,
            in_flight_bytes: 0,
            last_unit: None,
            probe: None,
            ends: HashMap::new(),
            last_fleet_check: None,
            telemetry,
        }
    }

    /// Refreshes readiness and the worker-level gauges.
    fn report(&self, session_up: bool) {
        if let Some(t) = &self.telemetry {
            let assigned = self
                .universe
                .iter()
                .filter(|u| assignment::owner(u, &self.members).is_some_and(|m| m.id == self.me.id))
                .count();
            t.update(
                Readiness {
                    session_up,
                    assigned,
                    owned: self.owned.len(),
                    waiting: self.waiting.len(),
                },
                self.buffered_bytes + self.in_flight_bytes,
            );
            t.set_totals(self.summary.events, self.summary.quarantined);
            t.set_oldest_buffered(
                self.owned
                    .iter()
                    .filter_map(|u| Some((u.id.clone(), u.oldest_uncommitted()?)))
                    .collect(),
            );
        }
    }

    /// Runs until shutdown (`Ok` after draining), until `stop_at_end` is satisfied (`Ok`), or
    /// until an error; [`WorkerError::calls_for_rejoin`] errors mean: rejoin with a new session.
    pub(crate) async fn run(
        mut self,
        shutdown: &mut Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Result<(), WorkerError> {
        let result = self.run_inner(shutdown).await;
        if let Some(source) = self.source.take() {
            source.stop().await;
        }
        result
    }

    async fn run_inner(
        &mut self,
        shutdown: &mut Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Result<(), WorkerError> {
        let mut session_ended = self.coord.session_ended();
        // Joining may wait for this id's previous session to expire; a shutdown meanwhile ends
        // the run at once (nothing is owned yet).
        tokio::select! {
            biased;
            () = &mut *shutdown => {
                tracing::info!("shutdown requested before joining the fleet");
                return Ok(());
            }
            joined = self.join() => joined?,
        }
        if let Some(t) = &self.telemetry {
            t.set_coordinator(Some(Arc::clone(&self.coord)));
        }
        self.refresh_universe().await?;
        let (members, mut members_changed) = self.coord.watch_members().await?;
        self.members = members;
        let mut lease_changed = self.rebalance().await?;

        let mut tick = tokio::time::interval(Duration::from_millis(
            self.config.worker.flush_check_interval_ms,
        ));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let refresh_every = Duration::from_millis(self.config.kafka.metadata_refresh_ms);
        let mut next_refresh = Instant::now() + refresh_every;

        loop {
            if self.options.stop_at_end && self.at_end(false).await? {
                tracing::info!("every partition is committed up to its end; stopping");
                self.leave_and_drain().await;
                return Ok(());
            }
            tokio::select! {
                biased;
                () = &mut session_ended => {
                    self.report(false);
                    tracing::error!(worker = %self.me.id, owned = self.owned.len(), "coordination session ended; stopped fetching and committing, buffered events are left to the next owners");
                    return Err(WorkerError::SessionLost);
                }
                () = &mut *shutdown => {
                    tracing::info!("shutdown requested; draining: leaving the fleet, committing, releasing leases");
                    self.leave_and_drain().await;
                    return Ok(());
                }
                () = &mut members_changed => {
                    let (members, signal) = self.coord.watch_members().await?;
                    members_changed = signal;
                    if self.options.stop_at_end && self.at_end(true).await? {
                        tracing::info!("every partition is committed up to its end; stopping");
                        self.leave_and_drain().await;
                        return Ok(());
                    }
                    if members != self.members {
                        tracing::info!(members = ?members.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), "membership changed");
                        self.members = members;
                        lease_changed = self.rebalance().await?;
                    }
                }
                Some(_unit) = lease_changed.next() => {
                    lease_changed = self.rebalance().await?;
                }
                Some(done) = self.flushes.join_next(), if !self.flushes.is_empty() => {
                    self.complete(done)?;
                }
                batch = next_batch(&mut self.source) => {
                    let batch = batch.ok_or(WorkerError::SourceStopped)??;
                    self.consume(&batch).await?;
                }
                _ = tick.tick() => {
                    self.flush_aged().await?;
                    self.check_waiting()?;
                    self.report(true);
                    if Instant::now() >= next_refresh {
                        next_refresh = Instant::now() + refresh_every;
                        // A broker hiccup here must not stop ingestion: the partitions known
                        // so far stay valid, and the next refresh tries again.
                        match self.refresh_universe().await {
                            Ok(true) => lease_changed = self.rebalance().await?,
                            Ok(false) => {}
                            Err(e) => tracing::warn!(error = %e, "cannot re-read the topics' partitions; trying again at the next refresh"),
                        }
                    }
                }
            }
        }
    }

    /// Registers as a member. A member of the same id from an earlier session (this worker
    /// before a crash) blocks it until that session expires.
    async fn join(&mut self) -> Result<(), WorkerError> {
        let started = Instant::now();
        let wait = Duration::from_millis(self.config.worker.lease_wait_ms);
        let mut logged = false;
        loop {
            let (_, changed) = self.coord.watch_members().await?;
            match self.coord.join(&self.me).await {
                Ok(()) => {
                    tracing::info!(worker = %self.me.id, weight = self.me.weight, "joined the fleet");
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

    /// Asks Kafka something on a blocking thread, through the session's one metadata client
    /// (a new client per question would cost connections and round trips each time).
    async fn ask_kafka<T: Send + 'static>(
        &mut self,
        question: impl FnOnce(&KafkaProbe) -> Result<T, sluice_source::SourceError> + Send + 'static,
    ) -> Result<T, WorkerError> {
        let probe = match &self.probe {
            Some(p) => Arc::clone(p),
            None => {
                let p = Arc::new(KafkaProbe::new(&self.config.kafka)?);
                self.probe = Some(Arc::clone(&p));
                p
            }
        };
        Ok(tokio::task::spawn_blocking(move || question(&probe))
            .await
            .map_err(|e| WorkerError::Task(e.to_string()))??)
    }

    /// (low, high) watermarks of the given units, one request per topic.
    async fn watermarks(
        &mut self,
        units: impl Iterator<Item = &UnitId>,
    ) -> Result<HashMap<UnitId, (i64, i64)>, WorkerError> {
        let mut by_topic: HashMap<String, Vec<i32>> = HashMap::new();
        for u in units {
            by_topic
                .entry(u.topic.clone())
                .or_default()
                .push(u.partition);
        }
        let mut marks = HashMap::new();
        for (topic, ids) in by_topic {
            let t = topic.clone();
            let answer = self.ask_kafka(move |k| k.watermarks(&t, &ids)).await?;
            marks.extend(
                answer
                    .into_iter()
                    .map(|(p, m)| (UnitId::new(topic.clone(), p), m)),
            );
        }
        Ok(marks)
    }

    /// Re-reads the topics' partitions; true if the set of units changed.
    async fn refresh_universe(&mut self) -> Result<bool, WorkerError> {
        let mut universe = BTreeSet::new();
        let topics: Vec<String> = self.tables_by_topic.keys().cloned().collect();
        for topic in topics {
            let t = topic.clone();
            let partitions = self.ask_kafka(move |k| k.partitions(&t)).await?;
            universe.extend(
                partitions
                    .into_iter()
                    .map(|p| UnitId::new(topic.clone(), p)),
            );
        }
        if universe == self.universe {
            return Ok(false);
        }
        if !self.universe.is_empty() {
            let added: Vec<String> = universe
                .difference(&self.universe)
                .map(ToString::to_string)
                .collect();
            tracing::info!(?added, "partitions added to the topics");
        }
        if self.options.stop_at_end {
            let new: Vec<UnitId> = universe
                .iter()
                .filter(|u| !self.ends.contains_key(u))
                .cloned()
                .collect();
            let marks = self.watermarks(new.iter()).await?;
            self.ends.extend(marks);
        }
        // Partitions are never removed from a Kafka topic; keep what we knew if a broker
        // answered with less.
        self.universe.extend(universe);
        Ok(true)
    }

    /// Hands over what is no longer ours, takes what now is, and restarts the source if the
    /// owned set changed. Returns signals for the leases still to wait for.
    async fn rebalance(&mut self) -> Result<FuturesUnordered<UnitSignal>, WorkerError> {
        metrics::counter!(m::REBALANCES).increment(1);
        let desired: BTreeSet<UnitId> = self
            .universe
            .iter()
            .filter(|u| assignment::owner(u, &self.members).is_some_and(|m| m.id == self.me.id))
            .cloned()
            .collect();
        let mut changed = false;

        // Hand over: flush, commit, then release, so the next owner resumes exactly there.
        let mut i = 0;
        while i < self.owned.len() {
            if desired.contains(&self.owned[i].id) {
                i += 1;
                continue;
            }
            self.flush_unit(i).await?;
            self.settle(Some(i)).await?;
            let unit = self.owned.swap_remove(i);
            self.last_unit = None;
            // A lease left held would block its new owner for as long as this session lives:
            // failing here ends the session (and so the lease), and the worker rejoins.
            self.coord.release_lease(&unit.lease).await?;
            metrics::counter!(m::HANDOVERS).increment(1);
            tracing::info!(unit = %unit.id, epoch = unit.lease.epoch, committed = ?unit.position, "handed over");
            changed = true;
        }

        // Take over: every unit of ours we do not hold yet.
        let signals = FuturesUnordered::new();
        let held: BTreeSet<UnitId> = self.owned.iter().map(|u| u.id.clone()).collect();
        let mut acquired = Vec::new();
        self.waiting
            .retain(|u, _| desired.contains(u) && !held.contains(u));
        for unit in desired.difference(&held) {
            match self.coord.acquire_lease(unit, &self.me.id).await {
                Ok(lease) => {
                    self.waiting.remove(unit);
                    acquired.push(lease);
                }
                Err(CoordError::LeaseHeld { holder, .. }) => {
                    let (now_holder, signal) = self.coord.watch_lease(unit).await?;
                    if self
                        .waiting
                        .insert(unit.clone(), (Instant::now(), false))
                        .is_none()
                    {
                        tracing::info!(unit = %unit, holder = %holder, "waiting for the previous owner to hand the partition over (or for its session to expire)");
                    }
                    let unit = unit.clone();
                    if now_holder.is_none() {
                        // Released between the attempt and the watch: look again at once.
                        signals.push(Box::pin(async move { unit }) as UnitSignal);
                    } else {
                        signals.push(Box::pin(async move {
                            signal.await;
                            unit
                        }) as UnitSignal);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !acquired.is_empty() {
            self.take_over(acquired).await?;
            changed = true;
        }
        if changed {
            self.restart_source().await?;
            tracing::info!(
                members = self.members.len(),
                owned = self.owned.len(),
                waiting = self.waiting.len(),
                units = self.universe.len(),
                "rebalanced"
            );
        }
        self.report(true);
        Ok(signals)
    }

    /// Sets up freshly leased units: committed offsets, garbage of earlier leases, ends.
    async fn take_over(&mut self, leases: Vec<sluice_coord::Lease>) -> Result<(), WorkerError> {
        let mut epochs = HashMap::new();
        let mut new_units = Vec::with_capacity(leases.len());
        for lease in leases {
            let position = self.coord.committed_offset(&lease.unit).await?;
            tracing::info!(unit = %lease.unit, epoch = lease.epoch, committed = ?position, "lease acquired");
            epochs.insert(lease.unit.clone(), lease.epoch);
            let tables = &self.tables_by_topic[&lease.unit.topic];
            new_units.push(OwnedUnit::new(
                lease,
                tables,
                position,
                self.flush_ctx.views.as_deref(),
            ));
        }
        // Objects uploaded under earlier leases and never committed can go now: those leases can
        // no longer commit. The current lease's objects are never touched.
        // A unit's flushes write the tables reading its topic and their views' targets.
        let mut tables: Vec<&TableConfig> = Vec::new();
        for topic in new_units.iter().map(|u| u.id.topic.as_str()) {
            for t in self.config.tables_fed_by(topic) {
                if !tables.iter().any(|k| k.name == t.name) {
                    tables.push(t);
                }
            }
        }
        for table in tables {
            let report = collect_table_garbage(
                self.storage,
                &*self.coord,
                &table.name,
                GcScope::EarlierLeases(&epochs),
            )
            .await?;
            if !report.deleted.is_empty() {
                tracing::info!(table = %table.name, deleted = report.deleted.len(), "collected uncommitted objects of earlier leases");
            }
            self.summary.garbage_collected += report.deleted.len();
        }
        for u in &mut new_units {
            if let Some(&(low, high)) = self.ends.get(&u.id) {
                u.end = Some(high);
                // An empty or fully-deleted partition has nothing to reach.
                if u.position.is_none() && high <= low {
                    u.position = Some(high);
                }
            }
        }
        // Partitions never committed start at an offset resolved here from the watermarks,
        // one request per topic: handing librdkafka "earliest" or "latest" instead makes it
        // look each partition up itself first, which costs about half a second before the
        // first message (measured against Tansu; docs/performance.md).
        let fresh: Vec<UnitId> = new_units
            .iter()
            .filter(|u| u.position.is_none())
            .map(|u| u.id.clone())
            .collect();
        if !fresh.is_empty() {
            let marks = self.watermarks(fresh.iter()).await?;
            for u in new_units.iter_mut().filter(|u| u.position.is_none()) {
                if let Some(&(low, high)) = marks.get(&u.id) {
                    u.position = Some(match self.config.kafka.start_from {
                        StartFrom::Earliest => low,
                        StartFrom::Latest => high,
                    });
                    tracing::info!(unit = %u.id, start = ?u.position, from = ?self.config.kafka.start_from, "nothing committed yet; starting from the topic's watermark");
                }
            }
        }
        self.owned.extend(new_units);
        self.owned.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(())
    }

    /// Replaces the Kafka consumer with one assigned exactly the owned units, each from its
    /// position. Messages the old one had fetched are dropped and fetched again.
    async fn restart_source(&mut self) -> Result<(), WorkerError> {
        if let Some(source) = self.source.take() {
            source.stop().await;
        }
        self.index = self
            .owned
            .iter()
            .enumerate()
            .map(|(i, u)| ((Arc::from(u.id.topic.as_str()), u.id.partition), i))
            .collect();
        self.last_unit = None;
        self.buffered_bytes = self.owned.iter().map(OwnedUnit::bytes).sum();
        let assignments: Vec<Assignment> = self
            .owned
            .iter()
            .filter(|u| !(self.options.stop_at_end && u.reached_end()))
            .map(|u| Assignment {
                topic: u.id.topic.clone(),
                partition: u.id.partition,
                start: match u.position {
                    Some(o) => StartOffset::At(o),
                    None => match self.config.kafka.start_from {
                        StartFrom::Earliest => StartOffset::Earliest,
                        StartFrom::Latest => StartOffset::Latest,
                    },
                },
            })
            .collect();
        if !assignments.is_empty() {
            let mut kafka = self.config.kafka.clone();
            kafka.properties.insert(
                sluice_config::KAFKA_PREFETCH_PROPERTY.to_string(),
                self.config.kafka_prefetch_kib().to_string(),
            );
            self.source = Some(KafkaSource::start(
                &kafka,
                &assignments,
                SOURCE_CHANNEL_BATCHES,
            )?);
        }
        Ok(())
    }

    async fn consume(&mut self, batch: &SourceBatch) -> Result<(), WorkerError> {
        let budget = self.config.worker.memory_budget_bytes;
        for m in batch.iter() {
            let Some(u) = self.unit_of(m.topic, m.partition) else {
                continue;
            };
            let unit = &mut self.owned[u];
            // Past the end this run was asked to reach: leave it for the next run.
            // (Pushing it would commit one message per flush from here on.)
            if self.options.stop_at_end && unit.end.is_some_and(|end| m.offset >= end) {
                continue;
            }
            if !unit.wants(&m) {
                continue;
            }
            self.summary.events += 1;
            self.summary.event_bytes += m.payload.map_or(0, |p| p.len() as u64);
            let before = unit.bytes();
            unit.push(&m);
            self.buffered_bytes += unit.bytes() - before;
            self.flush_ctx.failpoints.hit("mid_batch");
            let unit = &self.owned[u];
            let at_end = self.options.stop_at_end && unit.reached_end();
            if at_end {
                tracing::debug!(unit = %unit.id, position = ?unit.position, "read up to the end this run was asked to reach");
            }
            if at_end || unit.over_size_limits() {
                self.flush_unit(u).await?;
            }
            // Memory pressure: write out the largest buffers, and wait for flushes in flight
            // (their data is still in memory) until under budget.
            while self.buffered_bytes + self.in_flight_bytes > budget {
                let largest = (0..self.owned.len()).max_by_key(|&i| self.owned[i].bytes());
                match largest {
                    Some(i) if self.owned[i].bytes() > 0 && self.in_flight_bytes <= budget / 2 => {
                        tracing::debug!(unit = %self.owned[i].id, bytes = self.owned[i].bytes(), "memory budget reached; flushing the largest buffer");
                        self.flush_unit(i).await?;
                    }
                    _ if !self.flushes.is_empty() => self.wait_for_a_flush().await?,
                    _ => break,
                }
            }
        }
        for u in &mut self.owned {
            u.record_consumed();
        }
        Ok(())
    }

    /// The index in `owned` of a message's unit; consecutive messages mostly share one.
    fn unit_of(&mut self, topic: &Arc<str>, partition: i32) -> Option<usize> {
        if let Some((t, p, i)) = &self.last_unit {
            if *p == partition && Arc::ptr_eq(t, topic) {
                return Some(*i);
            }
        }
        let i = *self.index.get(&(Arc::clone(topic), partition))?;
        self.last_unit = Some((Arc::clone(topic), partition, i));
        Some(i)
    }

    /// Starts a flush of one unit's buffers, first waiting for a slot if too many are in
    /// flight.
    async fn flush_unit(&mut self, i: usize) -> Result<(), WorkerError> {
        if self.owned[i].buffered.is_none() {
            return Ok(());
        }
        while self.flushes.len() >= self.max_flushes {
            self.wait_for_a_flush().await?;
        }
        let started = self.owned[i].start_flush(&self.flush_ctx, &mut self.flushes)?;
        tracing::debug!(unit = %self.owned[i].id, bytes = started.taken, in_flight = self.flushes.len(), "flush started");
        self.buffered_bytes -= started.taken;
        self.in_flight_bytes += started.charge;
        Ok(())
    }

    async fn wait_for_a_flush(&mut self) -> Result<(), WorkerError> {
        match self.flushes.join_next().await {
            Some(done) => self.complete(done),
            None => Ok(()),
        }
    }

    /// Books a finished flush task: a commit, or the error that ends the session.
    fn complete(
        &mut self,
        done: Result<Result<Committed, WorkerError>, JoinError>,
    ) -> Result<(), WorkerError> {
        let c = done.map_err(|e| WorkerError::Task(e.to_string()))??;
        if let Some(unit) = self.owned.iter_mut().find(|u| u.id == c.unit) {
            self.in_flight_bytes -= unit.finish_flush();
        }
        self.summary.rows += c.rows;
        self.summary.quarantined += c.quarantined;
        self.summary.parts += c.parts;
        self.summary.part_bytes += c.part_bytes;
        self.summary.commits += 1;
        Ok(())
    }

    /// Waits until the flushes in flight of unit `i` (all units: `None`) have committed.
    async fn settle(&mut self, i: Option<usize>) -> Result<(), WorkerError> {
        loop {
            let pending = match i {
                Some(i) => !self.owned[i].in_flight.is_empty(),
                None => !self.flushes.is_empty(),
            };
            if !pending {
                return Ok(());
            }
            self.wait_for_a_flush().await?;
        }
    }

    async fn flush_aged(&mut self) -> Result<(), WorkerError> {
        let now = Instant::now();
        for i in 0..self.owned.len() {
            if self.owned[i].buffered.is_some() && self.owned[i].over_age_limit(now) {
                self.flush_unit(i).await?;
            }
        }
        Ok(())
    }

    /// Reports units this worker should own that someone else has held for too long.
    fn check_waiting(&mut self) -> Result<(), WorkerError> {
        let limit = Duration::from_millis(self.config.worker.lease_wait_ms);
        for (unit, (since, reported)) in self.waiting.iter_mut() {
            if *reported || since.elapsed() < limit {
                continue;
            }
            if self.options.stop_at_end {
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

    /// With `stop_at_end`: whether every partition of the topics, this worker's and the
    /// others', is committed up to the end it had when this worker first saw it. Waiting for the
    /// others too keeps a worker from stopping while a crashed member's partitions are still
    /// unowned: it takes them over once that member's session expires.
    ///
    /// Other workers' progress is read from the coordinator at most every 200 ms, unless
    /// `now`: a membership change asks at once, so a worker whose peer finished and left stops
    /// too, instead of first taking over partitions that are already done.
    async fn at_end(&mut self, now: bool) -> Result<bool, WorkerError> {
        let mine_done =
            self.waiting.is_empty() && self.owned.iter().all(|u| u.reached_end() && u.settled());
        if !mine_done {
            return Ok(false);
        }
        if !now
            && self
                .last_fleet_check
                .is_some_and(|t| t.elapsed() < Duration::from_millis(200))
        {
            return Ok(false);
        }
        self.last_fleet_check = Some(Instant::now());
        for unit in &self.universe {
            if self.owned.iter().any(|u| &u.id == unit) {
                continue;
            }
            let Some(&(low, high)) = self.ends.get(unit) else {
                return Ok(false);
            };
            if high <= low {
                continue;
            }
            if self
                .coord
                .committed_offset(unit)
                .await?
                .is_none_or(|o| o < high)
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Graceful leave: deregister first, so the others start waiting for our leases, then
    /// commit and release unit by unit within the shutdown deadline. Whatever misses the
    /// deadline is released uncommitted and re-read by its next owner: nothing is lost.
    async fn leave_and_drain(&mut self) {
        if let Some(source) = self.source.take() {
            source.stop().await;
        }
        self.report(false);
        if let Err(e) = self.coord.leave(&self.me.id).await {
            tracing::warn!(error = %e, "cannot leave the fleet; membership ends with the session");
        }
        let deadline = Duration::from_millis(self.config.worker.shutdown_deadline_ms);
        let started = Instant::now();
        // Everything buffered starts flushing at once; units are then released one by one as
        // their flushes commit, so each moves to its next owner as early as it can.
        for i in 0..self.owned.len() {
            if let Err(e) = self.flush_unit(i).await {
                tracing::warn!(error = %e, "cannot commit while draining; the next owners re-read from the committed offsets");
                break;
            }
        }
        for i in 0..self.owned.len() {
            let left = deadline.saturating_sub(started.elapsed());
            match tokio::time::timeout(left, self.settle(Some(i))).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(unit = %self.owned[i].id, error = %e, "cannot commit while draining; the next owner re-reads from the committed offset");
                }
                Err(_) => {
                    tracing::warn!(unit = %self.owned[i].id, ?deadline, "shutdown deadline passed before this partition was committed; the next owner re-reads it from the committed offset");
                }
            }
            // Whatever did not commit stops here, before the lease goes.
            self.in_flight_bytes -= self.owned[i].abort_flushes();
            if let Err(e) = self.coord.release_lease(&self.owned[i].lease).await {
                tracing::warn!(unit = %self.owned[i].id, error = %e, "cannot release lease; it ends with the session");
            }
        }
        self.owned.clear();
    }
}

async fn next_batch(
    source: &mut Option<KafkaSource>,
) -> Option<Result<SourceBatch, sluice_source::SourceError>> {
    match source {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
