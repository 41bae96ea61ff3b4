//! A smoke run of the throughput benchmark's one command, `benches/throughput.sh`, on a tiny
//! corpus (debug build, its own stack on ports apart from the test stack's): every step runs and
//! reports figures that add up. It measures nothing; the figures themselves come from a release
//! run (docs/performance.md).

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};

const EVENTS: u64 = 3_000;

#[test]
fn the_benchmark_command_runs_every_step_on_a_tiny_corpus() -> Result<()> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let stack = tempfile::tempdir()?;
    let mut command = Command::new("bash");
    // Cargo gives this test its package's CARGO_MANIFEST_DIR, CARGO_PKG_* and so on. Build
    // scripts (ring's) declare those as inputs, so the script's nested `cargo build` would see
    // them changed, rebuild DataFusion and its dependencies, and the next top-level build again.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if (key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR")
            || key == "OUT_DIR"
        {
            command.env_remove(key.as_ref());
        }
    }
    let out = command
        .arg(repo.join("benches/throughput.sh"))
        .current_dir(&repo)
        .env("EVENTS", EVENTS.to_string())
        .env("PROFILE", "dev")
        .env("SLUICE_BENCH_STACK_DIR", stack.path())
        .env("SLUICE_BENCH_ZK_PORT", "22381")
        .env("SLUICE_BENCH_KAFKA_PORT", "29292")
        .env("SLUICE_BENCH_S3_PORT", "29200")
        .output()
        .context("running benches/throughput.sh")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "benches/throughput.sh failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    println!("{stdout}");

    let results: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo.join("target/bench/results.json"))
            .context("reading target/bench/results.json")?,
    )?;
    let steps = results["steps"].as_array().context("steps")?;
    let step = |name: &str| {
        steps
            .iter()
            .find(|s| s["name"].as_str().is_some_and(|n| n.starts_with(name)))
            .map(|s| &s["figures"])
            .with_context(|| format!("no step `{name}` in {results}"))
    };
    let conversions: Vec<_> = steps
        .iter()
        .filter(|s| {
            s["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("conversion"))
        })
        .collect();
    ensure!(
        conversions.len() == 2,
        "one thread and all cores: {conversions:?}"
    );
    for c in conversions {
        let f = &c["figures"];
        ensure!(
            f["events"] == EVENTS && f["rows"] == EVENTS && f["quarantined"] == 0,
            "the conversion path must turn every event into a row: {f}"
        );
    }
    // The broker steps read the same topic to the same ends (on the memory engine, one
    // producer batch per partition short of them), so they count the same events.
    let raw = step("raw consume")?;
    let consumed = raw["events"].as_u64().context("raw events")?;
    ensure!(
        consumed > 0 && consumed <= EVENTS,
        "raw consume read {consumed}"
    );
    for name in ["1 worker", "1 worker, 3 endpoints", "2 workers"] {
        let f = step(name)?;
        ensure!(
            f["events"].as_u64() == Some(consumed) && f["rows"].as_u64() == Some(consumed),
            "{name} ingested {f}, the raw consumer read {consumed}"
        );
    }
    for s in steps {
        let f = &s["figures"];
        // CPU time is read in clock ticks (10 ms): a tiny step may show none.
        ensure!(
            f["wall_s"].as_f64().is_some_and(|v| v > 0.0)
                && f["cpu_s"].as_f64().is_some_and(|v| v >= 0.0)
                && f["peak_rss_bytes"].as_u64().is_some_and(|v| v > 0),
            "{}: figures missing or empty: {f}",
            s["name"]
        );
    }
    ensure!(
        stdout.contains("1 worker / raw consume")
            && stdout.contains("3 endpoints / 1 endpoint")
            && stdout.contains("2 workers / 1 worker"),
        "the report gives the ratios the targets are stated in:\n{stdout}"
    );
    Ok(())
}
