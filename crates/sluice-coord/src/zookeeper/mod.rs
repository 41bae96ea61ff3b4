//! The ZooKeeper backend.
//!
//! Layout under the deployment root `R`:
//!
//! ```text
//! R/units/<topic>/<partition>/epoch    persistent; data = current epoch; its version fences commits
//! R/units/<topic>/<partition>/offset   persistent; data = next offset ("" before the first commit)
//! R/units/<topic>/<partition>/lease    ephemeral;  data = {"worker": .., "epoch": ..}
//! R/tables/<table>/parts/<partition value>/<part name>    data = PartRecord JSON
//! R/tables/<table>/...                 scopes, merge leases, retired objects: see `scopes.rs`
//! R/units/<topic>/<partition>/handoff  persistent; data = backfill id, while one claims it
//! R/backfills/<id>/...                 a backfill's state and staged parts: see `backfills.rs`
//! R/members/<worker id>                ephemeral;  data = Member JSON
//! R/views, R/view-history/<view>/...   the view registry: see `views.rs`
//! ```
//!
//! Taking a lease creates the ephemeral `lease` node and bumps `epoch` in one multi-op, so every
//! acquisition changes the epoch node's version. A commit is one multi-op: check that version,
//! set `offset`, create the part nodes. A zombie whose lease was taken over holds a stale version
//! and its commit fails as a whole. (Checking the `lease` node's own version would not fence: a
//! re-created ephemeral node starts again at version 0.)
//!
//! Parts are grouped by table and partition-key value (a scope), so no children list grows with
//! the whole table: merges bound a scope's parts (`merge.hard_parts_per_scope`, at most 5,000 so
//! a listing stays far inside ZooKeeper's 1 MB answers), and sealing replaces a quiet scope's
//! records by one manifest pointer. Every multi-op is checked against a byte budget first.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};

use async_trait::async_trait;
use zookeeper_client as zk;

use crate::{
    BackfillLease, BackfillPlan, BackfillStatus, Commit, CoordError, Coordinator, Gap, Lease,
    LiveView, Member, MergeLease, PartRecord, ReplayGeneration, RetentionGaps, Retired,
    ScopeListing, ScopeSummary, SealedManifest, Signal, StagedFile, UnitId, UnitState, ViewHistory,
    ViewHistoryLease, ViewRegistry,
};

mod auth;
mod backfills;
mod commit;
mod connect;

pub use auth::Credentials;
pub use tls::{ZkSecurity, ZkTls};
mod gaps;
mod handoff;
mod leases;
mod nodes;
mod replays;
mod scopes;
mod tls;
mod views;

use nodes::{again, backend, encode_segment, unanswered, Patience};

/// Coordinator over a ZooKeeper ensemble. One session per instance.
pub struct ZkCoordinator {
    client: RwLock<Option<zk::Client>>,
    connect: String,
    root: String,
    /// Version of each held unit's `offset` node, so a commit can compare-and-set it.
    offset_versions: Mutex<HashMap<UnitId, i32>>,
    /// Scope directories known to exist, to skip re-creating them on every commit.
    known_dirs: Mutex<HashSet<String>>,
    /// Version of each scope's znode as this session's merge lease last left it.
    scope_versions: Mutex<HashMap<(String, String), i32>>,
    /// Set by `close`: dropping the client does not always deliver a terminal session state.
    closed: tokio::sync::watch::Sender<bool>,
    /// The ACL of every znode this deployment creates (`auth.rs`).
    acls: Vec<zk::Acl>,
    /// The identity's rights on the deployment root, and whether anyone may change what is
    /// under it; read at connect.
    access: Access,
}

/// What the deployment root's ACL grants, read at connect.
#[derive(Debug, Clone, Copy)]
struct Access {
    may_write: bool,
    open_to_anyone: bool,
}

impl std::fmt::Debug for ZkCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkCoordinator")
            .field("connect", &self.connect)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl ZkCoordinator {
    fn member_path(&self, id: &str) -> String {
        format!("{}/members/{}", self.root, encode_segment(id))
    }

    fn client(&self) -> Result<zk::Client, CoordError> {
        self.client
            .read()
            .expect("client lock poisoned")
            .clone()
            .ok_or_else(|| CoordError::SessionEnded {
                source: "the coordinator was closed".into(),
            })
    }

    /// Whether the session still stands (it does not once expired or closed).
    pub fn session_alive(&self) -> bool {
        match self.client.read().expect("client lock poisoned").as_ref() {
            Some(c) => !matches!(
                c.state(),
                zk::SessionState::Expired | zk::SessionState::Closed | zk::SessionState::AuthFailed
            ),
            None => false,
        }
    }

    fn unit_dir(&self, unit: &UnitId) -> String {
        format!(
            "{}/units/{}/{}",
            self.root,
            encode_segment(&unit.topic),
            unit.partition
        )
    }
}

#[async_trait]
impl Coordinator for ZkCoordinator {
    async fn acquire_lease(&self, unit: &UnitId, worker_id: &str) -> Result<Lease, CoordError> {
        self.acquire_lease_of(unit, worker_id).await
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), CoordError> {
        self.release_lease_of(lease).await
    }

    async fn committed_offset(&self, unit: &UnitId) -> Result<Option<i64>, CoordError> {
        let client = self.client()?;
        let path = format!("{}/offset", self.unit_dir(unit));
        match again(|| client.get_data(&path)).await {
            Ok((data, stat)) => {
                // After a commit whose reply was lost the cached version is behind the one this
                // lease holder wrote; reading the offset back is how the holder learns it, so
                // it can commit on. Versions only grow, and a concurrent reader may have read an
                // older one: keep the newest.
                if let Some(v) = self
                    .offset_versions
                    .lock()
                    .expect("offset lock poisoned")
                    .get_mut(unit)
                {
                    *v = (*v).max(stat.version);
                }
                Self::parse_i64(&path, &data)
            }
            Err(zk::Error::NoNode) => Ok(None),
            Err(e) => Err(backend(&path, e)),
        }
    }

    async fn commit(&self, lease: &Lease, commit: &Commit) -> Result<(), CoordError> {
        self.commit_of(lease, commit).await
    }

    async fn list_parts(&self, table: &str) -> Result<Vec<PartRecord>, CoordError> {
        let mut parts = Vec::new();
        for scope in self.list_scopes_of(table).await? {
            parts.extend(
                self.read_scope_of(table, &scope.partition_value)
                    .await?
                    .parts,
            );
        }
        Ok(parts)
    }

    async fn list_scopes(&self, table: &str) -> Result<Vec<ScopeSummary>, CoordError> {
        self.list_scopes_of(table).await
    }

    async fn read_scope(&self, table: &str, value: &str) -> Result<ScopeListing, CoordError> {
        self.read_scope_of(table, value).await
    }

    async fn acquire_merge_lease(
        &self,
        table: &str,
        value: &str,
        worker_id: &str,
    ) -> Result<MergeLease, CoordError> {
        self.acquire_merge_lease_of(table, value, worker_id).await
    }

    async fn release_merge_lease(&self, lease: &MergeLease) -> Result<(), CoordError> {
        self.release_merge_lease_of(lease).await
    }

    async fn swap(
        &self,
        lease: &MergeLease,
        inputs: &[PartRecord],
        output: &PartRecord,
        retired: &Retired,
    ) -> Result<(), CoordError> {
        self.swap_of(lease, inputs, output, retired).await
    }

    async fn seal(
        &self,
        lease: &MergeLease,
        parts: &[PartRecord],
        manifest: &SealedManifest,
        retired: Option<&Retired>,
    ) -> Result<(), CoordError> {
        self.seal_of(lease, parts, manifest, retired).await
    }

    async fn set_replicas(
        &self,
        part: &PartRecord,
        replicas: &[String],
    ) -> Result<bool, CoordError> {
        self.set_replicas_of(part, replicas).await
    }

    async fn claim_backfill(&self, plan: &BackfillPlan) -> Result<(), CoordError> {
        self.claim_backfill_of(plan).await
    }

    async fn acquire_backfill_lease(
        &self,
        id: &str,
        holder: &str,
    ) -> Result<BackfillLease, CoordError> {
        self.acquire_backfill_lease_of(id, holder).await
    }

    async fn release_backfill_lease(&self, lease: &BackfillLease) -> Result<(), CoordError> {
        self.release_backfill_lease_of(lease).await
    }

    async fn stage_backfill_file(
        &self,
        lease: &BackfillLease,
        file: &StagedFile,
    ) -> Result<(), CoordError> {
        self.stage_backfill_file_of(lease, file).await
    }

    async fn read_backfill(&self, id: &str) -> Result<Option<BackfillStatus>, CoordError> {
        self.read_backfill_of(id).await
    }

    async fn list_backfills(&self) -> Result<Vec<BackfillStatus>, CoordError> {
        self.list_backfills_of().await
    }

    async fn hand_off(&self, lease: &BackfillLease) -> Result<(), CoordError> {
        self.hand_off_of(lease).await
    }

    async fn cancel_backfill(&self, lease: &BackfillLease) -> Result<(), CoordError> {
        self.cancel_backfill_of(lease).await
    }

    async fn forget_backfill(&self, lease: &BackfillLease) -> Result<(), CoordError> {
        self.forget_backfill_of(lease).await
    }

    async fn read_views(&self) -> Result<ViewRegistry, CoordError> {
        self.read_views_of().await
    }

    async fn init_views(&self, views: &[LiveView]) -> Result<ViewRegistry, CoordError> {
        self.init_views_of(views).await
    }

    async fn activate_view(
        &self,
        expected_version: i64,
        view: &LiveView,
        units: &[UnitId],
    ) -> Result<(), CoordError> {
        self.activate_view_of(expected_version, view, units).await
    }

    async fn drop_view(
        &self,
        expected_version: i64,
        name: &str,
        at_ms: i64,
    ) -> Result<(), CoordError> {
        self.drop_view_of(expected_version, name, at_ms).await
    }

    async fn acquire_view_history_lease(
        &self,
        view: &str,
        worker_id: &str,
    ) -> Result<ViewHistoryLease, CoordError> {
        self.acquire_view_history_lease_of(view, worker_id).await
    }

    async fn release_view_history_lease(&self, lease: &ViewHistoryLease) -> Result<(), CoordError> {
        self.release_view_history_lease_of(lease).await
    }

    async fn complete_view_history(
        &self,
        lease: &ViewHistoryLease,
        parts: &[PartRecord],
        history: &ViewHistory,
    ) -> Result<(), CoordError> {
        self.complete_view_history_of(lease, parts, history).await
    }

    async fn replace_range(
        &self,
        leases: &[MergeLease],
        views_version: i64,
        generation: &ReplayGeneration,
    ) -> Result<(), CoordError> {
        self.replace_range_of(leases, views_version, generation)
            .await
    }

    async fn roll_back_replay(
        &self,
        leases: &[MergeLease],
        id: &str,
        now_ms: i64,
    ) -> Result<ReplayGeneration, CoordError> {
        self.roll_back_replay_of(leases, id, now_ms).await
    }

    async fn read_replay(&self, id: &str) -> Result<Option<ReplayGeneration>, CoordError> {
        self.read_replay_of(id).await
    }

    async fn list_replays(&self) -> Result<Vec<ReplayGeneration>, CoordError> {
        self.list_replays_of().await
    }

    async fn collect_replay(&self, id: &str) -> Result<Vec<Retired>, CoordError> {
        self.collect_replay_of(id).await
    }

    async fn list_retired(&self, table: &str) -> Result<Vec<Retired>, CoordError> {
        self.list_retired_of(table).await
    }

    async fn forget_retired(&self, retired: &Retired) -> Result<(), CoordError> {
        self.forget_retired_of(retired).await
    }

    async fn record_gap(&self, unit: &UnitId, gap: &Gap) -> Result<(), CoordError> {
        self.record_gap_of(unit, gap).await
    }

    async fn retention_gaps(&self, topic: &str) -> Result<RetentionGaps, CoordError> {
        self.retention_gaps_of(topic).await
    }

    async fn list_units(&self) -> Result<Vec<UnitState>, CoordError> {
        let client = self.client()?;
        let units_dir = format!("{}/units", self.root);
        let mut out = Vec::new();
        for topic in Self::list(&client, &units_dir).await? {
            for partition in Self::list(&client, &format!("{units_dir}/{topic}")).await? {
                let Ok(partition_no) = partition.parse::<i32>() else {
                    continue;
                };
                let unit = UnitId::new(topic.replace("%2F", "/").replace("%25", "%"), partition_no);
                let dir = format!("{units_dir}/{topic}/{partition}");
                let next_offset = self.committed_offset(&unit).await?;
                let epoch_path = format!("{dir}/epoch");
                let epoch = match client.get_data(&epoch_path).await {
                    Ok((data, _)) => Self::parse_i64(&epoch_path, &data)?.unwrap_or(0) as u64,
                    Err(zk::Error::NoNode) => 0,
                    Err(e) => return Err(backend(&epoch_path, e)),
                };
                let holder = Self::read_lease_holder(&client, &format!("{dir}/lease"))
                    .await?
                    .map(|h| h.worker);
                out.push(UnitState {
                    unit,
                    next_offset,
                    epoch,
                    holder,
                });
            }
        }
        out.sort_by(|a, b| a.unit.cmp(&b.unit));
        Ok(out)
    }

    async fn join(&self, member: &Member) -> Result<(), CoordError> {
        let client = self.client()?;
        let dir = format!("{}/members", self.root);
        self.ensure_dir(&client, &dir).await?;
        let path = self.member_path(&member.id);
        let data = serde_json::to_vec(member).expect("member serializes");
        let ephemeral = self.ephemeral();
        let mut patience = Patience::new();
        let mut asked_before = false;
        loop {
            match client.create(&path, &data, &ephemeral).await {
                Ok(_) => return Ok(()),
                Err(zk::Error::NodeExists) => {
                    // After a request whose reply was lost, a node of this session is ours.
                    let ours = asked_before
                        && again(|| client.check_stat(&path))
                            .await
                            .map_err(|e| backend(&path, e))?
                            .is_some_and(|s| s.ephemeral_owner == client.session_id().0);
                    return if ours {
                        Ok(())
                    } else {
                        Err(CoordError::MemberExists {
                            id: member.id.clone(),
                        })
                    };
                }
                Err(e) if unanswered(&e) && patience.wait().await => asked_before = true,
                Err(e) => return Err(backend(&path, e)),
            }
        }
    }

    async fn leave(&self, member_id: &str) -> Result<(), CoordError> {
        let client = self.client()?;
        // Only our own registration: another live worker may have taken the id since.
        self.delete_own_ephemeral(&client, &self.member_path(member_id))
            .await
    }

    async fn watch_members(&self) -> Result<(Vec<Member>, Signal), CoordError> {
        let client = self.client()?;
        let dir = format!("{}/members", self.root);
        self.ensure_dir(&client, &dir).await?;
        let (children, _, watcher) = again(|| client.get_and_watch_children(&dir))
            .await
            .map_err(|e| backend(&dir, e))?;
        let mut members = Vec::with_capacity(children.len());
        for child in children {
            let path = format!("{dir}/{child}");
            match again(|| client.get_data(&path)).await {
                Ok((data, _)) => {
                    members.push(serde_json::from_slice::<Member>(&data).map_err(|e| {
                        CoordError::Corrupt {
                            path: path.clone(),
                            source: e.into(),
                        }
                    })?)
                }
                // Left between the listing and the read; the watch fires for it.
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(backend(&path, e)),
            }
        }
        members.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((
            members,
            Box::pin(async move {
                watcher.changed().await;
            }),
        ))
    }

    async fn watch_lease(&self, unit: &UnitId) -> Result<(Option<String>, Signal), CoordError> {
        let client = self.client()?;
        let path = format!("{}/lease", self.unit_dir(unit));
        let (stat, watcher) = again(|| client.check_and_watch_stat(&path))
            .await
            .map_err(|e| backend(&path, e))?;
        let holder = match stat {
            Some(_) => Self::read_lease_holder(&client, &path)
                .await?
                .map(|h| h.worker),
            None => None,
        };
        Ok((
            holder,
            Box::pin(async move {
                watcher.changed().await;
            }),
        ))
    }

    fn session_ended(&self) -> Signal {
        let state = self
            .client
            .read()
            .expect("client lock poisoned")
            .as_ref()
            .map(zk::Client::state_watcher);
        let mut closed = self.closed.subscribe();
        Box::pin(async move {
            let Some(mut watcher) = state else { return };
            let ended = async move {
                let mut s = watcher.state();
                while !s.is_terminated() {
                    s = watcher.changed().await;
                }
            };
            tokio::select! {
                () = ended => {}
                _ = closed.wait_for(|c| *c) => {}
            }
        })
    }

    fn may_write(&self) -> bool {
        ZkCoordinator::may_write(self)
    }

    fn open_to_anyone(&self) -> bool {
        ZkCoordinator::open_to_anyone(self)
    }

    fn connected(&self) -> bool {
        self.client
            .read()
            .expect("client lock poisoned")
            .as_ref()
            .is_some_and(|c| c.state() == zk::SessionState::SyncConnected)
    }

    async fn close(&self) -> Result<(), CoordError> {
        // Dropping the last handle closes the session, which deletes its ephemeral nodes.
        let client = self.client.write().expect("client lock poisoned").take();
        if let Some(client) = client {
            if client.state() != zk::SessionState::SyncConnected {
                // No server to close it through: it may live on in the ensemble (see
                // `end_abandoned`), holding leases this worker's next session waits for.
                tokio::spawn(connect::end_abandoned(
                    self.connect.clone(),
                    client.session().clone(),
                    client.session_timeout(),
                ));
            }
        }
        self.closed.send_replace(true);
        Ok(())
    }
}
