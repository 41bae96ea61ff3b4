//! Replays in the embedded backend: the generations recorded by id, changed together with the
//! registry and persisted, or not at all.

use super::{EmbeddedCoordinator, Shared};
use crate::{CoordError, MergeLease, ReplayGeneration, Retired};

impl EmbeddedCoordinator {
    /// Applies `change` to the state, persisting it; undone in memory if it fails.
    fn change_replays<T>(
        &self,
        change: impl FnOnce(&mut Shared, u64) -> Result<T, CoordError>,
    ) -> Result<T, CoordError> {
        let mut shared = self.lock()?;
        let before = (shared.registry.clone(), shared.replays.clone());
        let outcome = change(&mut shared, self.session).and_then(|t| shared.persist().map(|()| t));
        if outcome.is_err() {
            (shared.registry, shared.replays) = before;
        }
        outcome
    }

    pub(super) fn replace_range_in(
        &self,
        leases: &[MergeLease],
        views_version: i64,
        generation: &ReplayGeneration,
    ) -> Result<(), CoordError> {
        self.change_replays(|shared, session| {
            let at = format!("the replay `{}` of {}", generation.id, generation.table);
            if shared.views_version() != views_version {
                return Err(CoordError::Conflict {
                    at,
                    what: "the view registry changed (a view went live or was dropped); run the replay again".into(),
                    source: None,
                });
            }
            if shared.replays.contains_key(&generation.id) {
                return Err(CoordError::Conflict {
                    at,
                    what: format!("a replay `{}` is recorded already", generation.id),
                    source: None,
                });
            }
            let sets: Vec<Retired> = generation
                .kept_sets()
                .into_iter()
                .chain(generation.replaced_manifests())
                .collect();
            shared.registry.replace(
                session,
                leases,
                (&generation.old, &generation.new),
                (&[], &sets),
                &generation.resealed,
            )?;
            shared
                .replays
                .insert(generation.id.clone(), generation.clone());
            Ok(())
        })
    }

    pub(super) fn roll_back_replay_in(
        &self,
        leases: &[MergeLease],
        id: &str,
        now_ms: i64,
    ) -> Result<ReplayGeneration, CoordError> {
        self.change_replays(|shared, session| {
            let Some(generation) = shared.replays.remove(id) else {
                return Err(CoordError::NoReplay { id: id.to_string() });
            };
            shared.registry.replace(
                session,
                leases,
                (&generation.new, &generation.restored()),
                (
                    &generation.kept_sets(),
                    &generation.rolled_back_sets(now_ms),
                ),
                &[],
            )?;
            Ok(generation)
        })
    }

    pub(super) fn read_replay_in(&self, id: &str) -> Result<Option<ReplayGeneration>, CoordError> {
        Ok(self.lock()?.replays.get(id).cloned())
    }

    pub(super) fn list_replays_in(&self) -> Result<Vec<ReplayGeneration>, CoordError> {
        let mut out: Vec<ReplayGeneration> = self.lock()?.replays.values().cloned().collect();
        out.sort_by_key(|g| g.swapped_at_ms);
        Ok(out)
    }

    pub(super) fn collect_replay_in(&self, id: &str) -> Result<Vec<Retired>, CoordError> {
        self.change_replays(|shared, _| {
            let Some(generation) = shared.replays.remove(id) else {
                return Ok(Vec::new());
            };
            let kept = generation.kept_sets();
            shared.registry.forget_sets(&kept);
            Ok(kept)
        })
    }
}
