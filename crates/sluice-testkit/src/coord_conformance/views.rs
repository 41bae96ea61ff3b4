//! The view registry: a view goes live atomically with reading its partitions' committed
//! offsets, every commit made under an older registry is refused, and a history registers once.

use sluice_coord::{Commit, CoordError, Coordinator, LiveView, UnitId, ViewHistory};

use super::{sample_part, Outcome};
use crate::{fail, unique, OrFail};

fn view(name: &str) -> LiveView {
    LiveView {
        name: name.to_string(),
        source: "events".into(),
        target: unique("tbl_view"),
        fingerprint: "f".repeat(64),
        activated_at_ms: 1,
        points: Vec::new(),
        dropped_at_ms: None,
    }
}

fn history(worker: &str) -> ViewHistory {
    ViewHistory {
        completed_at_ms: 2,
        worker: worker.to_string(),
        source_parts: 1,
        parts: 1,
        rows: 5,
    }
}

pub(super) async fn a_view_goes_live_at_the_committed_offsets_and_its_history_registers_once(
    a: Box<dyn Coordinator>,
    b: Box<dyn Coordinator>,
) -> Outcome {
    const CASE: &str = "a_view_goes_live_at_the_committed_offsets_and_its_history_registers_once";
    let first = a.init_views(&[]).await.or_fail(CASE)?;
    // Created once: a second init changes nothing.
    let again = b
        .init_views(&[view(&unique("ignored"))])
        .await
        .or_fail(CASE)?;
    if again != first || !first.exists() {
        return Err(fail(CASE, format!("init twice: {first:?} then {again:?}")));
    }
    let topic = unique("viewed");
    let (u0, u1) = (UnitId::new(&topic, 0), UnitId::new(&topic, 1));
    let lease = a.acquire_lease(&u0, "wa").await.or_fail(CASE)?;
    let commit = |next_offset, tag: &str, version| Commit {
        next_offset,
        parts: vec![sample_part(
            "events",
            &u0,
            next_offset - 5,
            next_offset - 1,
            tag,
        )],
        views_version: Some(version),
    };
    a.commit(&lease, &commit(5, "a", first.version))
        .await
        .or_fail(CASE)?;

    let name = unique("v");
    b.activate_view(first.version, &view(&name), &[u0.clone(), u1.clone()])
        .await
        .or_fail(CASE)?;
    let live = b.read_views().await.or_fail(CASE)?;
    let points: Vec<(i32, i64)> = live
        .get(&name)
        .map(|v| {
            v.points
                .iter()
                .map(|p| (p.partition, p.next_offset))
                .collect()
        })
        .unwrap_or_default();
    if points != [(0, 5), (1, 0)] || live.version == first.version {
        return Err(fail(
            CASE,
            format!("live view points {points:?}, version {}", live.version),
        ));
    }
    if !live.history_pending(&name) {
        return Err(fail(
            CASE,
            "a view live over committed data has no pending history",
        ));
    }
    // A flush made under the older registry is refused, and changes nothing.
    match a.commit(&lease, &commit(10, "b", first.version)).await {
        Err(CoordError::ViewsChanged { .. }) => {}
        other => {
            return Err(fail(
                CASE,
                format!("a commit under an older registry: {other:?}"),
            ))
        }
    }
    if a.committed_offset(&u0).await.or_fail(CASE)? != Some(5) {
        return Err(fail(CASE, "a refused commit moved the offset"));
    }
    a.commit(&lease, &commit(10, "b", live.version))
        .await
        .or_fail(CASE)?;
    // Going live again under a stale version, or twice, is refused.
    if b.activate_view(
        first.version,
        &view(&unique("w")),
        std::slice::from_ref(&u0),
    )
    .await
    .is_ok()
        || b.activate_view(live.version + 1, &view(&name), std::slice::from_ref(&u0))
            .await
            .is_ok()
    {
        return Err(fail(
            CASE,
            "an activation under a stale version or of a live view",
        ));
    }

    // One history lease at a time; one history ever.
    let hl = a
        .acquire_view_history_lease(&name, "wa")
        .await
        .or_fail(CASE)?;
    match b.acquire_view_history_lease(&name, "wb").await {
        Err(CoordError::ViewHistoryHeld { holder, .. }) if holder == "wa" => {}
        other => return Err(fail(CASE, format!("a second history lease: {other:?}"))),
    }
    let target = &live
        .get(&name)
        .map(|v| v.target.clone())
        .unwrap_or_default();
    let part = sample_part(target, &u0, 0, 4, "history");
    a.complete_view_history(&hl, std::slice::from_ref(&part), &history("wa"))
        .await
        .or_fail(CASE)?;
    a.release_view_history_lease(&hl).await.or_fail(CASE)?;
    let late = b
        .acquire_view_history_lease(&name, "wb")
        .await
        .or_fail(CASE)?;
    if late.epoch <= hl.epoch {
        return Err(fail(CASE, "a later history lease has no larger epoch"));
    }
    let other = sample_part(target, &u0, 0, 4, "late");
    match b
        .complete_view_history(&late, std::slice::from_ref(&other), &history("wb"))
        .await
    {
        Err(CoordError::Conflict { .. }) => {}
        other => {
            return Err(fail(
                CASE,
                format!("a second history registered: {other:?}"),
            ))
        }
    }
    let parts = a.list_parts(target).await.or_fail(CASE)?;
    if parts != [part] {
        return Err(fail(CASE, format!("the view's table holds {parts:?}")));
    }
    let done = a.read_views().await.or_fail(CASE)?;
    if done.history_pending(&name) || done.histories.get(&name) != Some(&history("wa")) {
        return Err(fail(
            CASE,
            format!("history recorded as {:?}", done.histories.get(&name)),
        ));
    }

    // Dropping: no longer applied, and the version moves.
    b.drop_view(done.version, &name, 3).await.or_fail(CASE)?;
    let dropped = a.read_views().await.or_fail(CASE)?;
    if dropped.applied(&name) || dropped.version == done.version {
        return Err(fail(CASE, "a dropped view is still applied"));
    }
    // A backfill's claim moves the version (and nothing else), so a view going live and a
    // claim never pass each other.
    let claim = super::backfills::plan(&unique("bf"), &unique("viewed_bf"), &[(0, 1)], 1);
    a.claim_backfill(&claim).await.or_fail(CASE)?;
    let claimed = b.read_views().await.or_fail(CASE)?;
    if claimed.version == dropped.version || claimed.views != dropped.views {
        return Err(fail(
            CASE,
            "a backfill's claim did not move the view registry's version",
        ));
    }
    a.close().await.or_fail(CASE)?;
    b.close().await.or_fail(CASE)
}
