//! Retention gaps: a partition whose committed offset is below the oldest offset the source
//! still has. The range in between is recorded exactly and skipped; everything else is ingested
//! exactly once.

use anyhow::{ensure, Result};
use sluice_coord::{Coordinator, RetentionGaps, UnitId};
use sluice_sink::Storage;
use sluice_testkit::exactly_once::{self, Committed, Objects, Produced};

use super::{Harness, Settings, TOPIC};

/// Every recorded range as (partition, from, to).
fn ranges(gaps: &RetentionGaps) -> Vec<(i32, i64, i64)> {
    gaps.partitions
        .iter()
        .flat_map(|(p, g)| g.last.iter().map(move |gap| (*p, gap.from, gap.to)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_gap_is_recorded_exactly_and_everything_else_ingested_once() -> Result<()> {
    const DELETED: i64 = 7;
    let mut h = Harness::new(Settings::default())?;
    h.produce(80);
    h.spawn("w1", true).await?.finish().await?;
    h.produce(120);
    let unit = UnitId::new(TOPIC, 0);
    let observer = h.observer();
    let from = observer
        .committed_offset(&unit)
        .await?
        .expect("partition 0 committed");
    // Retention deletes what follows the committed offset before anyone reads it.
    h.source.delete_before(TOPIC, 0, from + DELETED);
    h.spawn("w1", true).await?.finish().await?;

    let gaps = observer.retention_gaps(TOPIC).await?;
    ensure!(
        ranges(&gaps) == [(0, from, from + DELETED)]
            && gaps.partitions[&0].skipped_messages == DELETED as u64,
        "recorded gaps {gaps:?}, expected partition 0 from {from} to {}",
        from + DELETED
    );

    // What the test expects: everything produced but the deleted events.
    let deleted: std::collections::HashSet<u64> = h
        .located
        .iter()
        .filter(|((p, o), _)| *p == 0 && (from..from + DELETED).contains(o))
        .map(|(_, seq)| *seq)
        .collect();
    ensure!(deleted.len() == DELETED as usize, "{deleted:?}");
    let events: Vec<_> = h
        .events
        .iter()
        .filter(|e| !deleted.contains(&e.seq))
        .cloned()
        .collect();
    let located = h
        .located
        .iter()
        .filter(|(_, seq)| !deleted.contains(seq))
        .map(|(k, v)| (*k, *v))
        .collect();
    let storage = Storage::open(&h.config.storage)?;
    let (store, root) = storage.object_store();
    let objects = Objects::new(store, root.clone());
    let tables: Vec<String> = h.config.tables.iter().map(|t| t.name.clone()).collect();
    let committed = Committed::read(&observer, &objects, TOPIC, &tables).await?;
    exactly_once::verify(
        &committed,
        &objects,
        Produced {
            events: &events,
            located: &located,
            backfilled: None,
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_deleted_while_the_partition_is_read_are_recorded_exactly() -> Result<()> {
    const LOST: i64 = 5;
    let mut h = Harness::new(Settings::default())?;
    h.produce(40);
    let worker = h.spawn("w1", false).await?;
    h.all_committed().await?;
    let unit = UnitId::new(TOPIC, 1);
    let from = h.ends()[&1];
    // Retention deletes the next events of partition 1 before the running worker reads them;
    // then more arrive, which it reads after the skip.
    h.source.lose_unread(TOPIC, 1, LOST);
    h.produce(60);
    h.all_committed().await?;
    let observer = h.observer();
    super::wait_for("the skip to be recorded as a retention gap", || async {
        Ok(!observer.retention_gaps(TOPIC).await?.partitions.is_empty())
    })
    .await?;
    worker.shut_down().await?;
    let gaps = observer.retention_gaps(TOPIC).await?;
    ensure!(
        ranges(&gaps) == [(unit.partition, from, from + LOST)],
        "recorded gaps {gaps:?}, expected partition 1 from {from} to {}",
        from + LOST
    );
    // Nothing else was skipped: every event produced is in exactly one row.
    h.verify().await?;
    Ok(())
}
