//! The embedded backend: one process, state in memory, optionally persisted to a directory.
//!
//! For a laptop and unit tests. Leases belong to a handle's session and end with it (or with the
//! process); epochs, offsets and parts survive restarts when a directory is given. The whole
//! state is rewritten (temp file + rename) on every change, which is fine at laptop scale and
//! keeps a commit atomic on disk. A lock file stops two processes from sharing one directory.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{
    BackfillLease, BackfillPlan, BackfillStatus, Commit, CoordError, Coordinator, Gap, Lease,
    LiveView, Member, MergeLease, PartRecord, ReplayGeneration, RetentionGaps, Retired,
    ScopeListing, ScopeSummary, SealedManifest, Signal, StagedFile, UnitId, UnitState, ViewHistory,
    ViewHistoryLease, ViewRegistry,
};

const STATE_FILE: &str = "coordinator.json";
const LOCK_FILE: &str = "coordinator.lock";

mod backfills;
mod commit;
mod registry;
mod replays;
mod state;
mod views;

use registry::{PersistedRegistry, Registry};

#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    units: Vec<PersistedUnit>,
    /// Retention gaps by topic.
    #[serde(default)]
    gaps: BTreeMap<String, RetentionGaps>,
    #[serde(default, flatten)]
    registry: PersistedRegistry,
    #[serde(default)]
    backfills: BTreeMap<String, backfills::Entry>,
    #[serde(default)]
    views: Option<views::Entry>,
    #[serde(default)]
    replays: BTreeMap<String, crate::ReplayGeneration>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PersistedUnit {
    unit: UnitId,
    epoch: u64,
    next_offset: Option<i64>,
}

#[derive(Debug, Clone, Default)]
struct UnitEntry {
    epoch: u64,
    next_offset: Option<i64>,
    holder: Option<(u64, String)>,
}

#[derive(Debug)]
struct Shared {
    units: HashMap<UnitId, UnitEntry>,
    gaps: BTreeMap<String, RetentionGaps>,
    registry: Registry,
    backfills: BTreeMap<String, backfills::Entry>,
    views: Option<views::Entry>,
    replays: BTreeMap<String, crate::ReplayGeneration>,
    /// Live members by id, with the session that registered each.
    members: BTreeMap<String, (u64, Member)>,
    dir: Option<PathBuf>,
    _lock: Option<File>,
    /// Bumped on every change of members or leases, for watches (coarse: they may fire
    /// spuriously, which the contract allows).
    changes: tokio::sync::watch::Sender<u64>,
}

/// Embedded coordinator handle; [`EmbeddedCoordinator::new_session`] gives another handle on
/// the same state, as a second ZooKeeper client would.
#[derive(Debug)]
pub struct EmbeddedCoordinator {
    shared: Arc<Mutex<Shared>>,
    session: u64,
    closed: AtomicBool,
    ended: tokio::sync::watch::Sender<bool>,
}

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

fn embedded_err(dir: &Path, source: impl Into<crate::Cause>) -> CoordError {
    CoordError::Embedded {
        path: dir.display().to_string(),
        source: source.into(),
    }
}

impl EmbeddedCoordinator {
    fn from_shared(shared: Shared) -> EmbeddedCoordinator {
        EmbeddedCoordinator {
            shared: Arc::new(Mutex::new(shared)),
            session: NEXT_SESSION.fetch_add(1, Ordering::Relaxed),
            closed: AtomicBool::new(false),
            ended: tokio::sync::watch::channel(false).0,
        }
    }

    /// Another handle on the same state with a session of its own.
    pub fn new_session(&self) -> EmbeddedCoordinator {
        EmbeddedCoordinator {
            shared: Arc::clone(&self.shared),
            session: NEXT_SESSION.fetch_add(1, Ordering::Relaxed),
            closed: AtomicBool::new(false),
            ended: tokio::sync::watch::channel(false).0,
        }
    }

    /// A signal for the next change of shared state, or for the end of this session.
    fn change_signal(&self, shared: &Shared) -> Signal {
        let mut changes = shared.changes.subscribe();
        let mut ended = self.ended.subscribe();
        Box::pin(async move {
            tokio::select! {
                _ = changes.changed() => {}
                _ = ended.wait_for(|e| *e) => {}
            }
        })
    }

    /// Applies a change to the registry and persists it; on any failure the registry is as
    /// before.
    fn change_registry<T>(
        &self,
        change: impl FnOnce(&mut Registry) -> Result<T, CoordError>,
    ) -> Result<T, CoordError> {
        let mut shared = self.lock()?;
        let before = shared.registry.clone();
        let outcome = change(&mut shared.registry).and_then(|t| shared.persist().map(|()| t));
        if outcome.is_err() {
            shared.registry = before;
        }
        outcome
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Shared>, CoordError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(CoordError::SessionEnded {
                source: "the coordinator was closed".into(),
            });
        }
        Ok(self.shared.lock().expect("embedded state lock poisoned"))
    }
}

impl Shared {
    /// Frees every lease a session holds.
    fn end_session(&mut self, session: u64) {
        for entry in self.units.values_mut() {
            if entry.holder.as_ref().is_some_and(|(s, _)| *s == session) {
                entry.holder = None;
            }
        }
        self.members.retain(|_, (s, _)| *s != session);
        self.registry.end_session(session);
        self.end_backfill_leases(session);
        self.end_view_leases(session);
        self.changed();
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }
}

#[async_trait]
impl Coordinator for EmbeddedCoordinator {
    async fn acquire_lease(&self, unit: &UnitId, worker_id: &str) -> Result<Lease, CoordError> {
        let mut shared = self.lock()?;
        if let Some(backfill) = shared.handoff_owner(unit) {
            return Err(CoordError::HandoffPending {
                unit: unit.clone(),
                backfill,
            });
        }
        let entry = shared.units.entry(unit.clone()).or_default();
        if let Some((session, holder)) = &entry.holder {
            // Already this session's: returned as it is, as the ZooKeeper backend does.
            if *session == self.session {
                return Ok(Lease {
                    unit: unit.clone(),
                    worker_id: holder.clone(),
                    epoch: entry.epoch,
                    token: entry.epoch as i64,
                });
            }
            return Err(CoordError::LeaseHeld {
                unit: unit.clone(),
                holder: holder.clone(),
            });
        }
        entry.epoch += 1;
        entry.holder = Some((self.session, worker_id.to_string()));
        let epoch = entry.epoch;
        shared.changed();
        shared.persist()?;
        Ok(Lease {
            unit: unit.clone(),
            worker_id: worker_id.to_string(),
            epoch,
            token: epoch as i64,
        })
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), CoordError> {
        let mut shared = self.lock()?;
        let mut released = false;
        if let Some(entry) = shared.units.get_mut(&lease.unit) {
            if entry.epoch == lease.epoch
                && entry
                    .holder
                    .as_ref()
                    .is_some_and(|(s, _)| *s == self.session)
            {
                entry.holder = None;
                released = true;
            }
        }
        if released {
            shared.changed();
        }
        Ok(())
    }

    async fn committed_offset(&self, unit: &UnitId) -> Result<Option<i64>, CoordError> {
        Ok(self.lock()?.units.get(unit).and_then(|e| e.next_offset))
    }

    async fn commit(&self, lease: &Lease, commit: &Commit) -> Result<(), CoordError> {
        self.commit_in(lease, commit)
    }

    async fn list_parts(&self, table: &str) -> Result<Vec<PartRecord>, CoordError> {
        Ok(self.lock()?.registry.list_parts(table))
    }

    async fn list_scopes(&self, table: &str) -> Result<Vec<ScopeSummary>, CoordError> {
        Ok(self.lock()?.registry.list_scopes(table))
    }

    async fn read_scope(&self, table: &str, value: &str) -> Result<ScopeListing, CoordError> {
        Ok(self.lock()?.registry.read_scope(table, value))
    }

    async fn acquire_merge_lease(
        &self,
        table: &str,
        value: &str,
        worker_id: &str,
    ) -> Result<MergeLease, CoordError> {
        let session = self.session;
        self.change_registry(|r| r.acquire(session, table, value, worker_id))
    }

    async fn release_merge_lease(&self, lease: &MergeLease) -> Result<(), CoordError> {
        self.lock()?.registry.release(self.session, lease);
        Ok(())
    }

    async fn swap(
        &self,
        lease: &MergeLease,
        inputs: &[PartRecord],
        output: &PartRecord,
        retired: &Retired,
    ) -> Result<(), CoordError> {
        let session = self.session;
        self.change_registry(|r| r.swap(session, lease, inputs, output, retired))
    }

    async fn seal(
        &self,
        lease: &MergeLease,
        parts: &[PartRecord],
        manifest: &SealedManifest,
        retired: Option<&Retired>,
    ) -> Result<(), CoordError> {
        let session = self.session;
        self.change_registry(|r| r.seal(session, lease, parts, manifest, retired))
    }

    async fn set_replicas(
        &self,
        part: &PartRecord,
        replicas: &[String],
    ) -> Result<bool, CoordError> {
        self.change_registry(|r| Ok(r.set_replicas(part, replicas)))
    }

    async fn claim_backfill(&self, plan: &BackfillPlan) -> Result<(), CoordError> {
        self.claim_backfill_in(plan)
    }

    async fn acquire_backfill_lease(
        &self,
        id: &str,
        holder: &str,
    ) -> Result<BackfillLease, CoordError> {
        self.acquire_backfill_lease_in(id, holder)
    }

    async fn release_backfill_lease(&self, lease: &BackfillLease) -> Result<(), CoordError> {
        self.release_backfill_lease_in(lease)
    }

    async fn stage_backfill_file(
        &self,
        lease: &BackfillLease,
        file: &StagedFile,
    ) -> Result<(), CoordError> {
        self.stage_backfill_file_in(lease, file)
    }

    async fn read_backfill(&self, id: &str) -> Result<Option<BackfillStatus>, CoordError> {
        self.read_backfill_in(id)
    }

    async fn list_backfills(&self) -> Result<Vec<BackfillStatus>, CoordError> {
        self.list_backfills_in()
    }

    async fn hand_off(&self, lease: &BackfillLease) -> Result<(), CoordError> {
        self.hand_off_in(lease)
    }

    async fn cancel_backfill(&self, lease: &BackfillLease) -> Result<(), CoordError> {
        self.cancel_backfill_in(lease)
    }

    async fn forget_backfill(&self, lease: &BackfillLease) -> Result<(), CoordError> {
        self.forget_backfill_in(lease)
    }

    async fn read_views(&self) -> Result<ViewRegistry, CoordError> {
        Ok(self.lock()?.read_views())
    }

    async fn init_views(&self, views: &[LiveView]) -> Result<ViewRegistry, CoordError> {
        self.init_views_of(views)
    }

    async fn activate_view(
        &self,
        expected_version: i64,
        view: &LiveView,
        units: &[UnitId],
    ) -> Result<(), CoordError> {
        self.activate_view_of(expected_version, view, units)
    }

    async fn drop_view(
        &self,
        expected_version: i64,
        name: &str,
        at_ms: i64,
    ) -> Result<(), CoordError> {
        self.drop_view_of(expected_version, name, at_ms)
    }

    async fn acquire_view_history_lease(
        &self,
        view: &str,
        worker_id: &str,
    ) -> Result<ViewHistoryLease, CoordError> {
        self.acquire_view_history_lease_of(view, worker_id)
    }

    async fn release_view_history_lease(&self, lease: &ViewHistoryLease) -> Result<(), CoordError> {
        self.release_view_history_lease_of(lease)
    }

    async fn complete_view_history(
        &self,
        lease: &ViewHistoryLease,
        parts: &[PartRecord],
        history: &ViewHistory,
    ) -> Result<(), CoordError> {
        self.complete_view_history_of(lease, parts, history)
    }

    async fn replace_range(
        &self,
        leases: &[MergeLease],
        views_version: i64,
        generation: &ReplayGeneration,
    ) -> Result<(), CoordError> {
        self.replace_range_in(leases, views_version, generation)
    }

    async fn roll_back_replay(
        &self,
        leases: &[MergeLease],
        id: &str,
        now_ms: i64,
    ) -> Result<ReplayGeneration, CoordError> {
        self.roll_back_replay_in(leases, id, now_ms)
    }

    async fn read_replay(&self, id: &str) -> Result<Option<ReplayGeneration>, CoordError> {
        self.read_replay_in(id)
    }

    async fn list_replays(&self) -> Result<Vec<ReplayGeneration>, CoordError> {
        self.list_replays_in()
    }

    async fn collect_replay(&self, id: &str) -> Result<Vec<Retired>, CoordError> {
        self.collect_replay_in(id)
    }

    async fn list_retired(&self, table: &str) -> Result<Vec<Retired>, CoordError> {
        Ok(self.lock()?.registry.list_retired(table))
    }

    async fn forget_retired(&self, retired: &Retired) -> Result<(), CoordError> {
        self.change_registry(|r| {
            r.forget_retired(retired);
            Ok(())
        })
    }

    async fn list_units(&self) -> Result<Vec<UnitState>, CoordError> {
        let shared = self.lock()?;
        let mut out: Vec<UnitState> = shared
            .units
            .iter()
            .map(|(unit, e)| UnitState {
                unit: unit.clone(),
                next_offset: e.next_offset,
                epoch: e.epoch,
                holder: e.holder.as_ref().map(|(_, w)| w.clone()),
            })
            .collect();
        out.sort_by(|a, b| a.unit.cmp(&b.unit));
        Ok(out)
    }

    async fn record_gap(&self, unit: &UnitId, gap: &Gap) -> Result<(), CoordError> {
        let mut shared = self.lock()?;
        shared
            .gaps
            .entry(unit.topic.clone())
            .or_default()
            .record(unit.partition, gap.clone());
        shared.persist()
    }

    async fn retention_gaps(&self, topic: &str) -> Result<RetentionGaps, CoordError> {
        Ok(self.lock()?.gaps.get(topic).cloned().unwrap_or_default())
    }

    async fn join(&self, member: &Member) -> Result<(), CoordError> {
        let mut shared = self.lock()?;
        if shared.members.contains_key(&member.id) {
            return Err(CoordError::MemberExists {
                id: member.id.clone(),
            });
        }
        shared
            .members
            .insert(member.id.clone(), (self.session, member.clone()));
        shared.changed();
        Ok(())
    }

    async fn leave(&self, member_id: &str) -> Result<(), CoordError> {
        let mut shared = self.lock()?;
        if shared
            .members
            .get(member_id)
            .is_some_and(|(s, _)| *s == self.session)
        {
            shared.members.remove(member_id);
            shared.changed();
        }
        Ok(())
    }

    async fn watch_members(&self) -> Result<(Vec<Member>, Signal), CoordError> {
        let shared = self.lock()?;
        let members = shared.members.values().map(|(_, m)| m.clone()).collect();
        Ok((members, self.change_signal(&shared)))
    }

    async fn watch_lease(&self, unit: &UnitId) -> Result<(Option<String>, Signal), CoordError> {
        let shared = self.lock()?;
        let holder = shared
            .units
            .get(unit)
            .and_then(|e| e.holder.as_ref().map(|(_, w)| w.clone()));
        Ok((holder, self.change_signal(&shared)))
    }

    fn session_ended(&self) -> Signal {
        let mut ended = self.ended.subscribe();
        Box::pin(async move {
            let _ = ended.wait_for(|e| *e).await;
        })
    }

    async fn close(&self) -> Result<(), CoordError> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.shared
            .lock()
            .expect("embedded state lock poisoned")
            .end_session(self.session);
        self.ended.send_replace(true);
        Ok(())
    }
}

impl Drop for EmbeddedCoordinator {
    fn drop(&mut self) {
        // A dropped handle is an ended session, as with ZooKeeper.
        if !self.closed.load(Ordering::SeqCst) {
            if let Ok(mut shared) = self.shared.lock() {
                shared.end_session(self.session);
            }
            self.ended.send_replace(true);
        }
    }
}

#[cfg(test)]
mod tests;
