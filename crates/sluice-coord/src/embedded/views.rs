//! The embedded backend's view registry, persisted with the rest; its version counts changes
//! as the ZooKeeper node's does.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{EmbeddedCoordinator, Shared};
use crate::{
    CoordError, LiveView, PartRecord, UnitId, ViewHistory, ViewHistoryLease, ViewPoint,
    ViewRegistry,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Entry {
    version: i64,
    views: Vec<LiveView>,
    #[serde(default)]
    histories: BTreeMap<String, ViewHistory>,
    #[serde(default)]
    history_epochs: BTreeMap<String, u64>,
    /// Live history leases: view -> (session, holder, epoch).
    #[serde(skip)]
    holders: BTreeMap<String, (u64, String, u64)>,
}

fn conflict(what: String) -> CoordError {
    CoordError::Conflict {
        at: "views".into(),
        what,
        source: None,
    }
}

impl Shared {
    pub(super) fn read_views(&self) -> ViewRegistry {
        let Some(e) = &self.views else {
            return ViewRegistry {
                version: -1,
                ..ViewRegistry::default()
            };
        };
        ViewRegistry {
            version: e.version,
            views: e.views.clone(),
            histories: e.histories.clone(),
            history_holders: e
                .holders
                .iter()
                .map(|(v, (_, h, _))| (v.clone(), h.clone()))
                .collect(),
        }
    }

    /// The views version a commit names, if it names one, still current.
    pub(super) fn check_views(
        &self,
        unit: &UnitId,
        version: Option<i64>,
    ) -> Result<(), CoordError> {
        match version {
            Some(v) if self.views.as_ref().map_or(-1, |e| e.version) != v => {
                Err(CoordError::ViewsChanged { unit: unit.clone() })
            }
            _ => Ok(()),
        }
    }

    /// The registry's version, -1 while there is none.
    pub(super) fn views_version(&self) -> i64 {
        self.views.as_ref().map_or(-1, |e| e.version)
    }

    /// Moves the registry's version (if there is one) without changing it.
    pub(super) fn bump_views(&mut self, by: i64) {
        if let Some(e) = &mut self.views {
            e.version += by;
        }
    }

    pub(super) fn end_view_leases(&mut self, session: u64) {
        if let Some(e) = &mut self.views {
            e.holders.retain(|_, (s, _, _)| *s != session);
        }
    }

    fn current_views(&mut self, expected: i64) -> Result<&mut Entry, CoordError> {
        match &mut self.views {
            Some(e) if e.version == expected => Ok(e),
            _ => Err(conflict(
                "the view registry changed since it was read".into(),
            )),
        }
    }
}

impl EmbeddedCoordinator {
    /// Applies `change` to the shared state and persists it; on failure nothing changed.
    fn change_views<T>(
        &self,
        change: impl FnOnce(&mut Shared) -> Result<T, CoordError>,
    ) -> Result<T, CoordError> {
        let mut shared = self.lock()?;
        let before = (shared.views.clone(), shared.registry.clone());
        let outcome = change(&mut shared).and_then(|t| shared.persist().map(|()| t));
        if outcome.is_err() {
            shared.views = before.0;
            shared.registry = before.1;
        }
        outcome
    }

    pub(super) fn init_views_of(&self, views: &[LiveView]) -> Result<ViewRegistry, CoordError> {
        self.change_views(|shared| {
            shared.views.get_or_insert_with(|| Entry {
                version: 0,
                views: views.to_vec(),
                histories: BTreeMap::new(),
                history_epochs: BTreeMap::new(),
                holders: BTreeMap::new(),
            });
            Ok(shared.read_views())
        })
    }

    pub(super) fn activate_view_of(
        &self,
        expected: i64,
        view: &LiveView,
        units: &[UnitId],
    ) -> Result<(), CoordError> {
        self.change_views(|shared| {
            let points: Vec<ViewPoint> = units
                .iter()
                .map(|u| ViewPoint {
                    topic: u.topic.clone(),
                    partition: u.partition,
                    next_offset: shared.units.get(u).and_then(|e| e.next_offset).unwrap_or(0),
                })
                .collect();
            let e = shared.current_views(expected)?;
            if e.views.iter().any(|v| v.name == view.name) {
                return Err(conflict(format!(
                    "view `{}` is live already (or was dropped)",
                    view.name
                )));
            }
            let mut live = view.clone();
            live.points = ViewPoint::recorded(points);
            e.views.push(live);
            e.version += 1;
            Ok(())
        })
    }

    pub(super) fn drop_view_of(
        &self,
        expected: i64,
        name: &str,
        at_ms: i64,
    ) -> Result<(), CoordError> {
        self.change_views(|shared| {
            let e = shared.current_views(expected)?;
            let view =
                e.views
                    .iter_mut()
                    .find(|v| v.name == name)
                    .ok_or_else(|| CoordError::NoView {
                        view: name.to_string(),
                    })?;
            view.dropped_at_ms.get_or_insert(at_ms);
            e.version += 1;
            Ok(())
        })
    }

    pub(super) fn acquire_view_history_lease_of(
        &self,
        view: &str,
        worker_id: &str,
    ) -> Result<ViewHistoryLease, CoordError> {
        let session = self.session;
        self.change_views(|shared| {
            let e = shared.views.as_mut().ok_or_else(|| CoordError::NoView {
                view: view.to_string(),
            })?;
            if let Some((s, holder, epoch)) = e.holders.get(view) {
                if *s != session {
                    return Err(CoordError::ViewHistoryHeld {
                        view: view.to_string(),
                        holder: holder.clone(),
                    });
                }
                return Ok(ViewHistoryLease {
                    view: view.to_string(),
                    worker_id: holder.clone(),
                    epoch: *epoch,
                    token: *epoch as i64,
                });
            }
            let epoch = e.history_epochs.entry(view.to_string()).or_default();
            *epoch += 1;
            let epoch = *epoch;
            e.holders
                .insert(view.to_string(), (session, worker_id.to_string(), epoch));
            Ok(ViewHistoryLease {
                view: view.to_string(),
                worker_id: worker_id.to_string(),
                epoch,
                token: epoch as i64,
            })
        })
    }

    pub(super) fn release_view_history_lease_of(
        &self,
        lease: &ViewHistoryLease,
    ) -> Result<(), CoordError> {
        let mut shared = self.lock()?;
        if let Some(e) = &mut shared.views {
            if e.holders
                .get(&lease.view)
                .is_some_and(|(s, _, epoch)| *s == self.session && *epoch == lease.epoch)
            {
                e.holders.remove(&lease.view);
            }
        }
        Ok(())
    }

    pub(super) fn complete_view_history_of(
        &self,
        lease: &ViewHistoryLease,
        parts: &[PartRecord],
        history: &ViewHistory,
    ) -> Result<(), CoordError> {
        self.change_views(|shared| {
            let e = shared.views.as_mut().ok_or_else(|| CoordError::NoView {
                view: lease.view.clone(),
            })?;
            if e.histories.contains_key(&lease.view) {
                return Err(conflict(format!(
                    "the history of view `{}` is registered already",
                    lease.view
                )));
            }
            e.histories.insert(lease.view.clone(), history.clone());
            shared
                .registry
                .add(&format!("the history of view `{}`", lease.view), parts)
        })
    }
}
