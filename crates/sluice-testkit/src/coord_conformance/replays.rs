//! Replays: a generation swaps in under the merge leases of every scope it touches, and rolls
//! back or is collected, never both.

use std::collections::BTreeSet;

use sluice_coord::{
    Commit, CoordError, Coordinator, MergeLease, PartRecord, ReplayGeneration, Resealed,
    SealedManifest, UnitId,
};

use super::{sample_part, Outcome};
use crate::{fail, unique, ConformanceFailure, OrFail};

const CASE: &str = "a_replay_swaps_its_generation_in_and_rolls_back_or_is_collected_once";

/// The names of every live record of `table`.
async fn names(c: &dyn Coordinator, table: &str) -> Result<BTreeSet<String>, ConformanceFailure> {
    Ok(c.list_parts(table)
        .await
        .or_fail(CASE)?
        .iter()
        .map(PartRecord::name)
        .collect())
}

fn rebuilt(old: &PartRecord, id: &str, value: &str) -> PartRecord {
    PartRecord {
        path: format!("{}/data/{value}/rp.{id}.p0.c0.v1.parquet", old.table),
        partition_value: value.to_string(),
        partition: -1,
        spans: old.source_spans(),
        ..old.clone()
    }
}

fn generation(
    id: &str,
    table: &str,
    old: Vec<PartRecord>,
    new: Vec<PartRecord>,
) -> ReplayGeneration {
    ReplayGeneration {
        id: id.to_string(),
        table: table.to_string(),
        from_ms: 0,
        to_ms: None,
        ranges: Vec::new(),
        swapped_at_ms: 10,
        keep_until_ms: 1_000,
        old,
        new,
        old_sealed: Vec::new(),
        resealed: Vec::new(),
    }
}

async fn leases(
    c: &dyn Coordinator,
    table: &str,
    values: &[&str],
) -> Result<Vec<MergeLease>, ConformanceFailure> {
    let mut out = Vec::new();
    for v in values {
        out.push(
            c.acquire_merge_lease(table, v, "replay")
                .await
                .or_fail(CASE)?,
        );
    }
    Ok(out)
}

pub(super) async fn a_replay_swaps_its_generation_in_and_rolls_back_or_is_collected_once(
    a: Box<dyn Coordinator>,
    b: Box<dyn Coordinator>,
) -> Outcome {
    let table = unique("tbl_replay");
    let views = a.init_views(&[]).await.or_fail(CASE)?.version;
    let unit = UnitId::new(unique("replayed"), 0);
    let lease = a.acquire_lease(&unit, "ingest").await.or_fail(CASE)?;
    let flushes: Vec<PartRecord> = (0..3)
        .map(|i| sample_part(&table, &unit, i * 10, i * 10 + 9, &format!("f{i}")))
        .collect();
    for (i, part) in flushes.iter().enumerate() {
        let commit = Commit {
            views_version: None,
            next_offset: (i as i64 + 1) * 10,
            parts: vec![part.clone()],
        };
        a.commit(&lease, &commit).await.or_fail(CASE)?;
    }
    let day = flushes[0].partition_value.clone();
    let other = "2026-11-24";
    // Offsets 10..29 rebuilt: one part back in the same scope, one in a scope new to the table.
    let id = unique("r");
    let new = vec![
        rebuilt(&flushes[1], &id, &day),
        rebuilt(&flushes[2], &id, other),
    ];
    let gen = generation(&id, &table, flushes[1..].to_vec(), new.clone());
    let before = names(&*b, &table).await?;

    // Without the lease of the new scope, or under a stale one, or another registry version,
    // nothing changes.
    let only_day = leases(&*a, &table, &[&day]).await?;
    match a.replace_range(&only_day, views, &gen).await {
        Err(CoordError::Conflict { .. }) => {}
        other => return Err(fail(CASE, format!("a scope without a lease: {other:?}"))),
    }
    let both = leases(&*a, &table, &[&day, other]).await?;
    match a.replace_range(&both, views + 1, &gen).await {
        Err(CoordError::Conflict { .. }) => {}
        other => return Err(fail(CASE, format!("another registry version: {other:?}"))),
    }
    if names(&*b, &table).await? != before {
        return Err(fail(CASE, "a refused replay changed the records"));
    }
    a.replace_range(&both, views, &gen).await.or_fail(CASE)?;
    let expect: BTreeSet<String> = [flushes[0].name(), new[0].name(), new[1].name()].into();
    if names(&*b, &table).await? != expect {
        return Err(fail(
            CASE,
            "after the swap, the old records are not exactly replaced",
        ));
    }
    let kept: Vec<_> = b.list_retired(&table).await.or_fail(CASE)?;
    let kept_paths: BTreeSet<&str> = kept
        .iter()
        .filter(|r| r.kept_for.as_ref().is_some_and(|k| k.replay == id))
        .flat_map(|r| r.paths.iter().map(String::as_str))
        .collect();
    if kept_paths != [flushes[1].path.as_str(), flushes[2].path.as_str()].into() {
        return Err(fail(CASE, format!("kept sets after the swap: {kept:?}")));
    }
    if b.read_replay(&id).await.or_fail(CASE)?.as_ref() != Some(&gen) {
        return Err(fail(CASE, "the swapped generation does not read back"));
    }
    match a.replace_range(&both, views, &gen).await {
        Err(CoordError::Conflict { .. }) => {}
        other => return Err(fail(CASE, format!("the same replay again: {other:?}"))),
    }

    // A stale lease cannot roll back; the current ones can, once.
    for l in &both {
        a.release_merge_lease(l).await.or_fail(CASE)?;
    }
    let newer = leases(&*b, &table, &[&day, other]).await?;
    match a.roll_back_replay(&both, &id, 20).await {
        Err(CoordError::ScopeLeaseLost { .. }) => {}
        other => {
            return Err(fail(
                CASE,
                format!("rollback under a stale lease: {other:?}"),
            ))
        }
    }
    b.roll_back_replay(&newer, &id, 20).await.or_fail(CASE)?;
    if names(&*a, &table).await? != before {
        return Err(fail(CASE, "the rollback did not restore the old records"));
    }
    let retired = a.list_retired(&table).await.or_fail(CASE)?;
    let rolled: BTreeSet<&str> = retired
        .iter()
        .flat_map(|r| r.paths.iter().map(String::as_str))
        .collect();
    let expect_rolled = [new[0].path.as_str(), new[1].path.as_str()].into();
    if retired.iter().any(|r| r.kept_for.is_some()) || rolled != expect_rolled {
        return Err(fail(
            CASE,
            format!("retired sets after the rollback: {retired:?}"),
        ));
    }
    match b.roll_back_replay(&newer, &id, 30).await {
        Err(CoordError::NoReplay { .. }) => {}
        other => return Err(fail(CASE, format!("a second rollback: {other:?}"))),
    }

    // Swapped again under another id, then collected: the rollback is gone with it.
    let id2 = unique("r");
    let new2 = vec![
        rebuilt(&flushes[1], &id2, &day),
        rebuilt(&flushes[2], &id2, other),
    ];
    let gen2 = generation(&id2, &table, flushes[1..].to_vec(), new2.clone());
    b.replace_range(&newer, views, &gen2).await.or_fail(CASE)?;
    let collected = a.collect_replay(&id2).await.or_fail(CASE)?;
    let paths: BTreeSet<&str> = collected
        .iter()
        .flat_map(|r| r.paths.iter().map(String::as_str))
        .collect();
    if paths != [flushes[1].path.as_str(), flushes[2].path.as_str()].into() {
        return Err(fail(CASE, format!("collected sets: {collected:?}")));
    }
    let left = a.list_retired(&table).await.or_fail(CASE)?;
    if left.iter().any(|r| r.kept_for.is_some())
        || a.list_replays()
            .await
            .or_fail(CASE)?
            .iter()
            .any(|g| g.id == id2)
    {
        return Err(fail(CASE, "a collected replay is still recorded"));
    }
    match b.roll_back_replay(&newer, &id2, 40).await {
        Err(CoordError::NoReplay { .. }) => {}
        other => return Err(fail(CASE, format!("rollback after collection: {other:?}"))),
    }
    if !a.collect_replay(&id2).await.or_fail(CASE)?.is_empty() {
        return Err(fail(CASE, "a second collection returned sets"));
    }
    let kept = &newer[0];
    replaces_sealed_parts(&*b, kept, &flushes[0], &new2[0]).await
}

/// A replay of a sealed part: the scope points at a manifest without it, the old manifest
/// is retired, and a rollback registers the part as a live record.
async fn replaces_sealed_parts(
    c: &dyn Coordinator,
    lease: &MergeLease,
    sealed: &PartRecord,
    live: &PartRecord,
) -> Outcome {
    let (table, day) = (lease.table.clone(), lease.partition_value.clone());
    let manifest = SealedManifest {
        path: format!("{table}/manifests/{day}/seal-e1-1.json"),
        checksum: "00".repeat(32),
        parts: 1,
        rows: sealed.rows,
        sealed_at_ms: 1,
    };
    c.seal(lease, std::slice::from_ref(sealed), &manifest, None)
        .await
        .or_fail(CASE)?;
    let id = unique("r");
    let new = rebuilt(sealed, &id, &day);
    let gen = ReplayGeneration {
        old_sealed: vec![sealed.clone()],
        resealed: vec![Resealed {
            table: table.clone(),
            partition_value: day.clone(),
            replaced: manifest.clone(),
            manifest: None,
        }],
        ..generation(&id, &table, vec![live.clone()], vec![new.clone()])
    };
    c.replace_range(
        std::slice::from_ref(lease),
        c.read_views().await.or_fail(CASE)?.version,
        &gen,
    )
    .await
    .or_fail(CASE)?;
    let listing = c.read_scope(&table, &day).await.or_fail(CASE)?;
    let names: Vec<String> = listing.parts.iter().map(PartRecord::name).collect();
    if listing.state.sealed.is_some() || names != [new.name()] {
        return Err(fail(
            CASE,
            format!("after replacing a sealed part: {listing:?}"),
        ));
    }
    let retired = c.list_retired(&table).await.or_fail(CASE)?;
    if !retired
        .iter()
        .any(|r| r.kept_for.is_none() && r.paths == [manifest.path.clone()])
    {
        return Err(fail(
            CASE,
            format!("the replaced manifest is not retired: {retired:?}"),
        ));
    }
    c.roll_back_replay(std::slice::from_ref(lease), &id, 50)
        .await
        .or_fail(CASE)?;
    let listing = c.read_scope(&table, &day).await.or_fail(CASE)?;
    let names: BTreeSet<String> = listing.parts.iter().map(PartRecord::name).collect();
    if listing.state.sealed.is_some() || names != [sealed.name(), live.name()].into() {
        return Err(fail(
            CASE,
            format!("after rolling a sealed part back: {listing:?}"),
        ));
    }
    Ok(())
}
