//! Taking and giving up leases, a unit's and a scope's merge lease, across lost connections.
//!
//! Taking one is a multi-op (create the ephemeral lease node, bump the epoch at the version
//! read). When its reply is lost (a leader election, a server restart) the outcome is unknown,
//! so it is sent again once the connection is back: if the first one was applied, the second
//! finds the lease node, and a lease node that belongs to this very session is the lease asked
//! for, adopted with the epoch it records. Giving one up is sent again the same way; a second
//! release of a lease already released changes nothing.

use zookeeper_client as zk;

use super::nodes::{again, backend, unanswered, LeaseData, Patience};
use super::scopes::{set_version, state_bytes};
use super::ZkCoordinator;
use crate::{CoordError, Lease, MergeLease, UnitId};

impl ZkCoordinator {
    pub(super) async fn acquire_lease_of(
        &self,
        unit: &UnitId,
        worker_id: &str,
    ) -> Result<Lease, CoordError> {
        let client = self.client()?;
        let dir = self.unit_dir(unit);
        let options = self.persistent();
        again(|| client.mkdir(&dir, &options))
            .await
            .map_err(|e| backend(&dir, e))?;
        let epoch_path = format!("{dir}/epoch");
        let offset_path = format!("{dir}/offset");
        let lease_path = format!("{dir}/lease");
        self.create_if_missing(&client, &epoch_path, b"0").await?;
        self.create_if_missing(&client, &offset_path, b"").await?;
        // A claim made after this read is still safe: the handoff sets the offset only where
        // none was committed, so a commit of this lease's makes the backfill's handoff refuse.
        if let Some(backfill) = self.handoff_owner(&client, unit).await? {
            return Err(CoordError::HandoffPending {
                unit: unit.clone(),
                backfill,
            });
        }

        let mut patience = Patience::new();
        let (epoch, token) = loop {
            let (data, stat) = again(|| client.get_data(&epoch_path))
                .await
                .map_err(|e| backend(&epoch_path, e))?;
            let current = Self::parse_i64(&epoch_path, &data)?.unwrap_or(0);
            let epoch = u64::try_from(current).unwrap_or(0) + 1;
            let lease_data = serde_json::to_vec(&LeaseData {
                worker: worker_id.to_string(),
                epoch,
                session: 0,
            })
            .expect("lease data serializes");
            let mut multi = client.new_multi_writer();
            let ephemeral = self.ephemeral();
            multi
                .add_create(&lease_path, &lease_data, &ephemeral)
                .map_err(|e| backend(&lease_path, e))?;
            multi
                .add_set_data(
                    &epoch_path,
                    epoch.to_string().as_bytes(),
                    Some(stat.version),
                )
                .map_err(|e| backend(&epoch_path, e))?;
            match take(&client, &lease_path, multi, &mut patience).await? {
                Taken::Now(_) => break (epoch, i64::from(stat.version) + 1),
                Taken::Before(h) => break self.adopt_lease(&client, &epoch_path, &h).await?,
                Taken::Held(h) => {
                    return Err(CoordError::LeaseHeld {
                        unit: unit.clone(),
                        holder: h.worker,
                    })
                }
                Taken::Again => {}
            }
        };
        let (_, offset_stat) = again(|| client.get_data(&offset_path))
            .await
            .map_err(|e| backend(&offset_path, e))?;
        self.offset_versions
            .lock()
            .expect("offset lock poisoned")
            .insert(unit.clone(), offset_stat.version);
        Ok(Lease {
            unit: unit.clone(),
            worker_id: worker_id.to_string(),
            epoch,
            token,
        })
    }

    /// The epoch and fencing token of a lease this session took by a request whose reply was
    /// lost: nobody else can bump the epoch while the lease node stands, so the epoch node is as
    /// that request left it.
    async fn adopt_lease(
        &self,
        client: &zk::Client,
        epoch_path: &str,
        holder: &LeaseData,
    ) -> Result<(u64, i64), CoordError> {
        let (data, stat) = again(|| client.get_data(epoch_path))
            .await
            .map_err(|e| backend(epoch_path, e))?;
        let current = Self::parse_i64(epoch_path, &data)?.unwrap_or(0);
        if u64::try_from(current).ok() != Some(holder.epoch) {
            return Err(CoordError::Corrupt {
                path: epoch_path.to_string(),
                source: format!(
                    "this session's lease records epoch {}, the epoch node says {current}",
                    holder.epoch
                )
                .into(),
            });
        }
        Ok((holder.epoch, i64::from(stat.version)))
    }

    pub(super) async fn release_lease_of(&self, lease: &Lease) -> Result<(), CoordError> {
        let client = self.client()?;
        let dir = self.unit_dir(&lease.unit);
        let epoch_path = format!("{dir}/epoch");
        let lease_path = format!("{dir}/lease");
        let mut patience = Patience::new();
        loop {
            let mut multi = client.new_multi_writer();
            multi
                .add_check_version(&epoch_path, lease.token as i32)
                .map_err(|e| backend(&epoch_path, e))?;
            multi
                .add_delete(&lease_path, None)
                .map_err(|e| backend(&lease_path, e))?;
            match multi.commit().await {
                // Failed: already lost, already gone, or released by the attempt whose reply
                // was lost; nothing of ours is left to release.
                Ok(_) | Err(zk::MultiWriteError::OperationFailed { .. }) => break,
                Err(zk::MultiWriteError::RequestFailed { source })
                    if unanswered(&source) && patience.wait().await => {}
                Err(e) => return Err(backend(&lease_path, e.into())),
            }
        }
        self.offset_versions
            .lock()
            .expect("offset lock poisoned")
            .remove(&lease.unit);
        Ok(())
    }

    pub(super) async fn acquire_merge_lease_of(
        &self,
        table: &str,
        value: &str,
        worker_id: &str,
    ) -> Result<MergeLease, CoordError> {
        let client = self.client()?;
        let dir = self.scope_dir(table, value);
        self.ensure_dir(&client, &dir).await?;
        self.ensure_dir(&client, &format!("{}/merging", self.table_dir(table)))
            .await?;
        let lease_path = self.merging_path(table, value);
        let mut patience = Patience::new();
        let (epoch, token) = loop {
            let (mut state, version, _) = Self::scope_state(&client, &dir).await?;
            state.merge_epoch += 1;
            let data = serde_json::to_vec(&LeaseData {
                worker: worker_id.to_string(),
                epoch: state.merge_epoch,
                session: 0,
            })
            .expect("lease data serializes");
            let ephemeral = self.ephemeral();
            let mut multi = client.new_multi_writer();
            multi
                .add_create(&lease_path, &data, &ephemeral)
                .map_err(|e| backend(&lease_path, e))?;
            multi
                .add_set_data(&dir, &state_bytes(&state), Some(version))
                .map_err(|e| backend(&dir, e))?;
            match take(&client, &lease_path, multi, &mut patience).await? {
                Taken::Now(results) => {
                    break (
                        state.merge_epoch,
                        set_version(&results, 1).unwrap_or(version + 1),
                    )
                }
                // Taken by an attempt whose reply was lost: only the lease holder writes the
                // scope's data, so its version is the one that attempt left.
                Taken::Before(h) => {
                    let (state, version, _) = Self::scope_state(&client, &dir).await?;
                    if state.merge_epoch != h.epoch {
                        return Err(CoordError::Corrupt {
                            path: dir,
                            source: format!(
                                "this session's merge lease records epoch {}, the scope says {}",
                                h.epoch, state.merge_epoch
                            )
                            .into(),
                        });
                    }
                    break (h.epoch, version);
                }
                Taken::Held(h) => {
                    return Err(CoordError::ScopeLeaseHeld {
                        table: table.to_string(),
                        value: value.to_string(),
                        holder: h.worker,
                    })
                }
                Taken::Again => {}
            }
        };
        self.remember_scope_version(table, value, token);
        Ok(MergeLease {
            table: table.to_string(),
            partition_value: value.to_string(),
            worker_id: worker_id.to_string(),
            epoch,
            token: i64::from(token),
        })
    }

    pub(super) async fn release_merge_lease_of(
        &self,
        lease: &MergeLease,
    ) -> Result<(), CoordError> {
        let client = self.client()?;
        let path = self.merging_path(&lease.table, &lease.partition_value);
        self.delete_own_ephemeral(&client, &path).await?;
        self.forget_scope_version(&lease.table, &lease.partition_value);
        Ok(())
    }

    /// Deletes `path` if it is an ephemeral node of this session (it may have ended with a
    /// session of ours and been taken by another since), asking again across lost connections.
    pub(super) async fn delete_own_ephemeral(
        &self,
        client: &zk::Client,
        path: &str,
    ) -> Result<(), CoordError> {
        let mut patience = Patience::new();
        loop {
            let deleted = match again(|| client.check_stat(path)).await {
                Ok(Some(stat)) if stat.ephemeral_owner == client.session_id().0 => {
                    client.delete(path, Some(stat.version)).await
                }
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
            match deleted {
                Ok(()) | Err(zk::Error::NoNode | zk::Error::BadVersion) => return Ok(()),
                Err(e) if unanswered(&e) && patience.wait().await => {}
                Err(e) => return Err(backend(path, e)),
            }
        }
    }
}

/// How an attempt to take a lease ended.
pub(super) enum Taken {
    /// Taken by this attempt: the multi-op's results.
    Now(Vec<zk::MultiWriteResult>),
    /// The lease node is this session's: taken by an earlier attempt whose reply was lost.
    Before(LeaseData),
    /// Held by another session.
    Held(LeaseData),
    /// To try again: released meanwhile, the version read moved, or the reply was lost.
    Again,
}

/// Sends a lease's multi-op (the ephemeral lease node created first, then a set-data at the
/// version read) and says how it ended.
pub(super) async fn take(
    client: &zk::Client,
    lease_path: &str,
    mut multi: zk::MultiWriter<'_>,
    patience: &mut Patience,
) -> Result<Taken, CoordError> {
    match multi.commit().await {
        Ok(results) => Ok(Taken::Now(results)),
        Err(zk::MultiWriteError::OperationFailed {
            index: 0,
            source: zk::Error::NodeExists,
        }) => Ok(
            match ZkCoordinator::read_lease_holder(client, lease_path).await? {
                Some(h) if h.session == client.session_id().0 => Taken::Before(h),
                Some(h) => Taken::Held(h),
                // Released between our attempt and the read.
                None => Taken::Again,
            },
        ),
        // Someone else changed the version read (another lease, a seal) meanwhile.
        Err(zk::MultiWriteError::OperationFailed {
            index: 1,
            source: zk::Error::BadVersion,
        }) => Ok(Taken::Again),
        Err(zk::MultiWriteError::RequestFailed { source })
            if unanswered(&source) && patience.wait().await =>
        {
            Ok(Taken::Again)
        }
        Err(e) => Err(backend(lease_path, e.into())),
    }
}
