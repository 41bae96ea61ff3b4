//! The offsets a replay rebuilds: the range asked for, widened until no part record straddles
//! its edges.
//!
//! In one scope, a record holds every row of the offsets its spans cover that fell into the
//! scope, and no two records of a scope share an offset. So replacing, in every scope, the
//! records that meet a range by the rows that range yields again loses and doubles nothing,
//! provided each record met lies wholly inside the range: a merged part holding offsets on both
//! sides of an edge moves the edge out to its own, which may meet further records, and so on
//! until nothing changes.

use std::collections::BTreeMap;

use sluice_coord::PartRecord;

use crate::ReplayError;

/// Per source partition, an inclusive range of offsets.
pub type Ranges = BTreeMap<i32, (i64, i64)>;

/// What a replay replaces.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Widened {
    pub ranges: Ranges,
    /// The records whose rows the ranges hold: every record met, of every table read.
    pub touched: Vec<PartRecord>,
}

/// Whether `record` holds rows of `ranges` (offsets of `topic`).
fn meets(topic: &str, ranges: &Ranges, record: &PartRecord) -> bool {
    record.source_spans().iter().any(|s| {
        s.topic == topic
            && ranges
                .get(&s.partition)
                .is_some_and(|&(first, last)| s.first_offset <= last && first <= s.last_offset)
    })
}

/// `asked` widened over `records` (see the module docs). A record met that also holds rows of
/// another topic, or rows a backfill loaded from files, cannot be rebuilt from this topic: it
/// is refused, naming it.
pub fn widen(
    table: &str,
    topic: &str,
    asked: &Ranges,
    records: &[PartRecord],
) -> Result<Widened, ReplayError> {
    let mut ranges = asked.clone();
    let mut touched = vec![false; records.len()];
    loop {
        let mut changed = false;
        for (i, record) in records.iter().enumerate() {
            if touched[i] || !meets(topic, &ranges, record) {
                continue;
            }
            touched[i] = true;
            changed = true;
            for s in record.source_spans() {
                if s.topic != topic {
                    return Err(ReplayError::Plan {
                        table: table.to_string(),
                        problem: format!(
                            "part {} also holds rows of topic `{}`, which a replay of `{topic}` cannot rebuild",
                            record.path, s.topic
                        ),
                    });
                }
                if s.first_offset < 0 {
                    return Err(ReplayError::Plan {
                        table: table.to_string(),
                        problem: format!(
                            "part {} holds rows a backfill loaded from snapshot files (offsets before {} of partition {}), which did not come from the topic; replay a range that starts after the backfill's handoff",
                            record.path,
                            s.last_offset + 1,
                            s.partition
                        ),
                    });
                }
                let range = ranges
                    .entry(s.partition)
                    .or_insert((s.first_offset, s.last_offset));
                *range = (range.0.min(s.first_offset), range.1.max(s.last_offset));
            }
        }
        if !changed {
            break;
        }
    }
    Ok(Widened {
        ranges,
        touched: records
            .iter()
            .zip(touched)
            .filter(|&(_, t)| t)
            .map(|(r, _)| r.clone())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use sluice_coord::{OffsetSpan, PartRecord};

    use super::*;

    fn flushed(value: &str, partition: i32, first: i64, last: i64) -> PartRecord {
        PartRecord {
            table: "t".into(),
            partition_value: value.into(),
            path: format!("t/data/{value}/x-{partition}-{first}-{last}.parquet"),
            topic: "events".into(),
            partition,
            first_offset: first,
            last_offset: last,
            ..PartRecord::default()
        }
    }

    fn merged(value: &str, spans: &[(i32, i64, i64)]) -> PartRecord {
        PartRecord {
            level: 1,
            partition: -1,
            spans: spans
                .iter()
                .map(|&(partition, first_offset, last_offset)| OffsetSpan {
                    topic: "events".into(),
                    partition,
                    first_offset,
                    last_offset,
                })
                .collect(),
            ..flushed(value, -1, -1, -1)
        }
    }

    fn asked(ranges: &[(i32, i64, i64)]) -> Ranges {
        ranges.iter().map(|&(p, a, b)| (p, (a, b))).collect()
    }

    #[test]
    fn a_flush_straddling_an_edge_moves_it_out_to_its_own() {
        let records = vec![
            flushed("a", 0, 0, 9),
            flushed("a", 0, 10, 19),
            flushed("b", 0, 10, 19),
            flushed("a", 0, 20, 29),
            flushed("a", 1, 0, 9),
        ];
        let w = widen("t", "events", &asked(&[(0, 15, 25)]), &records).expect("widens");
        assert_eq!(w.ranges, asked(&[(0, 10, 29)]));
        assert_eq!(w.touched, records[1..4].to_vec());
    }

    #[test]
    fn a_merged_part_spanning_partitions_widens_every_partition_it_holds() {
        let records = vec![
            merged("a", &[(0, 0, 19), (1, 0, 40)]),
            flushed("b", 1, 35, 50),
            flushed("b", 1, 51, 60),
            flushed("a", 0, 20, 29),
        ];
        let w = widen("t", "events", &asked(&[(0, 10, 12)]), &records).expect("widens");
        // The merged part brings partition 1's 0..40, which meets 35..50 in another scope.
        assert_eq!(w.ranges, asked(&[(0, 0, 19), (1, 0, 50)]));
        assert_eq!(w.touched, records[..2].to_vec());
    }

    #[test]
    fn nothing_met_leaves_the_range_as_asked() {
        let records = vec![flushed("a", 0, 0, 9)];
        let w = widen("t", "events", &asked(&[(0, 10, 20)]), &records).expect("widens");
        assert_eq!(w.ranges, asked(&[(0, 10, 20)]));
        assert!(w.touched.is_empty());
    }

    #[test]
    fn rows_a_backfill_loaded_are_refused_naming_the_part() {
        let mut loaded = merged("a", &[(0, -1, 99)]);
        loaded.level = 0;
        loaded.path = "t/data/a/bf.x.f0.c0.e1.v1.parquet".into();
        let err = widen("t", "events", &asked(&[(0, 50, 60)]), &[loaded])
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains("bf.x.f0.c0.e1.v1.parquet") && err.contains("backfill"),
            "{err}"
        );
    }
}
