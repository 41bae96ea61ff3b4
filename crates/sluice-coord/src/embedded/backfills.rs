//! The embedded backend's backfills: their state and staged files, persisted with the rest;
//! the partitions a backfill claims are those of its plan until it hands off.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{EmbeddedCoordinator, Shared};
use crate::backfill;
use crate::{
    BackfillLease, BackfillPlan, BackfillState, BackfillStatus, CoordError, StagedFile, UnitId,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Entry {
    state: BackfillState,
    staged: BTreeMap<u32, StagedFile>,
    /// The live lease: (session, holder).
    #[serde(skip)]
    holder: Option<(u64, String)>,
}

impl Shared {
    /// The backfill that claims `unit` until its handoff, if one does.
    pub(super) fn handoff_owner(&self, unit: &UnitId) -> Option<String> {
        self.backfills.values().find_map(|e| {
            let plan = &e.state.plan;
            (e.state.handed_off_at_ms.is_none()
                && plan.topic == unit.topic
                && plan.offsets.contains_key(&unit.partition))
            .then(|| plan.id.clone())
        })
    }

    pub(super) fn end_backfill_leases(&mut self, session: u64) {
        for e in self.backfills.values_mut() {
            if e.holder.as_ref().is_some_and(|(s, _)| *s == session) {
                e.holder = None;
            }
        }
    }

    fn current(&mut self, session: u64, lease: &BackfillLease) -> Result<&mut Entry, CoordError> {
        let lost = || CoordError::BackfillLeaseLost {
            id: lease.id.clone(),
            epoch: lease.epoch,
        };
        let e = self.backfills.get_mut(&lease.id).ok_or_else(lost)?;
        let held = e.holder.as_ref().is_some_and(|(s, _)| *s == session);
        if !held || e.state.epoch != lease.epoch {
            return Err(lost());
        }
        Ok(e)
    }
}

fn status(e: &Entry) -> BackfillStatus {
    BackfillStatus {
        state: e.state.clone(),
        holder: e.holder.as_ref().map(|(_, h)| h.clone()),
        staged: e.staged.clone(),
    }
}

impl EmbeddedCoordinator {
    pub(super) fn claim_backfill_in(&self, plan: &BackfillPlan) -> Result<(), CoordError> {
        let mut shared = self.lock()?;
        if let Some(e) = shared.backfills.get(&plan.id) {
            return backfill::reclaim(&e.state.plan, plan);
        }
        for &p in plan.offsets.keys() {
            let unit = UnitId::new(plan.topic.clone(), p);
            if let Some(backfill) = shared.handoff_owner(&unit) {
                return Err(CoordError::HandoffPending { unit, backfill });
            }
            let entry = shared.units.get(&unit);
            if let Some(next_offset) = entry.and_then(|e| e.next_offset) {
                return Err(CoordError::AlreadyCommitted { unit, next_offset });
            }
            if let Some((_, holder)) = entry.and_then(|e| e.holder.clone()) {
                return Err(CoordError::LeaseHeld { unit, holder });
            }
        }
        let entry = Entry {
            state: BackfillState::claimed(plan),
            staged: BTreeMap::new(),
            holder: None,
        };
        shared.backfills.insert(plan.id.clone(), entry);
        // Serialised with a view going live, as the ZooKeeper backend's claim is.
        shared.bump_views(1);
        if let Err(e) = shared.persist() {
            shared.backfills.remove(&plan.id);
            shared.bump_views(-1);
            return Err(e);
        }
        Ok(())
    }

    pub(super) fn acquire_backfill_lease_in(
        &self,
        id: &str,
        holder: &str,
    ) -> Result<BackfillLease, CoordError> {
        let mut shared = self.lock()?;
        let session = self.session;
        let e = shared
            .backfills
            .get_mut(id)
            .ok_or_else(|| CoordError::NoBackfill { id: id.to_string() })?;
        match &e.holder {
            Some((s, _)) if *s == session => {}
            Some((_, other)) => {
                return Err(CoordError::BackfillHeld {
                    id: id.to_string(),
                    holder: other.clone(),
                })
            }
            None => {
                e.state.epoch += 1;
                e.holder = Some((session, holder.to_string()));
            }
        }
        let epoch = e.state.epoch;
        shared.persist()?;
        Ok(BackfillLease {
            id: id.to_string(),
            holder: holder.to_string(),
            epoch,
            token: epoch as i64,
        })
    }

    pub(super) fn release_backfill_lease_in(
        &self,
        lease: &BackfillLease,
    ) -> Result<(), CoordError> {
        let mut shared = self.lock()?;
        if let Ok(e) = shared.current(self.session, lease) {
            e.holder = None;
        }
        Ok(())
    }

    pub(super) fn stage_backfill_file_in(
        &self,
        lease: &BackfillLease,
        file: &StagedFile,
    ) -> Result<(), CoordError> {
        let mut shared = self.lock()?;
        let e = shared.current(self.session, lease)?;
        if e.staged.contains_key(&file.index) {
            return Ok(());
        }
        e.staged.insert(file.index, file.clone());
        if let Err(err) = shared.persist() {
            if let Ok(e) = shared.current(self.session, lease) {
                e.staged.remove(&file.index);
            }
            return Err(err);
        }
        Ok(())
    }

    pub(super) fn read_backfill_in(&self, id: &str) -> Result<Option<BackfillStatus>, CoordError> {
        Ok(self.lock()?.backfills.get(id).map(status))
    }

    pub(super) fn list_backfills_in(&self) -> Result<Vec<BackfillStatus>, CoordError> {
        Ok(self.lock()?.backfills.values().map(status).collect())
    }

    pub(super) fn hand_off_in(&self, lease: &BackfillLease) -> Result<(), CoordError> {
        let mut shared = self.lock()?;
        let session = self.session;
        let e = shared.current(session, lease)?;
        if e.state.handed_off_at_ms.is_some() {
            return Ok(());
        }
        backfill::check_handoff(&e.state, e.staged.len())?;
        let plan = e.state.plan.clone();
        let parts: Vec<_> = e.staged.values().flat_map(|f| f.parts.clone()).collect();
        for &p in plan.offsets.keys() {
            let unit = UnitId::new(plan.topic.clone(), p);
            if let Some(next_offset) = shared.units.get(&unit).and_then(|u| u.next_offset) {
                return Err(CoordError::AlreadyCommitted { unit, next_offset });
            }
        }
        let before = (
            shared.registry.clone(),
            shared.units.clone(),
            shared.backfills.clone(),
        );
        let at = format!("backfill {}", plan.id);
        let applied = shared.registry.add(&at, &parts).map(|()| {
            for (&p, &next) in &plan.offsets {
                let unit = UnitId::new(plan.topic.clone(), p);
                shared.units.entry(unit).or_default().next_offset = Some(next);
            }
            if let Some(e) = shared.backfills.get_mut(&plan.id) {
                let staged = std::mem::take(&mut e.staged);
                e.state.handed_off(staged.values());
            }
        });
        if let Err(err) = applied.and_then(|()| shared.persist()) {
            (shared.registry, shared.units, shared.backfills) = before;
            return Err(err);
        }
        shared.changed();
        Ok(())
    }

    pub(super) fn cancel_backfill_in(&self, lease: &BackfillLease) -> Result<(), CoordError> {
        let mut shared = self.lock()?;
        let e = shared.current(self.session, lease)?;
        backfill::check_cancel(&e.state)?;
        if e.state.cancelled_at_ms.is_none() {
            e.state.cancelled_at_ms = Some(crate::backfill::now_ms());
            if let Err(err) = shared.persist() {
                if let Ok(e) = shared.current(self.session, lease) {
                    e.state.cancelled_at_ms = None;
                }
                return Err(err);
            }
        }
        Ok(())
    }

    pub(super) fn forget_backfill_in(&self, lease: &BackfillLease) -> Result<(), CoordError> {
        let mut shared = self.lock()?;
        let e = shared.current(self.session, lease)?;
        backfill::check_forget(&e.state)?;
        let removed = shared.backfills.remove(&lease.id);
        if let Err(err) = shared.persist() {
            if let Some(e) = removed {
                shared.backfills.insert(lease.id.clone(), e);
            }
            return Err(err);
        }
        shared.changed();
        Ok(())
    }
}
