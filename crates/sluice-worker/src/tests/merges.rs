//! Merges in-process: they bound a scope's parts, quiet scopes are sealed and late events still
//! commit, and a scope at its hard limit pauses ingestion until merges catch up; each ends with
//! the exactly-once check (which reads sealed manifests and allows replaced objects still in
//! their grace period).

use anyhow::{ensure, Context, Result};
use sluice_coord::Coordinator;

use super::{wait_for, Harness, Settings, WITHIN};

/// Tiny flushes: each of a few events, over three days, so scopes fill fast.
fn tiny_flushes(merge: &'static str) -> Settings {
    Settings {
        max_rows: 5,
        max_age_ms: 20,
        merge,
        ..Settings::default()
    }
}

/// The most live parts any scope of the events table holds.
async fn most_parts(c: &dyn Coordinator) -> Result<usize> {
    Ok(c.list_scopes("events")
        .await?
        .iter()
        .map(|s| s.live_parts)
        .max()
        .unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merges_bound_the_parts_of_a_scope_and_lose_nothing() -> Result<()> {
    const FAN_IN: usize = 4;
    let mut h = Harness::new(tiny_flushes("fan_in = 4\ncheck_interval_ms = 20"))?;
    h.produce(1_200);
    let worker = h.spawn("merger", false).await?;
    h.all_committed().await?;
    let c = h.observer();
    // With a fan-in of 4 and at most 4 rewrites, a scope that is not growing settles at under
    // fan_in parts per level below the top, plus the top level's.
    let bound = (FAN_IN - 1) * 4 + 3;
    wait_for("merges to bring every scope under its bound", || async {
        Ok(most_parts(&c).await? <= bound)
    })
    .await?;
    worker.shut_down().await?;
    let committed = h.verify().await?;
    let parts = committed.of("events");
    let scopes = c.list_scopes("events").await?.len();
    ensure!(
        parts.len() <= bound * scopes,
        "{} parts in {scopes} scopes",
        parts.len()
    );
    ensure!(
        parts.iter().any(|p| p.level >= 2),
        "no part was merged twice: levels {:?}",
        parts.iter().map(|p| p.level).collect::<Vec<_>>()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_scopes_are_sealed_and_late_events_commit_beside_the_manifest() -> Result<()> {
    let mut h = Harness::new(tiny_flushes(
        "fan_in = 4\ncheck_interval_ms = 20\nquiet_after_ms = 300",
    ))?;
    h.produce(400);
    let worker = h.spawn("sealer", false).await?;
    h.all_committed().await?;
    let c = h.observer();
    let all_sealed = || async {
        let scopes = c.list_scopes("events").await?;
        Ok::<_, anyhow::Error>(
            !scopes.is_empty()
                && scopes
                    .iter()
                    .all(|s| s.live_parts == 0 && s.state.sealed.is_some()),
        )
    };
    wait_for("every scope sealed", all_sealed).await?;
    let first = c.list_scopes("events").await?;
    h.verify().await?;

    // Late events for the sealed days commit beside the manifests, and are sealed in turn.
    h.produce(200);
    h.all_committed().await?;
    wait_for("every scope sealed again", all_sealed).await?;
    let second = c.list_scopes("events").await?;
    for s in &second {
        let before = first
            .iter()
            .find(|f| f.partition_value == s.partition_value)
            .and_then(|f| f.state.sealed.clone())
            .context("a scope that was not sealed before")?;
        let after = s.state.sealed.as_ref().context("sealed")?;
        ensure!(
            after.path != before.path && after.rows > before.rows,
            "scope {:?}: manifest {} ({} rows) then {} ({} rows)",
            s.partition_value,
            before.path,
            before.rows,
            after.path,
            after.rows
        );
    }
    worker.shut_down().await?;
    h.verify().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_at_its_hard_limit_pauses_ingestion_until_merges_catch_up() -> Result<()> {
    const HARD: usize = 40;
    let mut h = Harness::new(tiny_flushes(
        "enabled = false\ncheck_interval_ms = 20\nsoft_parts_per_scope = 24\nhard_parts_per_scope = 40",
    ))?;
    h.produce(1_500);
    let worker = h.spawn("paused", false).await?;
    let c = h.observer();
    wait_for("a scope at the hard limit", || async {
        Ok(most_parts(&c).await? >= HARD)
    })
    .await?;
    tokio::time::timeout(WITHIN, h.source.unread())
        .await
        .context("the worker kept reading at the hard limit")?;
    let committed: i64 = c
        .list_units()
        .await?
        .iter()
        .filter_map(|u| u.next_offset)
        .sum();
    ensure!(
        committed < h.events.len() as i64,
        "everything was committed although ingestion should have paused"
    );
    worker.shut_down().await?;

    // Merges enabled: they bring the scopes down and ingestion resumes by itself.
    h.set_merge(
        "fan_in = 4\ncheck_interval_ms = 20\nsoft_parts_per_scope = 24\nhard_parts_per_scope = 40",
    )?;
    let worker = h.spawn("merging", false).await?;
    h.all_committed().await?;
    worker.shut_down().await?;
    h.verify().await?;
    Ok(())
}
