//! One coordination session of a worker: join the fleet, own the partitions rendezvous hashing
//! gives it, consume them, and hand them over when the membership changes.
//!
//! The loop waits on six things at once: the session ending (stop everything at once: the
//! leases are gone), shutdown (leave, drain, release), a membership change (rebalance), a lease
//! this worker waits for changing (rebalance), a batch from the reader (decode, flush when due),
//! and a tick (age flushes, partition discovery, progress checks).
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

use sluice_config::{Config, TableConfig};
use sluice_coord::{Coordinator, UnitId};
use sluice_source::{Assignment, Reader, SourceBatch, SourceError};
use sluice_telemetry::{Dependency, Health, Readiness, Telemetry};

use crate::flush::FlushContext;
use crate::ingest::Ingest;
use crate::merger::Merger;
use crate::rebalance::Fleet;
use crate::stop_at_end::Ends;
use crate::views::{self, HistoryCtx, LiveViews, Maintainer};
use crate::{RunOptions, RunSummary, Services, WorkerError};

pub(crate) type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

pub(crate) struct Session<'a> {
    pub(crate) config: &'a Config,
    pub(crate) coord: Arc<dyn Coordinator>,
    pub(crate) services: &'a Services,
    pub(crate) options: &'a RunOptions,
    /// The run's totals, to which this session's counts are added when it ends.
    summary: &'a mut RunSummary,
    /// Metrics, readiness and the dashboard's state, when the endpoint is enabled.
    telemetry: Option<Arc<Telemetry>>,
    pub(crate) tables_by_topic: HashMap<String, Vec<Arc<TableConfig>>>,
    pub(crate) fleet: Fleet,
    pub(crate) ingest: Ingest,
    /// With `stop_at_end`: the ends to reach.
    pub(crate) ends: Option<Ends>,
    pub(crate) reader: Option<Box<dyn Reader>>,
    /// A batch the ingest path stopped in (a full unit waiting for a flush slot, or the memory
    /// budget full of flushes in flight), and the first message it did not take.
    pending: Option<(SourceBatch, usize)>,
    /// Merges of the scopes this worker merges, and back-pressure.
    merger: Merger,
    /// Views going live, and their histories.
    maintainer: Maintainer,
    /// Topics not read because a table they feed has a scope at its hard part limit.
    paused_topics: BTreeSet<String>,
    /// Uncommitted objects of earlier leases deleted by this session.
    pub(crate) garbage_collected: usize,
    /// When offsets skipped while reading are next checked for retention gaps.
    pub(crate) next_skip_check: Instant,
    /// Units taken over whose earlier leases' uncommitted objects are still to collect, with
    /// the epoch of this session's lease (earlier epochs' objects go).
    pub(crate) pending_gc: HashMap<UnitId, u64>,
    /// When a failed collection of those is tried again.
    pub(crate) next_gc_attempt: Instant,
    /// The coordinator's connection was found lost (its session living on), and readiness
    /// says so until it is back.
    connection_lost: bool,
}

impl<'a> Session<'a> {
    pub(crate) fn new(
        config: &'a Config,
        coord: Arc<dyn Coordinator>,
        services: &'a Services,
        options: &'a RunOptions,
        summary: &'a mut RunSummary,
        telemetry: Option<Arc<Telemetry>>,
        health: Arc<Health>,
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
        let address = config
            .worker
            .address
            .clone()
            .or_else(|| telemetry.as_ref().and_then(|t| t.url()));
        let merger = Merger::new(
            config,
            Arc::clone(&coord),
            services.storage.clone(),
            options.failpoints.clone(),
            &options.worker_id,
            telemetry.clone(),
        );
        let live = Arc::new(LiveViews::new(config));
        let history = HistoryCtx {
            coord: Arc::clone(&coord),
            storage: services.storage.clone(),
            views: Arc::clone(&services.views),
            tables: Default::default(),
            failpoints: options.failpoints.clone(),
            worker_id: options.worker_id.clone(),
            health: Arc::clone(&health),
        };
        let maintainer = Maintainer::new(config, Arc::clone(&live), history);
        let ctx = FlushContext {
            live,
            coord: Arc::clone(&coord),
            storage: services.storage.clone(),
            // Shared by every session: a failpoint's count runs across rejoins.
            failpoints: options.failpoints.clone(),
            views: (!services.views.is_empty()).then(|| Arc::clone(&services.views)),
            health,
        };
        Session {
            config,
            fleet: Fleet::new(
                &options.worker_id,
                config.worker.weight,
                address,
                views::advertised(config),
            ),
            ingest: Ingest::new(ctx, config.worker.memory_budget_bytes),
            ends: options.stop_at_end.then(Ends::default),
            coord,
            services,
            options,
            summary,
            telemetry,
            tables_by_topic,
            reader: None,
            pending: None,
            merger,
            maintainer,
            paused_topics: BTreeSet::new(),
            garbage_collected: 0,
            next_skip_check: Instant::now(),
            pending_gc: HashMap::new(),
            next_gc_attempt: Instant::now(),
            connection_lost: false,
        }
    }

    /// Runs until shutdown (`Ok` after draining), until `stop_at_end` is satisfied (`Ok`), or
    /// until an error; [`WorkerError::calls_for_rejoin`] errors mean: rejoin with a new session.
    pub(crate) async fn run(mut self, shutdown: &mut Shutdown) -> Result<(), WorkerError> {
        let result = self.run_inner(shutdown).await;
        if let Some(reader) = self.reader.take() {
            reader.stop().await;
        }
        let c = self.ingest.counts;
        let s = &mut *self.summary;
        s.events += c.events;
        s.event_bytes += c.event_bytes;
        s.rows += c.rows;
        s.quarantined += c.quarantined;
        s.parts += c.parts;
        s.part_bytes += c.part_bytes;
        s.commits += c.commits;
        s.garbage_collected += self.garbage_collected;
        result
    }

    async fn run_inner(&mut self, shutdown: &mut Shutdown) -> Result<(), WorkerError> {
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
        // Before anything is consumed: the views this worker's flushes apply, and a refusal if
        // the fleet has a view live that this configuration lacks.
        self.ingest
            .ctx()
            .live
            .start(&*self.coord, self.config)
            .await?;
        if let Some(t) = &self.telemetry {
            t.set_coordinator(Some(Arc::clone(&self.coord)));
        }
        self.refresh_universe().await?;
        let (members, mut members_changed) = self.coord.watch_members().await?;
        self.fleet.members = members;
        let mut lease_changed = self.rebalance().await?;

        let mut tick = tokio::time::interval(Duration::from_millis(
            self.config.worker.flush_check_interval_ms,
        ));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let refresh_every = Duration::from_millis(self.config.kafka.metadata_refresh_ms);
        let mut next_refresh = Instant::now() + refresh_every;

        loop {
            if self.at_end(false).await? {
                return self.finish_at_end().await;
            }
            tokio::select! {
                biased;
                () = &mut session_ended => {
                    self.report(false);
                    tracing::error!(worker = %self.fleet.me.id, owned = self.ingest.owned.len(), "coordination session ended; stopped fetching and committing, buffered events are left to the next owners");
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
                    if self.at_end(true).await? {
                        return self.finish_at_end().await;
                    }
                    if members != self.fleet.members {
                        tracing::info!(members = ?members.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), "membership changed");
                        self.fleet.members = members;
                        lease_changed = self.rebalance().await?;
                    }
                }
                Some(_unit) = futures::StreamExt::next(&mut lease_changed) => {
                    lease_changed = self.rebalance().await?;
                }
                done = self.ingest.next_finished() => {
                    self.ingest.complete(done)?;
                    self.ingest.flush_due()?;
                    self.resume_pending()?;
                    if self.release_left().await? {
                        lease_changed = self.rebalance().await?;
                    }
                }
                done = self.merger.next_finished() => self.merger.complete(done, &mut self.ingest)?,
                _ = tick.tick() => {
                    self.watch_connection();
                    self.ingest.flush_due()?;
                    self.resume_pending()?;
                    self.check_skips().await?;
                    self.collect_pending_garbage().await;
                    self.check_merges().await?;
                    self.maintain_views().await?;
                    self.fleet.check_waiting(self.config.worker.lease_wait_ms, self.options.stop_at_end)?;
                    self.report(true);
                    if Instant::now() >= next_refresh {
                        next_refresh = Instant::now() + refresh_every;
                        // A broker hiccup here must not stop ingestion: the partitions known
                        // so far stay valid, and the next refresh tries again.
                        match self.refresh_universe().await {
                            Ok(changed) => {
                                self.ingest.ctx().health.succeeded(Dependency::Kafka);
                                if changed {
                                    lease_changed = self.rebalance().await?;
                                }
                            }
                            Err(e) => self.kafka_failed(&e),
                        }
                    }
                }
                // After the tick: during a backlog a batch is always ready, and the tick's
                // work (age flushes, merges and their back-pressure) must not starve. Not while
                // the memory budget is full of flushes in flight (storage slow or down): the
                // reader waits, the loop goes on serving everything else.
                batch = next_batch(&mut self.reader), if self.pending.is_none() && !self.ingest.must_wait() => {
                    let batch = batch.ok_or(WorkerError::SourceStopped)??;
                    if let Some(next) = self.ingest.consume(&batch, 0)? {
                        self.pending = Some((batch, next));
                    }
                }
            }
        }
    }

    /// Views going live and their histories; a coordination hiccup waits for the next tick, a
    /// configuration that cannot serve the live views stops the worker.
    async fn maintain_views(&mut self) -> Result<(), WorkerError> {
        match self
            .maintainer
            .tick(&self.fleet.members, &self.fleet.universe)
            .await
        {
            Err(e @ WorkerError::ViewMismatch { .. }) => Err(e),
            Err(e) => {
                tracing::warn!(error = %crate::retry::chain(&e), "checking the view registry failed; trying again at the next check");
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    /// Goes on with the batch the ingest path stopped in, if it can take more now.
    fn resume_pending(&mut self) -> Result<(), WorkerError> {
        if let Some((batch, from)) = self.pending.take() {
            if let Some(next) = self.ingest.consume(&batch, from)? {
                self.pending = Some((batch, next));
            }
        }
        Ok(())
    }

    /// Runs the merge check when due, and pauses or resumes the topics feeding tables at their
    /// hard part limit.
    async fn check_merges(&mut self) -> Result<(), WorkerError> {
        if !self.merger.due() {
            return Ok(());
        }
        if !self
            .merger
            .check(&self.fleet.members, &mut self.ingest)
            .await?
        {
            return Ok(());
        }
        let blocked = self.merger.blocked_tables();
        let paused: BTreeSet<String> = self
            .tables_by_topic
            .keys()
            .filter(|topic| {
                self.config
                    .tables_fed_by(topic)
                    .iter()
                    .any(|t| blocked.contains(&t.name))
            })
            .cloned()
            .collect();
        if paused != self.paused_topics {
            if paused.len() > self.paused_topics.len() {
                metrics::counter!(sluice_telemetry::metrics::INGEST_PAUSES).increment(1);
            }
            tracing::info!(paused = ?paused, "topics paused for merges to catch up changed");
            self.paused_topics = paused;
            self.restart_reader().await?;
        }
        Ok(())
    }

    async fn finish_at_end(&mut self) -> Result<(), WorkerError> {
        tracing::info!("every partition is committed up to its end; stopping");
        self.leave_and_drain().await;
        Ok(())
    }

    /// With `stop_at_end`: whether every partition of the topics, this worker's and the
    /// others', is committed up to the end it had when this worker first saw it.
    async fn at_end(&mut self, now: bool) -> Result<bool, WorkerError> {
        let Some(ends) = &mut self.ends else {
            return Ok(false);
        };
        let mine_done = self.fleet.waiting.is_empty()
            && self
                .ingest
                .owned
                .iter()
                .all(|u| u.leaving || (u.reached_end() && u.settled()));
        if !mine_done || !self.maintainer.settled() {
            return Ok(false);
        }
        // Units given up count as the others': done once their next owner commits their end.
        let mine: BTreeSet<&UnitId> = self
            .ingest
            .owned
            .iter()
            .filter(|u| !u.leaving)
            .map(|u| &u.id)
            .collect();
        ends.others_done(&*self.coord, &self.fleet.universe, &mine, now)
            .await
    }

    /// Says in readiness when the coordinator's connection is lost while its session lives on,
    /// and when it is back: nothing commits meanwhile.
    fn watch_connection(&mut self) {
        let connected = self.coord.connected();
        let health = &self.ingest.ctx().health;
        if !connected && !self.connection_lost {
            tracing::warn!("the connection to ZooKeeper is lost; reconnecting to the same session (commits wait meanwhile)");
            health.failed(
                Dependency::Zookeeper,
                "the connection is lost; reconnecting to the same session",
                false,
            );
        } else if connected && self.connection_lost {
            health.succeeded(Dependency::Zookeeper);
        }
        self.connection_lost = !connected;
    }

    /// Refreshes readiness and the worker-level gauges.
    pub(crate) fn report(&self, session_up: bool) {
        self.ingest.ctx().health.record_gauges();
        let Some(t) = &self.telemetry else { return };
        t.update(
            Readiness {
                session_up,
                assigned: self.fleet.assigned().count(),
                owned: self.ingest.owned.iter().filter(|u| !u.leaving).count(),
                waiting: self.fleet.waiting.len(),
            },
            self.ingest.held_bytes(),
        );
        t.set_totals(
            self.summary.events + self.ingest.counts.events,
            self.summary.quarantined + self.ingest.counts.quarantined,
        );
        t.set_oldest_buffered(
            self.ingest
                .owned
                .iter()
                .filter_map(|u| Some((u.id.clone(), u.oldest_uncommitted()?)))
                .collect(),
        );
    }

    /// Replaces the reader with one of exactly the owned units, each from its position.
    /// Messages the old one had fetched are dropped and read again.
    pub(crate) async fn restart_reader(&mut self) -> Result<(), WorkerError> {
        if let Some(reader) = self.reader.take() {
            reader.stop().await;
        }
        // What it had not taken is read again from the units' positions.
        self.pending = None;
        self.ingest.reindex();
        let paused = self
            .ingest
            .owned
            .iter()
            .filter(|u| self.paused_topics.contains(&u.id.topic))
            .count();
        metrics::gauge!(sluice_telemetry::metrics::INGEST_PAUSED_PARTITIONS).set(paused as f64);
        let assignments: Vec<Assignment> = self
            .ingest
            .owned
            .iter()
            .filter(|u| !u.leaving && !u.reached_end() && !self.paused_topics.contains(&u.id.topic))
            .filter_map(|u| {
                Some(Assignment {
                    topic: u.id.topic.clone(),
                    partition: u.id.partition,
                    start: u.position?,
                })
            })
            .collect();
        if !assignments.is_empty() {
            self.reader = Some(self.services.source.open(&assignments).await?);
        }
        Ok(())
    }

    /// Graceful leave: deregister first, so the others start waiting for our leases, then
    /// commit and release unit by unit within the shutdown deadline. Whatever misses the
    /// deadline is released uncommitted and re-read by its next owner: nothing is lost.
    async fn leave_and_drain(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.stop().await;
        }
        self.pending = None;
        self.report(false);
        if let Err(e) = self.coord.leave(&self.fleet.me.id).await {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                "cannot leave the fleet; membership ends with the session"
            );
        }
        let deadline = Duration::from_millis(self.config.worker.shutdown_deadline_ms);
        let started = Instant::now();
        // Merges in progress finish first (they hold no lease ingestion needs), within the
        // deadline.
        self.merger.stop(deadline / 2).await;
        // Everything buffered starts flushing at once (as far as slots allow); units are then
        // released one by one as their flushes commit, so each moves to its next owner as early
        // as it can. Storage that does not accept uploads holds nothing past the deadline.
        if let Err(e) = self.ingest.flush_all() {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                "cannot commit while draining; the next owners re-read from the committed offsets"
            );
        }
        for i in 0..self.ingest.owned.len() {
            let left = deadline.saturating_sub(started.elapsed());
            let unit = self.ingest.owned[i].id.clone();
            let commit = async {
                self.ingest.flush_unit(i).await?;
                self.ingest.settle(Some(i)).await
            };
            match tokio::time::timeout(left, commit).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(unit = %unit, error = &e as &dyn std::error::Error, "cannot commit while draining; the next owner re-reads from the committed offset");
                }
                Err(_) => {
                    tracing::warn!(unit = %unit, ?deadline, "shutdown deadline passed before this partition was committed; the next owner re-reads it from the committed offset");
                }
            }
            // Whatever did not commit stops here, before the lease goes.
            self.ingest.abort(i);
            if let Err(e) = self.coord.release_lease(&self.ingest.owned[i].lease).await {
                tracing::warn!(unit = %unit, error = &e as &dyn std::error::Error, "cannot release lease; it ends with the session");
            }
        }
        self.ingest.owned.clear();
        self.ingest.reindex();
    }
}

async fn next_batch(
    reader: &mut Option<Box<dyn Reader>>,
) -> Option<Result<SourceBatch, SourceError>> {
    match reader {
        Some(r) => r.next().await,
        None => std::future::pending().await,
    }
}
