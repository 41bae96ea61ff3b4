//! Backfills in ZooKeeper.
//!
//! ```text
//! R/backfills/<id>                 data = BackfillState JSON; its version fences the lease
//! R/backfills/<id>/lease           ephemeral; data = {"worker": .., "epoch": ..}
//! R/backfills/<id>/files/<index>   data = StagedFile JSON, until the handoff
//! R/units/<topic>/<partition>/handoff   data = backfill id, from the claim to the handoff
//! ```
//!
//! The claim is one multi-op: the backfill's znode, and per partition a check that its offset
//! is still empty (at the version read) and the `handoff` node that keeps workers off it. The
//! handoff is one multi-op too: the backfill's state at the lease's version, each partition's
//! offset at the version read (still empty), the `handoff` nodes deleted, the part records
//! created, the staged file nodes deleted. Nothing of a finished backfill stays but its one
//! state znode.

use std::collections::BTreeMap;

use zookeeper_client as zk;

use super::leases::{take, Taken};
use super::nodes::{
    again, backend, encode_segment, multi_size, LeaseData, Patience, MAX_MULTI_BYTES,
};
use super::scopes::set_version;
use super::ZkCoordinator;
use crate::{
    BackfillLease, BackfillPlan, BackfillState, BackfillStatus, CoordError, StagedFile, UnitId,
};

impl ZkCoordinator {
    fn backfills_dir(&self) -> String {
        format!("{}/backfills", self.root)
    }

    pub(super) fn backfill_path(&self, id: &str) -> String {
        format!("{}/{}", self.backfills_dir(), encode_segment(id))
    }

    pub(super) fn handoff_path(&self, unit: &UnitId) -> String {
        format!("{}/handoff", self.unit_dir(unit))
    }

    /// The backfill that owns `unit`'s handoff, if one does.
    pub(super) async fn handoff_owner(
        &self,
        client: &zk::Client,
        unit: &UnitId,
    ) -> Result<Option<String>, CoordError> {
        let path = self.handoff_path(unit);
        match again(|| client.get_data(&path)).await {
            Ok((data, _)) => Ok(Some(String::from_utf8_lossy(&data).into_owned())),
            Err(zk::Error::NoNode) => Ok(None),
            Err(e) => Err(backend(&path, e)),
        }
    }

    pub(super) async fn read_state(
        client: &zk::Client,
        path: &str,
    ) -> Result<Option<(BackfillState, i32)>, CoordError> {
        match again(|| client.get_data(path)).await {
            Ok((data, stat)) => serde_json::from_slice(&data)
                .map(|s| Some((s, stat.version)))
                .map_err(|e| CoordError::Corrupt {
                    path: path.to_string(),
                    source: e.into(),
                }),
            Err(zk::Error::NoNode) => Ok(None),
            Err(e) => Err(backend(path, e)),
        }
    }

    /// Each planned partition's offset node version, read while it is still empty.
    pub(super) async fn empty_offsets(
        &self,
        client: &zk::Client,
        plan: &BackfillPlan,
    ) -> Result<BTreeMap<i32, i32>, CoordError> {
        let mut versions = BTreeMap::new();
        for &p in plan.offsets.keys() {
            let unit = UnitId::new(plan.topic.clone(), p);
            let path = format!("{}/offset", self.unit_dir(&unit));
            let (data, stat) = again(|| client.get_data(&path))
                .await
                .map_err(|e| backend(&path, e))?;
            if let Some(next_offset) = Self::parse_i64(&path, &data)? {
                return Err(CoordError::AlreadyCommitted { unit, next_offset });
            }
            versions.insert(p, stat.version);
        }
        Ok(versions)
    }

    pub(super) async fn claim_backfill_of(&self, plan: &BackfillPlan) -> Result<(), CoordError> {
        let client = self.client()?;
        let path = self.backfill_path(&plan.id);
        self.ensure_dir(&client, &self.backfills_dir()).await?;
        let mut patience = Patience::new();
        loop {
            if let Some((state, _)) = Self::read_state(&client, &path).await? {
                return crate::backfill::reclaim(&state.plan, plan);
            }
            for &p in plan.offsets.keys() {
                let unit = UnitId::new(plan.topic.clone(), p);
                let dir = self.unit_dir(&unit);
                let options = self.persistent();
                again(|| client.mkdir(&dir, &options))
                    .await
                    .map_err(|e| backend(&dir, e))?;
                self.create_if_missing(&client, &format!("{dir}/epoch"), b"0")
                    .await?;
                self.create_if_missing(&client, &format!("{dir}/offset"), b"")
                    .await?;
                if let Some(h) = Self::read_lease_holder(&client, &format!("{dir}/lease")).await? {
                    return Err(CoordError::LeaseHeld {
                        unit,
                        holder: h.worker,
                    });
                }
                if let Some(backfill) = self.handoff_owner(&client, &unit).await? {
                    return Err(CoordError::HandoffPending { unit, backfill });
                }
            }
            let versions = self.empty_offsets(&client, plan).await?;
            let state = BackfillState::claimed(plan);
            let data = serde_json::to_vec(&state).expect("backfill state serializes");
            let files = format!("{path}/files");
            let mut multi = client.new_multi_writer();
            let add = |e| backend(&path, e);
            multi
                .add_create(&path, &data, &self.persistent())
                .map_err(add)?;
            multi
                .add_create(&files, &[], &self.persistent())
                .map_err(add)?;
            let mut units = Vec::new();
            for (&p, &version) in &versions {
                let unit = UnitId::new(plan.topic.clone(), p);
                let offset = format!("{}/offset", self.unit_dir(&unit));
                multi.add_check_version(&offset, version).map_err(add)?;
                let marker = self.handoff_path(&unit);
                multi
                    .add_create(&marker, plan.id.as_bytes(), &self.persistent())
                    .map_err(add)?;
                units.push(unit);
            }
            // Serialised with a view going live: the claim moves the view registry's version
            // (same content), so an activation that read the registry before fails and sees
            // the claim when it tries again, and a backfill applies the views live after it.
            let views_index = 2 + 2 * units.len();
            let views = self.views_path();
            if let Ok((data, stat)) = again(|| client.get_data(&views)).await {
                multi
                    .add_set_data(&views, &data, Some(stat.version))
                    .map_err(add)?;
            }
            match multi.commit().await {
                Ok(_) => return Ok(()),
                Err(zk::MultiWriteError::OperationFailed { index, source })
                    if index == views_index =>
                {
                    tracing::debug!(error = %source, "the claim raced a change of the view registry; reading again");
                }
                // Claimed meanwhile (by a request of ours whose reply was lost, or another):
                // the state read says which.
                Err(zk::MultiWriteError::OperationFailed { index: 0, .. }) => {}
                Err(zk::MultiWriteError::OperationFailed { index, source }) if index >= 2 => {
                    let unit = &units[(index - 2) / 2];
                    if index % 2 == 1 {
                        if let Some(backfill) = self.handoff_owner(&client, unit).await? {
                            return Err(CoordError::HandoffPending {
                                unit: unit.clone(),
                                backfill,
                            });
                        }
                    }
                    // An offset moved: the next round reads it (and refuses if committed).
                    tracing::debug!(unit = %unit, error = %source, "the claim raced a change; reading again");
                }
                Err(zk::MultiWriteError::RequestFailed { source })
                    if super::nodes::unanswered(&source) && patience.wait().await => {}
                Err(e) => return Err(backend(&path, e.into())),
            }
        }
    }

    pub(super) async fn acquire_backfill_lease_of(
        &self,
        id: &str,
        holder: &str,
    ) -> Result<BackfillLease, CoordError> {
        let client = self.client()?;
        let path = self.backfill_path(id);
        let lease_path = format!("{path}/lease");
        let mut patience = Patience::new();
        loop {
            let (mut state, version) = Self::read_state(&client, &path)
                .await?
                .ok_or_else(|| CoordError::NoBackfill { id: id.to_string() })?;
            state.epoch += 1;
            let data = serde_json::to_vec(&LeaseData {
                worker: holder.to_string(),
                epoch: state.epoch,
                session: 0,
            })
            .expect("lease data serializes");
            let mut multi = client.new_multi_writer();
            multi
                .add_create(&lease_path, &data, &self.ephemeral())
                .map_err(|e| backend(&lease_path, e))?;
            let bytes = serde_json::to_vec(&state).expect("backfill state serializes");
            multi
                .add_set_data(&path, &bytes, Some(version))
                .map_err(|e| backend(&path, e))?;
            let (epoch, token) = match take(&client, &lease_path, multi, &mut patience).await? {
                Taken::Now(results) => {
                    (state.epoch, set_version(&results, 1).unwrap_or(version + 1))
                }
                // Only the lease holder writes the state: its version is the one we left.
                Taken::Before(h) => {
                    let (_, version) = Self::read_state(&client, &path)
                        .await?
                        .ok_or_else(|| CoordError::NoBackfill { id: id.to_string() })?;
                    (h.epoch, version)
                }
                Taken::Held(h) => {
                    return Err(CoordError::BackfillHeld {
                        id: id.to_string(),
                        holder: h.worker,
                    })
                }
                Taken::Again => continue,
            };
            return Ok(BackfillLease {
                id: id.to_string(),
                holder: holder.to_string(),
                epoch,
                token: i64::from(token),
            });
        }
    }

    pub(super) async fn release_backfill_lease_of(
        &self,
        lease: &BackfillLease,
    ) -> Result<(), CoordError> {
        let client = self.client()?;
        let path = format!("{}/lease", self.backfill_path(&lease.id));
        self.delete_own_ephemeral(&client, &path).await
    }

    pub(super) async fn stage_backfill_file_of(
        &self,
        lease: &BackfillLease,
        file: &StagedFile,
    ) -> Result<(), CoordError> {
        let client = self.client()?;
        let path = self.backfill_path(&lease.id);
        let node = format!("{path}/files/{}", file.index);
        let data = serde_json::to_vec(file).expect("staged file serializes");
        if multi_size([(node.as_str(), data.len())]) > MAX_MULTI_BYTES {
            return Err(CoordError::TooLarge {
                what: format!(
                    "the {} parts staged for file {}",
                    file.parts.len(),
                    file.index
                ),
                bytes: data.len(),
                limit: MAX_MULTI_BYTES,
            });
        }
        let mut patience = Patience::new();
        loop {
            let mut multi = client.new_multi_writer();
            multi
                .add_check_version(&path, lease.token as i32)
                .map_err(|e| backend(&path, e))?;
            multi
                .add_create(&node, &data, &self.persistent())
                .map_err(|e| backend(&node, e))?;
            match multi.commit().await {
                Ok(_) => return Ok(()),
                Err(zk::MultiWriteError::OperationFailed { index: 0, .. }) => {
                    return Err(CoordError::BackfillLeaseLost {
                        id: lease.id.clone(),
                        epoch: lease.epoch,
                    })
                }
                // Staged by a request of ours whose reply was lost, or by an earlier holder: the
                // conversion is deterministic, so the same parts are there.
                Err(zk::MultiWriteError::OperationFailed {
                    index: 1,
                    source: zk::Error::NodeExists,
                }) => return Ok(()),
                Err(zk::MultiWriteError::RequestFailed { source })
                    if super::nodes::unanswered(&source) && patience.wait().await => {}
                Err(e) => return Err(backend(&node, e.into())),
            }
        }
    }

    pub(super) async fn read_backfill_of(
        &self,
        id: &str,
    ) -> Result<Option<BackfillStatus>, CoordError> {
        let client = self.client()?;
        let path = self.backfill_path(id);
        let Some((state, _)) = Self::read_state(&client, &path).await? else {
            return Ok(None);
        };
        let holder = Self::read_lease_holder(&client, &format!("{path}/lease"))
            .await?
            .map(|h| h.worker);
        let mut staged = BTreeMap::new();
        let files = format!("{path}/files");
        for name in Self::list(&client, &files).await? {
            let node = format!("{files}/{name}");
            match again(|| client.get_data(&node)).await {
                Ok((data, _)) => {
                    let file: StagedFile =
                        serde_json::from_slice(&data).map_err(|e| CoordError::Corrupt {
                            path: node.clone(),
                            source: e.into(),
                        })?;
                    staged.insert(file.index, file);
                }
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(backend(&node, e)),
            }
        }
        Ok(Some(BackfillStatus {
            state,
            holder,
            staged,
        }))
    }

    pub(super) async fn list_backfills_of(&self) -> Result<Vec<BackfillStatus>, CoordError> {
        let client = self.client()?;
        let mut out = Vec::new();
        for name in Self::list(&client, &self.backfills_dir()).await? {
            let id = super::scopes::decode_segment(&name);
            if let Some(status) = self.read_backfill_of(&id).await? {
                out.push(status);
            }
        }
        Ok(out)
    }
}
