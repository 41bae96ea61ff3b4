//! Retention gaps: events Kafka deleted before this worker ingested them. They cannot be read
//! any more; what a worker can do is find the exact range, record it
//! ([`sluice_coord::Coordinator::record_gap`]: `sluice lag` and the dashboard show it), log it at
//! ERROR and count it, so the loss is visible and auditable instead of silent.
//!
//! Two places find them: taking a partition over whose committed offset is below the oldest
//! offset the broker still has, and reading, when the reader skips offsets (Kafka's reader then
//! resumed at the oldest offset left). A skip is also what compaction and transaction markers
//! leave, so a skip counts as a gap only if the oldest offset left is past where it started.

use std::time::{Duration, Instant};

use sluice_coord::{Gap, UnitId};

use crate::session::Session;
use crate::unit::OwnedUnit;
use crate::WorkerError;

/// How often skipped offsets seen while reading are checked against the watermarks.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(1);

impl Session<'_> {
    /// At takeover: a committed offset below the oldest offset left is a gap; the unit then
    /// starts at that oldest offset. One watermark request per topic; if Kafka cannot answer
    /// now, the reader finds the gap instead (it resumes at the oldest offset left).
    pub(crate) async fn skip_retention_gaps(
        &mut self,
        units: &mut [OwnedUnit],
    ) -> Result<(), WorkerError> {
        let committed = units.iter().filter(|u| u.position.is_some());
        let to_check = committed.map(|u| (u.id.topic.clone(), u.id.partition));
        let marks = match sluice_source::watermarks_of(&*self.services.source, to_check).await {
            Ok(marks) => marks,
            Err(e) => {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "cannot read the watermarks to check for retention gaps now"
                );
                return Ok(());
            }
        };
        for u in units.iter_mut() {
            let (Some(from), Some(&(low, _))) =
                (u.position, marks.get(&(u.id.topic.clone(), u.id.partition)))
            else {
                continue;
            };
            if low > from {
                self.record_gap(&u.id, from, low).await?;
                u.position = Some(low);
            }
        }
        Ok(())
    }

    /// While reading: the skips the owned units saw since the last check, each a gap if the
    /// oldest offset left is past where it started. Once per [`CHECK_EVERY`] at most.
    pub(crate) async fn check_skips(&mut self) -> Result<(), WorkerError> {
        if Instant::now() < self.next_skip_check
            || self.ingest.owned.iter().all(|u| u.jumps.is_empty())
        {
            return Ok(());
        }
        self.next_skip_check = Instant::now() + CHECK_EVERY;
        let skipped = self.ingest.owned.iter().filter(|u| !u.jumps.is_empty());
        let to_check = skipped.map(|u| (u.id.topic.clone(), u.id.partition));
        let marks = match sluice_source::watermarks_of(&*self.services.source, to_check).await {
            Ok(marks) => marks,
            // Kept for the next check.
            Err(_) => return Ok(()),
        };
        let mut gaps = Vec::new();
        for u in &mut self.ingest.owned {
            let Some(&(low, _)) = marks.get(&(u.id.topic.clone(), u.id.partition)) else {
                continue;
            };
            for (expected, received) in std::mem::take(&mut u.jumps) {
                if low > expected {
                    gaps.push((u.id.clone(), expected, received));
                }
            }
        }
        for (unit, from, to) in gaps {
            self.record_gap(&unit, from, to).await?;
        }
        Ok(())
    }

    async fn record_gap(&mut self, unit: &UnitId, from: i64, to: i64) -> Result<(), WorkerError> {
        let gap = Gap {
            from,
            to,
            found_at_ms: crate::now_ms(),
            worker: self.fleet.me.id.clone(),
        };
        tracing::error!(unit = %unit, from, to, messages = gap.messages(), "events were deleted by Kafka's retention before they were ingested: skipped (recorded; `sluice lag` lists the ranges). Ingest faster than the topic's retention, or lengthen it");
        self.coord.record_gap(unit, &gap).await?;
        metrics::counter!(
            sluice_telemetry::metrics::PARTITION_SKIPPED_MESSAGES,
            "topic" => unit.topic.clone(),
            "partition" => unit.partition.to_string()
        )
        .increment(gap.messages());
        Ok(())
    }
}
