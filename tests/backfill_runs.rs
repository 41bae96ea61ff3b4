//! `sluice backfill run` against the real services, as a separate process: a snapshot of each
//! partition's first events (one NDJSON file with the malformed events, one Parquet file),
//! loaded and handed over, then the stream; kill -9 at each step of the backfill and a resume;
//! a zombie backfill whose handoff comes too late.
//!
//! The result is checked with the test kit's exactly-once checker: every event exactly once
//! (the snapshot's from the files, the rest from Kafka), every column, the malformed ones in
//! quarantine naming their file and line, and nothing else in storage.

use std::os::unix::process::ExitStatusExt;
use std::process::Output;
use std::time::Duration;

use anyhow::{ensure, Result};
use sluice_tests::aggregates::check_aggregates;
use sluice_tests::fleet::{deployment, tail, Worker};
use sluice_tests::per_hour::{per_hour_view, PER_HOUR_TABLE};
use sluice_tests::snapshot::{events_where, write_snapshot, SnapshotFiles};
use sluice_tests::{committed, describe, run_sluice, verify_backfilled, wait_until, Prepared};

const PARTITIONS: i32 = 4;
const LIMIT: Duration = Duration::from_secs(120);

async fn backfill(d: &Prepared, s: &SnapshotFiles, env: &[(&str, &str)]) -> Result<Output> {
    backfill_with(d, s, env, &[]).await
}

async fn backfill_with(
    d: &Prepared,
    s: &SnapshotFiles,
    env: &[(&str, &str)],
    more: &[&str],
) -> Result<Output> {
    run_sluice(&s.run_args(d, more), env, LIMIT).await
}

/// Nothing of the backfill is visible: no part of any table, no committed offset.
async fn nothing_visible(d: &Prepared) -> Result<()> {
    let c = committed(&d.config, "events").await?;
    ensure!(
        c.parts.is_empty() && c.offsets.values().all(Option::is_none),
        "visible before the handoff: {} parts, offsets {:?}",
        c.parts.len(),
        c.offsets
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_then_the_stream_hold_every_event_exactly_once() -> Result<()> {
    let d = deployment("backfill", PARTITIONS, 2_000, 200).await?;
    d.edit_config(|text| format!("{text}{}", per_hour_view()))?;
    let s = write_snapshot(&d, 250)?;
    let out = backfill(&d, &s, &[]).await?;
    let said = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && said.contains("handed over"),
        "the backfill: {}",
        describe(&out)
    );
    // The backfill alone: exactly the snapshot's events, the offsets at the snapshot's.
    let (events, located) = events_where(&d, |p, o| o < s.offsets[&p]);
    verify_backfilled(&d.config, &events, &located, &s.backfilled).await?;
    let again = backfill(&d, &s, &[]).await?;
    ensure!(
        again.status.success()
            && String::from_utf8_lossy(&again.stdout).contains("handed over to the stream already"),
        "a second run: {}",
        describe(&again)
    );
    d.run_to_end().await?;
    verify_backfilled(&d.config, &d.events, &d.located, &s.backfilled).await?;
    // The view over both, computed here from the produced events.
    let (groups, rows, _) = check_aggregates(&d).await?;
    println!("{PER_HOUR_TABLE}: {groups} groups equal the events' totals, from {rows} state rows");
    println!(
        "{} snapshot events backfilled, then {} streamed: {}",
        s.events,
        d.events.len() - s.events,
        said.trim()
    );
    Ok(())
}

/// kill -9 at `point` of a backfill: nothing is visible; run again, the backfill resumes and
/// collects what the killed run left, and with the stream every event is there exactly once
/// and nothing else is in storage.
async fn killed_at(point: &str, more: &[&str]) -> Result<()> {
    let name = format!(
        "bf-kill-{}",
        point
            .split(':')
            .next()
            .unwrap_or_default()
            .replace('_', "-")
    );
    let d = deployment(&name, PARTITIONS, 1_200, 200).await?;
    let s = write_snapshot(&d, 150)?;
    let killed = backfill_with(&d, &s, &[("SLUICE_FAILPOINT", point)], more).await?;
    ensure!(
        killed.status.signal() == Some(9),
        "expected the backfill to die of SIGKILL at {point}: {}",
        describe(&killed)
    );
    nothing_visible(&d).await?;
    let stored = stored_objects(&d)?;
    ensure!(
        stored > 0,
        "the kill at {point} left no object in storage to collect"
    );
    let resumed = backfill(&d, &s, &[]).await?;
    let said = String::from_utf8_lossy(&resumed.stdout);
    ensure!(
        resumed.status.success() && said.contains("handed over"),
        "the resumed backfill: {}",
        describe(&resumed)
    );
    d.run_to_end().await?;
    verify_backfilled(&d.config, &d.events, &d.located, &s.backfilled).await?;
    println!(
        "{point}: the kill left {stored} objects; the resume said: {}",
        said.trim()
    );
    Ok(())
}

/// Objects under the deployment's `file://` storage, counted on disk.
fn stored_objects(d: &Prepared) -> Result<usize> {
    fn walk(dir: &std::path::Path) -> std::io::Result<usize> {
        let mut n = 0;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            n += if entry.file_type()?.is_dir() {
                walk(&entry.path())?
            } else {
                1
            };
        }
        Ok(n)
    }
    let data = d.dir.path().join("data");
    Ok(if data.exists() { walk(&data)? } else { 0 })
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_after_an_upload_then_resume() -> Result<()> {
    killed_at("backfill_after_upload:1", &[]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_between_files_then_resume() -> Result<()> {
    // One file at a time, so the kill leaves one file staged and the other not begun.
    killed_at("backfill_after_file:1", &["--parallel-files", "1"]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_right_before_the_handoff_then_resume() -> Result<()> {
    killed_at("backfill_before_handoff:1", &[]).await
}

/// A backfill frozen (SIGSTOP) right before its handoff until its session expires; another run
/// takes the backfill over and hands off. Thawed, the zombie's handoff is refused; resuming, it
/// finds the backfill handed off. The result is exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_zombie_backfill_cannot_hand_off() -> Result<()> {
    let d = deployment("bf-zombie", PARTITIONS, 1_200, 200).await?;
    let s = write_snapshot(&d, 150)?;
    let logs = d.dir.path().join("logs");
    let mut zombie = Worker::spawn_args(
        &s.run_args(&d, &[]),
        "zombie",
        &[("SLUICE_FAILPOINT", "backfill_before_handoff:1:stop")],
        &logs,
    )?;
    zombie.wait_stopped(LIMIT).await?;
    let coord = d.coordinator().await?;
    wait_until(
        LIMIT,
        Duration::from_millis(100),
        "the frozen backfill's lease to expire",
        || {
            let coord = std::sync::Arc::clone(&coord);
            async move {
                let status = coord.list_backfills().await?;
                Ok(status.first().is_some_and(|b| b.holder.is_none()))
            }
        },
    )
    .await?;
    coord.close().await?;
    let taken_over = backfill(&d, &s, &[]).await?;
    ensure!(
        taken_over.status.success(),
        "the second run: {}",
        describe(&taken_over)
    );
    zombie.signal("CONT")?;
    let status = zombie.wait(LIMIT).await?;
    let log = zombie.log_text();
    // Its handoff is refused: its lease is gone, with its session. If its session ended, it
    // resumes as a run stopped by an outage does and finds the work done; if only its lease
    // was lost, it stops with that error.
    let refused = log.contains("handing the partitions over failed")
        && (log.contains("was lost") || log.contains("session has ended"));
    let ended = if status.success() {
        log.contains("handed over to the stream already; nothing to do")
    } else {
        log.contains("was lost")
    };
    ensure!(
        refused && ended,
        "the thawed zombie: {status:?}\n{}",
        tail(&log, 3000)
    );
    d.run_to_end().await?;
    verify_backfilled(&d.config, &d.events, &d.located, &s.backfilled).await?;
    Ok(())
}

/// A backfill killed between files, then cancelled: nothing of it is left in storage or in the
/// registry, and the workers then stream every event from the topic, exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_backfill_leaves_nothing_and_the_stream_takes_everything() -> Result<()> {
    let d = deployment("bf-cancel", PARTITIONS, 1_200, 200).await?;
    let s = write_snapshot(&d, 150)?;
    let point = [("SLUICE_FAILPOINT", "backfill_after_file:1")];
    let killed = backfill_with(&d, &s, &point, &["--parallel-files", "1"]).await?;
    ensure!(killed.status.signal() == Some(9), "{}", describe(&killed));
    let listed = d.sluice(&["backfill", "status", "--json"]).await?;
    let status: serde_json::Value = serde_json::from_slice(&listed.stdout)?;
    let id = status["id"].as_str().unwrap_or_default().to_string();
    // Its state says running until the killed process's session expires; the cancel waits.
    ensure!(
        status["files_done"] == 1 && status["handed_off_at_ms"].is_null(),
        "after the kill: {status}"
    );
    let cancelled = d.sluice(&["backfill", "cancel", "--id", &id]).await?;
    let said = String::from_utf8_lossy(&cancelled.stdout);
    ensure!(said.contains("cancelled"), "{}", describe(&cancelled));
    ensure!(
        stored_objects(&d)? == 0,
        "objects left after the cancel: {}",
        stored_objects(&d)?
    );
    let after = d.sluice(&["backfill", "status"]).await?;
    ensure!(
        String::from_utf8_lossy(&after.stdout).contains("no backfills recorded"),
        "{}",
        describe(&after)
    );
    d.run_to_end().await?;
    d.verify().await?;
    println!("{}", said.trim());
    Ok(())
}
