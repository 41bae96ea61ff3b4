//! Retention gaps: messages Kafka deleted (retention) before they were ingested. A worker that
//! resumes a partition from a committed offset below the oldest offset the broker still has
//! cannot ingest what lies between; it records the skipped range here before it goes on, so the
//! loss is visible (`sluice lag`, the dashboard, a metric) and auditable, never silent.
//!
//! Kept per topic, one entry per partition (its totals and its last few gaps): the record grows
//! with the topic's partitions, not with time.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The gaps kept per partition besides its totals.
pub const GAPS_KEPT: usize = 10;

/// One skipped range of a partition: offsets `from..to` were gone when it was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    pub from: i64,
    pub to: i64,
    /// When the worker found it, Unix milliseconds.
    pub found_at_ms: i64,
    /// The worker that found it.
    pub worker: String,
}

impl Gap {
    pub fn messages(&self) -> u64 {
        (self.to - self.from).max(0) as u64
    }
}

/// A partition's gaps: totals, and the last [`GAPS_KEPT`] ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionGaps {
    pub skipped_messages: u64,
    pub gaps: u64,
    pub last: Vec<Gap>,
}

/// A topic's gaps by partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionGaps {
    pub partitions: BTreeMap<i32, PartitionGaps>,
}

impl RetentionGaps {
    /// Adds `gap` of `partition`. The same gap found again (a worker that recorded it and then
    /// lost the partition before committing past it; its next owner finds it too, perhaps
    /// larger by then) extends the one recorded instead of counting twice.
    pub fn record(&mut self, partition: i32, gap: Gap) {
        let p = self.partitions.entry(partition).or_default();
        if let Some(same) = p.last.iter_mut().find(|g| g.from == gap.from) {
            if gap.to > same.to {
                p.skipped_messages += (gap.to - same.to) as u64;
                same.to = gap.to;
            }
            return;
        }
        p.skipped_messages += gap.messages();
        p.gaps += 1;
        p.last.push(gap);
        if p.last.len() > GAPS_KEPT {
            p.last.remove(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gap(from: i64, to: i64) -> Gap {
        Gap {
            from,
            to,
            found_at_ms: 1,
            worker: "w".into(),
        }
    }

    #[test]
    fn gaps_add_up_the_same_gap_counts_once_and_few_are_kept() {
        let mut g = RetentionGaps::default();
        g.record(0, gap(10, 40));
        g.record(0, gap(10, 55));
        g.record(0, gap(10, 50));
        let p = &g.partitions[&0];
        assert_eq!((p.skipped_messages, p.gaps), (45, 1));
        for i in 0..20 {
            g.record(1, gap(100 * i, 100 * i + 5));
        }
        let p = &g.partitions[&1];
        assert_eq!(
            (p.skipped_messages, p.gaps, p.last.len()),
            (100, 20, GAPS_KEPT)
        );
        assert_eq!(p.last[0].from, 1000);
    }
}
