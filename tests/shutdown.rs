//! SIGTERM drains: what is buffered is flushed and committed, the leases are released at once
//! (the next worker does not wait for a session to expire), and nothing is lost or duplicated.
//! Proved from state, before any restart: every partition's committed offset is at the end of
//! what was produced to it, and ZooKeeper holds no lease node.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use sluice_tests::fleet::{deployment, spawn, tail, Worker};
use sluice_tests::web::{endpoint, get, series};
use sluice_tests::{committed, wait_until, zk_client, zk_root, Prepared};

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_commits_what_is_buffered_and_releases_leases() -> Result<()> {
    let d = deployment("sigterm", 3, 2_400, 1_000_000).await?;
    // No flush policy can fire: only the drain on SIGTERM commits anything.
    d.edit_config(|text| text.replace("max_age_ms = 300", "max_age_ms = 600000"))?;

    let worker = spawn(&d, "w1")?;
    consumed_everything(&d, &worker).await?;
    ensure!(
        committed(&d.config, "events").await?.parts.is_empty(),
        "something was committed before SIGTERM"
    );

    let log = worker.terminate(Duration::from_secs(60)).await?;
    // Before anything else runs: the drain committed everything that was consumed, which is
    // everything produced, and released every lease.
    let c = committed(&d.config, "events").await?;
    for (p, end) in d.ends() {
        let got = c.offsets.get(&p).copied().flatten();
        ensure!(
            got == Some(end),
            "partition {p}: committed offset {got:?} after SIGTERM, {end} produced; the worker's log:\n{}",
            tail(&log, 4000)
        );
    }
    no_leases_left(&d).await?;

    // So the next worker starts without waiting for a previous owner's session to expire.
    let out = d.run_to_end().await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !stderr.contains("waiting for the previous owner"),
        "the restart had to wait for leases: {stderr}"
    );
    d.verify().await
}

/// Waits until the worker has consumed (and so buffers, as no flush can fire) every event
/// produced to every partition, from its consumed-events counters.
async fn consumed_everything(d: &Prepared, worker: &Worker) -> Result<()> {
    let addr = endpoint(worker).await?;
    let ends = d.ends();
    let mut last = String::new();
    let outcome = wait_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        "the worker to consume every event",
        || {
            let metrics = get(addr, "/metrics").map(|(_, body)| body);
            let done = metrics.as_ref().is_ok_and(|m| {
                ends.iter().all(|(p, end)| {
                    let p = p.to_string();
                    let labels = [("partition", p.as_str())];
                    series(m, "sluice_partition_consumed_events_total", &labels)
                        == Some(*end as f64)
                })
            });
            if let Ok(m) = metrics {
                last = m;
            }
            async move { Ok(done) }
        },
    )
    .await;
    outcome.with_context(|| {
        format!(
            "produced {ends:?}; the worker's metrics:\n{}\nits log:\n{}",
            tail(&last, 4000),
            tail(&worker.log_text(), 4000)
        )
    })
}

/// Reads ZooKeeper directly: every partition's unit is there (`offset`), and none has a
/// `lease` node (ephemeral, removed when released or when its session ends).
async fn no_leases_left(d: &Prepared) -> Result<()> {
    let client = zk_client().await?;
    // The coordinator's layout (crates/sluice-coord/src/zookeeper.rs): a topic name without
    // `/` or `%` is its own znode name.
    let units = format!("{}/units/{}", zk_root(&d.topic), d.topic);
    for p in 0..d.partitions {
        let unit = format!("{units}/{p}");
        ensure!(
            client
                .check_stat(&format!("{unit}/offset"))
                .await?
                .is_some(),
            "no unit node {unit}/offset: the layout is not what this test reads"
        );
        let lease = client.check_stat(&format!("{unit}/lease")).await?;
        ensure!(
            lease.is_none(),
            "partition {p} is still leased after the worker drained and exited: {unit}/lease exists ({lease:?})"
        );
    }
    Ok(())
}
