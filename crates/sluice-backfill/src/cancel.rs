//! Cancelling a backfill that was not handed off: marked cancelled first (it can then never
//! hand off), its objects deleted, then forgotten, which gives its partitions back to the
//! workers. A cancel stopped half-way is finished by running it again.

use std::time::Duration;

use sluice_config::Config;
use sluice_coord::Coordinator;
use sluice_sink::Storage;

use crate::run::{delete_objects, take_lease};
use crate::BackfillError;

/// Cancels backfill `id`; returns how many objects were deleted.
pub async fn cancel(
    config: &Config,
    coord: &dyn Coordinator,
    storage: &Storage,
    id: &str,
    holder: &str,
) -> Result<usize, BackfillError> {
    let err = |what| {
        move |source| BackfillError::Coordination {
            what,
            source: Box::new(source),
        }
    };
    let status = coord
        .read_backfill(id)
        .await
        .map_err(err("reading the backfill"))?
        .ok_or_else(|| BackfillError::Unknown { id: id.to_string() })?;
    let patience = Duration::from_millis(config.coordination.session_timeout_ms * 2);
    let lease = take_lease(coord, id, holder, patience).await?;
    let outcome = async {
        coord
            .cancel_backfill(&lease)
            .await
            .map_err(err("cancelling the backfill"))?;
        let tables = config.tables_fed_by(&status.state.plan.topic);
        let deleted = delete_objects(storage, &tables, id, |_, _| true).await?;
        coord
            .forget_backfill(&lease)
            .await
            .map_err(err("forgetting the backfill"))?;
        Ok(deleted)
    }
    .await;
    if outcome.is_err() {
        // Forgotten, the lease node went with the backfill; otherwise give it back.
        let _ = coord.release_backfill_lease(&lease).await;
    }
    outcome
}
