//! Replays: a table (and its per-hour view) ingested for a while with a configuration whose
//! `duration_ms` column read a field the events do not have, then fixed, and the bugged hours
//! replayed while events go on being produced and ingested. Queries during the replay see each
//! day whole: all of its bugged rows null or none; afterwards every column of every row is
//! right (the exactly-once check) and the view equals its SQL over every event (computed by the
//! test, not the product). A rollback brings the bugged generation back exactly. Then the
//! replay killed at each step, and frozen as a zombie while another run takes over.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use sluice_testkit::fixture::{self, Expect};
use sluice_tests::aggregates::check_aggregates;
use sluice_tests::fleet::{deployment_on, spawn, wait_caught_up, Worker};
use sluice_tests::outage::StorageAway;
use sluice_tests::per_hour::{per_hour_view, PER_HOUR_TABLE};
use sluice_tests::private::PrivateZk;
use sluice_tests::{
    committed, describe, produce_at, run_sluice, wait_until, zk_client, zk_root, Prepared, Stack,
    StorageKind,
};

const PARTITIONS: i32 = 4;
const LIMIT: Duration = Duration::from_secs(120);
const HOUR_MS: i64 = 3_600_000;
const EVENTS_COLUMN: &str = "name = \"duration_ms\"\ntype = \"float64\"\nnullable = true\n";
const BUG: &str = "source = \"duration\"\n";

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A deployment ingested in two rounds: events with Kafka timestamps three hours ago under the
/// right configuration, then events of two hours ago under one whose `duration_ms` reads
/// `duration`; the configuration is fixed again afterwards. Returns the bugged events' seqs and
/// the bugged hour's start.
async fn ingested_with_a_bug(
    stack: &Stack,
    name: &str,
    merge: &str,
) -> Result<(Prepared, HashSet<u64>, i64)> {
    let mut d = deployment_on(stack, name, PARTITIONS, 0, 40, |dir| {
        StorageKind::File(dir.join("data"))
    })
    .await?;
    d.edit_config(|t| {
        format!(
            "{t}\n{}\n[merge]\ncheck_interval_ms = 200\nfan_in = 4\n{merge}",
            per_hour_view()
        )
    })?;
    let bug_from = now_ms() - 2 * HOUR_MS;
    d.produce_more_at(400, Some(bug_from - HOUR_MS)).await?;
    ingest(&d).await?;
    d.edit_config(|t| t.replacen(EVENTS_COLUMN, &format!("{EVENTS_COLUMN}{BUG}"), 1))?;
    let first_bugged = d.events.len() as u64;
    d.produce_more_at(800, Some(bug_from)).await?;
    ingest(&d).await?;
    d.edit_config(|t| t.replacen(BUG, "", 1))?;
    let nulled = d
        .events
        .iter()
        .filter(|e| e.seq >= first_bugged && e.expect == Expect::Row)
        .map(|e| e.seq)
        .collect();
    Ok((d, nulled, bug_from))
}

/// Two workers ingest everything produced, then stop.
async fn ingest(d: &Prepared) -> Result<()> {
    let (w1, w2) = (spawn(d, "w1")?, spawn(d, "w2")?);
    wait_caught_up(&d.config, &d.topic, &d.ends(), LIMIT).await?;
    w1.terminate(LIMIT).await?;
    w2.terminate(LIMIT).await?;
    Ok(())
}

/// Per day: the events table's rows, and how many of them have no `duration_ms`.
type Days = BTreeMap<i64, (i64, i64)>;

async fn days(d: &Prepared) -> Result<Days> {
    let (rows, _) = d
        .query("SELECT CAST(ts AS BIGINT) / 86400000 AS day, count(*) AS n, count(duration_ms) AS d FROM events GROUP BY 1")
        .await?;
    rows.iter()
        .map(|r| {
            let n = r["n"].as_i64().context("n")?;
            Ok((
                r["day"].as_i64().context("day")?,
                (n, n - r["d"].as_i64().context("d")?),
            ))
        })
        .collect()
}

/// What the produced events say per day: rows, and rows of `nulled` events.
fn expected_days(d: &Prepared, nulled: &HashSet<u64>) -> Days {
    let mut out = Days::new();
    for e in d.events.iter().filter(|e| e.expect == Expect::Row) {
        let entry = out.entry(fixture::row(e.seq).ts / 86_400_000).or_default();
        entry.0 += 1;
        entry.1 += i64::from(nulled.contains(&e.seq));
    }
    out
}

/// Waits until no merge lease of either table is held: a killed replay's end with its
/// session, after which its uploads can no longer be swapped in and `sluice gc` collects them.
async fn merge_leases_gone(zk_connect: &str, d: &Prepared) -> Result<()> {
    let zk = zk_at(zk_connect).await?;
    let root = zk_root(&d.topic);
    wait_until(
        LIMIT,
        Duration::from_millis(200),
        "the merge leases to end",
        || {
            let zk = zk.clone();
            let root = root.clone();
            async move {
                for table in ["events", PER_HOUR_TABLE] {
                    match zk
                        .list_children(&format!("{root}/tables/{table}/merging"))
                        .await
                    {
                        Ok(held) if !held.is_empty() => return Ok(false),
                        Ok(_) | Err(zookeeper_client::Error::NoNode) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(true)
            }
        },
    )
    .await
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

fn replay_args<'a>(d: &'a Prepared, from: &'a str, to: &'a str, id: &'a str) -> Vec<&'a str> {
    vec![
        "replay",
        "run",
        "--config",
        d.config_arg(),
        "--table",
        "events",
        "--from",
        from,
        "--to",
        to,
        "--id",
        id,
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_while_events_are_produced_swaps_each_day_whole_and_rolls_back() -> Result<()> {
    let (mut d, nulled, bug_from) = ingested_with_a_bug(&Stack::from_env(), "replay", "").await?;
    d.verify_nulled(&nulled)
        .await
        .context("the bugged generation")?;
    let before = expected_days(&d, &nulled);
    ensure!(days(&d).await? == before, "before the replay");
    let (w1, w2) = (spawn(&d, "w1")?, spawn(&d, "w2")?);

    // The replay, with events produced meanwhile (Kafka timestamps now, outside its range) and
    // queries run over and over.
    let (from, to) = (bug_from.to_string(), (bug_from + HOUR_MS).to_string());
    let args = replay_args(&d, &from, &to, "fix-durations");
    let done = AtomicBool::new(false);
    let more = fixture::events_from(d.events.len() as u64, 600, PARTITIONS);
    let (replayed, produced, seen) = tokio::join!(
        async {
            let out = run_sluice(&args, &[], LIMIT).await;
            done.store(true, Ordering::SeqCst);
            out
        },
        async {
            let mut located = HashMap::new();
            for chunk in more.chunks(100) {
                located.extend(produce_at(&d.kafka, &d.topic, chunk, None).await?);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(located)
        },
        async {
            let mut seen = Vec::new();
            while !done.load(Ordering::SeqCst) {
                seen.push(days(&d).await?);
            }
            anyhow::Ok(seen)
        }
    );
    let replayed = replayed?;
    ensure!(
        replayed.status.success(),
        "the replay: {}",
        describe(&replayed)
    );
    let report = String::from_utf8_lossy(&replayed.stdout).into_owned();
    ensure!(report.contains("swapped in"), "{report}");
    d.events.extend(more);
    d.located.extend(produced?);
    let after = expected_days(&d, &HashSet::new());
    let seen = seen?;
    let old_seen = seen
        .iter()
        .filter(|r| r.values().any(|&(_, nulls)| nulls > 0))
        .count();
    eprintln!(
        "{report}{} queries during the replay, {old_seen} of them before its swap",
        seen.len()
    );
    for (i, reading) in seen.iter().enumerate() {
        for (day, &(rows, nulls)) in reading {
            let (old_rows, old_nulls) = before.get(day).copied().unwrap_or_default();
            ensure!(
                nulls == 0 || nulls == old_nulls,
                "query {i} saw day {day} half replayed: {nulls} null durations, {old_nulls} before"
            );
            ensure!(
                rows >= old_rows && rows <= after.get(day).map_or(0, |a| a.0),
                "query {i} saw {rows} rows of day {day}: {old_rows} before the replay, {:?} in all",
                after.get(day)
            );
        }
    }

    wait_caught_up(&d.config, &d.topic, &d.ends(), LIMIT).await?;
    w1.terminate(LIMIT).await?;
    w2.terminate(LIMIT).await?;
    d.verify().await.context(report.clone())?;
    let (groups, _, _) = check_aggregates(&d).await?;
    ensure!(groups > 1, "{groups} groups");
    let status = String::from_utf8(d.sluice(&["replay", "status", "--json"]).await?.stdout)?;
    let recorded: serde_json::Value = serde_json::from_str(status.trim())?;
    ensure!(
        recorded["id"] == "fix-durations"
            && recorded["old_rows"].as_u64() >= Some(nulled.len() as u64),
        "status: {status}"
    );

    // The rollback: exactly the bugged generation back, nothing of the replay left live.
    let node = format!("{}/replays/fix-durations", zk_root(&d.topic));
    let (data, _) = zk_client().await?.get_data(&node).await?;
    let generation: serde_json::Value = serde_json::from_slice(&data)?;
    d.sluice(&["replay", "rollback", "--id", "fix-durations"])
        .await?;
    d.verify_nulled(&nulled)
        .await
        .context("after the rollback")?;
    for table in ["events", PER_HOUR_TABLE] {
        let live: HashSet<String> = committed(&d.config, table)
            .await?
            .parts
            .into_iter()
            .map(|p| p.path)
            .collect();
        for (list, want) in [("old", true), ("new", false)] {
            for r in generation[list].as_array().context(list)? {
                let path = r["path"].as_str().context("path")?;
                if r["table"] == table {
                    ensure!(
                        live.contains(path) == want,
                        "after the rollback, {list} part {path} live: {}",
                        !want
                    );
                }
            }
        }
    }
    let again = run_sluice(
        &[
            "replay",
            "rollback",
            "--config",
            d.config_arg(),
            "--id",
            "fix-durations",
        ],
        &[],
        LIMIT,
    )
    .await?;
    ensure!(
        !again.status.success()
            && String::from_utf8_lossy(&again.stderr).contains("no replay `fix-durations`"),
        "a second rollback: {}",
        describe(&again)
    );
    Ok(())
}

/// Whether every scope of both tables is sealed, with no live record beside its manifest.
async fn all_sealed(d: &Prepared) -> Result<bool> {
    let out = d.sluice(&["scopes", "--json"]).await?;
    let scopes: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let tables = scopes["tables"].as_array().context("tables")?;
    let sealed = |t: &serde_json::Value| {
        let values = t["partition_values"].as_array().map_or(0, Vec::len) as u64;
        t["live_records"] == 0 && t["sealed_scopes"].as_u64() == Some(values)
    };
    Ok(tables.len() == 2 && tables.iter().all(sealed))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_of_sealed_days_rewrites_their_manifests_and_rolls_back() -> Result<()> {
    let merge = "quiet_after_ms = 500\n";
    let (d, nulled, bug_from) =
        ingested_with_a_bug(&Stack::from_env(), "replay-sealed", merge).await?;
    // A worker seals every day of both tables once it is quiet.
    let w1 = spawn(&d, "w1")?;
    wait_until(
        LIMIT,
        Duration::from_millis(200),
        "every scope sealed",
        || all_sealed(&d),
    )
    .await?;
    w1.terminate(LIMIT).await?;
    d.verify_nulled(&nulled)
        .await
        .context("the sealed bugged generation")?;
    let (from, to) = (bug_from.to_string(), (bug_from + HOUR_MS).to_string());
    let out = run_sluice(&replay_args(&d, &from, &to, "fix"), &[], LIMIT).await?;
    ensure!(out.status.success(), "the replay: {}", describe(&out));
    d.verify().await?;
    check_aggregates(&d).await?;
    d.sluice(&["replay", "rollback", "--id", "fix"]).await?;
    d.verify_nulled(&nulled)
        .await
        .context("after the rollback")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_killed_at_each_step_or_frozen_as_a_zombie_swaps_once() -> Result<()> {
    let (d, nulled, bug_from) =
        ingested_with_a_bug(&Stack::from_env(), "replay-faults", "").await?;
    let (from, to) = (bug_from.to_string(), (bug_from + HOUR_MS).to_string());
    let args = replay_args(&d, &from, &to, "fix");

    // kill -9 after an upload, then right before the swap: nothing visible, and what it
    // uploaded is collected.
    for point in ["replay_after_upload:1:kill", "replay_before_swap:1:kill"] {
        let out = run_sluice(&args, &[("SLUICE_FAILPOINT", point)], LIMIT).await?;
        ensure!(
            out.status.signal() == Some(9),
            "{point}: {}",
            describe(&out)
        );
        merge_leases_gone(&Stack::from_env().zk, &d).await?;
        d.sluice(&["gc", "--min-age-ms", "0"]).await?;
        d.verify_nulled(&nulled)
            .await
            .with_context(|| format!("after {point}"))?;
    }

    // A zombie frozen right before its swap, past its session; another run of the same replay
    // takes the merge leases over and swaps; the zombie, resumed, is refused and deletes what
    // it uploaded.
    let logs = d.dir.path().join("logs");
    let stop = [("SLUICE_FAILPOINT", "replay_before_swap:1:stop")];
    let mut zombie = Worker::spawn_args(&args, "zombie", &stop, &logs)?;
    zombie.wait_stopped(LIMIT).await?;
    // Kept for no time: a worker collects the old generation at once.
    let keep_none = [args.clone(), vec!["--keep-hours", "0"]].concat();
    let out = run_sluice(&keep_none, &[], LIMIT).await?;
    ensure!(out.status.success(), "the second run: {}", describe(&out));
    zombie.signal("CONT")?;
    let status = zombie.wait(LIMIT).await?;
    let log = zombie.log_text();
    ensure!(
        !status.success()
            && (log.contains("recorded already") || log.contains("lost the merge lease")),
        "the zombie exited with {status}: {log}"
    );
    d.verify().await.context(log)?;
    check_aggregates(&d).await?;

    // The old generation's objects are deleted by a worker, merges disabled or not, and the
    // replay forgotten.
    let node = format!("{}/replays/fix", zk_root(&d.topic));
    let (data, _) = zk_client().await?.get_data(&node).await?;
    let generation: serde_json::Value = serde_json::from_slice(&data)?;
    d.edit_config(|t| t.replacen("[merge]\n", "[merge]\nenabled = false\n", 1))?;
    let w1 = spawn(&d, "w1")?;
    wait_until(
        LIMIT,
        Duration::from_millis(200),
        "the replay's collection",
        || async {
            let status = d.sluice(&["replay", "status", "--json"]).await?;
            Ok(status.stdout.is_empty())
        },
    )
    .await?;
    w1.terminate(LIMIT).await?;
    for r in generation["old"].as_array().context("old")? {
        let path = r["path"].as_str().context("path")?;
        ensure!(
            !d.dir.path().join("data").join(path).exists(),
            "{path} of the old generation is still stored"
        );
    }
    d.verify().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_storage_outage_during_a_replay_is_waited_out() -> Result<()> {
    let (d, _, bug_from) = ingested_with_a_bug(&Stack::from_env(), "replay-storage", "").await?;
    let (from, to) = (bug_from.to_string(), (bug_from + HOUR_MS).to_string());
    let args = replay_args(&d, &from, &to, "fix");
    // Frozen after its first chunk is uploaded; storage goes before the rest.
    let logs = d.dir.path().join("logs");
    let stop = [("SLUICE_FAILPOINT", "replay_after_upload:1:stop")];
    let mut replay = Worker::spawn_args(&args, "replay", &stop, &logs)?;
    replay.wait_stopped(LIMIT).await?;
    let storage = StorageAway::take(&d)?;
    replay.signal("CONT")?;
    wait_until(LIMIT, Duration::from_millis(100), "a failed upload", || {
        let log = replay.log_text();
        async move { Ok(log.contains("upload failed; retrying")) }
    })
    .await
    .with_context(|| replay.log_text())?;
    ensure!(
        replay.is_running(),
        "the replay exited: {}",
        replay.log_text()
    );
    storage.restore()?;
    let status = replay.wait(LIMIT).await?;
    ensure!(status.success(), "the replay: {}", replay.log_text());
    d.verify().await.with_context(|| replay.log_text())?;
    check_aggregates(&d).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn zookeeper_down_longer_than_the_session_during_a_replay_is_waited_out() -> Result<()> {
    let mut private = PrivateZk::launch().await?;
    let stack = Stack::from_env().with_zk(&private);
    let (d, _, bug_from) = ingested_with_a_bug(&stack, "replay-zk", "").await?;
    let (from, to) = (bug_from.to_string(), (bug_from + HOUR_MS).to_string());
    let args = replay_args(&d, &from, &to, "fix");
    // Frozen after its first upload; ZooKeeper goes for longer than the 4 s session, so the
    // run loses its merge leases: it deletes what it uploaded and runs again once ZooKeeper
    // is back.
    let logs = d.dir.path().join("logs");
    let stop = [("SLUICE_FAILPOINT", "replay_after_upload:1:stop")];
    let mut replay = Worker::spawn_args(&args, "replay", &stop, &logs)?;
    replay.wait_stopped(LIMIT).await?;
    let stopped = std::time::Instant::now();
    private.stop().await?;
    replay.signal("CONT")?;
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(stopped.elapsed())).await;
    ensure!(
        replay.is_running(),
        "the replay exited during the outage: {}",
        replay.log_text()
    );
    private.start().await?;
    let status = replay.wait(LIMIT).await?;
    let log = replay.log_text();
    ensure!(status.success(), "the replay: {log}");
    ensure!(
        log.contains("the replay stopped on an outage"),
        "the replay did not lose its session: {log}"
    );
    merge_leases_gone(&private.connect(), &d).await?;
    d.sluice(&["gc", "--min-age-ms", "0"]).await?;
    d.verify().await.context(log)?;
    check_aggregates(&d).await?;
    Ok(())
}
