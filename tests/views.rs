//! Materialized views end to end: a landing table with an error-only filter view, a
//! per-minute-per-country aggregation view (every kind of partial state) and a view over the
//! filter view's table (a chain), ingested from a real broker with a kill -9 mid-stream and a
//! restart. Each view's table must equal, row for row, the same SQL run over the landing table
//! with `sluice query`. A view failing on some rows puts exactly those in quarantine with its
//! name; invalid views are refused at start-up; a query over one day reads one day's parts.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::process::Output;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use sluice_coord::PartKind;
use sluice_tests::{committed, describe, prepare, run_sluice, Prepared, StorageKind};

const PARTITIONS: i32 = 4;
const EVENTS: u64 = 3_000;

/// The views and their tables, appended to the test deployment's config.
const VIEWS: &str = r#"
[[table]]
name = "errors"
sorting_key = ["country", "seq"]
partition_key = { column = "ts", granularity = "day" }
[[table.column]]
name = "seq"
type = "uint64"
nullable = false
[[table.column]]
name = "ts"
type = "timestamp_ms"
nullable = false
[[table.column]]
name = "country"
type = "string"
[[table.column]]
name = "path"
type = "string"
[[table.column]]
name = "duration_ms"
type = "float64"

[[view]]
name = "errors_only"
source = "events"
target = "errors"
sql = "SELECT seq, ts, country, path, duration_ms FROM events WHERE NOT ok"

[[table]]
name = "events_per_minute"
sorting_key = ["minute", "country"]
partition_key = { column = "minute", granularity = "day" }
[[table.column]]
name = "minute"
type = "timestamp_ms"
[[table.column]]
name = "country"
type = "string"
[[table.column]]
name = "events"
type = "int64"
aggregate = "count"
[[table.column]]
name = "duration_ms"
type = "float64"
aggregate = "sum"
[[table.column]]
name = "min_duration_ms"
type = "float64"
aggregate = "min"
[[table.column]]
name = "max_duration_ms"
type = "float64"
aggregate = "max"
[[table.column]]
name = "users"
type = "uint64"
aggregate = "approx_distinct"

[[view]]
name = "per_minute"
source = "events"
target = "events_per_minute"
sql = """
SELECT date_trunc('minute', ts) AS minute, country, count(*) AS events,
       sum(duration_ms) AS duration_ms, min(duration_ms) AS min_duration_ms,
       max(duration_ms) AS max_duration_ms, approx_distinct(user_id) AS users
FROM events
GROUP BY date_trunc('minute', ts), country
"""

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

/// `sluice query --format json`: the rows as JSON lines, and stderr (what was read).
async fn query(d: &Prepared, sql: &str) -> Result<(Vec<serde_json::Value>, String)> {
    let out = run_sluice(
        &[
            "query",
            "--config",
            d.config_arg(),
            "--format",
            "json",
            "--verbose",
            sql,
        ],
        &[],
        Duration::from_secs(120),
    )
    .await?;
    ensure!(
        out.status.success(),
        "query `{sql}` failed: {}",
        describe(&out)
    );
    let rows = String::from_utf8(out.stdout.clone())?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("query output of `{sql}`"))?;
    Ok((rows, String::from_utf8_lossy(&out.stderr).into_owned()))
}

/// The rows of two queries, which must be equal row for row (and not empty).
async fn same_rows(d: &Prepared, view_sql: &str, direct_sql: &str) -> Result<usize> {
    let (a, _) = query(d, view_sql).await?;
    let (b, _) = query(d, direct_sql).await?;
    ensure!(!a.is_empty(), "`{view_sql}` returned nothing");
    ensure!(
        a == b,
        "`{view_sql}` ({} rows) differs from `{direct_sql}` ({} rows); first difference: {:?}",
        a.len(),
        b.len(),
        a.iter().zip(&b).find(|(x, y)| x != y)
    );
    Ok(a.len())
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
async fn views_equal_the_same_sql_over_the_landing_table_after_a_crash() -> Result<()> {
    let d = prepare("views", PARTITIONS, EVENTS, 150, |dir| {
        StorageKind::File(dir.join("data"))
    })
    .await?;
    d.edit_config(|text| format!("{text}\n{VIEWS}"))?;

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
    let landing = offset_ranges(&d, "events").await?;
    for table in ["errors", "events_per_minute", "errors_per_country"] {
        let view = offset_ranges(&d, table).await?;
        ensure!(
            view.is_subset(&landing) && !view.is_empty(),
            "parts of {table} cover offset ranges no landing commit has: {:?}",
            view.difference(&landing).collect::<Vec<_>>()
        );
    }

    same_rows(
        &d,
        "SELECT seq, ts, country, path, duration_ms FROM errors ORDER BY seq",
        "SELECT seq, ts, country, path, duration_ms FROM events WHERE NOT ok ORDER BY seq",
    )
    .await?;
    let groups = same_rows(
        &d,
        "SELECT * FROM events_per_minute ORDER BY minute, country",
        "SELECT date_trunc('minute', ts) AS minute, country, count(*) AS events, \
         sum(duration_ms) AS duration_ms, min(duration_ms) AS min_duration_ms, \
         max(duration_ms) AS max_duration_ms, approx_distinct(user_id) AS users \
         FROM events GROUP BY date_trunc('minute', ts), country ORDER BY minute, country",
    )
    .await?;
    same_rows(
        &d,
        "SELECT country, errors FROM errors_per_country ORDER BY country",
        "SELECT country, count(*) AS errors FROM events WHERE NOT ok GROUP BY country ORDER BY country",
    )
    .await?;
    // The totals came from merging partial states of several flushes, not from one batch:
    // each of the few countries has errors in many flushes.
    let (states, _) = query(&d, "SELECT count(*) AS n FROM states.errors_per_country").await?;
    let (totals, _) = query(&d, "SELECT count(*) AS n FROM errors_per_country").await?;
    let (state_rows, countries) = (
        states[0]["n"].as_u64().context("state rows")?,
        totals[0]["n"].as_u64().context("countries")?,
    );
    ensure!(
        state_rows > 2 * countries,
        "{state_rows} partial-state rows for {countries} countries: hardly anything was merged"
    );
    ensure!(groups > 1, "one group per minute and country: {groups}");

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
    let (rows, stderr) = query(
        &d,
        &format!("SELECT count(*) AS n FROM events WHERE ts >= '{day}' AND ts < '{next}'"),
    )
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
        .filter(|e| e.expect == sluice_tests::Expect::Row)
        .filter(|e| sluice_tests::event_day(e.seq) == day)
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
        .filter(|e| e.expect == sluice_tests::Expect::Row)
        .map(|e| e.seq)
        .collect();
    let (written, _) = query(&d, "SELECT seq, ratio FROM ratios ORDER BY seq").await?;
    let written: Vec<u64> = written.iter().filter_map(|r| r["seq"].as_u64()).collect();
    let expected: Vec<u64> = rows.iter().copied().filter(|s| s % 7 != 0).collect();
    ensure!(
        written == expected,
        "the view wrote {} rows, expected the {} with seq % 7 != 0",
        written.len(),
        expected.len()
    );

    let (quarantined, _) = query(
        &d,
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
