//! Outages under `sluice backfill run`: storage taken away while it uploads, ZooKeeper down
//! longer than its session while it stages. Neither stops it: it waits, says so, resumes when
//! the service is back, and the result after the stream is exactly once.

use std::time::Duration;

use anyhow::{ensure, Result};
use sluice_tests::fleet::{deployment, deployment_on, tail, Worker};
use sluice_tests::outage::StorageAway;
use sluice_tests::private::PrivateZk;
use sluice_tests::snapshot::{write_snapshot, SnapshotFiles};
use sluice_tests::{verify_backfilled, wait_until, Prepared, Stack, StorageKind};

const PARTITIONS: i32 = 4;
const LIMIT: Duration = Duration::from_secs(180);
/// How long ZooKeeper stays down: past the 4 s session timeout of the test config.
const OUTAGE: Duration = Duration::from_secs(8);

/// `sluice backfill run` as process `id`, one file at a time, logging under the deployment's
/// `logs/`.
fn spawn_backfill(
    d: &Prepared,
    s: &SnapshotFiles,
    id: &str,
    env: &[(&str, &str)],
) -> Result<Worker> {
    let logs = d.dir.path().join("logs");
    std::fs::create_dir_all(&logs)?;
    Worker::spawn_args(&s.run_args(d, &["--parallel-files", "1"]), id, env, &logs)
}

/// Waits until the running process's log says `what`.
async fn wait_for_log(p: &mut Worker, what: &str) -> Result<()> {
    wait_until(
        LIMIT,
        Duration::from_millis(100),
        &format!("`{what}` in the log"),
        || {
            let (running, log) = (p.is_running(), p.log_text());
            let what = what.to_string();
            async move {
                ensure!(running, "the backfill exited:\n{}", tail(&log, 3000));
                Ok(log.contains(&what))
            }
        },
    )
    .await
}

/// Waits for a clean exit after the handoff; returns the log.
async fn handed_over(mut p: Worker) -> Result<String> {
    let status = p.wait(LIMIT).await?;
    let log = p.log_text();
    ensure!(
        status.success() && log.contains("handed over:"),
        "the backfill: {status:?}\n{}",
        tail(&log, 3000)
    );
    Ok(log)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_storage_outage_during_a_backfill_is_waited_out() -> Result<()> {
    let d = deployment("bf-storage-outage", PARTITIONS, 1_200, 200).await?;
    let s = write_snapshot(&d, 150)?;
    // Frozen after its first upload; storage goes before the next one.
    let point = [("SLUICE_FAILPOINT", "backfill_after_upload:1:stop")];
    let mut p = spawn_backfill(&d, &s, "backfill", &point)?;
    p.wait_stopped(LIMIT).await?;
    let storage = StorageAway::take(&d)?;
    p.signal("CONT")?;
    wait_for_log(&mut p, "upload failed; retrying").await?;
    // Read from the registry alone: the storage directory is not there to list.
    let coord = d.coordinator().await?;
    let (parts, units) = (coord.list_parts("events").await?, coord.list_units().await?);
    coord.close().await?;
    ensure!(
        parts.is_empty() && units.iter().all(|u| u.next_offset.is_none()),
        "visible during the outage: {} parts, {units:?}",
        parts.len()
    );
    storage.restore()?;
    let log = handed_over(p).await?;
    d.run_to_end().await?;
    verify_backfilled(&d.config, &d.events, &d.located, &s.backfilled).await?;
    println!(
        "storage outage: {} failed uploads retried",
        log.matches("upload failed; retrying").count()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn zookeeper_down_longer_than_the_session_during_a_backfill_is_waited_out() -> Result<()> {
    let mut zk = PrivateZk::launch().await?;
    let stack = Stack::from_env().with_zk(&zk);
    let d = deployment_on(&stack, "bf-zk-outage", PARTITIONS, 1_200, 200, |dir| {
        StorageKind::File(dir.join("data"))
    })
    .await?;
    let s = write_snapshot(&d, 150)?;
    // Frozen once the first file is staged; ZooKeeper goes before it stages the second.
    let mut p = spawn_backfill(
        &d,
        &s,
        "backfill",
        &[("SLUICE_FAILPOINT", "backfill_after_file:1:stop")],
    )?;
    p.wait_stopped(LIMIT).await?;
    let stopped = std::time::Instant::now();
    zk.stop().await?;
    p.signal("CONT")?;
    wait_for_log(&mut p, "the backfill stopped on an outage").await?;
    // Past the session timeout (4 s in the test config): the outage's length is the point.
    tokio::time::sleep(OUTAGE.saturating_sub(stopped.elapsed())).await;
    ensure!(p.is_running(), "the backfill exited during the outage");
    zk.start().await?;
    let log = handed_over(p).await?;
    d.run_to_end().await?;
    verify_backfilled(&d.config, &d.events, &d.located, &s.backfilled).await?;
    println!(
        "zookeeper outage of {:.1?}: {} attempts stopped by it, then: {}",
        OUTAGE,
        log.matches("the backfill stopped on an outage").count(),
        log.lines()
            .find(|l| l.contains("handed over:"))
            .unwrap_or_default()
    );
    Ok(())
}
