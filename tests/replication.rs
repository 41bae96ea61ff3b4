//! Parts replicated across three independent S3 servers (private s3s-fs processes this binary
//! kills, restarts and corrupts), with workers as separate processes: replication 3, write
//! quorum 2. Every test ends with the exactly-once check run on each endpoint's copies on
//! their own, read with `object_store` directly: every committed part on every endpoint,
//! matching its checksum, every column of every row, and no stray object anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use sluice_coord::PartRecord;
use sluice_tests::fleet::{deployment_on, spawn, spawn_frozen, tail, wait_caught_up, Worker};
use sluice_tests::outage::{endpoints, ensure_running, offsets, wait_ready_state, SETTLE};
use sluice_tests::replicas::{set_storage, verify_every_endpoint, Endpoints};
use sluice_tests::web::get;
use sluice_tests::{unique, wait_until, Expect, Prepared, Stack, StorageKind};

const NAMES: [&str; 3] = ["a", "b", "c"];
/// A repair pass every half second, so that a repair is timed by its work, not its schedule.
const REPAIR_INTERVAL_MS: u64 = 500;

/// Three endpoints and a deployment of `events` events over 4 partitions replicated on them.
async fn replicated(name: &str, events: u64, max_rows: usize) -> Result<(Endpoints, Prepared)> {
    let prefix = unique(name);
    let endpoints = Endpoints::launch(3, &prefix).await?;
    let d = deployment_on(&Stack::from_env(), name, 4, events, max_rows, |_| {
        StorageKind::S3 {
            prefix: prefix.clone(),
        }
    })
    .await?;
    set_storage(
        &d,
        &endpoints.storage_toml(d.dir.path(), 2, REPAIR_INTERVAL_MS)?,
    )?;
    // Repair runs at the merge check.
    d.set_merge("check_interval_ms = 250")?;
    Ok((endpoints, d))
}

/// Every live part record of the events table.
async fn live_parts(d: &Prepared) -> Result<Vec<PartRecord>> {
    let coord = d.coordinator().await?;
    let mut parts = Vec::new();
    for scope in coord.list_scopes("events").await? {
        parts.extend(
            coord
                .read_scope("events", &scope.partition_value)
                .await?
                .parts,
        );
    }
    coord.close().await?;
    Ok(parts)
}

/// The committed parts whose copy on endpoint `name` is missing or does not match its
/// checksum, read from the server's directory on disk.
fn bad_copies(endpoints: &Endpoints, name: &str, parts: &[PartRecord]) -> Vec<String> {
    parts
        .iter()
        .filter(|p| {
            std::fs::read(endpoints.file(name, &p.path))
                .map_or(true, |bytes| sluice_sink::sha256_hex(&bytes) != p.checksum)
        })
        .map(|p| p.path.clone())
        .collect()
}

/// Waits until every committed part has a good copy on every endpoint; returns how long it
/// took.
async fn wait_fully_replicated(endpoints: &Endpoints, d: &Prepared) -> Result<Duration> {
    let started = Instant::now();
    let last = std::sync::Mutex::new(String::new());
    let outcome = wait_until(
        SETTLE,
        Duration::from_millis(100),
        "every committed part on every endpoint",
        || async {
            let parts = live_parts(d).await?;
            let bad: BTreeMap<&str, usize> = NAMES
                .iter()
                .map(|n| (*n, bad_copies(endpoints, n, &parts).len()))
                .collect();
            *last.lock().unwrap() = format!("{} parts; bad copies {bad:?}", parts.len());
            Ok(bad.values().all(|n| *n == 0))
        },
    )
    .await;
    outcome.with_context(|| last.lock().unwrap().clone())?;
    Ok(started.elapsed())
}

/// Waits until every live record names all three endpoints (the repair records the copies it
/// stored).
async fn wait_records_name_all(d: &Prepared) -> Result<()> {
    wait_until(
        SETTLE,
        Duration::from_millis(200),
        "every record naming all three endpoints",
        || async { Ok(live_parts(d).await?.iter().all(|p| p.replicas == NAMES)) },
    )
    .await
}

async fn stop_all(workers: Vec<Worker>) -> Result<Vec<String>> {
    let mut logs = Vec::new();
    for w in workers {
        logs.push(w.terminate(Duration::from_secs(60)).await?);
    }
    Ok(logs)
}

#[tokio::test(flavor = "multi_thread")]
async fn three_endpoints_hold_every_part_exactly_once() -> Result<()> {
    let (endpoints, d) = replicated("repl_e2e", 4_000, 250).await?;
    let workers = vec![spawn(&d, "w1")?, spawn(&d, "w2")?];
    let addr = endpoints_of(&workers).await?[0];
    wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;
    wait_fully_replicated(&endpoints, &d).await?;
    // A copy that missed the straggler wait (a slow server) is stored and recorded by the
    // repair: the records catch up with the disks.
    wait_records_name_all(&d).await?;
    // The dashboard's data shows the replication as the last repair pass found it.
    wait_until(
        SETTLE,
        Duration::from_millis(200),
        "/api/state showing three endpoints up and nothing under-replicated",
        || {
            let state = get(addr, "/api/state").map(|(_, body)| body);
            let shown = matches!(&state, Ok(body)
                if body.contains(r#""endpoints":[["a",true],["b",true],["c",true]]"#)
                    && body.contains(r#""under_replicated":0"#));
            async move { Ok(shown) }
        },
    )
    .await?;
    stop_all(workers).await?;
    let parts = live_parts(&d).await?;
    ensure!(parts.len() >= 8, "only {} parts", parts.len());
    // Each record names the endpoints holding its copies: at least the quorum at the commit,
    // all three once the stragglers or the repair stored theirs.
    for p in &parts {
        ensure!(
            p.replicas == NAMES,
            "part {} records copies on {:?}",
            p.path,
            p.replicas
        );
    }
    let check = d.sluice(&["check", "--connect"]).await?;
    let text = String::from_utf8(check.stdout)?;
    ensure!(
        NAMES
            .iter()
            .all(|n| text.contains(&format!("storage endpoint {n} (s3://")))
            && text.contains("each part on 3 of 3 endpoints, committed at 2 copies"),
        "sluice check --connect:\n{text}"
    );
    let listing = d.sluice(&["parts", "--table", "events"]).await?;
    let text = String::from_utf8(listing.stdout)?;
    ensure!(
        text.contains("copies") && text.matches("a,b,c").count() == parts.len(),
        "sluice parts does not show three copies of each part:\n{text}"
    );
    verify_every_endpoint(&d).await
}

/// The events produced while an endpoint is down in the repair test: 4,000 by default;
/// `SLUICE_REPAIR_EVENTS` sets more to measure a larger repair.
fn repair_events() -> Result<u64> {
    match std::env::var("SLUICE_REPAIR_EVENTS") {
        Ok(n) => n
            .parse()
            .context("SLUICE_REPAIR_EVENTS is a number of events"),
        Err(_) => Ok(4_000),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_down_mid_ingest_is_repaired_when_it_returns() -> Result<()> {
    let (mut endpoints, mut d) = replicated("repl_down", 2_000, 200).await?;
    // The scrub off: the time measured is the repair's.
    d.edit_config(|t| t.replace("scrub_bytes_per_s = 104857600", "scrub_bytes_per_s = 0"))?;
    let mut workers = vec![spawn(&d, "w1")?, spawn(&d, "w2")?];
    let addrs = endpoints_of(&workers).await?;
    wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;
    endpoints.server("c").stop().await?;
    d.produce_more(repair_events()?).await?;
    // The quorum (a and b) holds every new part: ingestion goes on, the workers stay ready.
    wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;
    wait_ready_state(&addrs, 200, "holding every assigned partition").await?;
    ensure_running(&mut workers)?;
    // Every worker's dashboard data names c down, whichever scopes it repairs.
    wait_until(
        SETTLE,
        Duration::from_millis(200),
        "every worker's /api/state showing endpoint c down",
        || {
            let states: Vec<_> = addrs.iter().map(|a| get(*a, "/api/state")).collect();
            let down = states
                .iter()
                .all(|s| matches!(s, Ok((_, body)) if body.contains(r#"["c",false]"#)));
            async move { Ok(down) }
        },
    )
    .await?;
    // Queries read around the dead endpoint.
    let expected = d
        .events
        .iter()
        .filter(|e| matches!(e.expect, Expect::Row))
        .count() as u64;
    let (rows, _) = d.query("SELECT count(*) AS n FROM events").await?;
    ensure!(
        rows[0]["n"].as_u64() == Some(expected),
        "with c down the query answered {rows:?}, expected {expected}"
    );
    let parts = live_parts(&d).await?;
    let missed: Vec<&PartRecord> = parts
        .iter()
        .filter(|p| !p.replicas.contains(&"c".to_string()))
        .collect();
    ensure!(!missed.is_empty(), "no part was committed without c");
    for p in &missed {
        ensure!(
            p.replicas == ["a", "b"],
            "part {} was committed with copies on {:?}",
            p.path,
            p.replicas
        );
    }
    let missed_bytes: u64 = missed.iter().map(|p| p.bytes).sum();
    endpoints.server("c").start().await?;
    let took = wait_fully_replicated(&endpoints, &d).await?;
    println!(
        "repair: endpoint c missed {} parts ({missed_bytes} bytes); every one repaired {:.1} s after it returned ({:.0} bytes/s over that time, repair passes every {REPAIR_INTERVAL_MS} ms)",
        missed.len(),
        took.as_secs_f64(),
        missed_bytes as f64 / took.as_secs_f64()
    );
    // The records catch up with the copies the repair stored.
    wait_records_name_all(&d).await?;
    ensure_running(&mut workers)?;
    let logs = stop_all(workers).await?;
    ensure!(
        logs.iter().any(|l| l.contains("repaired a copy")),
        "no worker logged a repair"
    );
    verify_every_endpoint(&d).await
}

#[tokio::test(flavor = "multi_thread")]
async fn two_endpoints_down_pause_ingestion_until_one_returns() -> Result<()> {
    let (mut endpoints, mut d) = replicated("repl_pause", 2_000, 200).await?;
    let mut workers = vec![spawn(&d, "w1")?, spawn(&d, "w2")?];
    let addrs = endpoints_of(&workers).await?;
    wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;
    let before = offsets(&d).await?;
    endpoints.server("b").stop().await?;
    endpoints.server("c").stop().await?;
    d.produce_more(3_000).await?;
    // Every worker with partitions says why it does not commit: one copy of two stored.
    let holders = sluice_tests::outage::wait_storage_outage_seen(&addrs).await?;
    for a in &holders {
        let (_, body) = get(*a, "/readyz")?;
        ensure!(
            body.contains("need 2") && body.contains("b: ") && body.contains("c: "),
            "/readyz does not name the endpoints that are down: {body}"
        );
    }
    ensure!(
        offsets(&d).await? == before,
        "something was committed with one copy"
    );
    let check = sluice_tests::run_sluice(
        &["check", "--config", d.config_arg(), "--connect"],
        &[],
        Duration::from_secs(120),
    )
    .await?;
    let said = sluice_tests::describe(&check);
    ensure!(
        !check.status.success() && said.contains("storage cannot be reached (b, c)"),
        "sluice check --connect with two endpoints down: {said}"
    );
    ensure_running(&mut workers)?;
    endpoints.server("b").start().await?;
    wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;
    wait_ready_state(&addrs, 200, "holding every assigned partition").await?;
    endpoints.server("c").start().await?;
    wait_fully_replicated(&endpoints, &d).await?;
    ensure_running(&mut workers)?;
    stop_all(workers).await?;
    verify_every_endpoint(&d).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_copy_is_read_around_counted_and_repaired() -> Result<()> {
    let (endpoints, d) = replicated("repl_corrupt", 3_000, 300).await?;
    let workers = vec![spawn(&d, "w1")?];
    let addr = endpoints_of(&workers).await?[0];
    wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;
    wait_fully_replicated(&endpoints, &d).await?;
    // Every copy on endpoint a gets one byte flipped in its middle (its size unchanged, so
    // only a checksum can tell).
    let parts = live_parts(&d).await?;
    for p in &parts {
        let path = endpoints.file("a", &p.path);
        let mut bytes = std::fs::read(&path)?;
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x5a;
        std::fs::write(&path, bytes)?;
    }
    ensure!(bad_copies(&endpoints, "a", &parts).len() == parts.len());
    let expected = d
        .events
        .iter()
        .filter(|e| matches!(e.expect, Expect::Row))
        .count() as u64;
    let expected_sum: u64 = d
        .events
        .iter()
        .filter(|e| matches!(e.expect, Expect::Row))
        .map(|e| e.seq)
        .sum();
    let (rows, stderr) = d
        .query("SELECT count(*) AS n, sum(seq) AS s FROM events")
        .await?;
    ensure!(
        rows[0]["n"].as_u64() == Some(expected) && rows[0]["s"].as_u64() == Some(expected_sum),
        "the query answered {rows:?}, expected {expected} rows summing to {expected_sum}"
    );
    ensure!(
        stderr.contains("corrupt cop") && stderr.contains("on endpoint a"),
        "the query did not report the corrupt copies it skipped:\n{stderr}"
    );
    // The worker's scrub finds every one and the repair rewrites it from a good copy.
    wait_fully_replicated(&endpoints, &d).await?;
    let (_, metrics) = get(addr, "/metrics")?;
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("sluice_storage_checksum_failures_total{endpoint=\"a\"}"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    ensure!(
        counted >= 1.0,
        "the worker counted no checksum failure on a:\n{}",
        tail(&metrics, 3000)
    );
    stop_all(workers).await?;
    // With every copy of one part corrupt, a query reading it fails and names it.
    let victim = live_parts(&d)
        .await?
        .into_iter()
        .find(|p| p.kind == sluice_coord::PartKind::Data)
        .context("no data part")?;
    let originals: Vec<(std::path::PathBuf, Vec<u8>)> = NAMES
        .iter()
        .map(|n| {
            let path = endpoints.file(n, &victim.path);
            let bytes = std::fs::read(&path)?;
            Ok((path, bytes))
        })
        .collect::<Result<_>>()?;
    for (path, bytes) in &originals {
        let mut bad = bytes.clone();
        let middle = bad.len() / 2;
        bad[middle] ^= 0x5a;
        std::fs::write(path, bad)?;
    }
    let out = sluice_tests::run_sluice(
        &[
            "query",
            "--config",
            d.config_arg(),
            "SELECT count(*) FROM events",
        ],
        &[],
        Duration::from_secs(120),
    )
    .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && stderr.contains("part unavailable")
            && stderr.contains(&victim.path),
        "a query over a part with no good copy did not fail naming it: {}",
        sluice_tests::describe(&out)
    );
    for (path, bytes) in originals {
        std::fs::write(path, bytes)?;
    }
    verify_every_endpoint(&d).await
}

#[tokio::test(flavor = "multi_thread")]
async fn merges_with_replication_replace_copies_on_every_endpoint() -> Result<()> {
    let (endpoints, d) = replicated("repl_merge", 3_000, 50).await?;
    d.set_merge("check_interval_ms = 250\nfan_in = 4\ngrace_ms = 500")?;
    let workers = vec![spawn(&d, "w1")?, spawn(&d, "w2")?];
    wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;
    d.wait_merges_settled(true, SETTLE).await?;
    wait_fully_replicated(&endpoints, &d).await?;
    stop_all(workers).await?;
    let parts = live_parts(&d).await?;
    let merged: Vec<&PartRecord> = parts.iter().filter(|p| p.is_merged()).collect();
    ensure!(!merged.is_empty(), "nothing was merged");
    for p in &merged {
        ensure!(
            p.replicas.len() >= 2,
            "merged part {} was swapped in with copies on {:?}",
            p.path,
            p.replicas
        );
    }
    // No endpoint keeps a replaced part: the check finds no stray object on any.
    verify_every_endpoint(&d).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_between_quorum_and_commit_or_mid_repair_loses_nothing() -> Result<()> {
    let (mut endpoints, mut d) = replicated("repl_kill", 2_000, 200).await?;
    // Killed with parts uploaded to the quorum, not committed.
    let mut first = spawn(&d, "k1")?;
    let env = [("SLUICE_FAILPOINT", "after_upload:3")];
    let mut doomed = Worker::spawn(&d.config, "k2", &env, &d.dir.path().join("logs"))?;
    let status = doomed.wait(SETTLE).await?;
    ensure!(
        !status.success(),
        "the worker armed to die exited {status:?}"
    );
    wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;
    ensure_running(std::slice::from_mut(&mut first))?;
    first.terminate(Duration::from_secs(60)).await?;

    // Killed in a repair pass, after storing copies and before recording them.
    endpoints.server("c").stop().await?;
    d.produce_more(2_000).await?;
    let ingest = spawn(&d, "k3")?;
    wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;
    ingest.terminate(Duration::from_secs(60)).await?;
    endpoints.server("c").start().await?;
    let mut repairer = Worker::spawn(
        &d.config,
        "k4",
        &[("SLUICE_FAILPOINT", "repair_after_copy:1")],
        &d.dir.path().join("logs"),
    )?;
    let status = repairer.wait(SETTLE).await?;
    ensure!(
        !status.success(),
        "the repairer armed to die exited {status:?}"
    );
    let last = spawn(&d, "k5")?;
    wait_fully_replicated(&endpoints, &d).await?;
    wait_records_name_all(&d).await?;
    last.terminate(Duration::from_secs(60)).await?;
    // What the killed worker uploaded and never committed is collected on every endpoint.
    d.sluice(&["gc", "--min-age-ms", "0"]).await?;
    verify_every_endpoint(&d).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_repairer_changes_nothing_when_it_wakes() -> Result<()> {
    let (mut endpoints, mut d) = replicated("repl_zombie", 1_000, 100).await?;
    endpoints.server("c").stop().await?;
    let ingest = spawn(&d, "z1")?;
    wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;
    ingest.terminate(Duration::from_secs(60)).await?;
    endpoints.server("c").start().await?;
    // Frozen after storing copies, before recording them, past its session's timeout.
    let zombie = spawn_frozen(&d, "z2", "repair_after_copy:1:stop").await?;
    d.set_merge("check_interval_ms = 250\nfan_in = 2\ngrace_ms = 500")?;
    d.produce_more(1_000).await?;
    let live = spawn(&d, "z3")?;
    wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;
    d.wait_merges_settled(true, SETTLE).await?;
    wait_fully_replicated(&endpoints, &d).await?;
    zombie.signal("CONT")?;
    // The zombie's late records name parts merged away meanwhile: none comes back.
    let before: BTreeSet<String> = live_parts(&d)
        .await?
        .iter()
        .map(|p| p.path.clone())
        .collect();
    let log = zombie.terminate(Duration::from_secs(60)).await?;
    let after: BTreeSet<String> = live_parts(&d)
        .await?
        .iter()
        .map(|p| p.path.clone())
        .collect();
    ensure!(
        before == after,
        "the zombie changed the live parts: {before:?} -> {after:?}\n{}",
        tail(&log, 3000)
    );
    live.terminate(Duration::from_secs(60)).await?;
    d.sluice(&["gc", "--min-age-ms", "0"]).await?;
    verify_every_endpoint(&d).await
}

async fn endpoints_of(workers: &[Worker]) -> Result<Vec<std::net::SocketAddr>> {
    endpoints(workers).await
}
