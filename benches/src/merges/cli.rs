//! Figures read through the `sluice` CLI, as an operator would: parts, scopes and the query.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::{Level, QueryRun};

/// The parts a reader sees (`sluice parts --json`), by level, and how many come from manifests.
pub(super) fn final_parts(sluice: &Path, config: &Path) -> Result<(Vec<Level>, u64)> {
    let out = Command::new(sluice)
        .arg("parts")
        .arg("--config")
        .arg(config)
        .arg("--json")
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("sluice parts failed ({})", out.status);
    }
    let mut levels: std::collections::BTreeMap<u32, Level> = Default::default();
    let mut sealed = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let p: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("cannot read a part from {line}"))?;
        let level = p["level"].as_u64().unwrap_or(0) as u32;
        let l = levels.entry(level).or_insert(Level {
            level,
            ..Level::default()
        });
        l.parts += 1;
        l.rows += p["rows"].as_u64().unwrap_or(0);
        l.bytes += p["bytes"].as_u64().unwrap_or(0);
        sealed += u64::from(p["sealed"].as_bool().unwrap_or(false));
    }
    Ok((levels.into_values().collect(), sealed))
}

/// `sluice scopes --json`: the table's live part records and sealed scopes.
pub(super) fn scopes_json(sluice: &Path, config: &Path, table: &str) -> Result<(usize, usize)> {
    let out = Command::new(sluice)
        .arg("scopes")
        .arg("--config")
        .arg(config)
        .args(["--table", table, "--json"])
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("sluice scopes failed ({})", out.status);
    }
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let t = &doc["tables"][0];
    let count = |key: &str| -> Result<usize> {
        t[key]
            .as_u64()
            .map(|n| n as usize)
            .with_context(|| format!("no {key} in sluice scopes --json"))
    };
    Ok((count("live_records")?, count("sealed_scopes")?))
}

/// Runs the query once: its figures, and its answer as CSV.
pub(super) fn query(
    sluice: &Path,
    config: &Path,
    sql: &str,
    log: &Path,
) -> Result<(QueryRun, String)> {
    let started = Instant::now();
    let out = Command::new(sluice)
        .arg("query")
        .arg("--config")
        .arg(config)
        .args(["--verbose", "--format", "csv", sql])
        .output()?;
    let wall_s = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    std::fs::write(log, stderr.as_bytes())?;
    if !out.status.success() {
        bail!("sluice query failed ({}): {stderr}", out.status);
    }
    // "N rows in X s; read A of B parts (C MB)"
    let line = stderr
        .lines()
        .find(|l| l.contains(" parts (") && l.contains("; read "))
        .with_context(|| format!("no figures in the query's output: {stderr}"))?;
    let number = |after: &str, until: &str| -> Result<f64> {
        let rest = line
            .split_once(after)
            .with_context(|| format!("no `{after}` in {line}"))?
            .1;
        let value = rest.split_once(until).map_or(rest, |(v, _)| v);
        value
            .trim()
            .parse()
            .with_context(|| format!("cannot read `{value}` in {line}"))
    };
    let run = QueryRun {
        wall_s,
        reported_s: number(" in ", " s;")?,
        parts_read: number("; read ", " of ")? as u64,
        parts_total: number(" of ", " parts")? as u64,
        mb_read: number(" parts (", " MB)")?,
    };
    let listed = stderr.lines().filter(|l| l.starts_with("  read ")).count() as u64;
    if listed != run.parts_read {
        bail!(
            "sluice query --verbose listed {listed} parts but reported {} read",
            run.parts_read
        );
    }
    Ok((run, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// The same countries and counts, and sums equal but for the order they were added in.
pub(super) fn same_answer(a: &str, b: &str) -> bool {
    let rows = |s: &str| -> Vec<Vec<String>> {
        s.lines()
            .skip(1)
            .map(|l| l.split(',').map(str::to_string).collect())
            .collect()
    };
    let (a, b) = (rows(a), rows(b));
    !a.is_empty()
        && a.len() == b.len()
        && a.iter().zip(&b).all(|(x, y)| {
            x.len() == 3
                && y.len() == 3
                && x[0] == y[0]
                && x[1] == y[1]
                && match (x[2].parse::<f64>(), y[2].parse::<f64>()) {
                    (Ok(p), Ok(q)) => (p - q).abs() <= 1e-9 * p.abs().max(q.abs()).max(1.0),
                    _ => false,
                }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_compare_sums_loosely() {
        let a = "country,events,duration_ms\nde,2,10.000000000001\nus,3,5\n";
        let b = "country,events,duration_ms\nde,2,10.0\nus,3,5\n";
        assert!(same_answer(a, b));
        assert!(!same_answer(
            a,
            "country,events,duration_ms\nde,3,10\nus,3,5\n"
        ));
    }
}
