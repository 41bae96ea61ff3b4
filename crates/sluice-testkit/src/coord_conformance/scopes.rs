//! The conformance cases of scopes: merge leases, swaps, seals, retired sets, and ingest
//! commits beside them.

use sluice_coord::{
    Commit, CoordError, Coordinator, MergeLease, OffsetSpan, PartRecord, Retired, SealedManifest,
    UnitId,
};

use super::{sample_part, Outcome};
use crate::{fail, unique, OrFail};

/// A table with one unit's three flushes committed into one scope; returns the parts.
async fn three_flushes(
    case: &'static str,
    c: &dyn Coordinator,
    table: &str,
) -> Result<(UnitId, Vec<PartRecord>), crate::ConformanceFailure> {
    let unit = UnitId::new(unique("scope"), 0);
    let lease = c.acquire_lease(&unit, "ingest").await.or_fail(case)?;
    let mut parts = Vec::new();
    for (i, first) in [0i64, 10, 20].into_iter().enumerate() {
        let part = sample_part(table, &unit, first, first + 9, &format!("f{i}"));
        c.commit(
            &lease,
            &Commit {
                views_version: None,
                next_offset: first + 10,
                parts: vec![part.clone()],
            },
        )
        .await
        .or_fail(case)?;
        parts.push(part);
    }
    Ok((unit, parts))
}

/// The part a merge of `inputs` would register.
fn merged(inputs: &[PartRecord], lease: &MergeLease, tag: &str) -> PartRecord {
    let first = &inputs[0];
    PartRecord {
        path: format!(
            "{}/data/{}/m1-{tag}-e{}-v1.parquet",
            first.table, first.partition_value, lease.epoch
        ),
        rows: inputs.iter().map(|p| p.rows).sum(),
        bytes: inputs.iter().map(|p| p.bytes).sum(),
        topic: String::new(),
        partition: -1,
        first_offset: -1,
        last_offset: -1,
        lease_epoch: lease.epoch,
        level: 1,
        inputs: inputs.len() as u32,
        spans: inputs
            .iter()
            .flat_map(PartRecord::source_spans)
            .collect::<Vec<OffsetSpan>>(),
        checksum: "00".repeat(32),
        ..first.clone()
    }
}

fn retired_of(inputs: &[PartRecord], output: &PartRecord) -> Retired {
    Retired {
        table: output.table.clone(),
        name: output.name(),
        partition_value: output.partition_value.clone(),
        paths: inputs.iter().map(|p| p.path.clone()).collect(),
        retired_at_ms: 1,
        kept_for: None,
    }
}

fn names(parts: &[PartRecord]) -> Vec<String> {
    let mut n: Vec<String> = parts.iter().map(PartRecord::name).collect();
    n.sort();
    n
}

pub(super) async fn merge_lease_is_exclusive_and_epochs_grow(
    a: Box<dyn Coordinator>,
    b: Box<dyn Coordinator>,
) -> Outcome {
    const CASE: &str = "merge_lease_is_exclusive_and_epochs_grow";
    let table = unique("tbl_lease");
    let first = a
        .acquire_merge_lease(&table, "2026-11-23", "wa")
        .await
        .or_fail(CASE)?;
    match b.acquire_merge_lease(&table, "2026-11-23", "wb").await {
        Err(CoordError::ScopeLeaseHeld { holder, .. }) if holder == "wa" => {}
        other => return Err(fail(CASE, format!("a second merge lease gave {other:?}"))),
    }
    let listing = b.read_scope(&table, "2026-11-23").await.or_fail(CASE)?;
    if listing.merge_holder.as_deref() != Some("wa") {
        return Err(fail(
            CASE,
            format!("the scope shows holder {:?}", listing.merge_holder),
        ));
    }
    a.release_merge_lease(&first).await.or_fail(CASE)?;
    let second = b
        .acquire_merge_lease(&table, "2026-11-23", "wb")
        .await
        .or_fail(CASE)?;
    if second.epoch <= first.epoch {
        return Err(fail(
            CASE,
            format!("merge epochs {} then {}", first.epoch, second.epoch),
        ));
    }
    // A merge lease ends with its session, as a unit lease does.
    b.close().await.or_fail(CASE)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match a.acquire_merge_lease(&table, "2026-11-23", "wa").await {
            Ok(_) => break,
            Err(CoordError::ScopeLeaseHeld { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            Err(e) => {
                return Err(fail(
                    CASE,
                    format!("merge lease never freed after close: {e}"),
                ))
            }
        }
    }
    a.close().await.or_fail(CASE)
}

pub(super) async fn swap_replaces_inputs_atomically(c: Box<dyn Coordinator>) -> Outcome {
    const CASE: &str = "swap_replaces_inputs_atomically";
    let table = unique("tbl_swap");
    let (unit, parts) = three_flushes(CASE, &*c, &table).await?;
    let value = parts[0].partition_value.clone();
    let before = c.read_scope(&table, &value).await.or_fail(CASE)?;
    let lease = c
        .acquire_merge_lease(&table, &value, "merger")
        .await
        .or_fail(CASE)?;
    let output = merged(&parts[..2], &lease, "x");
    let retired = retired_of(&parts[..2], &output);
    c.swap(&lease, &parts[..2], &output, &retired)
        .await
        .or_fail(CASE)?;
    let after = c.read_scope(&table, &value).await.or_fail(CASE)?;
    if names(&after.parts) != names(&[parts[2].clone(), output.clone()]) {
        return Err(fail(
            CASE,
            format!("after the swap the scope lists {:?}", names(&after.parts)),
        ));
    }
    if after.generation == before.generation {
        return Err(fail(CASE, "the swap left the scope's generation unchanged"));
    }
    if !after.parts.contains(&output) {
        return Err(fail(CASE, "the merged record reads back different"));
    }
    let listed = c.list_retired(&table).await.or_fail(CASE)?;
    if listed != vec![retired.clone()] {
        return Err(fail(CASE, format!("retired sets {listed:?}")));
    }
    // Ingest commits go on beside merges, and do not change the generation.
    let ingest = c
        .acquire_lease(&UnitId::new(unit.topic.clone(), 1), "ingest")
        .await
        .or_fail(CASE)?;
    let late = sample_part(&table, &ingest.unit, 0, 4, "late");
    c.commit(
        &ingest,
        &Commit {
            views_version: None,
            next_offset: 5,
            parts: vec![late],
        },
    )
    .await
    .or_fail(CASE)?;
    let again = c.read_scope(&table, &value).await.or_fail(CASE)?;
    if again.parts.len() != 3 || again.generation != after.generation {
        return Err(fail(
            CASE,
            format!(
                "after a commit: {} parts, generation {} -> {}",
                again.parts.len(),
                after.generation,
                again.generation
            ),
        ));
    }
    c.forget_retired(&retired).await.or_fail(CASE)?;
    c.forget_retired(&retired).await.or_fail(CASE)?;
    if !c.list_retired(&table).await.or_fail(CASE)?.is_empty() {
        return Err(fail(CASE, "a forgotten retired set is still listed"));
    }
    c.close().await.or_fail(CASE)
}

pub(super) async fn stale_merge_lease_cannot_swap(
    a: Box<dyn Coordinator>,
    b: Box<dyn Coordinator>,
) -> Outcome {
    const CASE: &str = "stale_merge_lease_cannot_swap";
    let table = unique("tbl_zombie_merge");
    let (_, parts) = three_flushes(CASE, &*b, &table).await?;
    let value = parts[0].partition_value.clone();
    let old = a
        .acquire_merge_lease(&table, &value, "zombie")
        .await
        .or_fail(CASE)?;
    a.release_merge_lease(&old).await.or_fail(CASE)?;
    let new = b
        .acquire_merge_lease(&table, &value, "merger")
        .await
        .or_fail(CASE)?;
    let output = merged(&parts, &old, "zombie");
    match a
        .swap(&old, &parts, &output, &retired_of(&parts, &output))
        .await
    {
        Err(CoordError::ScopeLeaseLost { epoch, .. }) if epoch == old.epoch => {}
        other => {
            return Err(fail(
                CASE,
                format!("a stale merge lease's swap gave {other:?}"),
            ))
        }
    }
    let listing = b.read_scope(&table, &value).await.or_fail(CASE)?;
    if names(&listing.parts) != names(&parts)
        || !b.list_retired(&table).await.or_fail(CASE)?.is_empty()
    {
        return Err(fail(CASE, "a refused swap changed the scope"));
    }
    let output = merged(&parts, &new, "fresh");
    b.swap(&new, &parts, &output, &retired_of(&parts, &output))
        .await
        .or_fail(CASE)?;
    a.close().await.or_fail(CASE)?;
    b.close().await.or_fail(CASE)
}

pub(super) async fn inputs_merged_already_are_refused(c: Box<dyn Coordinator>) -> Outcome {
    const CASE: &str = "inputs_merged_already_are_refused";
    let table = unique("tbl_twice");
    let (_, parts) = three_flushes(CASE, &*c, &table).await?;
    let value = parts[0].partition_value.clone();
    let lease = c
        .acquire_merge_lease(&table, &value, "merger")
        .await
        .or_fail(CASE)?;
    let first = merged(&parts[..2], &lease, "one");
    c.swap(
        &lease,
        &parts[..2],
        &first,
        &retired_of(&parts[..2], &first),
    )
    .await
    .or_fail(CASE)?;
    // The same plan again (planned twice), now naming a part that is gone.
    let second = merged(&parts[1..], &lease, "two");
    match c
        .swap(
            &lease,
            &parts[1..],
            &second,
            &retired_of(&parts[1..], &second),
        )
        .await
    {
        Err(CoordError::Conflict { .. }) => {}
        other => {
            return Err(fail(
                CASE,
                format!("a swap of a merged-away input gave {other:?}"),
            ))
        }
    }
    let listing = c.read_scope(&table, &value).await.or_fail(CASE)?;
    if names(&listing.parts) != names(&[first, parts[2].clone()]) {
        return Err(fail(
            CASE,
            format!("a refused swap left {:?}", names(&listing.parts)),
        ));
    }
    c.close().await.or_fail(CASE)
}

pub(super) async fn seal_moves_records_into_a_manifest(c: Box<dyn Coordinator>) -> Outcome {
    const CASE: &str = "seal_moves_records_into_a_manifest";
    let table = unique("tbl_seal");
    let (unit, parts) = three_flushes(CASE, &*c, &table).await?;
    let value = parts[0].partition_value.clone();
    let lease = c
        .acquire_merge_lease(&table, &value, "sealer")
        .await
        .or_fail(CASE)?;
    let manifest = SealedManifest {
        path: format!("{table}/manifests/{value}/1.json"),
        checksum: "ab".repeat(32),
        parts: 3,
        rows: parts.iter().map(|p| p.rows).sum(),
        sealed_at_ms: 5,
    };
    c.seal(&lease, &parts, &manifest, None)
        .await
        .or_fail(CASE)?;
    let listing = c.read_scope(&table, &value).await.or_fail(CASE)?;
    if !listing.parts.is_empty() || listing.state.sealed.as_ref() != Some(&manifest) {
        return Err(fail(
            CASE,
            format!(
                "after sealing: {} records, manifest {:?}",
                listing.parts.len(),
                listing.state.sealed
            ),
        ));
    }
    let scopes = c.list_scopes(&table).await.or_fail(CASE)?;
    if scopes.len() != 1 || scopes[0].live_parts != 0 || scopes[0].state.sealed.is_none() {
        return Err(fail(CASE, format!("list_scopes shows {scopes:?}")));
    }
    // A late event still commits beside the manifest; a second seal replaces the manifest.
    let ingest = c
        .acquire_lease(&UnitId::new(unit.topic.clone(), 7), "late")
        .await
        .or_fail(CASE)?;
    let late = sample_part(&table, &ingest.unit, 0, 0, "late");
    c.commit(
        &ingest,
        &Commit {
            views_version: None,
            next_offset: 1,
            parts: vec![late.clone()],
        },
    )
    .await
    .or_fail(CASE)?;
    let resealed = SealedManifest {
        path: format!("{table}/manifests/{value}/2.json"),
        parts: 4,
        ..manifest.clone()
    };
    let retired = Retired {
        table: table.clone(),
        name: "manifest-2".to_string(),
        partition_value: value.clone(),
        paths: vec![manifest.path.clone()],
        retired_at_ms: 6,
        kept_for: None,
    };
    c.seal(
        &lease,
        std::slice::from_ref(&late),
        &resealed,
        Some(&retired),
    )
    .await
    .or_fail(CASE)?;
    let listing = c.read_scope(&table, &value).await.or_fail(CASE)?;
    if !listing.parts.is_empty() || listing.state.sealed.as_ref() != Some(&resealed) {
        return Err(fail(CASE, "the second seal did not replace the manifest"));
    }
    if c.list_retired(&table).await.or_fail(CASE)? != vec![retired] {
        return Err(fail(CASE, "the replaced manifest is not retired"));
    }
    c.close().await.or_fail(CASE)
}

/// The repair records the endpoints holding a live part's copies; a part merged away is not
/// brought back by it.
pub(super) async fn replicas_are_recorded_on_live_parts_only(c: Box<dyn Coordinator>) -> Outcome {
    const CASE: &str = "replicas_are_recorded_on_live_parts_only";
    let table = unique("tbl_replicas");
    let (_, parts) = three_flushes(CASE, &*c, &table).await?;
    let value = parts[0].partition_value.clone();
    let all = vec!["a".to_string(), "b".to_string(), "c".to_string()];
    if !c.set_replicas(&parts[2], &all).await.or_fail(CASE)? {
        return Err(fail(CASE, "a live part's replicas were not recorded"));
    }
    // Setting the same set again changes nothing and still answers true.
    if !c.set_replicas(&parts[2], &all).await.or_fail(CASE)? {
        return Err(fail(CASE, "setting the same replicas again answered false"));
    }
    let lease = c
        .acquire_merge_lease(&table, &value, "merger")
        .await
        .or_fail(CASE)?;
    let output = merged(&parts[..2], &lease, "r");
    c.swap(
        &lease,
        &parts[..2],
        &output,
        &retired_of(&parts[..2], &output),
    )
    .await
    .or_fail(CASE)?;
    if c.set_replicas(&parts[0], &all).await.or_fail(CASE)? {
        return Err(fail(CASE, "a merged-away part's replicas were recorded"));
    }
    let after = c.read_scope(&table, &value).await.or_fail(CASE)?;
    let replicas: Vec<(String, Vec<String>)> = after
        .parts
        .iter()
        .map(|p| (p.name(), p.replicas.clone()))
        .collect();
    let expected = vec![(output.name(), Vec::new()), (parts[2].name(), all)];
    let mut sorted = expected.clone();
    sorted.sort();
    if replicas != sorted {
        return Err(fail(CASE, format!("the scope lists {replicas:?}")));
    }
    c.close().await.or_fail(CASE)
}
