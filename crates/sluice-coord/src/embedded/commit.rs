//! An ingest commit: under the lease and the view registry's version, the parts registered and
//! the offset set together, persisted, or nothing changed.

use super::EmbeddedCoordinator;
use crate::{Commit, CoordError, Lease};

impl EmbeddedCoordinator {
    pub(super) fn commit_in(&self, lease: &Lease, commit: &Commit) -> Result<(), CoordError> {
        let mut shared = self.lock()?;
        let current = shared.units.get(&lease.unit).is_some_and(|e| {
            e.epoch == lease.epoch && e.holder.as_ref().is_some_and(|(s, _)| *s == self.session)
        });
        if !current {
            return Err(CoordError::LeaseLost {
                unit: lease.unit.clone(),
                epoch: lease.epoch,
            });
        }
        shared.check_views(&lease.unit, commit.views_version)?;
        let before = (
            shared.registry.clone(),
            shared.units.get(&lease.unit).and_then(|e| e.next_offset),
        );
        shared
            .registry
            .add(&lease.unit.to_string(), &commit.parts)?;
        if let Some(entry) = shared.units.get_mut(&lease.unit) {
            entry.next_offset = Some(commit.next_offset);
        }
        if let Err(e) = shared.persist() {
            // Undone in memory so memory never shows a commit the disk does not have.
            shared.registry = before.0;
            if let Some(entry) = shared.units.get_mut(&lease.unit) {
                entry.next_offset = before.1;
            }
            return Err(e);
        }
        Ok(())
    }
}
