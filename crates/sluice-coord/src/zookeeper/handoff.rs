//! How a backfill ends in ZooKeeper: its handoff to the stream, one multi-op (see
//! `backfills.rs`); or its cancellation, marked first and forgotten once its objects are gone.

use zookeeper_client as zk;

use super::nodes::{backend, encode_segment, multi_size, unanswered, MAX_MULTI_BYTES};
use super::ZkCoordinator;
use crate::{BackfillLease, BackfillState, CoordError, UnitId};

/// What the handoff multi-op's operations are, in order, to name the one that failed.
enum Op {
    State,
    Offset(UnitId),
    Marker(UnitId),
    Part(String),
    Staged(String),
}

impl ZkCoordinator {
    pub(super) async fn hand_off_of(&self, lease: &BackfillLease) -> Result<(), CoordError> {
        let client = self.client()?;
        let at = format!("backfill {}", lease.id);
        let status =
            self.read_backfill_of(&lease.id)
                .await?
                .ok_or_else(|| CoordError::NoBackfill {
                    id: lease.id.clone(),
                })?;
        let mut state = status.state;
        if state.epoch != lease.epoch {
            return Err(CoordError::BackfillLeaseLost {
                id: lease.id.clone(),
                epoch: lease.epoch,
            });
        }
        if state.handed_off_at_ms.is_some() {
            return Ok(());
        }
        crate::backfill::check_handoff(&state, status.staged.len())?;
        let plan = state.plan.clone();
        let versions = self.empty_offsets(&client, &plan).await?;
        let path = self.backfill_path(&lease.id);
        state.handed_off(status.staged.values());
        let state_bytes = serde_json::to_vec(&state).expect("backfill state serializes");

        let mut ops: Vec<(Op, String, Vec<u8>)> = vec![(Op::State, path.clone(), state_bytes)];
        for (&p, &next) in &plan.offsets {
            let unit = UnitId::new(plan.topic.clone(), p);
            let dir = self.unit_dir(&unit);
            ops.push((
                Op::Offset(unit.clone()),
                format!("{dir}/offset"),
                next.to_string().into_bytes(),
            ));
            ops.push((
                Op::Marker(unit.clone()),
                self.handoff_path(&unit),
                Vec::new(),
            ));
        }
        for file in status.staged.values() {
            for part in &file.parts {
                let scope = self.scope_dir(&part.table, &part.partition_value);
                self.ensure_dir(&client, &scope).await?;
                let data = serde_json::to_vec(part).expect("part record serializes");
                let node = format!("{scope}/{}", encode_segment(&part.name()));
                ops.push((Op::Part(part.path.clone()), node, data));
            }
            let node = format!("{path}/files/{}", file.index);
            ops.push((Op::Staged(node.clone()), node, Vec::new()));
        }
        let size = multi_size(ops.iter().map(|(_, p, d)| (p.as_str(), d.len())));
        if size > MAX_MULTI_BYTES {
            return Err(CoordError::TooLarge {
                what: format!("the handoff of backfill {}", lease.id),
                bytes: size,
                limit: MAX_MULTI_BYTES,
            });
        }

        let mut multi = client.new_multi_writer();
        for (op, node, data) in &ops {
            let added = match op {
                Op::State => multi.add_set_data(node, data, Some(lease.token as i32)),
                Op::Offset(unit) => multi.add_set_data(node, data, Some(versions[&unit.partition])),
                Op::Marker(_) | Op::Staged(_) => multi.add_delete(node, None),
                Op::Part(_) => multi.add_create(node, data, &self.persistent()),
            };
            added.map_err(|e| backend(node, e))?;
        }
        match multi.commit().await {
            Ok(_) => Ok(()),
            Err(zk::MultiWriteError::OperationFailed { index, source }) => {
                Err(match &ops[index].0 {
                    Op::State => CoordError::BackfillLeaseLost {
                        id: lease.id.clone(),
                        epoch: lease.epoch,
                    },
                    // Committed since it was read: the next handoff reads and names it.
                    Op::Offset(unit) => CoordError::Conflict {
                        at: unit.to_string(),
                        what: "the partition's committed offset changed during the handoff".into(),
                        source: Some(source.into()),
                    },
                    Op::Marker(unit) => CoordError::Conflict {
                        at: unit.to_string(),
                        what: "the partition's handoff claim is gone".into(),
                        source: Some(source.into()),
                    },
                    Op::Part(p) => CoordError::Conflict {
                        at,
                        what: format!("cannot register part {p}"),
                        source: Some(source.into()),
                    },
                    Op::Staged(n) => CoordError::Conflict {
                        at,
                        what: format!("staged file {n} is gone"),
                        source: Some(source.into()),
                    },
                })
            }
            Err(zk::MultiWriteError::RequestFailed { source }) => match source {
                zk::Error::SessionExpired | zk::Error::ClientClosed => {
                    Err(CoordError::SessionEnded {
                        source: source.into(),
                    })
                }
                other if unanswered(&other) => Err(CoordError::Ambiguous {
                    at,
                    source: other.into(),
                }),
                other => Err(backend(&path, other)),
            },
        }
    }

    /// The backfill's state and its znode's version, iff `lease` is its current lease.
    async fn leased_state(
        &self,
        client: &zk::Client,
        lease: &BackfillLease,
    ) -> Result<(BackfillState, i32), CoordError> {
        let path = self.backfill_path(&lease.id);
        let lost = || CoordError::BackfillLeaseLost {
            id: lease.id.clone(),
            epoch: lease.epoch,
        };
        let (state, version) = Self::read_state(client, &path).await?.ok_or_else(lost)?;
        if state.epoch != lease.epoch {
            return Err(lost());
        }
        Ok((state, version))
    }

    pub(super) async fn cancel_backfill_of(&self, lease: &BackfillLease) -> Result<(), CoordError> {
        let client = self.client()?;
        let path = self.backfill_path(&lease.id);
        let (mut state, version) = self.leased_state(&client, lease).await?;
        crate::backfill::check_cancel(&state)?;
        if state.cancelled_at_ms.is_some() {
            return Ok(());
        }
        state.cancelled_at_ms = Some(crate::backfill::now_ms());
        let data = serde_json::to_vec(&state).expect("backfill state serializes");
        match client.set_data(&path, &data, Some(version)).await {
            Ok(_) => Ok(()),
            Err(zk::Error::BadVersion) => Err(CoordError::BackfillLeaseLost {
                id: lease.id.clone(),
                epoch: lease.epoch,
            }),
            Err(e) if unanswered(&e) => Err(CoordError::Ambiguous {
                at: format!("backfill {}", lease.id),
                source: e.into(),
            }),
            Err(e) => Err(backend(&path, e)),
        }
    }

    pub(super) async fn forget_backfill_of(&self, lease: &BackfillLease) -> Result<(), CoordError> {
        let client = self.client()?;
        let path = self.backfill_path(&lease.id);
        let (state, version) = self.leased_state(&client, lease).await?;
        crate::backfill::check_forget(&state)?;
        let files = format!("{path}/files");
        let mut deletes: Vec<String> = Self::list(&client, &files)
            .await?
            .into_iter()
            .map(|n| format!("{files}/{n}"))
            .collect();
        deletes.push(files);
        deletes.push(format!("{path}/lease"));
        for &p in state.plan.offsets.keys() {
            deletes.push(self.handoff_path(&UnitId::new(state.plan.topic.clone(), p)));
        }
        let mut multi = client.new_multi_writer();
        // The version check first: a newer lease (an epoch bump) changed it.
        multi
            .add_check_version(&path, version)
            .map_err(|e| backend(&path, e))?;
        for node in &deletes {
            multi.add_delete(node, None).map_err(|e| backend(node, e))?;
        }
        multi
            .add_delete(&path, None)
            .map_err(|e| backend(&path, e))?;
        match multi.commit().await {
            Ok(_) => Ok(()),
            Err(zk::MultiWriteError::OperationFailed { index: 0, .. }) => {
                Err(CoordError::BackfillLeaseLost {
                    id: lease.id.clone(),
                    epoch: lease.epoch,
                })
            }
            Err(zk::MultiWriteError::OperationFailed { index, source }) => {
                Err(CoordError::Conflict {
                    at: format!("backfill {}", lease.id),
                    what: format!(
                        "cannot delete {}",
                        deletes.get(index - 1).map_or(path.as_str(), String::as_str)
                    ),
                    source: Some(source.into()),
                })
            }
            Err(zk::MultiWriteError::RequestFailed { source }) if unanswered(&source) => {
                Err(CoordError::Ambiguous {
                    at: format!("backfill {}", lease.id),
                    source: source.into(),
                })
            }
            Err(zk::MultiWriteError::RequestFailed { source }) => Err(backend(&path, source)),
        }
    }
}
