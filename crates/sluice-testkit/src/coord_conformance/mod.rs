//! The conformance suite every [`Coordinator`] must pass: the contract in `sluice_coord`'s docs.
//!
//! `make` opens a new handle (its own session) on one shared backend each time it is called,
//! the way two worker processes would each open a ZooKeeper session. Each case uses topics of its
//! own, so the suite can run repeatedly against the same deployment root.

use std::future::Future;
use std::time::{Duration, Instant};

use sluice_coord::{
    Commit, CoordError, Coordinator, Gap, Member, PartKind, PartRecord, Signal, UnitId,
};

use crate::{fail, unique, ConformanceFailure, OrFail};

mod backfills;
mod replays;
mod scopes;
mod views;

/// How long a watch may take to fire after the change it watches.
const SIGNAL_WITHIN: Duration = Duration::from_secs(10);

type Outcome = Result<(), ConformanceFailure>;

/// A part record for tests; `tag` makes the object name unique.
pub fn sample_part(table: &str, unit: &UnitId, first: i64, last: i64, tag: &str) -> PartRecord {
    PartRecord {
        table: table.to_string(),
        kind: PartKind::Data,
        partition_value: "2026-11-23".to_string(),
        path: format!(
            "{table}/data/2026-11-23/{}-{}-{first:020}-{last:020}-v1-{tag}.parquet",
            unit.topic, unit.partition
        ),
        rows: (last - first + 1) as u64,
        bytes: 1000,
        topic: unit.topic.clone(),
        partition: unit.partition,
        first_offset: first,
        last_offset: last,
        definition_version: 1,
        lease_epoch: 0,
        created_at_ms: 0,
        level: 0,
        inputs: 0,
        spans: Vec::new(),
        checksum: String::new(),
        flushed_at_ms: 0,
        replicas: Vec::new(),
    }
}

/// Runs every case; stops at the first failure.
pub async fn run_all<F, Fut>(make: F) -> Outcome
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Box<dyn Coordinator>, CoordError>>,
{
    let open = || async {
        make()
            .await
            .map_err(|e| fail("open", format!("cannot open a coordinator handle: {e}")))
    };
    fresh_unit(open().await?).await?;
    commit_is_visible_atomically(open().await?).await?;
    data_and_quarantine_of_one_flush_are_distinct(open().await?).await?;
    lease_is_exclusive(open().await?, open().await?).await?;
    a_held_lease_is_returned_to_its_session(open().await?, open().await?).await?;
    stale_lease_cannot_commit(open().await?, open().await?).await?;
    closed_session_frees_leases(open().await?, open().await?).await?;
    release_of_lost_lease_is_harmless(open().await?, open().await?).await?;
    membership_is_unique_and_watched(open().await?, open().await?).await?;
    lease_watch_fires_on_release(open().await?, open().await?).await?;
    session_end_is_signalled(open().await?, open().await?).await?;
    scopes::merge_lease_is_exclusive_and_epochs_grow(open().await?, open().await?).await?;
    scopes::swap_replaces_inputs_atomically(open().await?).await?;
    scopes::stale_merge_lease_cannot_swap(open().await?, open().await?).await?;
    scopes::inputs_merged_already_are_refused(open().await?).await?;
    scopes::seal_moves_records_into_a_manifest(open().await?).await?;
    scopes::replicas_are_recorded_on_live_parts_only(open().await?).await?;
    retention_gaps_are_kept_per_topic_and_count_once(open().await?, open().await?).await?;
    backfills::a_backfill_claims_partitions_until_its_handoff(open().await?, open().await?).await?;
    backfills::a_zombie_backfill_cannot_stage_or_hand_off(open().await?, open().await?).await?;
    backfills::a_committed_partition_cannot_be_claimed(open().await?).await?;
    backfills::a_cancelled_backfill_gives_its_partitions_back(open().await?, open().await?).await?;
    views::a_view_goes_live_at_the_committed_offsets_and_its_history_registers_once(
        open().await?,
        open().await?,
    )
    .await?;
    replays::a_replay_swaps_its_generation_in_and_rolls_back_or_is_collected_once(
        open().await?,
        open().await?,
    )
    .await?;
    Ok(())
}

/// A member for tests.
pub fn sample_member(id: &str) -> Member {
    Member {
        id: id.to_string(),
        weight: 1.0,
        address: None,
        host: "conformance".to_string(),
        pid: std::process::id(),
        joined_at_ms: 0,
        views: Vec::new(),
    }
}

async fn fires(case: &'static str, what: &str, signal: Signal) -> Outcome {
    tokio::time::timeout(SIGNAL_WITHIN, signal)
        .await
        .map_err(|_| {
            fail(
                case,
                format!("no signal within {SIGNAL_WITHIN:?} after {what}"),
            )
        })
}

async fn member_ids(
    case: &'static str,
    c: &dyn Coordinator,
) -> Result<Vec<String>, ConformanceFailure> {
    let (members, _) = c
        .watch_members()
        .await
        .map_err(|e| fail(case, e.to_string()))?;
    Ok(members.into_iter().map(|m| m.id).collect())
}

async fn membership_is_unique_and_watched(
    a: Box<dyn Coordinator>,
    b: Box<dyn Coordinator>,
) -> Outcome {
    const CASE: &str = "membership_is_unique_and_watched";
    let id = unique("member");
    a.join(&sample_member(&id)).await.or_fail(CASE)?;
    match b.join(&sample_member(&id)).await {
        Err(CoordError::MemberExists { .. }) => {}
        other => {
            return Err(fail(
                CASE,
                format!("a second live member with one id: {other:?}"),
            ))
        }
    }
    let (members, signal) = b.watch_members().await.or_fail(CASE)?;
    let Some(seen) = members.iter().find(|m| m.id == id) else {
        return Err(fail(CASE, "a joined member is not listed"));
    };
    if *seen != sample_member(&id) {
        return Err(fail(CASE, format!("member listed as {seen:?}")));
    }
    if members.windows(2).any(|w| w[0].id > w[1].id) {
        return Err(fail(CASE, "members are not sorted by id"));
    }
    // b does not own the registration: its leave must not remove a's.
    b.leave(&id).await.map_err(|e| fail(CASE, e.to_string()))?;
    if !member_ids(CASE, &*a).await?.contains(&id) {
        return Err(fail(CASE, "another session's leave removed the member"));
    }
    a.leave(&id).await.map_err(|e| fail(CASE, e.to_string()))?;
    fires(CASE, "a leave", signal).await?;
    if member_ids(CASE, &*b).await?.contains(&id) {
        return Err(fail(CASE, "a member that left is still listed"));
    }
    // The id is free again, and membership ends with the session.
    b.join(&sample_member(&id)).await.or_fail(CASE)?;
    let (_, signal) = a.watch_members().await.or_fail(CASE)?;
    b.close().await.map_err(|e| fail(CASE, e.to_string()))?;
    fires(CASE, "the member's session closed", signal).await?;
    if member_ids(CASE, &*a).await?.contains(&id) {
        return Err(fail(CASE, "a closed session's member is still listed"));
    }
    a.close().await.map_err(|e| fail(CASE, e.to_string()))
}

async fn lease_watch_fires_on_release(a: Box<dyn Coordinator>, b: Box<dyn Coordinator>) -> Outcome {
    const CASE: &str = "lease_watch_fires_on_release";
    let unit = UnitId::new(unique("watch"), 1);
    let (holder, _) = b.watch_lease(&unit).await.or_fail(CASE)?;
    if holder.is_some() {
        return Err(fail(CASE, format!("a new unit has holder {holder:?}")));
    }
    let lease = a.acquire_lease(&unit, "wa").await.or_fail(CASE)?;
    let (holder, signal) = b.watch_lease(&unit).await.or_fail(CASE)?;
    if holder.as_deref() != Some("wa") {
        return Err(fail(CASE, format!("holder {holder:?}, expected wa")));
    }
    a.release_lease(&lease).await.or_fail(CASE)?;
    fires(CASE, "the lease was released", signal).await?;
    let (holder, signal) = b.watch_lease(&unit).await.or_fail(CASE)?;
    if holder.is_some() {
        return Err(fail(
            CASE,
            format!("released lease still held by {holder:?}"),
        ));
    }
    a.acquire_lease(&unit, "wa").await.or_fail(CASE)?;
    fires(CASE, "the lease was taken", signal).await?;
    let (_, signal) = b.watch_lease(&unit).await.or_fail(CASE)?;
    a.close().await.map_err(|e| fail(CASE, e.to_string()))?;
    fires(CASE, "the holder's session closed", signal).await?;
    b.close().await.map_err(|e| fail(CASE, e.to_string()))
}

async fn session_end_is_signalled(a: Box<dyn Coordinator>, b: Box<dyn Coordinator>) -> Outcome {
    const CASE: &str = "session_end_is_signalled";
    let ended = a.session_ended();
    let other = b.session_ended();
    a.close().await.map_err(|e| fail(CASE, e.to_string()))?;
    fires(CASE, "close", ended).await?;
    // Another session is unaffected.
    if tokio::time::timeout(Duration::from_millis(200), other)
        .await
        .is_ok()
    {
        return Err(fail(CASE, "closing one session ended another"));
    }
    match a
        .acquire_lease(&UnitId::new(unique("ended"), 0), "wa")
        .await
    {
        Err(CoordError::SessionEnded { .. }) => {}
        other => {
            return Err(fail(
                CASE,
                format!("a closed session acquired a lease: {other:?}"),
            ))
        }
    }
    b.close().await.map_err(|e| fail(CASE, e.to_string()))
}

async fn fresh_unit(c: Box<dyn Coordinator>) -> Outcome {
    const CASE: &str = "fresh_unit";
    let unit = UnitId::new(unique("fresh"), 3);
    let offset = c.committed_offset(&unit).await.or_fail(CASE)?;
    if offset.is_some() {
        return Err(fail(
            CASE,
            format!("a unit never committed has offset {offset:?}"),
        ));
    }
    let lease = c.acquire_lease(&unit, "w1").await.or_fail(CASE)?;
    if lease.epoch == 0 || lease.worker_id != "w1" || lease.unit != unit {
        return Err(fail(CASE, format!("unexpected lease {lease:?}")));
    }
    c.close().await.map_err(|e| fail(CASE, e.to_string()))
}

/// Gaps recorded by two sessions at once for two partitions both stay; the same gap recorded
/// again (larger) counts once; another topic has none.
async fn retention_gaps_are_kept_per_topic_and_count_once(
    a: Box<dyn Coordinator>,
    b: Box<dyn Coordinator>,
) -> Outcome {
    const CASE: &str = "retention_gaps_are_kept_per_topic_and_count_once";
    let topic = unique("gaps");
    let gap = |from, to| Gap {
        from,
        to,
        found_at_ms: 1,
        worker: "w".to_string(),
    };
    let (p0, p1) = (UnitId::new(topic.clone(), 0), UnitId::new(topic.clone(), 1));
    let (g0, g1) = (gap(10, 40), gap(5, 7));
    let (x, y) = futures::join!(a.record_gap(&p0, &g0), b.record_gap(&p1, &g1));
    x.or_fail(CASE)?;
    y.or_fail(CASE)?;
    b.record_gap(&p0, &gap(10, 50)).await.or_fail(CASE)?;
    let gaps = a.retention_gaps(&topic).await.or_fail(CASE)?;
    let totals: Vec<(i32, u64, u64)> = gaps
        .partitions
        .iter()
        .map(|(p, g)| (*p, g.skipped_messages, g.gaps))
        .collect();
    if totals != [(0, 40, 1), (1, 2, 1)] {
        return Err(fail(
            CASE,
            format!("(partition, skipped, gaps) {totals:?}, expected [(0, 40, 1), (1, 2, 1)]"),
        ));
    }
    let other = a.retention_gaps(&unique("no-gaps")).await.or_fail(CASE)?;
    if !other.partitions.is_empty() {
        return Err(fail(CASE, format!("a topic without gaps has {other:?}")));
    }
    a.close().await.or_fail(CASE)?;
    b.close().await.or_fail(CASE)
}

/// A table without a partition key: its data part and its quarantine part of one flush share
/// the partition value ("") and the object's file name, and both must register.
async fn data_and_quarantine_of_one_flush_are_distinct(c: Box<dyn Coordinator>) -> Outcome {
    const CASE: &str = "data_and_quarantine_of_one_flush_are_distinct";
    let unit = UnitId::new(unique("keyless"), 0);
    let table = unique("tbl_keyless");
    let lease = c.acquire_lease(&unit, "w1").await.or_fail(CASE)?;
    let file = format!("{}-0-{:020}-{:020}-e1-v1.parquet", unit.topic, 0, 9);
    let mut data = sample_part(&table, &unit, 0, 9, "x");
    data.partition_value = String::new();
    data.path = format!("{table}/data/_/{file}");
    let mut quarantine = data.clone();
    quarantine.kind = PartKind::Quarantine;
    quarantine.path = format!("{table}/quarantine/{file}");
    c.commit(
        &lease,
        &Commit {
            views_version: None,
            next_offset: 10,
            parts: vec![data.clone(), quarantine.clone()],
        },
    )
    .await
    .or_fail(CASE)?;
    let mut got = c.list_parts(&table).await.or_fail(CASE)?;
    got.sort_by_key(|p| p.kind == PartKind::Quarantine);
    if got != vec![data, quarantine] {
        return Err(fail(CASE, format!("table {table} lists {got:?}")));
    }
    Ok(())
}

async fn commit_is_visible_atomically(c: Box<dyn Coordinator>) -> Outcome {
    const CASE: &str = "commit_is_visible_atomically";
    let unit = UnitId::new(unique("commit"), 0);
    let (t1, t2) = (unique("tbl_a"), unique("tbl_b"));
    let lease = c.acquire_lease(&unit, "w1").await.or_fail(CASE)?;
    let parts = vec![
        sample_part(&t1, &unit, 0, 9, "a"),
        sample_part(&t2, &unit, 0, 9, "b"),
    ];
    c.commit(
        &lease,
        &Commit {
            views_version: None,
            next_offset: 10,
            parts: parts.clone(),
        },
    )
    .await
    .or_fail(CASE)?;
    let second = sample_part(&t1, &unit, 10, 19, "c");
    c.commit(
        &lease,
        &Commit {
            views_version: None,
            next_offset: 20,
            parts: vec![second.clone()],
        },
    )
    .await
    .or_fail(CASE)?;
    let offset = c.committed_offset(&unit).await.or_fail(CASE)?;
    if offset != Some(20) {
        return Err(fail(CASE, format!("offset {offset:?}, expected Some(20)")));
    }
    let mut got = c.list_parts(&t1).await.or_fail(CASE)?;
    got.sort_by_key(|p| p.first_offset);
    if got != vec![parts[0].clone(), second] {
        return Err(fail(CASE, format!("table {t1} lists {got:?}")));
    }
    let got = c.list_parts(&t2).await.or_fail(CASE)?;
    if got != vec![parts[1].clone()] {
        return Err(fail(CASE, format!("table {t2} lists {got:?}")));
    }
    let units = c.list_units().await.or_fail(CASE)?;
    let state = units
        .iter()
        .find(|u| u.unit == unit)
        .ok_or_else(|| fail(CASE, "list_units misses the unit"))?;
    if state.next_offset != Some(20)
        || state.holder.as_deref() != Some("w1")
        || state.epoch != lease.epoch
    {
        return Err(fail(CASE, format!("list_units shows {state:?}")));
    }
    c.close().await.map_err(|e| fail(CASE, e.to_string()))
}

async fn lease_is_exclusive(a: Box<dyn Coordinator>, b: Box<dyn Coordinator>) -> Outcome {
    const CASE: &str = "lease_is_exclusive";
    let unit = UnitId::new(unique("exclusive"), 1);
    a.acquire_lease(&unit, "worker-a").await.or_fail(CASE)?;
    match b.acquire_lease(&unit, "worker-b").await {
        Err(CoordError::LeaseHeld { holder, .. }) if holder == "worker-a" => {}
        other => {
            return Err(fail(
                CASE,
                format!("second acquire gave {other:?}, expected LeaseHeld by worker-a"),
            ))
        }
    }
    a.close().await.map_err(|e| fail(CASE, e.to_string()))?;
    b.close().await.map_err(|e| fail(CASE, e.to_string()))
}

/// Acquiring what this session holds already (an acquisition whose reply was lost, asked again)
/// returns the same lease, which still commits; another session is still refused.
async fn a_held_lease_is_returned_to_its_session(
    a: Box<dyn Coordinator>,
    b: Box<dyn Coordinator>,
) -> Outcome {
    const CASE: &str = "a_held_lease_is_returned_to_its_session";
    let unit = UnitId::new(unique("again"), 0);
    let first = a.acquire_lease(&unit, "worker-a").await.or_fail(CASE)?;
    let second = a.acquire_lease(&unit, "worker-a").await.or_fail(CASE)?;
    if second.epoch != first.epoch {
        return Err(fail(
            CASE,
            format!("acquired again: {second:?}, first: {first:?}"),
        ));
    }
    let commit = Commit {
        views_version: None,
        next_offset: 5,
        parts: vec![sample_part(&unique("tbl_again"), &unit, 0, 4, "a")],
    };
    a.commit(&second, &commit).await.or_fail(CASE)?;
    if !matches!(
        b.acquire_lease(&unit, "worker-b").await,
        Err(CoordError::LeaseHeld { .. })
    ) {
        return Err(fail(CASE, "another session took a held lease"));
    }
    let table = unique("tbl_again");
    let merge = a
        .acquire_merge_lease(&table, "2026-11-23", "worker-a")
        .await
        .or_fail(CASE)?;
    let again = a
        .acquire_merge_lease(&table, "2026-11-23", "worker-a")
        .await
        .or_fail(CASE)?;
    if again.epoch != merge.epoch {
        return Err(fail(
            CASE,
            format!("merge lease acquired again: {again:?}, first: {merge:?}"),
        ));
    }
    a.close().await.map_err(|e| fail(CASE, e.to_string()))?;
    b.close().await.map_err(|e| fail(CASE, e.to_string()))
}

async fn stale_lease_cannot_commit(a: Box<dyn Coordinator>, b: Box<dyn Coordinator>) -> Outcome {
    const CASE: &str = "stale_lease_cannot_commit";
    let unit = UnitId::new(unique("zombie"), 0);
    let table = unique("tbl");
    let old = a.acquire_lease(&unit, "worker-a").await.or_fail(CASE)?;
    a.commit(
        &old,
        &Commit {
            views_version: None,
            next_offset: 5,
            parts: vec![sample_part(&table, &unit, 0, 4, "a1")],
        },
    )
    .await
    .or_fail(CASE)?;
    a.release_lease(&old).await.or_fail(CASE)?;
    let new = b.acquire_lease(&unit, "worker-b").await.or_fail(CASE)?;
    if new.epoch <= old.epoch {
        return Err(fail(
            CASE,
            format!("epoch did not grow: {} then {}", old.epoch, new.epoch),
        ));
    }
    // The zombie tries to commit with its old lease: refused as a whole.
    let zombie = Commit {
        views_version: None,
        next_offset: 9,
        parts: vec![sample_part(&table, &unit, 5, 8, "zombie")],
    };
    match a.commit(&old, &zombie).await {
        Err(CoordError::LeaseLost { epoch, .. }) if epoch == old.epoch => {}
        other => {
            return Err(fail(
                CASE,
                format!("stale commit gave {other:?}, expected LeaseLost"),
            ))
        }
    }
    let offset = b.committed_offset(&unit).await.or_fail(CASE)?;
    let parts = b.list_parts(&table).await.or_fail(CASE)?;
    if offset != Some(5) || parts.len() != 1 {
        return Err(fail(
            CASE,
            format!(
                "a refused commit left traces: offset {offset:?}, {} parts",
                parts.len()
            ),
        ));
    }
    b.commit(
        &new,
        &Commit {
            views_version: None,
            next_offset: 7,
            parts: vec![sample_part(&table, &unit, 5, 6, "b1")],
        },
    )
    .await
    .or_fail(CASE)?;
    a.close().await.map_err(|e| fail(CASE, e.to_string()))?;
    b.close().await.map_err(|e| fail(CASE, e.to_string()))
}

async fn closed_session_frees_leases(a: Box<dyn Coordinator>, b: Box<dyn Coordinator>) -> Outcome {
    const CASE: &str = "closed_session_frees_leases";
    let unit = UnitId::new(unique("expiry"), 2);
    let old = a.acquire_lease(&unit, "worker-a").await.or_fail(CASE)?;
    a.close().await.map_err(|e| fail(CASE, e.to_string()))?;
    // The server ends the session asynchronously; await the lease becoming free.
    let deadline = Instant::now() + Duration::from_secs(30);
    let new = loop {
        match b.acquire_lease(&unit, "worker-b").await {
            Ok(lease) => break lease,
            Err(CoordError::LeaseHeld { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => return Err(fail(CASE, format!("lease never freed after close: {e}"))),
        }
    };
    if new.epoch <= old.epoch {
        return Err(fail(
            CASE,
            format!("epoch did not grow: {} then {}", old.epoch, new.epoch),
        ));
    }
    match a
        .commit(
            &old,
            &Commit {
                views_version: None,
                next_offset: 1,
                parts: vec![],
            },
        )
        .await
    {
        Err(CoordError::SessionEnded { .. } | CoordError::LeaseLost { .. }) => {}
        other => {
            return Err(fail(
                CASE,
                format!("commit on a closed handle gave {other:?}"),
            ))
        }
    }
    b.close().await.map_err(|e| fail(CASE, e.to_string()))
}

async fn release_of_lost_lease_is_harmless(
    a: Box<dyn Coordinator>,
    b: Box<dyn Coordinator>,
) -> Outcome {
    const CASE: &str = "release_of_lost_lease_is_harmless";
    let unit = UnitId::new(unique("release"), 0);
    let old = a.acquire_lease(&unit, "worker-a").await.or_fail(CASE)?;
    a.release_lease(&old).await.or_fail(CASE)?;
    let new = b.acquire_lease(&unit, "worker-b").await.or_fail(CASE)?;
    // Releasing the stale lease again must not free the new holder's lease.
    a.release_lease(&old).await.or_fail(CASE)?;
    match a.acquire_lease(&unit, "worker-a").await {
        Err(CoordError::LeaseHeld { holder, .. }) if holder == "worker-b" => {}
        other => {
            return Err(fail(
                CASE,
                format!("after a stale release, acquire gave {other:?}"),
            ))
        }
    }
    b.release_lease(&new).await.or_fail(CASE)?;
    a.close().await.map_err(|e| fail(CASE, e.to_string()))?;
    b.close().await.map_err(|e| fail(CASE, e.to_string()))
}
