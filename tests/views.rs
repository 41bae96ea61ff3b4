//! Materialized views end to end: a landing table with an error-only filter view, a
//! per-hour-per-country aggregation view (every kind of partial state) and a view over the
//! filter view's table (a chain), ingested from a real broker with a kill -9 mid-stream and a
//! restart. Each view's table, read with `sluice query`, must hold what the produced events say
//! it must, computed here from the test kit's fixture alone (not by the product's SQL). A view
//! failing on some rows puts exactly those in quarantine with its name; invalid views are refused
//! at start-up; a query over one day reads one day's parts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::process::Output;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use sluice_coord::PartKind;
use sluice_testkit::fixture::{event_day, Expect, Row};
use sluice_tests::per_hour::{per_hour_groups, per_hour_view, Group};
use sluice_tests::{committed, describe, prepare, run_sluice, Prepared, StorageKind};

const PARTITIONS: i32 = 4;
const EVENTS: u64 = 3_000;

/// The error-only view's table, up to its columns (those of the landing table it copies).
const ERRORS_TABLE: &str = r#"
[[table]]
name = "errors"
sorting_key = ["country", "seq"]
partition_key = { column = "ts", granularity = "day" }
"#;

/// The filter view, and the chain's table and view over the filter view's target, after the
/// error table's columns (the aggregation view, `per_hour_view`, follows them).
const VIEWS: &str = r#"
[[view]]
name = "errors_only"
source = "events"
target = "errors"
sql = "SELECT seq, ts, country, path, duration_ms FROM events WHERE NOT ok"

[[table]]
name = "errors_per_country"
sorting_key = ["country"]
[[table.column]]
name = "country"
type = "string"
[[table.column]]
name = "errors"
type = "int64"
aggregate = "count"

[[view]]
name = "error_countries"
source = "errors"
target = "errors_per_country"
sql = "SELECT country, count(*) AS errors FROM errors GROUP BY country"
"#;

/// The views and their tables, appended to the test deployment's config.
fn views() -> String {
    let copied = sluice_testkit::fixture::columns(&["seq", "ts", "country", "path", "duration_ms"]);
    format!("{ERRORS_TABLE}{copied}{VIEWS}{}", per_hour_view())
}

/// A `timestamp_ms` as `sluice query --format json` prints it: RFC 3339 in UTC, with
/// milliseconds only when there are any (`2026-11-20T00:00:00Z`, `2026-11-19T23:59:57.709Z`).
fn printed_ts(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("a time in range")
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// The view table's rows (`sql` over it) keyed by `key`, which must equal `expected`'s keys.
async fn keyed_rows<K: Ord + std::fmt::Debug, V>(
    d: &Prepared,
    sql: &str,
    expected: &BTreeMap<K, V>,
    key: impl Fn(&Value) -> Option<K>,
) -> Result<BTreeMap<K, Value>> {
    let (rows, _) = d.query(sql).await?;
    let mut actual = BTreeMap::new();
    for r in rows {
        let k = key(&r).with_context(|| format!("`{sql}` returned {r}"))?;
        ensure!(
            actual.insert(k, r).is_none(),
            "`{sql}` returned a key twice"
        );
    }
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !actual.contains_key(*k))
        .collect();
    let extra: Vec<_> = actual
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    ensure!(
        missing.is_empty() && extra.is_empty(),
        "`{sql}`: {} rows, {} expected; missing {missing:?}, not expected {extra:?}",
        actual.len(),
        expected.len()
    );
    Ok(actual)
}

/// `errors` (the filter view) holds exactly the landing rows with `ok == false`, every column as
/// the event says.
async fn check_errors(d: &Prepared, landing: &[Row]) -> Result<()> {
    let expected: BTreeMap<u64, Value> = landing
        .iter()
        .filter(|r| !r.ok)
        .map(|r| {
            let row = json!({
                "seq": r.seq,
                "ts": printed_ts(r.ts),
                "country": r.country,
                "path": r.path,
                "duration_ms": r.duration_ms,
            });
            (r.seq, row)
        })
        .collect();
    let sql = "SELECT seq, ts, country, path, duration_ms FROM errors";
    let actual = keyed_rows(d, sql, &expected, |r| r["seq"].as_u64()).await?;
    for (seq, want) in &expected {
        ensure!(
            actual[seq] == *want,
            "errors: row {} for seq {seq}, expected {want}",
            actual[seq]
        );
    }
    Ok(())
}

/// `events_per_hour` (the aggregation view) holds one row per (hour, country) of the landing
/// rows, with their count, sum, min and max of `duration_ms` and distinct `user_id`s; returns
/// the number of groups.
async fn check_per_hour(d: &Prepared, landing: &[Row]) -> Result<usize> {
    let groups: BTreeMap<(String, String), Group> = per_hour_groups(landing)
        .into_iter()
        .map(|((hour, country), g)| ((printed_ts(hour), country), g))
        .collect();
    let sql = "SELECT hour, country, events, duration_ms, min_duration_ms, max_duration_ms, \
               users FROM events_per_hour";
    let actual = keyed_rows(d, sql, &groups, |r| {
        Some((
            r["hour"].as_str()?.to_string(),
            r["country"].as_str()?.to_string(),
        ))
    })
    .await?;
    for (key, g) in &groups {
        let a = &actual[key];
        let sum = a["duration_ms"].as_f64().context("sum")?;
        ensure!(
            a["events"].as_i64() == Some(g.events)
                && a["min_duration_ms"].as_f64() == Some(g.min)
                && a["max_duration_ms"].as_f64() == Some(g.max)
                && (sum - g.sum).abs() <= 1e-9 * g.sum.abs(),
            "events_per_hour {key:?}: {a}, expected {} events, sum {}, min {}, max {}",
            g.events,
            g.sum,
            g.min,
            g.max
        );
        // `users` is a HyperLogLog estimate over 2^12 registers. Far below 2.5 * 4096 distinct
        // values the sketch counts linearly, m * ln(m / empty registers): for n users in n
        // registers that rounds to n while its bias, about n^2 / 2m, stays under a half (n up
        // to ~90), and two users sharing a register (a chance of about n^2 / 2m as well) take
        // 1 off. The groups here hold a handful of events, so the estimate is within 1 of the
        // exact count; 2 % (above the sketch's 1.6 % standard error) would cover a larger
        // group.
        let exact = g.users.len() as f64;
        let users = a["users"].as_u64().context("users")? as f64;
        ensure!(
            (users - exact).abs() <= (0.02 * exact).max(1.0),
            "events_per_hour {key:?}: {users} users estimated, {exact} distinct"
        );
    }
    Ok(groups.len())
}

/// `errors_per_country` (the chain, over `errors`) holds the count of `ok == false` landing
/// rows per country; returns the number of countries.
async fn check_errors_per_country(d: &Prepared, landing: &[Row]) -> Result<usize> {
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for r in landing.iter().filter(|r| !r.ok) {
        *expected.entry(r.country.to_string()).or_default() += 1;
    }
    let sql = "SELECT country, errors FROM errors_per_country";
    let actual = keyed_rows(d, sql, &expected, |r| {
        Some(r["country"].as_str()?.to_string())
    })
    .await?;
    for (country, n) in &expected {
        let a = &actual[country];
        ensure!(
            a["errors"].as_i64() == Some(*n),
            "errors_per_country: {a}, expected {n}"
        );
    }
    Ok(expected.len())
}

/// The (partition, first offset, last offset) of a table's committed data parts.
async fn offset_ranges(d: &Prepared, table: &str) -> Result<BTreeSet<(i32, i64, i64)>> {
    let c = committed(&d.config, table).await?;
    Ok(c.parts
        .iter()
        .filter(|p| p.kind == PartKind::Data)
        .map(|p| (p.partition, p.first_offset, p.last_offset))
        .collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn views_hold_what_the_produced_events_say_after_a_crash() -> Result<()> {
    let d = prepare("views", PARTITIONS, EVENTS, 150, |dir| {
        StorageKind::File(dir.join("data"))
    })
    .await?;
    d.edit_config(|text| format!("{text}\n{}", views()))?;

    // kill -9 mid-stream, with some flushes committed and more buffered, then a restart.
    let crashed = run_sluice(
        &["run", "--config", d.config_arg(), "--stop-at-end"],
        &[("SLUICE_FAILPOINT", "mid_batch:1500")],
        Duration::from_secs(180),
    )
    .await?;
    ensure!(
        crashed.status.signal() == Some(9),
        "expected the worker to die of SIGKILL: {}",
        describe(&crashed)
    );
    ensure!(
        !committed(&d.config, "events").await?.parts.is_empty(),
        "nothing was committed before the crash"
    );
    d.run_to_end().await?;
    d.verify().await?;

    // Every view's parts commit with the landing table's: the same source offset ranges.
    let commits = offset_ranges(&d, "events").await?;
    for table in ["errors", "events_per_hour", "errors_per_country"] {
        let view = offset_ranges(&d, table).await?;
        ensure!(
            view.is_subset(&commits) && !view.is_empty(),
            "parts of {table} cover offset ranges no landing commit has: {:?}",
            view.difference(&commits).collect::<Vec<_>>()
        );
    }

    // Each view's table holds what the produced events say, computed from the fixture.
    let landing = d.landing_rows();
    check_errors(&d, &landing).await?;
    let groups = check_per_hour(&d, &landing).await?;
    let countries = check_errors_per_country(&d, &landing).await?;
    // The totals came from merging partial states of several flushes, not from one batch:
    // each of the few countries has errors in many flushes.
    let (states, _) = d
        .query("SELECT count(*) AS n FROM states.errors_per_country")
        .await?;
    let state_rows = states[0]["n"].as_u64().context("state rows")?;
    ensure!(
        state_rows > 2 * countries as u64,
        "{state_rows} partial-state rows for {countries} countries: hardly anything was merged"
    );
    ensure!(groups > 1, "one group per hour and country: {groups}");
    // Each group combines several events, from flushes of several partitions: the merge of
    // partial states is what is checked, not one event copied through.
    ensure!(
        landing.len() > 3 * groups,
        "{} landing rows in {groups} groups: too few events per group to test merging",
        landing.len()
    );

    // Pruning by partition key: a query over one day reads that day's parts only.
    let c = committed(&d.config, "events").await?;
    let data: Vec<_> = c
        .parts
        .iter()
        .filter(|p| p.kind == PartKind::Data)
        .collect();
    let days: BTreeSet<&str> = data.iter().map(|p| p.partition_value.as_str()).collect();
    ensure!(days.len() >= 2, "the events span {days:?}");
    let day = *days.iter().nth(1).context("a second day")?;
    let of_day: BTreeSet<&str> = data
        .iter()
        .filter(|p| p.partition_value == day)
        .map(|p| p.path.as_str())
        .collect();
    let next = (chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d")? + chrono::Duration::days(1))
        .format("%Y-%m-%d");
    let (rows, stderr) = d
        .query(&format!(
            "SELECT count(*) AS n FROM events WHERE ts >= '{day}' AND ts < '{next}'"
        ))
        .await?;
    let read: BTreeSet<&str> = stderr
        .lines()
        .filter_map(|l| l.trim().strip_prefix("read "))
        .collect();
    ensure!(
        read == of_day,
        "a query over {day} read {read:?}, the parts of that day are {of_day:?}"
    );
    let expected = d
        .events
        .iter()
        .filter(|e| e.expect == Expect::Row)
        .filter(|e| event_day(e.seq) == day)
        .count();
    ensure!(
        rows[0]["n"].as_u64() == Some(expected as u64),
        "{day} has {expected} rows, the query counted {}",
        rows[0]["n"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_a_view_fails_on_are_quarantined_with_its_name() -> Result<()> {
    let d = prepare("view-fail", PARTITIONS, 1_200, 100, |dir| {
        StorageKind::File(dir.join("data"))
    })
    .await?;
    d.edit_config(|text| {
        format!(
            "{text}\n{}",
            r#"
[[table]]
name = "ratios"
sorting_key = ["seq"]
[[table.column]]
name = "seq"
type = "uint64"
nullable = false
[[table.column]]
name = "ratio"
type = "int64"

[[view]]
name = "ratio"
source = "events"
target = "ratios"
sql = "SELECT seq, 1000 / (CAST(seq AS BIGINT) % 7) AS ratio FROM events"
"#
        )
    })?;
    d.run_to_end().await?;
    d.verify().await?;

    let rows: Vec<u64> = d
        .events
        .iter()
        .filter(|e| e.expect == Expect::Row)
        .map(|e| e.seq)
        .collect();
    let (written, _) = d
        .query("SELECT seq, ratio FROM ratios ORDER BY seq")
        .await?;
    let written: Vec<u64> = written.iter().filter_map(|r| r["seq"].as_u64()).collect();
    let expected: Vec<u64> = rows.iter().copied().filter(|s| s % 7 != 0).collect();
    ensure!(
        written == expected,
        "the view wrote {} rows, expected the {} with seq % 7 != 0",
        written.len(),
        expected.len()
    );

    let (quarantined, _) = d.query(
        "SELECT \"partition\", \"offset\", reason, view_name, error FROM quarantine.ratios ORDER BY \"partition\", \"offset\"",
    )
    .await?;
    let by_position: HashMap<(i32, i64), u64> = d.located.clone();
    let mut failed: Vec<u64> = Vec::new();
    for q in &quarantined {
        ensure!(
            q["reason"] == "view_failed" && q["view_name"] == "ratio",
            "quarantine row {q}"
        );
        ensure!(
            q["error"].as_str().is_some_and(
                |e| e.contains("view `ratio`") && e.to_lowercase().contains("divide by zero")
            ),
            "quarantine row {q}"
        );
        let at = (
            q["partition"].as_i64().context("partition")? as i32,
            q["offset"].as_i64().context("offset")?,
        );
        failed.push(
            *by_position
                .get(&at)
                .with_context(|| format!("no event at {at:?}"))?,
        );
    }
    failed.sort_unstable();
    let expected_failed: Vec<u64> = rows.iter().copied().filter(|s| s % 7 == 0).collect();
    ensure!(
        failed == expected_failed,
        "quarantined {} events, expected the {} with seq % 7 == 0",
        failed.len(),
        expected_failed.len()
    );
    ensure!(
        written.len() + failed.len() == rows.len(),
        "{} written + {} quarantined != {} landing rows",
        written.len(),
        failed.len(),
        rows.len()
    );
    Ok(())
}

/// A start-up refused for a bad view: a non-zero exit, the view named, the problem said.
fn refused(out: &Output, wanted: &[&str]) -> Result<()> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "expected a refusal: {}",
        describe(out)
    );
    for w in wanted {
        ensure!(stderr.contains(w), "expected `{w}` in: {stderr}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_views_are_refused_at_start_up() -> Result<()> {
    let d = prepare("view-bad", 1, 10, 100, |dir| {
        StorageKind::File(dir.join("data"))
    })
    .await?;
    let base = std::fs::read_to_string(&d.config)?;
    let table = "\n[[table]]\nname = \"t\"\n[[table.column]]\nname = \"seq\"\ntype = \"uint64\"\n";
    let cases: [(&str, &[&str]); 4] = [
        ("SELEC seq FROM events", &["view `v`", "does not plan"]),
        ("SELECT nope AS seq FROM events", &["view `v`", "nope"]),
        (
            "SELECT seq FROM events ORDER BY seq",
            &["view `v`", "ORDER BY"],
        ),
        (
            "SELECT CAST(seq AS INT) AS seq FROM events",
            &["view `v`", "column `seq`", "fix"],
        ),
    ];
    for (sql, wanted) in cases {
        std::fs::write(
            &d.config,
            format!("{base}{table}\n[[view]]\nname = \"v\"\nsource = \"events\"\ntarget = \"t\"\nsql = \"{sql}\"\n"),
        )?;
        for command in ["run", "check"] {
            let out = run_sluice(
                &[command, "--config", d.config_arg()],
                &[],
                Duration::from_secs(60),
            )
            .await?;
            refused(&out, wanted).with_context(|| format!("sluice {command} with `{sql}`"))?;
        }
    }
    // Nothing was ingested by the refused runs.
    ensure!(
        committed(&d.config, "events").await?.parts.is_empty(),
        "a refused start-up committed parts"
    );
    Ok(())
}
