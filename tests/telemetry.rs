//! Lag monitoring against the real stack: `sluice lag`, a worker's `/metrics`, `/healthz`,
//! `/readyz` and dashboard, judged by `promtool` and headless Chromium, and the Prometheus and
//! Grafana files under `config/`.
//!
//! The broker is Tansu on sqlite, whose watermarks are exact, so lag figures are asserted
//! exactly. Backlogs are produced with Kafka timestamps an hour old, so lag in seconds has a
//! known floor.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use sluice_tests::fleet::{spawn, Worker};
use sluice_tests::web::{chromium, endpoint, get, promtool, series};
use sluice_tests::{run_sluice, workspace_root, Expect, Prepared};

const HOUR_MS: i64 = 3_600_000;
/// Slack on lag in seconds above the backlog's age: the time the test itself takes.
const AGE_SLACK_S: f64 = 300.0;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Four partitions, nothing produced yet.
async fn deployment(name: &str) -> Result<Prepared> {
    sluice_tests::fleet::deployment(name, 4, 0, 10_000).await
}

/// `sluice lag --json`, parsed.
async fn lag_json(d: &Prepared) -> Result<Value> {
    let out = run_sluice(
        &["lag", "--config", d.config_arg(), "--json"],
        &[],
        Duration::from_secs(60),
    )
    .await?;
    ensure!(
        out.status.success(),
        "sluice lag failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Polls `f` until it yields a value, at most `limit`.
async fn poll<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let started = std::time::Instant::now();
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        ensure!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn units(report: &Value) -> Result<BTreeMap<i64, Value>> {
    report["units"]
        .as_array()
        .context("units")?
        .iter()
        .map(|u| Ok((u["partition"].as_i64().context("partition")?, u.clone())))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn lag_reports_a_known_backlog_with_no_worker_then_zero_once_caught_up() -> Result<()> {
    let mut d = deployment("lag-cmd").await?;
    let produced_at = now_ms() - HOUR_MS;
    d.produce_more_at(1_200, Some(produced_at)).await?;
    let ends = d.ends();

    // No worker has run: everything is lag, nobody owns anything, and the oldest event is an
    // hour old.
    let report = lag_json(&d).await?;
    let age = (now_ms() - produced_at) as f64 / 1000.0;
    for (p, u) in units(&report)? {
        let end = ends[&(p as i32)];
        ensure!(u["owner"].is_null() && u["committed"].is_null(), "{u}");
        ensure!(
            u["high_watermark"] == end && u["lag_messages"] == end,
            "{u}"
        );
        let s = u["lag_seconds"].as_f64().context("lag seconds known")?;
        ensure!(
            s >= 3600.0 && s <= age + AGE_SLACK_S,
            "lag {s} s of partition {p}, expected about {age}"
        );
    }
    let topic = &report["topics"][0];
    ensure!(topic["lag_messages"] == 1_200 && topic["partitions"] == 4 && topic["unowned"] == 4);

    let out = run_sluice(
        &["lag", "--config", d.config_arg()],
        &[],
        Duration::from_secs(60),
    )
    .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && text.contains("total lag 1200 messages"),
        "human output:\n{text}"
    );

    // A worker ingests it all; lag falls to zero and the worker's metrics agree.
    let worker = spawn(&d, "w1")?;
    let addr = endpoint(&worker).await?;
    let last = poll(Duration::from_secs(120), "lag to reach 0", || async {
        let r = lag_json(&d).await?;
        Ok((r["topics"][0]["lag_messages"] == 0).then_some(r))
    })
    .await?;
    for (p, u) in units(&last)? {
        let end = ends[&(p as i32)];
        ensure!(
            u["owner"] == "w1" && u["committed"] == end && u["lag_seconds"] == 0.0,
            "{u}"
        );
    }

    let rows = d.events.iter().filter(|e| e.expect == Expect::Row).count() as f64;
    let metrics = poll(
        Duration::from_secs(30),
        "the worker's lag gauges to show it caught up",
        || async {
            let metrics = get(addr, "/metrics")?.1;
            let caught_up = (0..4).all(|p| {
                let p = p.to_string();
                let labels = [("partition", p.as_str())];
                series(&metrics, "sluice_partition_lag_messages", &labels) == Some(0.0)
            });
            Ok(caught_up.then_some(metrics))
        },
    )
    .await?;
    for (p, end) in &ends {
        let p = p.to_string();
        let labels = [("partition", p.as_str())];
        ensure!(
            series(&metrics, "sluice_partition_committed_offset", &labels) == Some(*end as f64),
            "committed offset gauge of partition {p}"
        );
        ensure!(
            series(&metrics, "sluice_partition_consumed_events_total", &labels)
                == Some(*end as f64),
            "consumed events of partition {p}"
        );
        ensure!(series(&metrics, "sluice_partition_lag_seconds", &labels) == Some(0.0));
    }
    let table = [("table", "events")];
    ensure!(
        series(&metrics, "sluice_table_rows_committed_total", &table) == Some(rows),
        "rows committed:\n{metrics}"
    );
    for reason in [
        "not_json",
        "wrong_type",
        "missing_field",
        "oversized",
        "not_object",
        "empty",
    ] {
        let expected = d
            .events
            .iter()
            .filter(|e| e.expect == Expect::Quarantine(reason))
            .count() as f64;
        ensure!(
            series(
                &metrics,
                "sluice_table_quarantined_rows_total",
                &[("table", "events"), ("reason", reason)]
            ) == Some(expected),
            "quarantined {reason}, expected {expected}:\n{metrics}"
        );
    }
    promtool(&["check", "metrics"], Some(&metrics))?;

    // --watch refreshes until interrupted: with --json, one document per refresh.
    let docs = watch_json(&d, 3).await?;
    ensure!(
        docs.iter().all(|r| r["topics"][0]["lag_messages"] == 0),
        "{docs:?}"
    );
    ensure!(
        docs[0]["taken_at_ms"] != docs[2]["taken_at_ms"],
        "not refreshed"
    );

    worker.terminate(Duration::from_secs(30)).await?;
    d.verify().await
}

/// The fullest scope of the events table, as `sluice scopes --json` reads the registry: its
/// partition value and live parts (the first in value order among equals).
async fn fullest_scope(d: &Prepared) -> Result<(String, i64)> {
    let out = run_sluice(
        &[
            "scopes",
            "--config",
            d.config_arg(),
            "--table",
            "events",
            "--json",
        ],
        &[],
        Duration::from_secs(60),
    )
    .await?;
    ensure!(
        out.status.success(),
        "sluice scopes failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout)?;
    let mut scopes = doc["tables"][0]["partition_values"]
        .as_array()
        .context("partition values")?
        .iter()
        .map(|s| {
            let value = s["partition_value"].as_str().context("value")?.to_string();
            Ok((value, s["live_parts"].as_i64().context("live parts")?))
        })
        .collect::<Result<Vec<_>>>()?;
    scopes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    scopes.into_iter().next().context("no scope of events")
}

/// The dashboard's DOM once its "Parts per scope" panel and the registry gauges of `addr` show
/// the fullest scope of the events table as `sluice scopes` reads it (read before and after the
/// page, so that a merge in between only means another try).
async fn dashboard_with_the_fullest_scope(
    d: &Prepared,
    addr: std::net::SocketAddr,
    url: &str,
) -> Result<String> {
    let mut last = String::new();
    for _ in 0..5 {
        let before = fullest_scope(d).await?;
        let dom = chromium(url, Duration::from_secs(8), None)?;
        let metrics = get(addr, "/metrics")?.1;
        if fullest_scope(d).await? != before {
            continue;
        }
        let (value, parts) = &before;
        let bar = format!(r#"data-scope="events/{value}" data-live-parts="{parts}""#);
        let table = format!(r#"data-table-parts="events" data-max-parts="{parts}""#);
        let gauge = series(
            &metrics,
            "sluice_table_scope_parts_max",
            &[("table", "events")],
        );
        if dom.contains(&bar) && dom.contains(&table) && gauge == Some(*parts as f64) {
            // The gauges the worker sets only on change or at its merge check stay exported.
            ensure!(
                series(&metrics, "sluice_ingest_paused_partitions", &[]) == Some(0.0),
                "paused partitions gauge:\n{metrics}"
            );
            ensure!(
                series(
                    &metrics,
                    "sluice_table_merge_backlog",
                    &[("table", "events")]
                )
                .is_some(),
                "merge backlog gauge:\n{metrics}"
            );
            return Ok(dom);
        }
        last = format!(
            "no `{bar}` and `{table}` with the gauge at {parts} (it is {gauge:?}) in:\n{dom}"
        );
    }
    anyhow::bail!("the dashboard never showed the fullest scope: {last}")
}

/// `sluice lag --watch --json`, read until `n` documents arrived, then stopped.
async fn watch_json(d: &Prepared, n: usize) -> Result<Vec<Value>> {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(sluice_tests::sluice_bin())
        .args(["lag", "--config", d.config_arg(), "--json", "--watch"])
        .args(["--interval-ms", "100"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut docs = Vec::new();
    while docs.len() < n {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("no refresh within 30 s")??
            .context("sluice lag --watch exited")?;
        docs.push(serde_json::from_str(&line)?);
    }
    child.kill().await?;
    Ok(docs)
}

/// Which worker's `/metrics` carries each partition's gauges, and the expositions.
fn holders(expositions: &[(&str, String)]) -> BTreeMap<i32, Vec<String>> {
    let mut by_partition: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for (id, text) in expositions {
        for p in 0..4 {
            let ps = p.to_string();
            let labels = [("partition", ps.as_str())];
            if series(text, "sluice_partition_lag_seconds", &labels).is_some() {
                by_partition.entry(p).or_default().push(id.to_string());
            }
        }
    }
    by_partition
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_holding_a_backlog_shows_it_in_metrics_health_and_the_dashboard() -> Result<()> {
    let mut d = deployment("lag-held").await?;
    d.produce_more(400).await?;
    d.run_to_end().await?;
    let committed = d.ends();

    // Flushes only after an hour: the workers will read the backlog and hold it uncommitted,
    // so every figure is known while they run.
    d.edit_config(|c| c.replace("max_age_ms = 300", "max_age_ms = 3600000"))?;
    let workers = [spawn(&d, "w1")?, spawn(&d, "w2")?];
    let addrs = [endpoint(&workers[0]).await?, endpoint(&workers[1]).await?];
    for a in addrs {
        ensure!(get(a, "/healthz")? == (200, "ok\n".to_string()));
    }
    // The fleet settles before the backlog arrives, so no handover commits any of it.
    poll(
        Duration::from_secs(60),
        "both workers to hold their shares",
        || async {
            let mut owned = 0;
            for a in addrs {
                let (status, body) = get(a, "/readyz")?;
                if status != 200 {
                    return Ok(None);
                }
                let v: Value = serde_json::from_str(&body)?;
                owned += v["readiness"]["owned"].as_i64().context("owned")?;
            }
            Ok((owned == 4).then_some(()))
        },
    )
    .await?;
    let produced_at = now_ms() - HOUR_MS;
    d.produce_more_at(600, Some(produced_at)).await?;
    let ends = d.ends();

    // Settled: both ready, the backlog read, and every partition's gauges on exactly one worker.
    let scraped = poll(
        Duration::from_secs(60),
        "the backlog to be read and the lag gauges set",
        || async {
            let mut all = Vec::new();
            for (id, a) in ["w1", "w2"].into_iter().zip(addrs) {
                if get(a, "/readyz")?.0 != 200 {
                    return Ok(None);
                }
                all.push((id, get(a, "/metrics")?.1));
            }
            let consumed: f64 = all
                .iter()
                .flat_map(|(_, text)| {
                    (0..4).filter_map(move |p| {
                        let p = p.to_string();
                        series(
                            text,
                            "sluice_partition_consumed_events_total",
                            &[("partition", p.as_str())],
                        )
                    })
                })
                .sum();
            let held = holders(&all);
            // Every worker's fleet-wide gauge set too: it comes with a full refresh, which a
            // refresh still probing timestamps may not have finished yet.
            let fleet_wide = all
                .iter()
                .all(|(_, text)| series(text, "sluice_topic_unowned_partitions", &[]).is_some());
            let settled = consumed == 600.0
                && held.len() == 4
                && held.values().all(|h| h.len() == 1)
                && fleet_wide;
            Ok(settled.then_some(all))
        },
    )
    .await?;
    let held = holders(&scraped);
    let age = (now_ms() - produced_at) as f64 / 1000.0;
    for p in 0..4 {
        let owner = &held[&p][0];
        let text = &scraped
            .iter()
            .find(|(id, _)| id == owner)
            .context("owner")?
            .1;
        let ps = p.to_string();
        let labels = [("topic", d.topic.as_str()), ("partition", ps.as_str())];
        let (c, e) = (committed[&p] as f64, ends[&p] as f64);
        let get = |name| series(text, name, &labels);
        ensure!(
            get("sluice_partition_committed_offset") == Some(c),
            "committed {p}"
        );
        ensure!(get("sluice_partition_high_watermark") == Some(e), "end {p}");
        ensure!(
            get("sluice_partition_lag_messages") == Some(e - c),
            "lag {p}"
        );
        let s = get("sluice_partition_lag_seconds").context("lag seconds")?;
        ensure!(s >= 3600.0 && s <= age + AGE_SLACK_S, "lag {s} s of {p}");
    }
    for (id, text) in &scraped {
        let n = held.values().filter(|h| h[0] == *id).count() as f64;
        ensure!(
            series(text, "sluice_owned_partitions", &[]) == Some(n),
            "{id} owns {n}"
        );
        ensure!(series(text, "sluice_assigned_partitions", &[]) == Some(n));
        ensure!(series(text, "sluice_coordination_session_up", &[]) == Some(1.0));
        ensure!(series(text, "sluice_topic_unowned_partitions", &[]) == Some(0.0));
        ensure!(series(text, "sluice_memory_budget_bytes", &[]) == Some(268_435_456.0));
        if n > 0.0 {
            ensure!(series(text, "sluice_buffered_bytes", &[]).is_some_and(|b| b > 0.0));
        }
        promtool(&["check", "metrics"], Some(text))?;
        let (_, ready) = get(addrs[usize::from(*id == "w2")], "/readyz")?;
        let ready: Value = serde_json::from_str(&ready)?;
        ensure!(
            ready["ready"] == true && ready["readiness"]["owned"] == n as i64,
            "{ready}"
        );
    }

    // The dashboard of w1, in a real browser, shows the whole fleet, the same figures, and red.
    let url = format!("http://{}/", addrs[0]);
    let dom = dashboard_with_the_fullest_scope(&d, addrs[0], &url).await?;
    ensure!(
        dom.contains(r#"data-loaded="true""#),
        "page did not render:\n{dom}"
    );
    ensure!(
        dom.contains(r#"id="status" data-state="lagging""#),
        "status not red:\n{dom}"
    );
    ensure!(
        dom.contains(r#"data-lag-messages="600""#),
        "total lag:\n{dom}"
    );
    for id in ["w1", "w2"] {
        let n = held.values().filter(|h| h[0] == id).count();
        let row = format!(r#"data-member="{id}" data-held="{n}""#);
        ensure!(dom.contains(&row), "no `{row}` in:\n{dom}");
    }
    for p in 0..4 {
        let row = format!(
            r#"data-unit="{}/{p}" data-owner="{}" data-committed="{}" data-lag-messages="{}""#,
            d.topic,
            held[&p][0],
            committed[&p],
            ends[&p] - committed[&p]
        );
        ensure!(dom.contains(&row), "no `{row}` in:\n{dom}");
        // Charted too: each partition has its line in the per-partition lag chart.
        let series = format!(r#"data-series="{}/{p}""#, d.topic);
        ensure!(dom.contains(&series), "no `{series}` in:\n{dom}");
    }
    let shots = workspace_root().join("target").join("test-artefacts");
    std::fs::create_dir_all(&shots)?;
    let shot = shots.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    chromium(&url, Duration::from_secs(8), Some(&shot))?;
    let png = std::fs::read(&shot).with_context(|| format!("{} not written", shot.display()))?;
    ensure!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot"
    );
    println!("dashboard screenshot: {}", shot.display());

    // SIGTERM drains: the backlog is committed, nothing lost or doubled.
    for w in workers {
        w.terminate(Duration::from_secs(30)).await?;
    }
    let report = lag_json(&d).await?;
    ensure!(report["topics"][0]["lag_messages"] == 0, "{report}");
    d.verify().await
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_is_unavailable_while_an_assigned_partition_is_held_by_another_worker() -> Result<()>
{
    let d = deployment("readyz").await?;
    // A session that outlives w2's start-up on a loaded machine: w2 must find w1's leases held.
    d.edit_config(|t| t.replace("session_timeout_ms = 4000", "session_timeout_ms = 15000"))?;
    let w1 = spawn(&d, "w1")?;
    let a1 = endpoint(&w1).await?;
    let (status, why) = poll(Duration::from_secs(30), "w1 to be ready", || async {
        let r = get(a1, "/readyz")?;
        Ok((r.0 == 200).then_some(r))
    })
    .await?;
    ensure!(
        why.contains("holding every assigned partition (4)"),
        "{status}: {why}"
    );

    // w1 freezes holding every lease; w2 joins and is assigned a share it cannot take until
    // w1's session expires. Its weight makes that share all but certainly not empty.
    w1.signal("STOP")?;
    let heavy = d.dir.path().join("heavy.toml");
    std::fs::write(
        &heavy,
        std::fs::read_to_string(&d.config)?.replacen("[worker]\n", "[worker]\nweight = 100.0\n", 1),
    )?;
    let w2 = Worker::spawn(&heavy, "w2", &[], &d.dir.path().join("logs"))?;
    let a2 = endpoint(&w2).await?;
    let waiting = poll(
        Duration::from_secs(30),
        "w2 to wait for a lease",
        || async {
            let (status, body) = get(a2, "/readyz")?;
            let v: Value = serde_json::from_str(&body)?;
            Ok((status == 503 && v["readiness"]["waiting"].as_i64() > Some(0)).then_some(v))
        },
    )
    .await?;
    ensure!(
        waiting["why"]
            .as_str()
            .is_some_and(|w| w.contains("still leased by another worker")),
        "{waiting}"
    );
    // w1's session expires (15 s): w2 takes everything and is ready.
    let ready = poll(Duration::from_secs(30), "w2 to be ready", || async {
        let (status, body) = get(a2, "/readyz")?;
        let v: Value = serde_json::from_str(&body)?;
        Ok((status == 200).then_some(v))
    })
    .await?;
    ensure!(ready["readiness"]["owned"] == 4, "{ready}");
    w1.signal("CONT")?;
    w2.terminate(Duration::from_secs(30)).await?;
    w1.terminate(Duration::from_secs(30)).await?;
    Ok(())
}

#[test]
fn alert_rules_scrape_config_and_grafana_dashboard_are_valid() -> Result<()> {
    let prom = workspace_root().join("config").join("prometheus");
    let path = |name: &str| prom.join(name).display().to_string();
    promtool(&["check", "rules", &path("alerts.yml")], None)?;
    // Unit tests of every alert: fires when it should, stays quiet when it should not.
    promtool(&["test", "rules", &path("alerts.test.yml")], None)?;
    promtool(
        &["check", "config", "--syntax-only", &path("prometheus.yml")],
        None,
    )?;

    // Every metric the rules and the Grafana dashboard query is one the workers export.
    let known = |name: &str| {
        sluice_telemetry::metrics::ALL
            .iter()
            .any(|m| name == *m || name.strip_suffix("_bucket") == Some(m))
    };
    let grafana: Value = serde_json::from_str(&std::fs::read_to_string(
        workspace_root().join("config/grafana/sluice.json"),
    )?)?;
    let mut exprs = Vec::new();
    collect_exprs(&grafana, &mut exprs);
    ensure!(
        exprs.len() >= 8,
        "the dashboard has {} queries",
        exprs.len()
    );
    // The rules file as a whole: its expressions and the metrics its annotations point to.
    let rules = std::fs::read_to_string(prom.join("alerts.yml"))?;
    for expr in exprs.iter().chain([&rules]) {
        for name in metric_names(expr) {
            ensure!(known(&name), "`{name}` in `{expr}` is not a Sluice metric");
        }
    }
    Ok(())
}

fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(e)) = m.get("expr") {
                out.push(e.clone());
            }
            m.values().for_each(|v| collect_exprs(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// Identifiers starting with `sluice_` in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("sluice_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}
