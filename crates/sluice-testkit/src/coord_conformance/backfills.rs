//! Backfills: the claim keeps workers off the partitions, staged parts stay invisible, and the
//! handoff registers them and sets the offsets at once, under the backfill's own lease.

use std::collections::BTreeMap;

use sluice_coord::{BackfillPlan, CoordError, Coordinator, StagedFile, UnitId};

use super::{sample_part, Outcome};
use crate::{fail, unique, OrFail};

pub(super) fn plan(id: &str, topic: &str, offsets: &[(i32, i64)], files: u32) -> BackfillPlan {
    BackfillPlan {
        id: id.to_string(),
        table: "events".to_string(),
        topic: topic.to_string(),
        offsets: offsets.iter().copied().collect::<BTreeMap<_, _>>(),
        snapshot_sha256: "ab".repeat(32),
        files,
        accepted_gaps: Vec::new(),
        created_at_ms: 1,
    }
}

fn staged(index: u32, table: &str, unit: &UnitId, tag: &str) -> StagedFile {
    StagedFile {
        index,
        parts: vec![sample_part(table, unit, 0, 4, tag)],
        rows: 5,
        quarantined: 0,
        bytes_read: 100,
    }
}

pub(super) async fn a_backfill_claims_partitions_until_its_handoff(
    a: Box<dyn Coordinator>,
    b: Box<dyn Coordinator>,
) -> Outcome {
    const CASE: &str = "a_backfill_claims_partitions_until_its_handoff";
    let topic = unique("backfilled");
    let table = unique("tbl_backfill");
    let (u0, u1) = (UnitId::new(&topic, 0), UnitId::new(&topic, 1));
    let p = plan(&unique("bf"), &topic, &[(0, 10), (1, 20)], 2);
    a.claim_backfill(&p).await.or_fail(CASE)?;
    // A resume claims the same plan again; another plan under the id is refused.
    a.claim_backfill(&p).await.or_fail(CASE)?;
    let other = BackfillPlan {
        files: 3,
        ..p.clone()
    };
    if !matches!(
        a.claim_backfill(&other).await,
        Err(CoordError::Conflict { .. })
    ) {
        return Err(fail(CASE, "another plan under a claimed id was accepted"));
    }
    let rival = plan(&unique("bf"), &topic, &[(1, 20)], 1);
    match b.claim_backfill(&rival).await {
        Err(CoordError::HandoffPending { backfill, .. }) if backfill == p.id => {}
        other => {
            return Err(fail(
                CASE,
                format!("a second claim on a partition: {other:?}"),
            ))
        }
    }
    match b.acquire_lease(&u0, "worker").await {
        Err(CoordError::HandoffPending { backfill, .. }) if backfill == p.id => {}
        other => {
            return Err(fail(
                CASE,
                format!("a worker leased a claimed partition: {other:?}"),
            ))
        }
    }
    let lease = a
        .acquire_backfill_lease(&p.id, "backfill-a")
        .await
        .or_fail(CASE)?;
    if !matches!(
        b.acquire_backfill_lease(&p.id, "backfill-b").await,
        Err(CoordError::BackfillHeld { .. })
    ) {
        return Err(fail(CASE, "a second live backfill lease"));
    }
    a.stage_backfill_file(&lease, &staged(0, &table, &u0, "f0"))
        .await
        .or_fail(CASE)?;
    if a.hand_off(&lease).await.is_ok() {
        return Err(fail(CASE, "a handoff with a file not staged succeeded"));
    }
    if !b.list_parts(&table).await.or_fail(CASE)?.is_empty() {
        return Err(fail(CASE, "staged parts are visible before the handoff"));
    }
    a.stage_backfill_file(&lease, &staged(1, &table, &u1, "f1"))
        .await
        .or_fail(CASE)?;
    let status = b.read_backfill(&p.id).await.or_fail(CASE)?;
    let seen = status.as_ref().map(|s| (s.staged.len(), s.holder.clone()));
    if seen != Some((2, Some("backfill-a".to_string()))) {
        return Err(fail(CASE, format!("the backfill reads as {status:?}")));
    }
    a.hand_off(&lease).await.or_fail(CASE)?;
    a.hand_off(&lease).await.or_fail(CASE)?;
    let offsets = (
        b.committed_offset(&u0).await.or_fail(CASE)?,
        b.committed_offset(&u1).await.or_fail(CASE)?,
    );
    let parts = b.list_parts(&table).await.or_fail(CASE)?.len();
    if offsets != (Some(10), Some(20)) || parts != 2 {
        return Err(fail(
            CASE,
            format!("after the handoff: offsets {offsets:?}, {parts} parts"),
        ));
    }
    let done = b.read_backfill(&p.id).await.or_fail(CASE)?;
    let recorded = done.map(|d| {
        let s = d.state;
        (
            s.handed_off_at_ms.is_some(),
            d.staged.len(),
            s.rows,
            s.parts,
        )
    });
    if recorded != Some((true, 0, 10, 2)) {
        return Err(fail(
            CASE,
            format!("after the handoff (handed off, staged files, rows, parts): {recorded:?}"),
        ));
    }
    let worker = b.acquire_lease(&u0, "worker").await.or_fail(CASE)?;
    b.release_lease(&worker).await.or_fail(CASE)?;
    a.close().await.or_fail(CASE)?;
    b.close().await.or_fail(CASE)
}

pub(super) async fn a_zombie_backfill_cannot_stage_or_hand_off(
    a: Box<dyn Coordinator>,
    b: Box<dyn Coordinator>,
) -> Outcome {
    const CASE: &str = "a_zombie_backfill_cannot_stage_or_hand_off";
    let topic = unique("zombie-backfill");
    let table = unique("tbl_backfill");
    let unit = UnitId::new(&topic, 0);
    let p = plan(&unique("bf"), &topic, &[(0, 7)], 1);
    a.claim_backfill(&p).await.or_fail(CASE)?;
    let old = a
        .acquire_backfill_lease(&p.id, "first")
        .await
        .or_fail(CASE)?;
    a.release_backfill_lease(&old).await.or_fail(CASE)?;
    let new = b
        .acquire_backfill_lease(&p.id, "second")
        .await
        .or_fail(CASE)?;
    if new.epoch <= old.epoch {
        return Err(fail(CASE, "the backfill lease's epoch did not grow"));
    }
    let lost = |r: Result<(), CoordError>| matches!(r, Err(CoordError::BackfillLeaseLost { .. }));
    if !lost(
        a.stage_backfill_file(&old, &staged(0, &table, &unit, "z"))
            .await,
    ) {
        return Err(fail(CASE, "a stale backfill lease staged a file"));
    }
    b.stage_backfill_file(&new, &staged(0, &table, &unit, "n"))
        .await
        .or_fail(CASE)?;
    if !lost(a.hand_off(&old).await) {
        return Err(fail(CASE, "a stale backfill lease handed off"));
    }
    if b.committed_offset(&unit).await.or_fail(CASE)?.is_some() {
        return Err(fail(CASE, "the zombie's handoff set an offset"));
    }
    b.hand_off(&new).await.or_fail(CASE)?;
    let names: Vec<String> = b
        .list_parts(&table)
        .await
        .or_fail(CASE)?
        .iter()
        .map(|p| p.name())
        .collect();
    if names.len() != 1 || !names[0].contains("-n.") {
        return Err(fail(
            CASE,
            format!("registered after the handoff: {names:?}"),
        ));
    }
    a.close().await.or_fail(CASE)?;
    b.close().await.or_fail(CASE)
}

pub(super) async fn a_committed_partition_cannot_be_claimed(c: Box<dyn Coordinator>) -> Outcome {
    const CASE: &str = "a_committed_partition_cannot_be_claimed";
    let topic = unique("streamed");
    let unit = UnitId::new(&topic, 0);
    let lease = c.acquire_lease(&unit, "worker").await.or_fail(CASE)?;
    let p = plan(&unique("bf"), &topic, &[(0, 3)], 1);
    if !matches!(
        c.claim_backfill(&p).await,
        Err(CoordError::LeaseHeld { .. })
    ) {
        return Err(fail(CASE, "a partition a worker holds was claimed"));
    }
    let commit = sluice_coord::Commit {
        views_version: None,
        next_offset: 5,
        parts: Vec::new(),
    };
    c.commit(&lease, &commit).await.or_fail(CASE)?;
    c.release_lease(&lease).await.or_fail(CASE)?;
    match c.claim_backfill(&p).await {
        Err(CoordError::AlreadyCommitted { next_offset: 5, .. }) => {}
        other => return Err(fail(CASE, format!("a committed partition: {other:?}"))),
    }
    if c.read_backfill(&p.id).await.or_fail(CASE)?.is_some() {
        return Err(fail(CASE, "a refused claim left a backfill behind"));
    }
    c.close().await.or_fail(CASE)
}

pub(super) async fn a_cancelled_backfill_gives_its_partitions_back(
    a: Box<dyn Coordinator>,
    b: Box<dyn Coordinator>,
) -> Outcome {
    const CASE: &str = "a_cancelled_backfill_gives_its_partitions_back";
    let topic = unique("cancelled-backfill");
    let table = unique("tbl_backfill");
    let unit = UnitId::new(&topic, 0);
    let p = plan(&unique("bf"), &topic, &[(0, 9)], 1);
    a.claim_backfill(&p).await.or_fail(CASE)?;
    let lease = a.acquire_backfill_lease(&p.id, "bf").await.or_fail(CASE)?;
    a.stage_backfill_file(&lease, &staged(0, &table, &unit, "c"))
        .await
        .or_fail(CASE)?;
    if a.forget_backfill(&lease).await.is_ok() {
        return Err(fail(CASE, "a backfill not cancelled was forgotten"));
    }
    a.cancel_backfill(&lease).await.or_fail(CASE)?;
    a.cancel_backfill(&lease).await.or_fail(CASE)?;
    if a.hand_off(&lease).await.is_ok() {
        return Err(fail(CASE, "a cancelled backfill handed off"));
    }
    if !matches!(
        b.acquire_lease(&unit, "worker").await,
        Err(CoordError::HandoffPending { .. })
    ) {
        return Err(fail(
            CASE,
            "a cancelled backfill's claim ended before it was forgotten",
        ));
    }
    a.forget_backfill(&lease).await.or_fail(CASE)?;
    if b.read_backfill(&p.id).await.or_fail(CASE)?.is_some() {
        return Err(fail(CASE, "a forgotten backfill is still recorded"));
    }
    let parts = b.list_parts(&table).await.or_fail(CASE)?.len();
    let offset = b.committed_offset(&unit).await.or_fail(CASE)?;
    if parts != 0 || offset.is_some() {
        return Err(fail(
            CASE,
            format!("after forgetting: {parts} parts, offset {offset:?}"),
        ));
    }
    let worker = b.acquire_lease(&unit, "worker").await.or_fail(CASE)?;
    b.release_lease(&worker).await.or_fail(CASE)?;
    a.close().await.or_fail(CASE)?;
    b.close().await.or_fail(CASE)
}
