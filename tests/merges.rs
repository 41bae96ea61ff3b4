//! Merges end to end: workers as separate processes against real ZooKeeper, broker and storage,
//! with tiny flushes so that scopes fill fast. Part counts stay bounded while events flow and an
//! aggregating view's states merge to exactly what the events say; kill -9 at each step of a
//! merge, a frozen merger whose swap is refused, queries while merges run, sealing of quiet
//! scopes (and late events after it), and ingestion paused at a scope's hard part limit. Every
//! test ends with the exactly-once check on every column.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use sluice_tests::aggregates::check_aggregates;
use sluice_tests::fleet::{
    deployment, fleet_state, spawn, spawn_frozen, tail, wait_balanced, wait_caught_up, Worker,
};
use sluice_tests::merges::{check_final_bound, merged_lines, Leftovers, ScopeWatch};
use sluice_tests::per_hour::{per_hour_view, PER_HOUR_TABLE};
use sluice_tests::{committed, wait_until, Prepared};

const SETTLE: Duration = Duration::from_secs(60);
const FAN_IN: u64 = 4;
const MAX_REWRITES: u32 = 3;
const HARD_PARTS: usize = 400;

/// The merge settings of most tests: small groups, frequent checks, a short grace period, and
/// soft and hard limits far above what merges that keep up leave in a scope (urgent merges,
/// which would change the levels' shape, start past half the soft limit).
fn merging(extra: &str) -> String {
    format!(
        "fan_in = {FAN_IN}\nmax_rewrites = {MAX_REWRITES}\ncheck_interval_ms = 50\ngrace_ms = 2000\nsoft_parts_per_scope = {}\nhard_parts_per_scope = {HARD_PARTS}\n{extra}",
        HARD_PARTS / 2
    )
}

/// A deployment with `file://` storage, `more` appended to its config (tables, views), flushes
/// at `max_rows` or 100 ms, and [`merging`]`(merge_extra)`.
async fn merging_deployment(
    name: &str,
    partitions: i32,
    events: u64,
    max_rows: usize,
    more: &str,
    merge_extra: &str,
) -> Result<Prepared> {
    let d = deployment(name, partitions, events, max_rows).await?;
    d.edit_config(|text| format!("{text}{more}"))?;
    d.set_flush_age(100)?;
    d.set_merge(&merging(merge_extra))?;
    Ok(d)
}

fn logs(d: &Prepared) -> std::path::PathBuf {
    d.dir.path().join("logs")
}

/// Waits until `worker`'s log says `what`.
async fn wait_for_log(worker: &Worker, what: &str) -> Result<()> {
    wait_until(
        SETTLE,
        Duration::from_millis(50),
        &format!("{} to log `{what}`", worker.id),
        || {
            let said = worker.log_text().contains(what);
            async move { Ok(said) }
        },
    )
    .await
    .with_context(|| tail(&worker.log_text(), 4000))
}

#[tokio::test(flavor = "multi_thread")]
async fn merges_bound_scopes_while_events_flow_and_aggregates_stay_exact() -> Result<()> {
    const PARTITIONS: i32 = 4;
    const ROUNDS: usize = 8;
    let started = Instant::now();
    let mut d =
        merging_deployment("merges-flow", PARTITIONS, 250, 25, &per_hour_view(), "").await?;
    let tables = ["events", PER_HOUR_TABLE];
    let watch = ScopeWatch::start(&d, &tables, Duration::from_millis(100)).await?;
    let w1 = spawn(&d, "w1")?;
    let mut w2 = None;
    // Events arrive in rounds; a second worker joins after two, and the scopes are shared
    // between the two from then on.
    for round in 0..ROUNDS {
        wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;
        if round == 2 {
            w2 = Some(spawn(&d, "w2")?);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        d.produce_more(250).await?;
    }
    wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;
    let w2 = w2.context("w2")?;
    d.wait_merges_settled(false, SETTLE).await?;
    let watched = watch.stop().await?;
    let (log1, log2) = (w1.terminate(SETTLE).await?, w2.terminate(SETTLE).await?);
    println!(
        "merges logged: {} by w1, {} by w2",
        merged_lines(&log1).len(),
        merged_lines(&log2).len()
    );
    let merges = merged_lines(&format!("{log1}{log2}"));

    // While events flowed: never at the hard limit.
    println!(
        "most live parts in one scope while events flowed ({} samples): {:?}; hard limit {HARD_PARTS}",
        watched.samples, watched.most
    );
    for t in tables {
        let most = watched.most.get(t).copied().unwrap_or(0);
        ensure!(
            most > 0 && most < HARD_PARTS,
            "{t}: {most} live parts in one scope (hard limit {HARD_PARTS})"
        );
    }
    // At the end: within the level rule's bound ([`sluice_tests::merges::check_final_bound`]). The rule merges groups
    // of exactly `fan_in` parts of one level, and it alone ran: merges kept up, so no scope came
    // near the urgency threshold (half the soft limit), past which merges mix levels.
    let other: Vec<_> = merges
        .iter()
        .filter(|m| m.inputs != FAN_IN || m.reason != "Level")
        .collect();
    ensure!(
        other.is_empty(),
        "{} merges not by the level rule or of other than {FAN_IN} parts, e.g. {:?}",
        other.len(),
        other.first()
    );
    let scopes = d.scopes().await?;
    for t in tables {
        let (live, bound) = check_final_bound(t, &scopes, &merges, FAN_IN, MAX_REWRITES)?;
        println!(
            "{t}: largest scope {live} live parts (bound {bound}); levels {:?}",
            scopes.levels(t)
        );
    }
    for t in tables {
        let c = committed(&d.config, t).await?;
        let deepest = c.parts.iter().map(|p| p.level).max().unwrap_or(0);
        println!(
            "{t}: {} merges logged, {} parts at the end, deepest level {deepest}",
            merges.iter().filter(|m| m.table == t).count(),
            c.parts.len()
        );
        ensure!(deepest >= 2, "{t}: no part was merged twice");
    }

    // Exactly once, every part sorted and in one partition value; the aggregates exact.
    d.verify().await?;
    let (groups, rows, parts) = check_aggregates(&d).await?;
    println!(
        "{PER_HOUR_TABLE}: {groups} groups equal the produced events' totals, merged from {rows} state rows in {parts} parts; {} events; {:.1} s",
        d.events.len(),
        started.elapsed().as_secs_f64()
    );
    ensure!(
        rows > groups,
        "{rows} state rows for {groups} groups: nothing to merge"
    );
    Ok(())
}

/// What a crash at a step of a merge leaves: what it is, how to see it.
type Left = (&'static str, fn(&Leftovers) -> bool);

/// kill -9 at `point` (`SLUICE_FAILPOINT`), once merges have started, which must leave `left`
/// in storage; then a restart without it runs until merges have settled and every replaced
/// object's grace period has passed. The restart must log `collects` (it cleaned up what the
/// crash left), and the checker, run with no retired set left, finds nothing in storage but
/// live parts and manifests: every orphan was collected.
async fn kill_at_merge_step(
    point: &str,
    merge_extra: &str,
    (left, seen): Left,
    collects: &str,
) -> Result<()> {
    let started = Instant::now();
    let name = format!(
        "merges-kill-{}",
        point
            .split(':')
            .next()
            .unwrap_or_default()
            .replace('_', "-")
    );
    let d = merging_deployment(&name, 2, 800, 10, "", merge_extra).await?;
    let mut crashing = Worker::spawn(&d.config, "w1", &[("SLUICE_FAILPOINT", point)], &logs(&d))?;
    let status = crashing.wait(SETTLE).await?;
    let log = crashing.log_text();
    ensure!(
        status.signal() == Some(9) && log.contains("failpoint reached"),
        "expected the worker to die of SIGKILL at {point}: {status:?}\n{}",
        tail(&log, 4000)
    );
    let c = committed(&d.config, "events").await?;
    let leftovers = d.leftovers().await?;
    println!(
        "{point}: killed after {} merges, with {} of {} events' offsets committed; left {} unregistered objects {:?}, {} retired sets, {} of their objects already deleted",
        merged_lines(&log).len(),
        c.offsets.values().flatten().sum::<i64>(),
        d.events.len(),
        leftovers.unregistered.len(),
        leftovers.unregistered,
        leftovers.retired_sets,
        leftovers.retired_gone
    );
    ensure!(
        seen(&leftovers),
        "the crash at {point} left no {left}: {leftovers:?}"
    );

    let restarted = spawn(&d, "w2")?;
    wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;
    let scopes = d.wait_merges_settled(true, SETTLE).await?;
    // Settled merges do not mean every scope had its first turn: one with a single live part
    // plans nothing, and its first turn (which sweeps) may still be ahead, for instance while
    // the killed worker's session still holds its share of the scopes.
    wait_until(
        SETTLE,
        Duration::from_millis(250),
        "the orphans to be collected",
        || async { Ok(d.leftovers().await?.unregistered.is_empty()) },
    )
    .await?;
    let log = restarted.terminate(SETTLE).await?;
    let count = |what: &str| log.matches(what).count();
    println!(
        "{point}: the restart merged {} times, deleted {} unregistered merge objects and {} replaced sets after their grace period, sealed {} scopes; live parts {:?}; {:.1} s",
        merged_lines(&log).len(),
        count(ORPHAN_DELETED),
        count(RETIRED_DELETED),
        count("sealed a quiet scope"),
        scopes.live("events"),
        started.elapsed().as_secs_f64()
    );
    ensure!(
        log.contains(collects),
        "the restart did not log `{collects}`:\n{}",
        tail(&log, 4000)
    );
    d.verify().await
}

/// What a restart logs for each unregistered merged part or manifest it deletes.
const ORPHAN_DELETED: &str = "deleted a merge's object that was never registered";
/// What a worker logs for each retired set it deletes after the grace period.
const RETIRED_DELETED: &str = "deleted replaced objects after the grace period";

/// A merged part's file name: `m<level>-...` (a flushed part's starts with its topic).
fn is_merged(path: &str) -> bool {
    let file = path.rsplit('/').next().unwrap_or_default();
    file.strip_prefix('m')
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
}

const MERGED_ORPHAN: Left = ("unregistered merged part", |l| {
    l.unregistered.iter().any(|p| is_merged(p))
});
const MANIFEST_ORPHAN: Left = ("unregistered manifest", |l| {
    l.unregistered.iter().any(|p| p.contains("/manifests/"))
});
const RETIRED_SET: Left = ("retired set", |l| l.retired_sets > 0);
const HALF_DELETED_SET: Left = ("retired set deleted half-way", |l| l.retired_gone > 0);

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_after_a_merged_part_is_uploaded() -> Result<()> {
    kill_at_merge_step("merge_after_upload:3", "", MERGED_ORPHAN, ORPHAN_DELETED).await
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_right_after_a_swap() -> Result<()> {
    kill_at_merge_step("merge_after_swap:3", "", RETIRED_SET, RETIRED_DELETED).await
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_deleting_replaced_objects() -> Result<()> {
    let point = "retire_mid_delete:3";
    kill_at_merge_step(point, "", HALF_DELETED_SET, RETIRED_DELETED).await
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_after_a_manifest_is_written() -> Result<()> {
    let (point, quiet) = ("seal_after_manifest:1", "quiet_after_ms = 1000");
    kill_at_merge_step(point, quiet, MANIFEST_ORPHAN, ORPHAN_DELETED).await
}

/// The scope of the events table a frozen worker holds the merge lease of: (partition value,
/// merge epoch).
async fn merging_scope_of(d: &Prepared, worker: &str) -> Result<(String, u64)> {
    let coord = d.coordinator().await?;
    let mut found = None;
    for s in coord.list_scopes("events").await? {
        let listing = coord.read_scope("events", &s.partition_value).await?;
        if listing.merge_holder.as_deref() == Some(worker) {
            found = Some((s.partition_value, listing.state.merge_epoch));
        }
    }
    coord.close().await?;
    found.with_context(|| format!("{worker} holds no scope's merge lease"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_merger_cannot_swap_and_rejoins() -> Result<()> {
    const PARTITIONS: i32 = 2;
    let started = Instant::now();
    let mut d = merging_deployment("merges-zombie", PARTITIONS, 800, 10, "", "").await?;
    // The zombie stops itself with its first merged part uploaded, before the swap.
    let zombie = spawn_frozen(&d, "zombie", "merge_after_upload:1:stop").await?;
    let (value, epoch) = merging_scope_of(&d, "zombie").await?;
    println!("the zombie froze merging events {value:?} under merge epoch {epoch}");

    // Its session expires (the scope's merge lease with it); another worker takes everything,
    // the zombie's scope included, and merges it under a newer lease.
    let w1 = spawn(&d, "w1")?;
    wait_balanced(&d.config, &d.topic, PARTITIONS, &["w1"], SETTLE).await?;
    wait_until(
        SETTLE,
        Duration::from_millis(100),
        "w1 to merge the zombie's scope",
        || {
            let merged = merged_lines(&w1.log_text())
                .iter()
                .any(|m| m.table == "events" && m.value == value);
            async move { Ok(merged) }
        },
    )
    .await?;
    wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;

    // Thawed, it carries on to its swap, which must be refused; then it rejoins.
    zombie.signal("CONT")?;
    wait_for_log(&zombie, "rejoining the fleet with a new session").await?;
    let log = zombie.log_text();
    for line in log.lines().filter(|l| {
        l.contains("swap was refused")
            || l.contains("merge turn failed")
            || l.contains("cannot release the merge lease")
            || l.contains("session ended")
            || l.contains("abandoned")
            || l.contains("rejoining")
    }) {
        println!("zombie: {line}");
    }
    // Either the thawed task reaches its swap (refused; then its lease release fails), or the
    // session loop sees the expiry first and abandons the merge. The registry is checked below.
    ensure!(
        [
            "the swap was refused",
            "a merge turn failed",
            "cannot release the merge lease",
            "merges in progress abandoned with the session"
        ]
        .iter()
        .any(|l| log.contains(l)),
        "the zombie's log says nothing of its refused swap:\n{}",
        tail(&log, 4000)
    );
    wait_balanced(&d.config, &d.topic, PARTITIONS, &["w1", "zombie"], SETTLE).await?;
    d.produce_more(800).await?;
    wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;
    d.wait_merges_settled(true, SETTLE).await?;
    ensure!(!zombie.is_stopped(), "the zombie stopped again");
    w1.terminate(SETTLE).await?;
    zombie.terminate(SETTLE).await?;

    // Nothing is registered under the zombie's merge lease.
    let c = committed(&d.config, "events").await?;
    let stale: Vec<&str> = c
        .parts
        .iter()
        .filter(|p| p.partition_value == value && p.level > 0 && p.lease_epoch == epoch)
        .map(|p| p.path.as_str())
        .collect();
    ensure!(
        stale.is_empty(),
        "parts registered under the zombie's merge lease: {stale:?}"
    );
    println!("zombie: {:.1} s", started.elapsed().as_secs_f64());
    d.verify().await
}

/// `SELECT count(*) AS n, count(DISTINCT seq) AS d FROM events` with `sluice query`.
async fn count_rows(d: &Prepared) -> Result<(u64, u64)> {
    let (rows, _) = d
        .query("SELECT count(*) AS n, count(DISTINCT seq) AS d FROM events")
        .await?;
    let row = rows.first().context("no row")?;
    Ok((
        row["n"].as_u64().context("n")?,
        row["d"].as_u64().context("d")?,
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn queries_while_merges_run_see_every_row_once() -> Result<()> {
    let started = Instant::now();
    let mut d = merging_deployment("merges-query", 4, 1_000, 20, "", "").await?;
    let w1 = spawn(&d, "w1")?;
    wait_for_log(&w1, " merged ").await?;
    let merged_before = merged_lines(&w1.log_text()).len();
    let mut answers: Vec<u64> = Vec::new();
    for _ in 0..12 {
        d.produce_more(250).await?;
        let (n, distinct) = count_rows(&d).await?;
        ensure!(
            n == distinct,
            "{n} rows but {distinct} distinct seqs: a row is there twice"
        );
        if let Some(last) = answers.last() {
            ensure!(
                n >= *last,
                "the row count went down from {last} to {n}: {answers:?}"
            );
        }
        answers.push(n);
    }
    let merged_during = merged_lines(&w1.log_text()).len() - merged_before;
    println!("row counts while merging: {answers:?}; {merged_during} merges between the first query and the last");
    ensure!(merged_during > 0, "no merge ran while the queries did");

    wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;
    let rows = d.landing_rows().len() as u64;
    let (n, distinct) = count_rows(&d).await?;
    ensure!(
        n == rows && distinct == rows,
        "{n} rows, {distinct} distinct, {rows} produced"
    );
    w1.terminate(SETTLE).await?;
    println!("queries: {:.1} s", started.elapsed().as_secs_f64());
    d.verify().await
}

/// Every scope of the events table sealed, with no live records.
async fn all_sealed(d: &Prepared) -> Result<bool> {
    let coord = d.coordinator().await?;
    let scopes = coord.list_scopes("events").await;
    coord.close().await?;
    let scopes = scopes?;
    Ok(!scopes.is_empty()
        && scopes
            .iter()
            .all(|s| s.live_parts == 0 && s.state.sealed.is_some()))
}

async fn wait_all_sealed(d: &Prepared) -> Result<()> {
    wait_until(
        SETTLE,
        Duration::from_millis(200),
        "every scope sealed",
        || all_sealed(d),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn quiet_scopes_are_sealed_and_take_late_events() -> Result<()> {
    let started = Instant::now();
    let mut d = merging_deployment("merges-seal", 2, 600, 20, "", "quiet_after_ms = 1000").await?;
    let w1 = spawn(&d, "w1")?;
    wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;
    let before = d.record_znodes("events").await?;
    wait_all_sealed(&d).await?;
    let after = d.record_znodes("events").await?;
    println!("part record znodes per scope: {before:?} when caught up, {after:?} once sealed");
    ensure!(
        before.values().sum::<usize>() > 0 && after.keys().eq(before.keys()),
        "scopes {before:?} then {after:?}"
    );
    ensure!(
        after.values().all(|n| *n == 0),
        "records left in sealed scopes: {after:?}"
    );
    let rows = d.landing_rows().len() as u64;
    ensure!(
        count_rows(&d).await? == (rows, rows),
        "a query over sealed scopes does not count {rows} rows"
    );
    d.verify().await?;
    let first = d.scopes().await?;

    // Late events for the sealed days commit beside the manifests and are sealed in turn.
    let watch = ScopeWatch::start(&d, &["events"], Duration::from_millis(50)).await?;
    d.produce_more(200).await?;
    wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;
    wait_all_sealed(&d).await?;
    let watched = watch.stop().await?;
    let beside = watched
        .most_beside_manifest
        .get("events")
        .copied()
        .unwrap_or(0);
    println!("late events: at most {beside} live records beside a scope's manifest");
    ensure!(beside > 0, "no late record was seen beside a manifest");
    let second = d.scopes().await?;
    for s in second.of("events") {
        let value = &s["partition_value"];
        let old = first
            .of("events")
            .into_iter()
            .find(|f| f["partition_value"] == *value)
            .with_context(|| format!("scope {value} was not sealed before"))?;
        let (a, b) = (&old["sealed"], &s["sealed"]);
        ensure!(
            a["path"] != b["path"] && b["rows"].as_u64() > a["rows"].as_u64(),
            "scope {value}: sealed {a} then {b}"
        );
    }
    let rows = d.landing_rows().len() as u64;
    ensure!(
        count_rows(&d).await? == (rows, rows),
        "a query after the late events does not count {rows} rows"
    );
    w1.terminate(SETTLE).await?;

    // A restart's takeover garbage collection skips the sealed scopes, and says so.
    let sealed = second.of("events").len();
    let w2 = spawn(&d, "w2")?;
    wait_for_log(&w2, "takeover garbage collection").await?;
    let log = w2.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("takeover garbage collection") && l.contains("table=events"))
        .context("no takeover garbage collection of the events table")?;
    println!("restart: {line}");
    ensure!(
        line.contains(&format!("sealed_scopes_skipped={sealed}")),
        "expected {sealed} sealed scopes skipped: {line}"
    );
    w2.terminate(SETTLE).await?;
    println!("sealing: {:.1} s", started.elapsed().as_secs_f64());
    d.verify().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scope_at_its_hard_limit_pauses_ingestion_until_merges_catch_up() -> Result<()> {
    const HARD: usize = 20;
    let limits =
        format!("check_interval_ms = 50\nsoft_parts_per_scope = 10\nhard_parts_per_scope = {HARD}");
    let started = Instant::now();
    let mut d = deployment("merges-pause", 2, 50, 5).await?;
    d.set_flush_age(50)?;
    d.set_merge(&format!("enabled = false\n{limits}"))?;
    let mut w1 = spawn(&d, "w1")?;
    // Events flow in small rounds until the worker pauses, then some more. (A backlog would be
    // consumed to its end first: the worker checks its scopes on its loop's tick, which does
    // not come while batches keep arriving.)
    let pausing = "a scope reached its hard part limit; pausing";
    for _ in 0..40 {
        if w1.log_text().contains(pausing) {
            break;
        }
        d.produce_more(20).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_log(&w1, pausing).await?;
    d.produce_more(200).await?;
    // What was buffered when it paused still commits; then nothing moves.
    let committed = || async {
        let offsets = fleet_state(&d.config, &d.topic).await?.offsets;
        Ok::<i64, anyhow::Error>(offsets.values().flatten().sum())
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let first = committed().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = committed().await?;
    let end: i64 = d.ends().values().sum();
    let most = d
        .scopes()
        .await?
        .live("events")
        .into_values()
        .max()
        .unwrap_or(0);
    let addr = sluice_tests::web::endpoint(&w1).await?;
    let (ready, body) = sluice_tests::web::get(addr, "/readyz")?;
    println!(
        "paused: {first} then {second} of {end} offsets committed 2 s apart, a scope at {most} parts (hard limit {HARD}); /readyz {ready} {}",
        body.trim()
    );
    ensure!(
        first == second && second < end,
        "committed {first} then {second} of {end}"
    );
    ensure!(most >= HARD as u64, "the largest scope holds {most} parts");
    ensure!(
        w1.is_running() && ready == 200,
        "the paused worker is not up: /readyz {ready} {body}"
    );
    w1.terminate(SETTLE).await?;

    // Merges enabled: they bring the scopes down and ingestion resumes by itself.
    d.set_merge(&format!("fan_in = 4\ngrace_ms = 2000\n{limits}"))?;
    let w2 = spawn(&d, "w2")?;
    let took = wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;
    let log = w2.terminate(SETTLE).await?;
    println!(
        "with merges: caught up in {:.1} s, {} merges, paused {} times, resumed {} times; {:.1} s",
        took.as_secs_f64(),
        merged_lines(&log).len(),
        log.matches("hard part limit; pausing").count(),
        log.matches("resuming its partitions").count(),
        started.elapsed().as_secs_f64()
    );
    ensure!(
        log.contains("resuming its partitions"),
        "{}",
        tail(&log, 4000)
    );
    d.verify().await
}
