//! `--stop-at-end`: the end each partition had when this worker first saw it, and whether the
//! whole topic, this worker's partitions and the others', is committed up to those ends.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use sluice_coord::{Coordinator, UnitId};
use sluice_source::Source;

use crate::WorkerError;

/// How often the other workers' progress is read from the coordinator, at most.
const FLEET_CHECK_EVERY: Duration = Duration::from_millis(200);

#[derive(Debug, Default)]
pub(crate) struct Ends {
    /// Each unit's (low, high) watermarks when this worker first saw it.
    marks: HashMap<UnitId, (i64, i64)>,
    /// When the other workers' progress was last read.
    last_fleet_check: Option<Instant>,
}

impl Ends {
    /// Reads the watermarks of the units not seen before.
    pub(crate) async fn learn(
        &mut self,
        source: &dyn Source,
        units: &BTreeSet<UnitId>,
    ) -> Result<(), WorkerError> {
        let new = units
            .iter()
            .filter(|u| !self.marks.contains_key(*u))
            .map(|u| (u.topic.clone(), u.partition));
        let marks = sluice_source::watermarks_of(source, new).await?;
        self.marks.extend(
            marks
                .into_iter()
                .map(|((topic, partition), m)| (UnitId::new(topic, partition), m)),
        );
        Ok(())
    }

    /// The (low, high) watermarks a unit had when first seen.
    pub(crate) fn of(&self, unit: &UnitId) -> Option<(i64, i64)> {
        self.marks.get(unit).copied()
    }

    /// Whether every unit of `universe` not in `mine` is committed up to its end. Waiting for
    /// the others too keeps a worker from stopping while a crashed member's partitions are still
    /// unowned: it takes them over once that member's session expires.
    ///
    /// Read at most every [`FLEET_CHECK_EVERY`] unless `now`: a membership change asks at once,
    /// so a worker whose peer finished and left stops too, instead of first taking over
    /// partitions that are already done.
    pub(crate) async fn others_done(
        &mut self,
        coord: &dyn Coordinator,
        universe: &BTreeSet<UnitId>,
        mine: &BTreeSet<&UnitId>,
        now: bool,
    ) -> Result<bool, WorkerError> {
        if !now
            && self
                .last_fleet_check
                .is_some_and(|t| t.elapsed() < FLEET_CHECK_EVERY)
        {
            return Ok(false);
        }
        self.last_fleet_check = Some(Instant::now());
        for unit in universe.iter().filter(|u| !mine.contains(u)) {
            let Some((low, high)) = self.of(unit) else {
                return Ok(false);
            };
            if high <= low {
                continue;
            }
            if coord.committed_offset(unit).await?.is_none_or(|o| o < high) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
