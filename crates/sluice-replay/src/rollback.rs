//! A rollback: the old generation back in and the replay's records out, in one change under the
//! merge leases of every scope the replay touched, while the old objects are kept.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_coord::{CoordError, Coordinator, ReplayGeneration};

use crate::scan::{release_all, take_lease};
use crate::{coord_err, now_ms, ReplayError};

/// Rolls replay `id` back; returns the generation it undid. `holder` names this process in the
/// merge leases, held by workers for up to `lease_wait` before it gives up.
pub async fn roll_back(
    coord: &dyn Coordinator,
    id: &str,
    holder: &str,
    lease_wait: Duration,
) -> Result<ReplayGeneration, ReplayError> {
    let generation = coord
        .read_replay(id)
        .await
        .map_err(coord_err("reading the replay"))?
        .ok_or_else(|| ReplayError::NoReplay { id: id.to_string() })?;
    let mut leases = BTreeMap::new();
    let outcome = async {
        for (table, value) in generation.scopes() {
            let lease = take_lease(coord, holder, (&table, &value), lease_wait).await?;
            leases.insert((table, value), lease);
        }
        let held: Vec<_> = leases.values().cloned().collect();
        match coord.roll_back_replay(&held, id, now_ms()).await {
            Ok(g) => Ok(g),
            Err(CoordError::NoReplay { .. }) => Err(ReplayError::NoReplay { id: id.to_string() }),
            // Resolved by reading back: a replay no longer recorded was rolled back (or
            // collected, which cannot happen under these leases' scopes before its time).
            Err(CoordError::Ambiguous { .. }) => match coord.read_replay(id).await {
                Ok(None) => Ok(generation.clone()),
                Ok(Some(_)) => Err(ReplayError::Plan {
                    table: generation.table.clone(),
                    problem: "the rollback's reply was lost and the replay is still recorded: run the rollback again".into(),
                }),
                Err(e) => Err(coord_err("reading the replay back")(e)),
            },
            Err(CoordError::Conflict { what, .. }) => Err(ReplayError::Plan {
                table: generation.table.clone(),
                problem: format!("the replay can no longer be rolled back: {what}"),
            }),
            Err(e) => Err(coord_err("rolling the replay back")(e)),
        }
    }
    .await;
    release_all(coord, &leases).await;
    outcome
}
