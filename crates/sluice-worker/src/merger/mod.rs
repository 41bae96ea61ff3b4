//! Merges, off the ingest path: which scopes this worker merges, running their turns as tasks
//! of their own within `merge.max_concurrent` and the memory budget, deleting replaced objects
//! after the grace period, and telling ingestion which tables are at their hard part limit.
//!
//! Scopes are spread over the live workers by the same weighted rendezvous hashing as the
//! partitions; a worker merges a scope only under that scope's merge lease, so two workers with
//! different views of the fleet never change one scope at once, and a zombie's swap is refused.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_config::{Config, MergeConfig, RepairConfig, TableConfig};
use sluice_coord::{assignment, Coordinator, Member, ScopeSummary};
use sluice_sink::Storage;
use sluice_telemetry::{metrics as m, ReplicationState, Telemetry};
use tokio::task::{JoinError, JoinSet};

use crate::budget::Charge;
use crate::ingest::Ingest;
use crate::{Failpoints, WorkerError};

mod repair;
mod retire;
mod scope;

/// A scope whose turn failed waits this many check intervals before the next.
const FAILURE_BACKOFF_CHECKS: u32 = 6;

/// What merge tasks share.
pub(crate) struct MergeCtx {
    pub(crate) coord: Arc<dyn Coordinator>,
    pub(crate) storage: Storage,
    pub(crate) failpoints: Failpoints,
    pub(crate) merge: MergeConfig,
    pub(crate) repair: RepairConfig,
    pub(crate) worker_id: String,
    /// Tables some configured view reads: their merges keep a pending view history's parts
    /// apart from the rest.
    pub(crate) view_sources: BTreeSet<String>,
    /// Set when the worker stops: turns end after the merge in progress.
    pub(crate) stopping: std::sync::atomic::AtomicBool,
}

/// What a finished task did.
enum Done {
    Turn {
        table: String,
        value: String,
        turn: scope::Turn,
    },
    Retired {
        table: String,
        outcome: Result<usize, String>,
    },
    Repaired(repair::PassOutcome),
}

type Key = (String, String);

pub(crate) struct Merger {
    ctx: Arc<MergeCtx>,
    tables: BTreeMap<String, Arc<TableConfig>>,
    memory_bytes: u64,
    check_every: Duration,
    next_check: Instant,
    tasks: JoinSet<Done>,
    /// Scopes with a turn running, and the memory each holds.
    running: HashMap<Key, Charge>,
    /// Tables whose retired sets are being deleted.
    retiring: HashSet<String>,
    /// Scopes this session already swept of earlier leases' unregistered objects.
    swept: HashSet<Key>,
    /// Scopes whose last turn failed, and until when they wait.
    backoff: HashMap<Key, Instant>,
    /// Every scope of every table, as last read.
    scopes: BTreeMap<String, Vec<ScopeSummary>>,
    /// Tables with a scope at the hard part limit, until all their scopes are back at the soft
    /// limit.
    blocked: BTreeSet<String>,
    /// Merges planned in this worker's scopes, by scope, as their last turns left them.
    backlog: HashMap<Key, usize>,
    /// Replication: whether a repair pass runs, when the next is due, where each scope's
    /// scrub goes on, and what the last pass found.
    repairing: bool,
    next_repair: Instant,
    scrub_cursors: HashMap<Key, usize>,
    repaired: Option<repair::PassOutcome>,
    /// The dashboard, told what each repair pass found.
    telemetry: Option<Arc<Telemetry>>,
}

impl Merger {
    pub(crate) fn new(
        config: &Config,
        coord: Arc<dyn Coordinator>,
        storage: Storage,
        failpoints: Failpoints,
        worker_id: &str,
        telemetry: Option<Arc<Telemetry>>,
    ) -> Merger {
        let check_every = Duration::from_millis(config.merge.check_interval_ms);
        Merger {
            ctx: Arc::new(MergeCtx {
                coord,
                storage,
                failpoints,
                merge: config.merge.clone(),
                repair: config.storage.repair.clone(),
                worker_id: worker_id.to_string(),
                view_sources: config.views.iter().map(|v| v.source.clone()).collect(),
                stopping: std::sync::atomic::AtomicBool::new(false),
            }),
            tables: config
                .tables
                .iter()
                .map(|t| (t.name.clone(), Arc::new(t.clone())))
                .collect(),
            memory_bytes: config.merge_memory_bytes(),
            check_every,
            next_check: Instant::now(),
            tasks: JoinSet::new(),
            running: HashMap::new(),
            retiring: HashSet::new(),
            swept: HashSet::new(),
            backoff: HashMap::new(),
            scopes: BTreeMap::new(),
            blocked: BTreeSet::new(),
            backlog: HashMap::new(),
            repairing: false,
            next_repair: Instant::now(),
            scrub_cursors: HashMap::new(),
            repaired: None,
            telemetry,
        }
    }

    /// Tables ingestion must not feed until merges catch up.
    pub(crate) fn blocked_tables(&self) -> &BTreeSet<String> {
        &self.blocked
    }

    /// Whether a check is due (the interval passed, or a turn just ended).
    pub(crate) fn due(&self) -> bool {
        Instant::now() >= self.next_check
    }

    /// Re-reads every table's scopes (the part counts back-pressure and the gauges need), then
    /// starts the turns and deletions due. Returns whether the blocked tables changed.
    pub(crate) async fn check(
        &mut self,
        members: &[Member],
        ingest: &mut Ingest,
    ) -> Result<bool, WorkerError> {
        self.next_check = Instant::now() + self.check_every;
        for table in self.tables.keys() {
            let scopes = self.ctx.coord.list_scopes(table).await?;
            self.scopes.insert(table.clone(), scopes);
        }
        let changed = self.update_blocked();
        self.report();
        self.report_replication();
        if self.ctx.merge.enabled {
            self.start_turns(members, ingest);
        }
        // Also with merges off: a replay's old generation is collected here once kept long
        // enough, and merges run earlier may have left replaced objects.
        self.start_retiring(members);
        if self.ctx.storage.is_replicated() {
            self.start_repair(members);
        }
        Ok(changed)
    }

    /// Back-pressure with hysteresis: a table is blocked from when one of its scopes reaches
    /// `hard_parts_per_scope` until all of them are back at `soft_parts_per_scope`.
    fn update_blocked(&mut self) -> bool {
        let before = self.blocked.clone();
        for (table, scopes) in &self.scopes {
            let most = scopes.iter().map(|s| s.live_parts).max().unwrap_or(0);
            if most >= self.ctx.merge.hard_parts_per_scope {
                if self.blocked.insert(table.clone()) {
                    tracing::warn!(table = %table, parts = most, limit = self.ctx.merge.hard_parts_per_scope, "a scope reached its hard part limit; pausing the partitions that feed the table until merges catch up");
                }
            } else if most <= self.ctx.merge.soft_parts_per_scope && self.blocked.remove(table) {
                tracing::info!(table = %table, parts = most, "the table's scopes are back under the soft part limit; resuming its partitions");
            }
        }
        before != self.blocked
    }

    fn report(&self) {
        for (table, scopes) in &self.scopes {
            let labels = [("table", table.clone())];
            let most = scopes.iter().map(|s| s.live_parts).max().unwrap_or(0);
            let records: usize = scopes.iter().map(|s| s.live_parts).sum();
            let sealed = scopes.iter().filter(|s| s.state.sealed.is_some()).count();
            metrics::gauge!(m::TABLE_SCOPE_PARTS_MAX, &labels).set(most as f64);
            metrics::gauge!(m::TABLE_PART_RECORDS, &labels).set(records as f64);
            metrics::gauge!(m::TABLE_SEALED_SCOPES, &labels).set(sealed as f64);
            let backlog: usize = self
                .backlog
                .iter()
                .filter(|((t, _), _)| t == table)
                .map(|(_, n)| n)
                .sum();
            metrics::gauge!(m::TABLE_MERGE_BACKLOG, &labels).set(backlog as f64);
        }
    }

    /// The replication gauges, as the last repair pass left them, and the storage's read
    /// counters.
    fn report_replication(&self) {
        let storage = &self.ctx.storage;
        if !storage.is_replicated() {
            return;
        }
        for counts in storage.stats() {
            let labels = [("endpoint", counts.endpoint.clone())];
            metrics::counter!(m::STORAGE_CHECKSUM_FAILURES, &labels)
                .absolute(counts.checksum_failures);
            metrics::counter!(m::STORAGE_READ_FAILOVERS, &labels).absolute(counts.read_failovers);
        }
        let Some(last) = &self.repaired else { return };
        for (table, n) in &last.under_replicated {
            metrics::gauge!(m::TABLE_PARTS_UNDER_REPLICATED, "table" => table.clone())
                .set(*n as f64);
        }
        metrics::gauge!(m::REPAIR_BACKLOG).set(last.backlog as f64);
        for name in storage.endpoint_names() {
            let up = if last.unreachable.contains(&name) {
                0.0
            } else {
                1.0
            };
            metrics::gauge!(m::STORAGE_ENDPOINT_UP, "endpoint" => name).set(up);
        }
    }

    /// Hands what a repair pass found to the dashboard.
    fn show_replication(&self, outcome: &repair::PassOutcome) {
        let Some(telemetry) = &self.telemetry else {
            return;
        };
        let storage = &self.ctx.storage;
        telemetry.set_replication(ReplicationState {
            replication_factor: storage.replication().factor,
            write_quorum: storage.replication().quorum,
            endpoints: storage
                .endpoint_names()
                .into_iter()
                .map(|n| {
                    let up = !outcome.unreachable.contains(&n);
                    (n, up)
                })
                .collect(),
            under_replicated: outcome.under_replicated.values().sum(),
            missing_copies: outcome.backlog,
            checked_at_ms: crate::now_ms(),
        });
    }

    /// Whether this worker merges the scope: the same rendezvous hashing as partitions.
    fn owns(&self, members: &[Member], table: &str, value: &str) -> bool {
        assignment::owner(&assignment::scope_key(table, value), members)
            .is_some_and(|m| m.id == self.ctx.worker_id)
    }

    fn start_turns(&mut self, members: &[Member], ingest: &mut Ingest) {
        let now = Instant::now();
        self.backoff.retain(|_, until| *until > now);
        // Fullest scopes first: they are closest to holding ingestion up.
        let mut candidates: Vec<(usize, Key)> = self
            .scopes
            .iter()
            .flat_map(|(t, scopes)| {
                scopes
                    .iter()
                    .filter(|s| s.live_parts > 0)
                    .map(move |s| (s.live_parts, (t.clone(), s.partition_value.clone())))
            })
            .collect();
        candidates.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        for (_, key) in candidates {
            if self.running.len() >= self.ctx.merge.max_concurrent {
                return;
            }
            if self.running.contains_key(&key)
                || self.backoff.contains_key(&key)
                || !self.owns(members, &key.0, &key.1)
            {
                continue;
            }
            let Some(charge) = ingest.reserve(self.memory_bytes) else {
                tracing::debug!("the memory budget has no room for a merge now");
                return;
            };
            let table = Arc::clone(&self.tables[&key.0]);
            let ctx = Arc::clone(&self.ctx);
            let (t, v) = key.clone();
            let sweep = !self.swept.contains(&key);
            self.tasks.spawn(async move {
                let turn = scope::turn(ctx, table, v.clone(), sweep).await;
                Done::Turn {
                    table: t,
                    value: v,
                    turn,
                }
            });
            self.running.insert(key, charge);
        }
    }

    fn start_retiring(&mut self, members: &[Member]) {
        let due: Vec<(String, HashSet<String>)> = self
            .scopes
            .iter()
            .filter(|(table, _)| !self.retiring.contains(*table))
            .map(|(table, scopes)| {
                let owned = scopes
                    .iter()
                    .map(|s| s.partition_value.clone())
                    .filter(|v| self.owns(members, table, v))
                    .collect();
                (table.clone(), owned)
            })
            .filter(|(_, owned): &(String, HashSet<String>)| !owned.is_empty())
            .collect();
        for (table, owned) in due {
            let ctx = Arc::clone(&self.ctx);
            let t = table.clone();
            self.tasks.spawn(async move {
                let outcome = retire::retire(ctx, t.clone(), owned).await;
                Done::Retired { table: t, outcome }
            });
            self.retiring.insert(table.clone());
        }
    }

    /// Starts a repair pass over the scopes this worker merges, if one is due and none runs.
    fn start_repair(&mut self, members: &[Member]) {
        if self.repairing || Instant::now() < self.next_repair {
            return;
        }
        self.next_repair = Instant::now() + Duration::from_millis(self.ctx.repair.interval_ms);
        let scopes: Vec<Key> = self
            .scopes
            .iter()
            .flat_map(|(t, scopes)| {
                scopes
                    .iter()
                    .map(move |s| (t.clone(), s.partition_value.clone()))
            })
            .filter(|(t, v)| self.owns(members, t, v))
            .collect();
        let ctx = Arc::clone(&self.ctx);
        let tables = self.tables.keys().cloned().collect();
        let cursors = std::mem::take(&mut self.scrub_cursors);
        let corrupt = self.ctx.storage.take_corrupt().into_iter().collect();
        self.tasks.spawn(async move {
            Done::Repaired(repair::pass(ctx, tables, scopes, cursors, corrupt).await)
        });
        self.repairing = true;
    }

    /// Resolves with the next finished task; pending while none runs.
    pub(crate) async fn next_finished(&mut self) -> Result<DoneTask, JoinError> {
        match self.tasks.join_next().await {
            Some(done) => done.map(DoneTask),
            None => std::future::pending().await,
        }
    }

    /// Books a finished task; a turn's end makes the next check due at once, since a busy
    /// scope needs merges back to back.
    pub(crate) fn complete(
        &mut self,
        done: Result<DoneTask, JoinError>,
        ingest: &mut Ingest,
    ) -> Result<(), WorkerError> {
        let done = done.map_err(|source| WorkerError::Task {
            task: "a merge",
            source,
        })?;
        match done.0 {
            Done::Turn { table, value, turn } => {
                let key = (table.clone(), value.clone());
                if let Some(charge) = self.running.remove(&key) {
                    ingest.release(charge);
                }
                self.backlog.insert(key.clone(), turn.backlog);
                if turn.swept.is_some() {
                    self.swept.insert(key.clone());
                }
                if let Some(why) = &turn.failure {
                    tracing::warn!(table = %table, value = %value, error = %why, "a merge turn failed; the scope waits and is tried again (ingestion is not affected)");
                    // Whatever the failed turn uploaded is collected on the scope's next turn.
                    self.swept.remove(&key);
                    self.backoff.insert(
                        key,
                        Instant::now() + self.check_every * FAILURE_BACKOFF_CHECKS,
                    );
                } else if turn.busy {
                    tracing::debug!(table = %table, value = %value, "another worker holds the scope's merge lease (the fleet is changing)");
                } else if turn.merges > 0 || turn.sealed {
                    self.next_check = Instant::now();
                }
            }
            Done::Retired { table, outcome } => {
                self.retiring.remove(&table);
                if let Err(why) = outcome {
                    tracing::warn!(table = %table, error = %why, "cannot delete replaced objects yet; trying again at the next check");
                }
            }
            Done::Repaired(mut outcome) => {
                self.repairing = false;
                self.scrub_cursors = std::mem::take(&mut outcome.cursors);
                if !outcome.unreachable.is_empty() || outcome.backlog > 0 {
                    tracing::warn!(unreachable = ?outcome.unreachable, missing_copies = outcome.backlog, under_replicated = ?outcome.under_replicated, "parts are under-replicated; the repair stores their copies once the endpoints answer");
                }
                self.show_replication(&outcome);
                self.repaired = Some(outcome);
                self.report_replication();
            }
        }
        Ok(())
    }
}

impl Merger {
    /// Lets the merges in progress finish (each turn ends after its current merge) within
    /// `deadline`; whatever is still running then is aborted, leaving at most an unregistered
    /// object that the scope's next merger deletes.
    pub(crate) async fn stop(&mut self, deadline: Duration) {
        self.ctx
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let drain = async {
            while let Some(done) = self.tasks.join_next().await {
                if let Ok(DoneTask(Done::Turn { table, value, turn })) = done.map(DoneTask) {
                    if let Some(why) = turn.failure {
                        tracing::warn!(table = %table, value = %value, error = %why, "a merge turn failed while stopping");
                    }
                }
            }
        };
        if tokio::time::timeout(deadline, drain).await.is_err() {
            tracing::warn!(?deadline, "merges still running at the shutdown deadline were stopped; their uploads are collected by the scopes' next merger");
            self.tasks.abort_all();
        }
        // Accounted for above: not abandoned.
        self.running.clear();
    }
}

/// A session that ends without [`Merger::stop`] (lost, or failed) drops its merges in flight.
/// Nothing of theirs can be committed any more (a swap needs the merge lease, which ended with
/// the session), but say so: their turns end unlogged.
impl Drop for Merger {
    fn drop(&mut self) {
        if self.running.is_empty() {
            return;
        }
        let scopes: Vec<String> = self
            .running
            .keys()
            .map(|(table, value)| format!("{table}/{value}"))
            .collect();
        tracing::warn!(?scopes, "merges in progress abandoned with the session; nothing of theirs is committed, and their uploads are collected by the scopes' next merger");
    }
}

/// A finished merge task, for the session to hand back to [`Merger::complete`].
pub(crate) struct DoneTask(Done);
