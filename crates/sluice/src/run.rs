//! `sluice run`: one worker of the fleet, until it is stopped or, with --stop-at-end, caught up.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use sluice_telemetry::process::ProcessUsage;
use sluice_worker::{Failpoints, RunOptions, RunSummary};

use crate::common::load;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The configuration file (tables, Kafka, coordination, storage).
    #[arg(short, long, env = "SLUICE_CONFIG")]
    config: PathBuf,
    /// Worker identity in leases and logs [default: worker.id, else <hostname>-<pid>].
    #[arg(long)]
    worker_id: Option<String>,
    /// Exit once every partition is committed up to the end it had when the worker started.
    #[arg(long)]
    stop_at_end: bool,
    /// Serve /metrics, /healthz, /readyz and the dashboard here instead of
    /// telemetry.listen_address (e.g. a different port per worker on one host; port 0 picks
    /// a free one).
    #[arg(long, value_name = "IP:PORT")]
    listen_address: Option<String>,
    /// Print the closing summary as one JSON object on stdout instead of a sentence (for
    /// scripts and benchmarks): events, bytes, rows, parts, commits, seconds, CPU seconds
    /// and peak RSS.
    #[arg(long)]
    summary_json: bool,
}

pub async fn run(args: RunArgs) -> Result<()> {
    let shutdown = shutdown_signal()?;
    let mut config = load(&args.config)?;
    if let Some(address) = args.listen_address {
        config.telemetry.listen_address = address;
        // The same validation as the file's field, naming the flag's value.
        config.validate()?;
    }
    let config = Arc::new(config);
    let failpoints = Failpoints::parse(std::env::var("SLUICE_FAILPOINT").ok().as_deref())?;
    let worker_id = args
        .worker_id
        .or_else(|| config.worker.id.clone())
        .unwrap_or_else(default_worker_id);
    tracing::info!(worker = %worker_id, config = %args.config.display(), tables = config.tables.len(), "starting worker");
    let options = RunOptions {
        worker_id,
        stop_at_end: args.stop_at_end,
        failpoints,
    };
    let summary = sluice_worker::run(Arc::clone(&config), options, Box::pin(shutdown)).await?;
    print_summary(&summary, args.summary_json);
    Ok(())
}

/// Unique on a host, and readable in logs without a config entry.
fn default_worker_id() -> String {
    let host = sluice_worker::hostname();
    format!("{host}-{}", std::process::id())
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed here, at once, not when the future
/// is first polled: a SIGTERM that arrives while the worker is still starting must drain it,
/// not kill it with the default disposition.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()> + Send> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// The closing line on stdout: a sentence, or with --summary-json one JSON object.
fn print_summary(s: &RunSummary, json: bool) {
    // Taken once the worker has drained, so the CPU time and peak RSS cover the whole run.
    let usage = ProcessUsage::now().unwrap_or_default();
    // A run stopped at once would divide by zero in the rates.
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    if json {
        println!("{}", summary_json(s, &usage, secs));
    } else {
        println!("{}", summary_sentence(s, &usage, secs));
    }
}

/// The field names of sluice-bench's figures, so it reads this line as it is.
fn summary_json(s: &RunSummary, usage: &ProcessUsage, secs: f64) -> serde_json::Value {
    serde_json::json!({
        "events": s.events,
        "bytes": s.event_bytes,
        "rows": s.rows,
        "quarantined": s.quarantined,
        "parts": s.parts,
        "part_bytes": s.part_bytes,
        "commits": s.commits,
        "garbage_collected": s.garbage_collected,
        "rejoins": s.rejoins,
        "wall_s": secs,
        "cpu_s": usage.cpu_s,
        "peak_rss_bytes": usage.peak_rss_bytes,
    })
}

fn summary_sentence(s: &RunSummary, usage: &ProcessUsage, secs: f64) -> String {
    format!(
        "ingested {} events ({:.1} MB) in {:.2} s: {:.0} events/s, {:.1} MB/s; {} rows, {} quarantined, {} parts ({:.1} MB) in {} commits; {} uncommitted objects collected; {} rejoins; {:.1} CPU s, peak RSS {} MiB",
        s.events,
        s.event_bytes as f64 / 1e6,
        secs,
        s.events as f64 / secs,
        s.event_bytes as f64 / 1e6 / secs,
        s.rows,
        s.quarantined,
        s.parts,
        s.part_bytes as f64 / 1e6,
        s.commits,
        s.garbage_collected,
        s.rejoins,
        usage.cpu_s,
        usage.peak_rss_bytes >> 20
    )
}
