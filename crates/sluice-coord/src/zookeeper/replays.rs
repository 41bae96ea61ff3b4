//! Replays in ZooKeeper.
//!
//! ```text
//! R/replays/<id>    data = ReplayGeneration JSON, from its swap until its rollback or collection
//! ```
//!
//! The swap is one multi-op: every touched scope's data set at the version its merge lease holder
//! last wrote (the fence, and what tells readers that the scope changed), the view registry's
//! version checked, the old records deleted, the new ones created, the kept retired sets and the
//! replay node created. A rollback is the inverse, with the replay node deleted at the version
//! read; a collection deletes the node and its kept sets together, so a rollback and a
//! collection cannot both succeed.

use zookeeper_client as zk;

use super::nodes::{again, backend, encode_segment, multi_size, multi_unanswered, MAX_MULTI_BYTES};
use super::scopes::{lost, set_version, state_bytes};
use super::ZkCoordinator;
use crate::{CoordError, MergeLease, PartRecord, ReplayGeneration, Resealed, Retired};

/// One operation of a replay's multi-op, with what its failure means.
enum Op {
    /// The node at the path is at this version.
    Check(String, i32, Refusal),
    Delete(String, Refusal),
    Create(String, Vec<u8>, Refusal),
}

/// What a failed operation of a replay's multi-op means.
enum Refusal {
    Conflict(String),
    /// The replay node changed: rolled back or collected meanwhile.
    NoReplay(String),
}

impl ZkCoordinator {
    fn replays_dir(&self) -> String {
        format!("{}/replays", self.root)
    }

    fn replay_path(&self, id: &str) -> String {
        format!("{}/{}", self.replays_dir(), encode_segment(id))
    }

    fn record_path(&self, part: &PartRecord) -> String {
        format!(
            "{}/{}",
            self.scope_dir(&part.table, &part.partition_value),
            encode_segment(&part.name())
        )
    }

    async fn read_replay_node(
        &self,
        client: &zk::Client,
        id: &str,
    ) -> Result<Option<(ReplayGeneration, i32)>, CoordError> {
        let path = self.replay_path(id);
        match again(|| client.get_data(&path)).await {
            Ok((data, stat)) => Ok(Some((
                serde_json::from_slice(&data).map_err(|e| CoordError::Corrupt {
                    path: path.clone(),
                    source: e.into(),
                })?,
                stat.version,
            ))),
            Err(zk::Error::NoNode) => Ok(None),
            Err(e) => Err(backend(&path, e)),
        }
    }

    pub(super) async fn read_replay_of(
        &self,
        id: &str,
    ) -> Result<Option<ReplayGeneration>, CoordError> {
        let client = self.client()?;
        Ok(self.read_replay_node(&client, id).await?.map(|(g, _)| g))
    }

    pub(super) async fn list_replays_of(&self) -> Result<Vec<ReplayGeneration>, CoordError> {
        let client = self.client()?;
        let mut out = Vec::new();
        for child in Self::list(&client, &self.replays_dir()).await? {
            let id = super::scopes::decode_segment(&child);
            if let Some((g, _)) = self.read_replay_node(&client, &id).await? {
                out.push(g);
            }
        }
        out.sort_by_key(|g| g.swapped_at_ms);
        Ok(out)
    }

    /// The fence operations of `leases`, each scope's state as its holder last wrote it, with
    /// the manifest `resealed` gives it, if any.
    async fn fences(
        &self,
        client: &zk::Client,
        leases: &[MergeLease],
        records: &[&PartRecord],
        resealed: &[Resealed],
    ) -> Result<Vec<(String, i32, Vec<u8>)>, CoordError> {
        for r in records {
            let leased = leases
                .iter()
                .any(|l| l.table == r.table && l.partition_value == r.partition_value);
            if !leased {
                return Err(CoordError::Conflict {
                    at: format!("table {} at {:?}", r.table, r.partition_value),
                    what: format!("part {} is in a scope the replay holds no lease of", r.path),
                    source: None,
                });
            }
        }
        let mut out = Vec::with_capacity(leases.len());
        for lease in leases {
            let (dir, token, mut state) = self.fenced_scope(client, lease).await?;
            let resealing = resealed
                .iter()
                .find(|r| r.table == lease.table && r.partition_value == lease.partition_value);
            if let Some(r) = resealing {
                if state.sealed.as_ref() != Some(&r.replaced) {
                    return Err(CoordError::Conflict {
                        at: format!("table {} at {:?}", r.table, r.partition_value),
                        what: format!("the scope no longer points at manifest {}", r.replaced.path),
                        source: None,
                    });
                }
                state.sealed = r.manifest.clone();
            }
            out.push((dir, token, state_bytes(&state)));
        }
        Ok(out)
    }

    fn retired_ops(&self, sets: &[Retired], create: bool) -> Vec<Op> {
        sets.iter()
            .map(|r| {
                let path = self.retired_path(&r.table, &r.name);
                if create {
                    let data = serde_json::to_vec(r).expect("retired record serializes");
                    let why = format!("retired set {} exists already", r.name);
                    Op::Create(path, data, Refusal::Conflict(why))
                } else {
                    Op::Delete(
                        path,
                        Refusal::Conflict(format!("retired set {} is gone", r.name)),
                    )
                }
            })
            .collect()
    }

    fn record_ops(&self, records: &[PartRecord], create: bool) -> Vec<Op> {
        records
            .iter()
            .map(|p| {
                let path = self.record_path(p);
                if create {
                    let data = serde_json::to_vec(p).expect("part record serializes");
                    let why = format!("part {} is registered already", p.path);
                    Op::Create(path, data, Refusal::Conflict(why))
                } else {
                    let why = format!("part {} is no longer registered (merged or sealed)", p.path);
                    Op::Delete(path, Refusal::Conflict(why))
                }
            })
            .collect()
    }

    async fn ensure_retired_dirs(
        &self,
        client: &zk::Client,
        sets: &[Retired],
    ) -> Result<(), CoordError> {
        for r in sets {
            self.ensure_dir(client, &format!("{}/retired", self.table_dir(&r.table)))
                .await?;
        }
        Ok(())
    }

    pub(super) async fn replace_range_of(
        &self,
        leases: &[MergeLease],
        views_version: i64,
        generation: &ReplayGeneration,
    ) -> Result<(), CoordError> {
        let client = self.client()?;
        let records: Vec<&PartRecord> = generation
            .old
            .iter()
            .chain(&generation.new)
            .chain(&generation.old_sealed)
            .collect();
        let fences = self
            .fences(&client, leases, &records, &generation.resealed)
            .await?;
        let kept = generation.kept_sets();
        let manifests = generation.replaced_manifests();
        self.ensure_retired_dirs(&client, &kept).await?;
        self.ensure_dir(&client, &self.replays_dir()).await?;
        let views_changed =
            "the view registry changed (a view went live or was dropped); run the replay again";
        let mut ops = vec![Op::Check(
            self.views_path(),
            views_version as i32,
            Refusal::Conflict(views_changed.to_string()),
        )];
        ops.extend(self.record_ops(&generation.old, false));
        ops.extend(self.record_ops(&generation.new, true));
        ops.extend(self.retired_ops(&kept, true));
        ops.extend(self.retired_ops(&manifests, true));
        ops.push(Op::Create(
            self.replay_path(&generation.id),
            serde_json::to_vec(generation).expect("replay serializes"),
            Refusal::Conflict(format!("a replay `{}` is recorded already", generation.id)),
        ));
        let what = format!("the replay `{}` of {}", generation.id, generation.table);
        self.run(&client, leases, &fences, ops, &what).await
    }

    pub(super) async fn roll_back_replay_of(
        &self,
        leases: &[MergeLease],
        id: &str,
        now_ms: i64,
    ) -> Result<ReplayGeneration, CoordError> {
        let client = self.client()?;
        let Some((generation, version)) = self.read_replay_node(&client, id).await? else {
            return Err(CoordError::NoReplay { id: id.to_string() });
        };
        let restored = generation.restored();
        let records: Vec<&PartRecord> = restored.iter().chain(&generation.new).collect();
        let fences = self.fences(&client, leases, &records, &[]).await?;
        let rolled = generation.rolled_back_sets(now_ms);
        self.ensure_retired_dirs(&client, &rolled).await?;
        let gone = || Refusal::NoReplay(id.to_string());
        let mut ops = vec![Op::Check(self.replay_path(id), version, gone())];
        ops.extend(self.record_ops(&generation.new, false));
        ops.extend(self.record_ops(&restored, true));
        ops.extend(self.retired_ops(&generation.kept_sets(), false));
        ops.extend(self.retired_ops(&rolled, true));
        ops.push(Op::Delete(self.replay_path(id), gone()));
        let what = format!("the rollback of replay `{id}`");
        self.run(&client, leases, &fences, ops, &what).await?;
        Ok(generation)
    }

    pub(super) async fn collect_replay_of(&self, id: &str) -> Result<Vec<Retired>, CoordError> {
        let client = self.client()?;
        let Some((generation, version)) = self.read_replay_node(&client, id).await? else {
            return Ok(Vec::new());
        };
        let kept = generation.kept_sets();
        let path = self.replay_path(id);
        let mut multi = client.new_multi_writer();
        multi
            .add_delete(&path, Some(version))
            .map_err(|e| backend(&path, e))?;
        for r in &kept {
            let p = self.retired_path(&r.table, &r.name);
            multi.add_delete(&p, None).map_err(|e| backend(&p, e))?;
        }
        match multi.commit().await {
            Ok(_) => Ok(kept),
            // Rolled back or collected meanwhile: nothing of it is this caller's to delete.
            Err(zk::MultiWriteError::OperationFailed { .. }) => Ok(Vec::new()),
            Err(zk::MultiWriteError::RequestFailed { source }) => Err(CoordError::Ambiguous {
                at: format!("replay `{id}`"),
                source: source.into(),
            }),
        }
    }

    /// Sends the fences then `ops` as one multi-op; a failed operation is reported as its
    /// [`Refusal`] says.
    async fn run(
        &self,
        client: &zk::Client,
        leases: &[MergeLease],
        fences: &[(String, i32, Vec<u8>)],
        ops: Vec<Op>,
        what: &str,
    ) -> Result<(), CoordError> {
        let size = multi_size(fences.iter().map(|(p, _, d)| (p.as_str(), d.len())).chain(
            ops.iter().map(|op| match op {
                Op::Check(p, _, _) | Op::Delete(p, _) => (p.as_str(), 0),
                Op::Create(p, d, _) => (p.as_str(), d.len()),
            }),
        ));
        if size > MAX_MULTI_BYTES {
            return Err(CoordError::TooLarge {
                what: what.to_string(),
                bytes: size,
                limit: MAX_MULTI_BYTES,
            });
        }
        let mut multi = client.new_multi_writer();
        for (dir, token, data) in fences {
            multi
                .add_set_data(dir, data, Some(*token))
                .map_err(|e| backend(dir, e))?;
        }
        let persistent = self.persistent();
        for op in &ops {
            match op {
                Op::Check(p, version, _) => multi
                    .add_check_version(p, *version)
                    .map_err(|e| backend(p, e))?,
                Op::Delete(p, _) => multi.add_delete(p, None).map_err(|e| backend(p, e))?,
                Op::Create(p, d, _) => multi
                    .add_create(p, d, &persistent)
                    .map_err(|e| backend(p, e))?,
            }
        }
        let at = what.to_string();
        match multi.commit().await {
            Ok(results) => {
                for (i, lease) in leases.iter().enumerate() {
                    if let Some(v) = set_version(&results, i) {
                        self.remember_scope_version(&lease.table, &lease.partition_value, v);
                    }
                }
                Ok(())
            }
            Err(zk::MultiWriteError::OperationFailed { index, .. }) if index < leases.len() => {
                Err(lost(&leases[index]))
            }
            Err(zk::MultiWriteError::OperationFailed { index, source }) => {
                let (Op::Check(_, _, refusal) | Op::Delete(_, refusal) | Op::Create(_, _, refusal)) =
                    &ops[index - leases.len()];
                Err(match refusal {
                    Refusal::NoReplay(id) => CoordError::NoReplay { id: id.clone() },
                    Refusal::Conflict(why) => CoordError::Conflict {
                        at,
                        what: why.clone(),
                        source: Some(source.into()),
                    },
                })
            }
            Err(zk::MultiWriteError::RequestFailed { source }) => Err(multi_unanswered(at, source)),
        }
    }
}
