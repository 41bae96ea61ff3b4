//! Scopes in ZooKeeper: one znode per table and partition value whose children are the part
//! records, whose data is the scope's state and whose version fences merges and tells readers
//! that the scope changed under them.
//!
//! ```text
//! R/tables/<table>/parts/<value>          data = ScopeState JSON ("" = default)
//! R/tables/<table>/parts/<value>/<part>   data = PartRecord JSON
//! R/tables/<table>/merging/<value>        ephemeral; data = {"worker": .., "epoch": ..}
//! R/tables/<table>/retired/<name>         data = Retired JSON
//! ```
//!
//! Taking a merge lease creates the ephemeral `merging` node and bumps the epoch in the scope's
//! data in one multi-op; a swap or a seal sets the scope's data at the version the lease holder
//! last wrote, so a stale holder fails as a whole, and every such change bumps the version a
//! reader checks before and after listing. Ingest commits only create children, which changes
//! neither the data nor its version.

use futures::stream::{self, StreamExt, TryStreamExt};
use zookeeper_client as zk;

use super::nodes::{again, backend, encode_segment, multi_size, multi_unanswered, MAX_MULTI_BYTES};
use super::ZkCoordinator;
use crate::{
    CoordError, MergeLease, PartRecord, Retired, ScopeListing, ScopeState, ScopeSummary,
    SealedManifest,
};

/// How many znode reads a scope listing keeps in flight.
const LIST_CONCURRENCY: usize = 64;
/// How often a scope listing is retried when the scope keeps changing under it.
const READ_ATTEMPTS: usize = 20;

impl ZkCoordinator {
    pub(super) fn table_dir(&self, table: &str) -> String {
        format!("{}/tables/{}", self.root, encode_segment(table))
    }

    pub(super) fn scope_dir(&self, table: &str, value: &str) -> String {
        format!("{}/parts/{}", self.table_dir(table), encode_segment(value))
    }

    pub(super) fn merging_path(&self, table: &str, value: &str) -> String {
        format!(
            "{}/merging/{}",
            self.table_dir(table),
            encode_segment(value)
        )
    }

    pub(super) fn retired_path(&self, table: &str, name: &str) -> String {
        format!("{}/retired/{}", self.table_dir(table), encode_segment(name))
    }

    fn parse_state(path: &str, data: &[u8]) -> Result<ScopeState, CoordError> {
        if data.is_empty() {
            return Ok(ScopeState::default());
        }
        serde_json::from_slice(data).map_err(|e| CoordError::Corrupt {
            path: path.to_string(),
            source: e.into(),
        })
    }

    /// The scope's state and the version of its znode; a missing scope is empty, version -1.
    pub(super) async fn scope_state(
        client: &zk::Client,
        dir: &str,
    ) -> Result<(ScopeState, i32, usize), CoordError> {
        match again(|| client.get_data(dir)).await {
            Ok((data, stat)) => Ok((
                Self::parse_state(dir, &data)?,
                stat.version,
                stat.num_children as usize,
            )),
            Err(zk::Error::NoNode) => Ok((ScopeState::default(), -1, 0)),
            Err(e) => Err(backend(dir, e)),
        }
    }

    pub(super) async fn list_scopes_of(
        &self,
        table: &str,
    ) -> Result<Vec<ScopeSummary>, CoordError> {
        let client = self.client()?;
        let parts_dir = format!("{}/parts", self.table_dir(table));
        let mut out = Vec::new();
        for child in Self::list(&client, &parts_dir).await? {
            let dir = format!("{parts_dir}/{child}");
            let (state, version, live_parts) = Self::scope_state(&client, &dir).await?;
            if version < 0 {
                continue;
            }
            out.push(ScopeSummary {
                partition_value: decode_segment(&child),
                live_parts,
                state,
            });
        }
        out.sort_by(|a, b| a.partition_value.cmp(&b.partition_value));
        Ok(out)
    }

    pub(super) async fn read_scope_of(
        &self,
        table: &str,
        value: &str,
    ) -> Result<ScopeListing, CoordError> {
        let client = self.client()?;
        let dir = self.scope_dir(table, value);
        for _ in 0..READ_ATTEMPTS {
            let (state, version, _) = Self::scope_state(&client, &dir).await?;
            let parts = Self::read_records(&client, &dir).await?;
            let merge_holder = Self::read_lease_holder(&client, &self.merging_path(table, value))
                .await?
                .map(|h| h.worker);
            let (_, after, _) = Self::scope_state(&client, &dir).await?;
            if after == version {
                return Ok(ScopeListing {
                    table: table.to_string(),
                    partition_value: value.to_string(),
                    state,
                    generation: i64::from(version),
                    parts,
                    merge_holder,
                });
            }
        }
        Err(CoordError::Backend {
            path: dir,
            source: format!("the scope changed during each of {READ_ATTEMPTS} readings").into(),
        })
    }

    /// Rewrites a part record's `replicas` at the version read, so a concurrent writer is not
    /// overwritten (the read is repeated). A record gone meanwhile is not recreated.
    pub(super) async fn set_replicas_of(
        &self,
        part: &PartRecord,
        replicas: &[String],
    ) -> Result<bool, CoordError> {
        let client = self.client()?;
        let path = format!(
            "{}/{}",
            self.scope_dir(&part.table, &part.partition_value),
            encode_segment(&part.name())
        );
        for _ in 0..READ_ATTEMPTS {
            let (data, stat) = match again(|| client.get_data(&path)).await {
                Ok(found) => found,
                Err(zk::Error::NoNode) => return Ok(false),
                Err(e) => return Err(backend(&path, e)),
            };
            let mut record: PartRecord =
                serde_json::from_slice(&data).map_err(|e| CoordError::Corrupt {
                    path: path.clone(),
                    source: e.into(),
                })?;
            if record.replicas == replicas {
                return Ok(true);
            }
            record.replicas = replicas.to_vec();
            let bytes = serde_json::to_vec(&record).map_err(|e| CoordError::Corrupt {
                path: path.clone(),
                source: e.into(),
            })?;
            match client.set_data(&path, &bytes, Some(stat.version)).await {
                Ok(_) => return Ok(true),
                Err(zk::Error::NoNode) => return Ok(false),
                // Changed since the read, or the reply was lost: read again and compare.
                Err(zk::Error::BadVersion) => continue,
                Err(e) if super::nodes::unanswered(&e) => continue,
                Err(e) => return Err(backend(&path, e)),
            }
        }
        Err(CoordError::Backend {
            path,
            source: format!("the record changed during each of {READ_ATTEMPTS} updates").into(),
        })
    }

    /// Every part record under a scope's znode, in name order.
    async fn read_records(client: &zk::Client, dir: &str) -> Result<Vec<PartRecord>, CoordError> {
        let mut names = Self::list(client, dir).await?;
        names.sort();
        let records: Vec<Option<PartRecord>> = stream::iter(names)
            .map(|name| {
                let client = client.clone();
                let path = format!("{dir}/{name}");
                async move {
                    match again(|| client.get_data(&path)).await {
                        Ok((data, _)) => serde_json::from_slice::<PartRecord>(&data)
                            .map(Some)
                            .map_err(|e| CoordError::Corrupt {
                                path: path.clone(),
                                source: e.into(),
                            }),
                        // Swapped away after the listing: the version check repeats the read.
                        Err(zk::Error::NoNode) => Ok(None),
                        Err(e) => Err(backend(&path, e)),
                    }
                }
            })
            .buffered(LIST_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(records.into_iter().flatten().collect())
    }

    pub(super) async fn swap_of(
        &self,
        lease: &MergeLease,
        inputs: &[PartRecord],
        output: &PartRecord,
        retired: &Retired,
    ) -> Result<(), CoordError> {
        let client = self.client()?;
        let (dir, token, state) = self.fenced_scope(&client, lease).await?;
        self.ensure_dir(
            &client,
            &format!("{}/retired", self.table_dir(&lease.table)),
        )
        .await?;
        let output_data = serde_json::to_vec(output).expect("part record serializes");
        let retired_data = serde_json::to_vec(retired).expect("retired record serializes");
        let retired_path = self.retired_path(&lease.table, &retired.name);
        let output_path = format!("{dir}/{}", encode_segment(&output.name()));
        let input_paths: Vec<String> = inputs
            .iter()
            .map(|p| format!("{dir}/{}", encode_segment(&p.name())))
            .collect();
        let creates = [
            (output_path.as_str(), output_data.as_slice()),
            (retired_path.as_str(), retired_data.as_slice()),
        ];
        let what = || format!("the swap of {} parts of {}", inputs.len(), lease.table);
        let mut multi = fenced_multi(
            &client,
            &self.persistent(),
            &dir,
            (&state, token),
            &input_paths,
            &creates,
            what,
        )?;
        let result = multi.commit().await;
        self.finish_scope_write(lease, result, |i| {
            if i <= input_paths.len() {
                format!(
                    "part {} is no longer registered (merged or sealed already)",
                    input_paths[i - 1]
                )
            } else {
                format!(
                    "{} is already registered",
                    if i == input_paths.len() + 1 {
                        &output_path
                    } else {
                        &retired_path
                    }
                )
            }
        })
    }

    pub(super) async fn seal_of(
        &self,
        lease: &MergeLease,
        parts: &[PartRecord],
        manifest: &SealedManifest,
        retired: Option<&Retired>,
    ) -> Result<(), CoordError> {
        let client = self.client()?;
        let (dir, token, mut state) = self.fenced_scope(&client, lease).await?;
        state.sealed = Some(manifest.clone());
        let part_paths: Vec<String> = parts
            .iter()
            .map(|p| format!("{dir}/{}", encode_segment(&p.name())))
            .collect();
        let retired_node = match retired {
            Some(r) => {
                self.ensure_dir(
                    &client,
                    &format!("{}/retired", self.table_dir(&lease.table)),
                )
                .await?;
                Some((
                    self.retired_path(&lease.table, &r.name),
                    serde_json::to_vec(r).expect("retired record serializes"),
                ))
            }
            None => None,
        };
        let creates: Vec<(&str, &[u8])> = retired_node
            .iter()
            .map(|(p, d)| (p.as_str(), d.as_slice()))
            .collect();
        let what = || format!("sealing {} parts of {}", parts.len(), lease.table);
        let mut multi = fenced_multi(
            &client,
            &self.persistent(),
            &dir,
            (&state, token),
            &part_paths,
            &creates,
            what,
        )?;
        let result = multi.commit().await;
        self.finish_scope_write(lease, result, |i| {
            if i <= part_paths.len() {
                format!("part {} is no longer registered", part_paths[i - 1])
            } else {
                "the retired record already exists".to_string()
            }
        })
    }

    /// The scope's znode, the version this lease holder last wrote, and the state to write
    /// back; `LeaseLost` without a lease of this session.
    pub(super) async fn fenced_scope(
        &self,
        client: &zk::Client,
        lease: &MergeLease,
    ) -> Result<(String, i32, ScopeState), CoordError> {
        let lost = || lost(lease);
        let token = self
            .scope_version(&lease.table, &lease.partition_value)
            .ok_or_else(lost)?;
        let dir = self.scope_dir(&lease.table, &lease.partition_value);
        let (state, version, _) = Self::scope_state(client, &dir).await?;
        if version != token || state.merge_epoch != lease.epoch {
            return Err(lost());
        }
        Ok((dir, token, state))
    }

    /// Maps a swap's or seal's outcome (the scope's data is operation 0), remembering the new
    /// version on success.
    fn finish_scope_write(
        &self,
        lease: &MergeLease,
        result: Result<Vec<zk::MultiWriteResult>, zk::MultiWriteError>,
        conflict: impl Fn(usize) -> String,
    ) -> Result<(), CoordError> {
        let scope = format!("table {} at {:?}", lease.table, lease.partition_value);
        match result {
            Ok(results) => {
                if let Some(v) = set_version(&results, 0) {
                    self.remember_scope_version(&lease.table, &lease.partition_value, v);
                }
                Ok(())
            }
            Err(zk::MultiWriteError::OperationFailed { index: 0, .. }) => Err(lost(lease)),
            Err(zk::MultiWriteError::OperationFailed { index, source }) => {
                Err(CoordError::Conflict {
                    at: scope,
                    what: conflict(index),
                    source: Some(source.into()),
                })
            }
            Err(zk::MultiWriteError::RequestFailed { source }) => {
                Err(multi_unanswered(scope, source))
            }
        }
    }

    pub(super) async fn list_retired_of(&self, table: &str) -> Result<Vec<Retired>, CoordError> {
        let client = self.client()?;
        let dir = format!("{}/retired", self.table_dir(table));
        let mut out = Vec::new();
        for name in Self::list(&client, &dir).await? {
            let path = format!("{dir}/{name}");
            match again(|| client.get_data(&path)).await {
                Ok((data, _)) => {
                    out.push(
                        serde_json::from_slice(&data).map_err(|e| CoordError::Corrupt {
                            path: path.clone(),
                            source: e.into(),
                        })?,
                    )
                }
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(backend(&path, e)),
            }
        }
        Ok(out)
    }

    pub(super) async fn forget_retired_of(&self, retired: &Retired) -> Result<(), CoordError> {
        let client = self.client()?;
        let path = self.retired_path(&retired.table, &retired.name);
        // A second delete after a lost reply finds nothing, which is what was wanted.
        match again(|| client.delete(&path, None)).await {
            Ok(()) | Err(zk::Error::NoNode) => Ok(()),
            Err(e) => Err(backend(&path, e)),
        }
    }

    pub(super) fn remember_scope_version(&self, table: &str, value: &str, version: i32) {
        self.scope_versions
            .lock()
            .expect("scope lock poisoned")
            .insert((table.to_string(), value.to_string()), version);
    }

    pub(super) fn forget_scope_version(&self, table: &str, value: &str) {
        self.scope_versions
            .lock()
            .expect("scope lock poisoned")
            .remove(&(table.to_string(), value.to_string()));
    }

    fn scope_version(&self, table: &str, value: &str) -> Option<i32> {
        self.scope_versions
            .lock()
            .expect("scope lock poisoned")
            .get(&(table.to_string(), value.to_string()))
            .copied()
    }
}

pub(super) fn lost(lease: &MergeLease) -> CoordError {
    CoordError::ScopeLeaseLost {
        table: lease.table.clone(),
        value: lease.partition_value.clone(),
        epoch: lease.epoch,
    }
}

pub(super) fn state_bytes(state: &ScopeState) -> Vec<u8> {
    serde_json::to_vec(state).expect("scope state serializes")
}

/// The version a multi-op's `index`-th operation, a set-data, left its node at.
pub(super) fn set_version(results: &[zk::MultiWriteResult], index: usize) -> Option<i32> {
    match results.get(index) {
        Some(zk::MultiWriteResult::SetData { stat }) => Some(stat.version),
        _ => None,
    }
}

/// The value an encoded znode name segment stands for.
pub(super) fn decode_segment(segment: &str) -> String {
    if segment == "_" {
        return String::new();
    }
    let s = segment
        .strip_prefix('%')
        .filter(|rest| matches!(*rest, "." | ".." | "zookeeper"))
        .unwrap_or(segment);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A swap's or seal's multi-op: the scope's `state` written back at the fencing `token`
/// (operation 0, so a lost lease fails it first), the records in `deletes` removed, `creates`
/// made as `options` say; refused as `TooLarge` before anything is sent when it exceeds the
/// multi-op budget.
fn fenced_multi<'c>(
    client: &'c zk::Client,
    options: &zk::CreateOptions<'_>,
    dir: &str,
    (state, token): (&ScopeState, i32),
    deletes: &[String],
    creates: &[(&str, &[u8])],
    what: impl FnOnce() -> String,
) -> Result<zk::MultiWriter<'c>, CoordError> {
    let state_data = state_bytes(state);
    let size = multi_size(
        [(dir, state_data.len())]
            .into_iter()
            .chain(deletes.iter().map(|p| (p.as_str(), 0)))
            .chain(creates.iter().map(|(p, d)| (*p, d.len()))),
    );
    if size > MAX_MULTI_BYTES {
        return Err(CoordError::TooLarge {
            what: what(),
            bytes: size,
            limit: MAX_MULTI_BYTES,
        });
    }
    let mut multi = client.new_multi_writer();
    multi
        .add_set_data(dir, &state_data, Some(token))
        .map_err(|e| backend(dir, e))?;
    for path in deletes {
        multi.add_delete(path, None).map_err(|e| backend(path, e))?;
    }
    for (path, data) in creates {
        multi
            .add_create(path, data, options)
            .map_err(|e| backend(path, e))?;
    }
    Ok(multi)
}
