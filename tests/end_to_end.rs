//! End to end against the real services: sequence-numbered events (some malformed in every way
//! the decoder quarantines) into a 4-partition topic, one worker run to the end, and the
//! committed Parquet parts read back: every event exactly once, in its table or in quarantine.

use std::time::Duration;

use anyhow::{ensure, Result};
use sluice_tests::{committed, describe, prepare, run_sluice, unique, Expect, StorageKind};

const EVENTS: u64 = 3_000;
const PARTITIONS: i32 = 4;

async fn end_to_end(storage: impl FnOnce(&std::path::Path) -> StorageKind) -> Result<()> {
    let d = prepare("e2e", PARTITIONS, EVENTS, 400, storage).await?;
    let out = d.run_to_end().await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        stdout.contains(&format!("ingested {EVENTS} events")),
        "unexpected summary: {stdout}"
    );
    d.verify().await?;

    // A second run finds everything committed and ingests nothing more.
    let again = d.run_to_end().await?;
    ensure!(
        String::from_utf8_lossy(&again.stdout).contains("ingested 0 events"),
        "second run: {}",
        describe(&again)
    );
    d.verify().await?;

    // `sluice parts` shows what was written.
    let parts = run_sluice(
        &["parts", "--config", d.config_arg()],
        &[],
        Duration::from_secs(60),
    )
    .await?;
    ensure!(parts.status.success(), "parts failed: {}", describe(&parts));
    let listing = String::from_utf8_lossy(&parts.stdout);
    let quarantined = d.events.iter().filter(|e| e.expect != Expect::Row).count();
    ensure!(
        listing.contains(&format!(
            "{} rows, {quarantined} quarantined",
            EVENTS as usize - quarantined
        )),
        "parts listing: {listing}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn exactly_once_with_file_storage() -> Result<()> {
    end_to_end(|dir| StorageKind::File(dir.join("data"))).await
}

#[tokio::test(flavor = "multi_thread")]
async fn exactly_once_with_s3_storage() -> Result<()> {
    end_to_end(|_| StorageKind::S3 {
        prefix: unique("e2e"),
    })
    .await
}

/// With row and age limits out of reach, the worker-wide memory budget alone forces flushes:
/// many small commits per partition, and still every event exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn memory_budget_forces_flushes() -> Result<()> {
    const BUDGET_BYTES: u64 = 40_000;
    let d = prepare("budget", PARTITIONS, EVENTS, 1_000_000, |dir| {
        StorageKind::File(dir.join("data"))
    })
    .await?;
    d.edit_config(|text| {
        text.replace(
            "[worker]\n",
            &format!("[worker]\nmemory_budget_bytes = {BUDGET_BYTES}\n"),
        )
        .replace("max_age_ms = 300", "max_age_ms = 600000")
    })?;
    d.run_to_end().await?;
    d.verify().await?;

    // Each commit covers one offset range of one partition; the data is ~10x the budget.
    let c = committed(&d.config, "events").await?;
    let commits: std::collections::HashSet<(i32, i64)> = c
        .parts
        .iter()
        .map(|p| (p.partition, p.first_offset))
        .collect();
    let total_bytes: usize = d
        .events
        .iter()
        .map(|e| e.payload.as_ref().map_or(0, Vec::len))
        .sum();
    let at_least = total_bytes as u64 / BUDGET_BYTES;
    ensure!(
        commits.len() as u64 >= at_least,
        "{} commits for {total_bytes} bytes under a {BUDGET_BYTES}-byte budget; expected at least {at_least}",
        commits.len()
    );
    Ok(())
}

/// The laptop set-up: the embedded coordinator (state in a local directory) instead of ZooKeeper.
#[tokio::test(flavor = "multi_thread")]
async fn exactly_once_with_embedded_coordination() -> Result<()> {
    let d = prepare("embedded", PARTITIONS, EVENTS, 400, |dir| {
        StorageKind::File(dir.join("data"))
    })
    .await?;
    let state = d.dir.path().join("state");
    d.edit_config(|text| {
        text.replace(
            "[coordination]\n",
            &format!(
                "[coordination]\nbackend = \"embedded\"\nembedded_dir = \"{}\"\n",
                state.display()
            ),
        )
    })?;
    d.run_to_end().await?;
    ensure!(
        state.join("coordinator.json").exists(),
        "no embedded state written under {}",
        state.display()
    );
    d.verify().await
}
