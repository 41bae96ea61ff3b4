//! Backfill handoffs against the real services: a claimed partition is left alone by the
//! workers until the backfill hands it over, and the stream then starts exactly at the
//! snapshot's offset; and `sluice backfill check` (and `run`) refusing snapshots that do not fit.
//!
//! The backfill's side of the handoff is driven here through the coordinator, to hold the
//! claim while a worker runs (`backfill_runs.rs` runs `sluice backfill run` itself); the check
//! reads the parts back with `parquet` and `object_store`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Result};
use sluice_coord::BackfillPlan;
use sluice_tests::fleet::{deployment, spawn, wait_caught_up};
use sluice_tests::snapshot::{events_where, sha256_hex};
use sluice_tests::{committed, describe, run_sluice, verify_exactly_once, wait_until};

const PARTITIONS: i32 = 4;
const SETTLE: Duration = Duration::from_secs(60);
/// What the worker logs for each partition it finds claimed.
const CLAIMED: &str = "the partition is claimed by a backfill";

#[tokio::test(flavor = "multi_thread")]
async fn workers_leave_claimed_partitions_alone_and_start_at_the_handoff_offset() -> Result<()> {
    let d = deployment("handoff", PARTITIONS, 800, 50).await?;
    let ends = d.ends();
    // The snapshot stands for each partition's first half: the stream must start after it.
    let offsets: BTreeMap<i32, i64> = ends.iter().map(|(&p, &end)| (p, end / 2)).collect();
    let plan = BackfillPlan {
        id: "handoff-test".into(),
        table: "events".into(),
        topic: d.topic.clone(),
        offsets: offsets.clone(),
        snapshot_sha256: "00".repeat(32),
        files: 0,
        accepted_gaps: Vec::new(),
        created_at_ms: 0,
    };
    let coord = d.coordinator().await?;
    coord.claim_backfill(&plan).await?;

    let worker = spawn(&d, "w1")?;
    wait_until(
        SETTLE,
        Duration::from_millis(100),
        "the worker to find the claims",
        || {
            let seen = worker.log_text().matches(CLAIMED).count();
            async move { Ok(seen >= PARTITIONS as usize) }
        },
    )
    .await?;
    let before = committed(&d.config, "events").await?;
    ensure!(
        before.offsets.values().all(Option::is_none) && before.parts.is_empty(),
        "the worker committed claimed partitions: offsets {:?}, {} parts",
        before.offsets,
        before.parts.len()
    );

    let lease = coord
        .acquire_backfill_lease(&plan.id, "test-backfill")
        .await?;
    coord.hand_off(&lease).await?;
    coord.release_backfill_lease(&lease).await?;
    wait_caught_up(&d.config, &d.topic, &ends, SETTLE).await?;
    let log = worker.terminate(SETTLE).await?;
    let status = d.sluice(&["backfill", "status"]).await?;
    let shown = String::from_utf8_lossy(&status.stdout);
    ensure!(
        shown.contains("handoff-test") && shown.contains("handed off"),
        "backfill status shows:\n{shown}"
    );
    let done = coord.read_backfill(&plan.id).await?;
    coord.close().await?;
    ensure!(
        done.is_some_and(|b| b.state.handed_off_at_ms.is_some()),
        "the backfill is not recorded as handed off"
    );

    // Exactly the events at or after the handoff offsets, every column of every row; one from
    // before would be a row "never produced" to the checker.
    let (streamed, located) = events_where(&d, |p, o| o >= offsets[&p]);
    ensure!(
        !streamed.is_empty() && streamed.len() < d.events.len(),
        "the split left {} of {} events to the stream",
        streamed.len(),
        d.events.len()
    );
    verify_exactly_once(&d.config, &streamed, &located).await?;
    println!(
        "the worker waited on {} claimed partitions, then streamed {} of {} events from the handoff offsets {offsets:?}",
        log.matches(CLAIMED).count(),
        streamed.len(),
        d.events.len()
    );
    Ok(())
}

/// `sluice backfill check` verifies a snapshot against its manifest, the topic and the
/// registry: it passes a good one, and refuses a file that changed and a partition the stream
/// has committed, saying why; `sluice backfill run` refuses the latter too, recording nothing.
#[tokio::test(flavor = "multi_thread")]
async fn backfill_check_refuses_a_changed_file_and_a_committed_partition() -> Result<()> {
    let d = deployment("bf-check", 2, 200, 50).await?;
    let file = d.dir.path().join("events-0.ndjson");
    std::fs::write(&file, "{\"seq\": 1}\n")?;
    let manifest = d.dir.path().join("snapshot.json");
    std::fs::write(
        &manifest,
        format!(
            r#"{{"table": "events", "offsets": {{"0": 10, "1": 10}}, "files": [{{"path": "events-0.ndjson", "format": "ndjson", "sha256": "{}"}}]}}"#,
            sha256_hex(b"{\"seq\": 1}\n")
        ),
    )?;
    let snapshot = manifest.to_str().expect("temp paths are UTF-8");
    let check = || async {
        run_sluice(
            &[
                "backfill",
                "check",
                "--snapshot",
                snapshot,
                "--config",
                d.config_arg(),
            ],
            &[],
            SETTLE,
        )
        .await
    };
    let ok = check().await?;
    let text = String::from_utf8_lossy(&ok.stdout);
    ensure!(
        ok.status.success()
            && text.contains("every SHA-256 matches")
            && text.contains("partition 1: the stream starts at 10"),
        "a good snapshot: {}",
        describe(&ok)
    );

    std::fs::write(&file, "{\"seq\": 2}\n")?;
    let changed = check().await?;
    let said = String::from_utf8_lossy(&changed.stderr);
    ensure!(
        !changed.status.success()
            && said.contains("the manifest says")
            && said.contains("events-0.ndjson"),
        "a changed file: {}",
        describe(&changed)
    );

    std::fs::write(&file, "{\"seq\": 1}\n")?;
    d.run_to_end().await?;
    let streamed = check().await?;
    let said = String::from_utf8_lossy(&streamed.stdout);
    ensure!(
        !streamed.status.success() && said.contains("already has a committed offset"),
        "a committed partition: {}",
        describe(&streamed)
    );
    let args = [
        "backfill",
        "run",
        "--snapshot",
        snapshot,
        "--config",
        d.config_arg(),
    ];
    let refused = run_sluice(&args, &[], SETTLE).await?;
    let said = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success() && said.contains("already has a committed offset"),
        "a run over a committed partition: {}",
        describe(&refused)
    );
    let status = d.sluice(&["backfill", "status"]).await?;
    ensure!(
        String::from_utf8_lossy(&status.stdout).contains("no backfills recorded"),
        "a refused run left a backfill: {}",
        describe(&status)
    );
    Ok(())
}

/// `sluice run --stop-at-end` does not wait forever for a partition a backfill claims: after
/// `worker.lease_wait_ms` it exits 1, naming the backfill and how to finish or cancel it.
#[tokio::test(flavor = "multi_thread")]
async fn stop_at_end_names_the_backfill_that_holds_a_partition() -> Result<()> {
    let d = deployment("bf-stop-at-end", 2, 100, 50).await?;
    d.edit_config(|t| t.replace("lease_wait_ms = 30000", "lease_wait_ms = 5000"))?;
    let plan = BackfillPlan {
        id: "unfinished".into(),
        table: "events".into(),
        topic: d.topic.clone(),
        offsets: d.ends().into_keys().map(|p| (p, 0)).collect(),
        snapshot_sha256: "00".repeat(32),
        files: 1,
        accepted_gaps: Vec::new(),
        created_at_ms: 0,
    };
    let coord = d.coordinator().await?;
    coord.claim_backfill(&plan).await?;
    coord.close().await?;
    let args = ["run", "--config", d.config_arg(), "--stop-at-end"];
    let out = run_sluice(&args, &[], SETTLE).await?;
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1)
            && said.contains("claimed by backfill `unfinished`")
            && said.contains("sluice backfill cancel --id unfinished"),
        "{}",
        describe(&out)
    );
    Ok(())
}
