//! Deleting what merges and seals replaced, once the grace period has passed: queries that
//! took their snapshot before the swap may still be reading those objects until then.

use std::collections::HashSet;
use std::sync::Arc;

use sluice_telemetry::metrics as m;

use super::MergeCtx;
use crate::now_ms;

/// Deletes the objects of `table`'s retired sets past the grace period in the scopes this
/// worker merges (`owned` partition values), then forgets the sets; returns how many objects
/// were deleted. Deleting twice is harmless, so a crash in between only repeats work.
pub(crate) async fn retire(
    ctx: Arc<MergeCtx>,
    table: String,
    owned: HashSet<String>,
) -> Result<usize, String> {
    let now = now_ms();
    let sets = ctx
        .coord
        .list_retired(&table)
        .await
        .map_err(|e| e.to_string())?;
    let mut deleted = 0;
    for set in sets
        .iter()
        .filter(|r| r.due(now, ctx.merge.grace_ms as i64) && owned.contains(&r.partition_value))
    {
        // A replay's old generation goes as a whole, forgotten first: once the replay is
        // collected no rollback can bring these objects back into use.
        let batch = match &set.kept_for {
            Some(kept) => ctx
                .coord
                .collect_replay(&kept.replay)
                .await
                .map_err(|e| e.to_string())?,
            None => vec![set.clone()],
        };
        for set in &batch {
            for path in &set.paths {
                ctx.storage.delete(path).await.map_err(|e| e.to_string())?;
                deleted += 1;
                ctx.failpoints.hit("retire_mid_delete");
            }
            if set.kept_for.is_none() {
                ctx.coord
                    .forget_retired(set)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            metrics::counter!(m::RETIRED_OBJECTS_DELETED, "table" => set.table.clone())
                .increment(set.paths.len() as u64);
            tracing::info!(table = %set.table, value = %set.partition_value, objects = set.paths.len(), replaced_by = %set.name, "deleted replaced objects after the grace period");
        }
    }
    Ok(deleted)
}
