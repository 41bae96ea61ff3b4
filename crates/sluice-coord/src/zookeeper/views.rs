//! The view registry in ZooKeeper.
//!
//! ```text
//! R/views                        data = {"views": [LiveView, ..]}; its version is what commits check
//! R/view-history/<view>          data = the newest history lease epoch
//! R/view-history/<view>/lease    ephemeral; data = {"worker": .., "epoch": ..}
//! R/view-history/<view>/done     data = ViewHistory JSON, once the history is registered
//! ```
//!
//! Making a view live is one multi-op: `R/views` set at the version read, and a version check of
//! each source partition's `offset` node at the version its point was read at. Registering the
//! history is one multi-op too: the `done` node created (which fails if it exists) and the part
//! records created. Neither touches a unit's epoch, so no lease is disturbed; only flushes in
//! flight when a view goes live fail their check and are made again.

use serde::{Deserialize, Serialize};
use zookeeper_client as zk;

use super::leases::{take, Taken};
use super::nodes::{
    again, backend, encode_segment, multi_size, LeaseData, Patience, MAX_MULTI_BYTES,
};
use super::ZkCoordinator;
use crate::{
    CoordError, LiveView, PartRecord, UnitId, ViewHistory, ViewHistoryLease, ViewPoint,
    ViewRegistry,
};

#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    views: Vec<LiveView>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct HistoryEpoch {
    epoch: u64,
}

fn corrupt(path: &str, e: serde_json::Error) -> CoordError {
    CoordError::Corrupt {
        path: path.to_string(),
        source: e.into(),
    }
}

impl ZkCoordinator {
    pub(super) fn views_path(&self) -> String {
        format!("{}/views", self.root)
    }

    fn history_dir(&self, view: &str) -> String {
        format!("{}/view-history/{}", self.root, encode_segment(view))
    }

    async fn read_stored(&self, client: &zk::Client) -> Result<(Stored, i64), CoordError> {
        let path = self.views_path();
        match again(|| client.get_data(&path)).await {
            Ok((data, stat)) => Ok((
                serde_json::from_slice(&data).map_err(|e| corrupt(&path, e))?,
                i64::from(stat.version),
            )),
            Err(zk::Error::NoNode) => Ok((Stored::default(), -1)),
            Err(e) => Err(backend(&path, e)),
        }
    }

    pub(super) async fn read_views_of(&self) -> Result<ViewRegistry, CoordError> {
        let client = self.client()?;
        let (stored, version) = self.read_stored(&client).await?;
        let mut registry = ViewRegistry {
            version,
            ..ViewRegistry::default()
        };
        for view in &stored.views {
            if view.points.is_empty() {
                continue;
            }
            let dir = self.history_dir(&view.name);
            let done = format!("{dir}/done");
            match again(|| client.get_data(&done)).await {
                Ok((data, _)) => {
                    let history = serde_json::from_slice(&data).map_err(|e| corrupt(&done, e))?;
                    registry.histories.insert(view.name.clone(), history);
                }
                Err(zk::Error::NoNode) => {
                    if let Some(h) =
                        Self::read_lease_holder(&client, &format!("{dir}/lease")).await?
                    {
                        registry.history_holders.insert(view.name.clone(), h.worker);
                    }
                }
                Err(e) => return Err(backend(&done, e)),
            }
        }
        registry.views = stored.views;
        Ok(registry)
    }

    pub(super) async fn init_views_of(
        &self,
        views: &[LiveView],
    ) -> Result<ViewRegistry, CoordError> {
        let client = self.client()?;
        let path = self.views_path();
        let data = serde_json::to_vec(&Stored {
            views: views.to_vec(),
        })
        .expect("views serialize");
        let options = self.persistent();
        match again(|| client.create(&path, &data, &options)).await {
            Ok(_) | Err(zk::Error::NodeExists) => self.read_views_of().await,
            Err(e) => Err(backend(&path, e)),
        }
    }

    /// Sets the registry to `stored` at `expected_version`, with `checks` (path, version) in the
    /// same multi-op.
    async fn write_stored(
        &self,
        client: &zk::Client,
        expected_version: i64,
        stored: &Stored,
        checks: &[(String, i32)],
    ) -> Result<(), CoordError> {
        let path = self.views_path();
        let data = serde_json::to_vec(stored).expect("views serialize");
        let mut multi = client.new_multi_writer();
        multi
            .add_set_data(&path, &data, Some(expected_version as i32))
            .map_err(|e| backend(&path, e))?;
        for (check, version) in checks {
            multi
                .add_check_version(check, *version)
                .map_err(|e| backend(check, e))?;
        }
        match multi.commit().await {
            Ok(_) => Ok(()),
            Err(zk::MultiWriteError::OperationFailed { index, source }) => {
                let what = if index == 0 {
                    "the view registry changed since it was read".to_string()
                } else {
                    format!("{} was committed meanwhile", checks[index - 1].0)
                };
                Err(CoordError::Conflict {
                    at: path,
                    what,
                    source: Some(source.into()),
                })
            }
            Err(zk::MultiWriteError::RequestFailed { source }) => Err(CoordError::Ambiguous {
                at: path,
                source: source.into(),
            }),
        }
    }

    pub(super) async fn activate_view_of(
        &self,
        expected_version: i64,
        view: &LiveView,
        units: &[UnitId],
    ) -> Result<(), CoordError> {
        let client = self.client()?;
        let (mut stored, _) = self.read_stored(&client).await?;
        if stored.views.iter().any(|v| v.name == view.name) {
            return Err(CoordError::Conflict {
                at: self.views_path(),
                what: format!("view `{}` is live already (or was dropped)", view.name),
                source: None,
            });
        }
        let mut points = Vec::with_capacity(units.len());
        let mut checks = Vec::with_capacity(units.len());
        for unit in units {
            let dir = self.unit_dir(unit);
            let options = self.persistent();
            again(|| client.mkdir(&dir, &options))
                .await
                .map_err(|e| backend(&dir, e))?;
            let offset_path = format!("{dir}/offset");
            self.create_if_missing(&client, &offset_path, b"").await?;
            let (data, stat) = again(|| client.get_data(&offset_path))
                .await
                .map_err(|e| backend(&offset_path, e))?;
            points.push(ViewPoint {
                topic: unit.topic.clone(),
                partition: unit.partition,
                next_offset: Self::parse_i64(&offset_path, &data)?.unwrap_or(0),
            });
            checks.push((offset_path, stat.version));
        }
        let mut live = view.clone();
        live.points = ViewPoint::recorded(points);
        stored.views.push(live);
        self.write_stored(&client, expected_version, &stored, &checks)
            .await
    }

    pub(super) async fn drop_view_of(
        &self,
        expected_version: i64,
        name: &str,
        at_ms: i64,
    ) -> Result<(), CoordError> {
        let client = self.client()?;
        let (mut stored, _) = self.read_stored(&client).await?;
        let view = stored
            .views
            .iter_mut()
            .find(|v| v.name == name)
            .ok_or_else(|| CoordError::NoView {
                view: name.to_string(),
            })?;
        view.dropped_at_ms.get_or_insert(at_ms);
        self.write_stored(&client, expected_version, &stored, &[])
            .await
    }

    pub(super) async fn acquire_view_history_lease_of(
        &self,
        view: &str,
        worker_id: &str,
    ) -> Result<ViewHistoryLease, CoordError> {
        let client = self.client()?;
        let dir = self.history_dir(view);
        self.ensure_dir(&client, &format!("{}/view-history", self.root))
            .await?;
        self.create_if_missing(&client, &dir, b"{\"epoch\":0}")
            .await?;
        let lease_path = format!("{dir}/lease");
        let mut patience = Patience::new();
        loop {
            let (data, stat) = again(|| client.get_data(&dir))
                .await
                .map_err(|e| backend(&dir, e))?;
            let current: HistoryEpoch =
                serde_json::from_slice(&data).map_err(|e| corrupt(&dir, e))?;
            let epoch = current.epoch + 1;
            let lease = serde_json::to_vec(&LeaseData {
                worker: worker_id.to_string(),
                epoch,
                session: 0,
            })
            .expect("lease data serializes");
            let next = serde_json::to_vec(&HistoryEpoch { epoch }).expect("epoch serializes");
            let mut multi = client.new_multi_writer();
            multi
                .add_create(&lease_path, &lease, &self.ephemeral())
                .map_err(|e| backend(&lease_path, e))?;
            multi
                .add_set_data(&dir, &next, Some(stat.version))
                .map_err(|e| backend(&dir, e))?;
            let lease = |epoch, token| ViewHistoryLease {
                view: view.to_string(),
                worker_id: worker_id.to_string(),
                epoch,
                token,
            };
            match take(&client, &lease_path, multi, &mut patience).await? {
                Taken::Now(_) => return Ok(lease(epoch, i64::from(stat.version) + 1)),
                Taken::Before(h) => return Ok(lease(h.epoch, i64::from(stat.version))),
                Taken::Held(h) => {
                    return Err(CoordError::ViewHistoryHeld {
                        view: view.to_string(),
                        holder: h.worker,
                    })
                }
                Taken::Again => {}
            }
        }
    }

    pub(super) async fn release_view_history_lease_of(
        &self,
        lease: &ViewHistoryLease,
    ) -> Result<(), CoordError> {
        let client = self.client()?;
        let path = format!("{}/lease", self.history_dir(&lease.view));
        match Self::read_lease_holder(&client, &path).await? {
            Some(h) if h.session == client.session_id().0 && h.epoch == lease.epoch => {
                match again(|| client.delete(&path, None)).await {
                    Ok(()) | Err(zk::Error::NoNode) => Ok(()),
                    Err(e) => Err(backend(&path, e)),
                }
            }
            _ => Ok(()),
        }
    }

    pub(super) async fn complete_view_history_of(
        &self,
        lease: &ViewHistoryLease,
        parts: &[PartRecord],
        history: &ViewHistory,
    ) -> Result<(), CoordError> {
        let client = self.client()?;
        let done = format!("{}/done", self.history_dir(&lease.view));
        let done_data = serde_json::to_vec(history).expect("history serializes");
        let mut nodes = Vec::with_capacity(parts.len());
        for part in parts {
            let scope = self.scope_dir(&part.table, &part.partition_value);
            self.ensure_dir(&client, &scope).await?;
            let data = serde_json::to_vec(part).expect("part record serializes");
            nodes.push((format!("{scope}/{}", encode_segment(&part.name())), data));
        }
        let size = multi_size(
            std::iter::once((done.as_str(), done_data.len()))
                .chain(nodes.iter().map(|(p, d)| (p.as_str(), d.len()))),
        );
        if size > MAX_MULTI_BYTES {
            return Err(CoordError::TooLarge {
                what: format!(
                    "the history of view `{}` ({} parts)",
                    lease.view,
                    parts.len()
                ),
                bytes: size,
                limit: MAX_MULTI_BYTES,
            });
        }
        let mut multi = client.new_multi_writer();
        multi
            .add_create(&done, &done_data, &self.persistent())
            .map_err(|e| backend(&done, e))?;
        for (path, data) in &nodes {
            multi
                .add_create(path, data, &self.persistent())
                .map_err(|e| backend(path, e))?;
        }
        match multi.commit().await {
            Ok(_) => Ok(()),
            Err(zk::MultiWriteError::OperationFailed { index, source }) => {
                let what = if index == 0 {
                    format!("the history of view `{}` is registered already", lease.view)
                } else {
                    format!("part {} is registered already", nodes[index - 1].0)
                };
                Err(CoordError::Conflict {
                    at: done,
                    what,
                    source: Some(source.into()),
                })
            }
            Err(zk::MultiWriteError::RequestFailed { source }) => Err(CoordError::Ambiguous {
                at: done,
                source: source.into(),
            }),
        }
    }
}
