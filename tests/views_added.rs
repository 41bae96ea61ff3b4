//! A view added to a table that already holds data, by restarting the workers one by one with
//! the new configuration while they ingest with frequent flushes: it goes live for the whole
//! fleet once every worker defines it, its history is computed over the parts committed before,
//! and afterwards its table holds exactly what the produced events say (checked by the test's
//! own reading of the view's parts, not by the product's SQL), with the events table exactly
//! once. Run with several timings; then with the history computation killed at each of its
//! steps, and frozen as a zombie while another worker takes it over.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use sluice_tests::aggregates::check_aggregates;
use sluice_tests::fleet::{deployment, deployment_on, spawn, wait_caught_up, Worker};
use sluice_tests::outage::StorageAway;
use sluice_tests::per_hour::per_hour_view;
use sluice_tests::private::PrivateZk;
use sluice_tests::{describe, run_sluice, wait_until, zk_root, Prepared, Stack, StorageKind};

const PARTITIONS: i32 = 4;
const VIEW: &str = "per_hour";
const LIMIT: Duration = Duration::from_secs(120);

/// A worker of the deployment with `SLUICE_FAILPOINT` set.
fn spawn_with(d: &Prepared, id: &str, failpoint: &str) -> Result<Worker> {
    Worker::spawn(
        &d.config,
        id,
        &[("SLUICE_FAILPOINT", failpoint)],
        &d.dir.path().join("logs"),
    )
}

/// A session on the ZooKeeper at `connect` (the shared stack's, or a private one).
async fn zk_at(connect: &str) -> Result<zookeeper_client::Client> {
    let connect = zookeeper_client::Client::connector()
        .with_session_timeout(Duration::from_secs(4))
        .connect(connect);
    tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .context("ZooKeeper did not answer within 10 s")?
        .context("connecting to ZooKeeper")
}

/// The view registry's record of the view, as ZooKeeper (at `zk`) holds it (JSON), if it is
/// live.
async fn live_view(zk: &str, d: &Prepared) -> Result<Option<serde_json::Value>> {
    let zk = zk_at(zk).await?;
    let path = format!("{}/views", zk_root(&d.topic));
    let data = match zk.get_data(&path).await {
        Ok((data, _)) => data,
        Err(zookeeper_client::Error::NoNode) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let registry: serde_json::Value = serde_json::from_slice(&data)?;
    Ok(registry["views"]
        .as_array()
        .context("views")?
        .iter()
        .find(|v| v["name"] == VIEW)
        .cloned())
}

/// Waits until the view's history is registered.
async fn wait_history(zk: &str, d: &Prepared) -> Result<()> {
    let path = format!("{}/view-history/{VIEW}/done", zk_root(&d.topic));
    wait_until(
        LIMIT,
        Duration::from_millis(200),
        "the view's history",
        || {
            let path = path.clone();
            async move { Ok(zk_at(zk).await?.check_stat(&path).await?.is_some()) }
        },
    )
    .await
}

/// One worker ingests what was produced; then the view is added to the configuration and the
/// worker stopped. Returns a copy of the configuration without the view.
async fn ingested_then_view_added(d: &Prepared) -> Result<std::path::PathBuf> {
    let w1 = spawn(d, "w1")?;
    wait_caught_up(&d.config, &d.topic, &d.ends(), LIMIT).await?;
    let without_view = d.dir.path().join("without-view.toml");
    std::fs::copy(&d.config, &without_view)?;
    add_view(d)?;
    w1.terminate(LIMIT).await?;
    Ok(without_view)
}

/// Adds the view to the deployment's configuration (the running workers keep theirs).
fn add_view(d: &Prepared) -> Result<()> {
    d.edit_config(|text| format!("{text}\n{}", per_hour_view()))
}

/// Waits until every event is committed and the view's history is registered.
async fn settle(zk: &str, d: &Prepared) -> Result<()> {
    wait_caught_up(&d.config, &d.topic, &d.ends(), LIMIT).await?;
    wait_history(zk, d).await
}

/// Once the workers stopped (no merge in flight): every event once in the events table, and
/// the view's table equal to the produced events' totals; the view went live with data below
/// its points (so a history was computed).
async fn check(zk: &str, d: &Prepared) -> Result<()> {
    let view = live_view(zk, d).await?.context("the view is not live")?;
    let points = view["points"].as_array().cloned().unwrap_or_default();
    ensure!(
        points.iter().any(|p| p["next_offset"].as_i64() > Some(0)),
        "the view went live before any data was committed ({view}): no history was tested"
    );
    d.verify().await?;
    let (groups, _, _) = check_aggregates(d).await?;
    ensure!(groups > 1, "{groups} groups");
    Ok(())
}

/// Events before the roll, between the two restarts and after; flush size; whether the fleet
/// has caught up before the roll starts.
struct Timing {
    before: u64,
    between: u64,
    after: u64,
    max_rows: usize,
    caught_up: bool,
}

async fn rolling_restart(name: &str, t: Timing) -> Result<()> {
    let zk = Stack::from_env().zk;
    let mut d = deployment(name, PARTITIONS, t.before, t.max_rows).await?;
    let w1 = spawn(&d, "w1")?;
    let w2 = spawn(&d, "w2")?;
    if t.caught_up {
        wait_caught_up(&d.config, &d.topic, &d.ends(), LIMIT).await?;
    } else {
        wait_until(
            LIMIT,
            Duration::from_millis(50),
            "a first commit",
            || async {
                let state = sluice_tests::fleet::fleet_state(&d.config, &d.topic).await?;
                Ok(state.offsets.values().any(|o| o.is_some_and(|o| o > 0)))
            },
        )
        .await?;
    }
    add_view(&d)?;
    w1.terminate(LIMIT).await?;
    let w1 = spawn(&d, "w1")?;
    d.produce_more(t.between).await?;
    ensure!(
        live_view(&zk, &d).await?.is_none(),
        "the view went live while w2 still ran without it"
    );
    w2.terminate(LIMIT).await?;
    let w2 = spawn(&d, "w2")?;
    d.produce_more(t.after).await?;
    settle(&zk, &d).await?;
    let logs = format!(
        "w1: {}\nw2: {}",
        sluice_tests::fleet::tail(&w1.terminate(LIMIT).await?, 3000),
        sluice_tests::fleet::tail(&w2.terminate(LIMIT).await?, 3000)
    );
    check(&zk, &d).await.context(logs)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_view_added_by_a_rolling_restart_equals_its_sql_over_every_event() -> Result<()> {
    let timings = [
        Timing {
            before: 900,
            between: 0,
            after: 300,
            max_rows: 40,
            caught_up: true,
        },
        Timing {
            before: 600,
            between: 400,
            after: 200,
            max_rows: 25,
            caught_up: false,
        },
        Timing {
            before: 1200,
            between: 200,
            after: 0,
            max_rows: 60,
            caught_up: false,
        },
    ];
    for (i, t) in timings.into_iter().enumerate() {
        rolling_restart(&format!("view-added-{i}"), t)
            .await
            .with_context(|| format!("timing {i}"))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_history_killed_at_each_step_or_frozen_as_a_zombie_is_computed_once() -> Result<()> {
    let zk = Stack::from_env().zk;
    let mut d = deployment("view-history-faults", PARTITIONS, 1000, 40).await?;
    let without_view = ingested_then_view_added(&d).await?;

    // kill -9 after a chunk is uploaded, then right before the history registers.
    for point in [
        "view_history_after_upload:1",
        "view_history_before_register:1",
    ] {
        let mut w = spawn_with(&d, "w1", point)?;
        let status = w.wait(LIMIT).await.with_context(|| point.to_string())?;
        ensure!(
            status.signal() == Some(9),
            "{point}: the worker exited with {status}: {}",
            w.log_text()
        );
    }

    // A zombie: frozen right before it registers, past its session; w2 takes the history
    // over and registers it; the zombie, resumed, is refused (or notices its session ended
    // first) and deletes its objects.
    let mut zombie = spawn_with(&d, "w1", "view_history_before_register:1:stop")?;
    zombie.wait_stopped(LIMIT).await?;
    let w2 = spawn(&d, "w2")?;
    d.produce_more(300).await?;
    settle(&zk, &d).await?;
    zombie.signal("CONT")?;
    wait_until(
        LIMIT,
        Duration::from_millis(100),
        "the zombie's retreat",
        || {
            let log = zombie.log_text();
            async move { Ok(log.contains("this run's objects are deleted")) }
        },
    )
    .await
    .with_context(|| zombie.log_text())?;
    zombie.terminate(LIMIT).await?;
    let log = w2.terminate(LIMIT).await?;
    // The thawed zombie's merge task may upload a merged part after w2's first merge turn
    // swept that scope; its swap is refused, and collecting uncommitted objects is
    // `sluice gc`'s job (the view history's objects are its own runs' to delete: gc leaves
    // them alone, and the check below finds none).
    d.sluice(&["gc", "--min-age-ms", "0"]).await?;
    check(&zk, &d).await.with_context(|| log)?;
    let listed = String::from_utf8(d.sluice(&["views"]).await?.stdout)?;
    ensure!(
        listed.contains(VIEW) && listed.contains("live, history done"),
        "`sluice views` says:\n{listed}"
    );

    // A worker whose configuration lacks the live view refuses to start, naming the fix; once
    // the view is dropped it starts, and flushes no longer carry the view.
    let old = [
        "run",
        "--config",
        without_view.to_str().context("path")?,
        "--stop-at-end",
    ];
    let refused = run_sluice(&old, &[], LIMIT).await?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success()
            && stderr.contains("view `per_hour`")
            && stderr.contains("sluice views drop per_hour"),
        "a worker without the live view: {}",
        describe(&refused)
    );
    d.sluice(&["views", "drop", VIEW]).await?;
    d.produce_more(100).await?;
    let ran = run_sluice(&old, &[], LIMIT).await?;
    ensure!(ran.status.success(), "after the drop: {}", describe(&ran));
    d.verify().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_storage_outage_during_a_history_is_waited_out() -> Result<()> {
    let zk = Stack::from_env().zk;
    let mut d = deployment("view-history-outage", PARTITIONS, 1000, 40).await?;
    ingested_then_view_added(&d).await?;
    // Frozen after the history's first chunk is uploaded; storage goes before the rest.
    let mut w = spawn_with(&d, "w1", "view_history_after_upload:1:stop")?;
    w.wait_stopped(LIMIT).await?;
    let storage = StorageAway::take(&d)?;
    w.signal("CONT")?;
    wait_until(LIMIT, Duration::from_millis(100), "a failed history attempt", || {
        let log = w.log_text();
        async move { Ok(log.contains("computing the view's history failed; it is tried again")) }
    })
    .await
    .with_context(|| w.log_text())?;
    ensure!(w.is_running(), "the worker exited: {}", w.log_text());
    storage.restore()?;
    d.produce_more(200).await?;
    settle(&zk, &d).await?;
    let log = w.terminate(LIMIT).await?;
    check(&zk, &d).await.with_context(|| log)
}

#[tokio::test(flavor = "multi_thread")]
async fn zookeeper_down_longer_than_the_session_during_a_history_is_waited_out() -> Result<()> {
    let mut private = PrivateZk::launch().await?;
    let zk = private.connect();
    let stack = Stack::from_env().with_zk(&private);
    let mut d = deployment_on(&stack, "view-history-zk", PARTITIONS, 1000, 40, |dir| {
        StorageKind::File(dir.join("data"))
    })
    .await?;
    ingested_then_view_added(&d).await?;
    // Frozen after the history's first upload; ZooKeeper goes, for longer than the 4 s
    // session: the history stops with the session, the worker waits and rejoins.
    let mut w = spawn_with(&d, "w1", "view_history_after_upload:1:stop")?;
    w.wait_stopped(LIMIT).await?;
    let stopped = std::time::Instant::now();
    private.stop().await?;
    w.signal("CONT")?;
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(stopped.elapsed())).await;
    ensure!(
        w.is_running(),
        "the worker exited during the outage: {}",
        w.log_text()
    );
    private.start().await?;
    d.produce_more(200).await?;
    settle(&zk, &d).await.with_context(|| w.log_text())?;
    let log = w.terminate(LIMIT).await?;
    ensure!(
        log.contains("rejoining the fleet with a new session"),
        "the worker did not lose its session: {log}"
    );
    check(&zk, &d).await.context(log)
}
