//! One ingestion run: the topic, the worker, the registry sampled every second, the end figures.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sluice_coord::{Coordinator, ZkCoordinator};

use super::cli::{final_parts, scopes_json};
use super::config::run_config;
use super::produce::produce_paced;
use super::worker::{free_port, http_get, metric, stop_worker, wait_ready};
use super::{MergesOptions, RunResult, Sample, Store, SAMPLE_EVERY};

#[allow(clippy::too_many_arguments)]
pub(super) fn ingest_run(
    opts: &MergesOptions,
    runtime: &tokio::runtime::Runtime,
    work_dir: &Path,
    stamp: u64,
    name: &str,
    enabled: bool,
    table: &str,
) -> Result<RunResult> {
    let topic = format!("merges-{stamp}-{name}");
    let root = format!("/sluice/bench-merges/{stamp}/{name}");
    let storage_url = match &opts.store {
        Store::File => {
            let dir = work_dir.join(format!("data-{name}"));
            let _ = std::fs::remove_dir_all(&dir);
            format!("file://{}", dir.display())
        }
        Store::S3 { bucket, .. } => format!("s3://{bucket}/merges-{stamp}-{name}"),
    };
    let config = work_dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        run_config(opts, &topic, &root, &storage_url, enabled)?,
    )?;
    sluice_config::Config::load(&config)?;
    let mut result = RunResult {
        merges_enabled: enabled,
        topic: topic.clone(),
        root: root.clone(),
        storage: storage_url,
        config: config.display().to_string(),
        ..RunResult::default()
    };

    // The topic first, so the worker finds its partitions at once.
    let created = Command::new(&opts.sluice)
        .args(["produce", "--brokers", &opts.brokers, "--topic", &topic])
        .args(["--partitions", &opts.partitions.to_string(), "--count", "0"])
        .output()?;
    if !created.status.success() {
        bail!(
            "cannot create topic {topic}: {}",
            String::from_utf8_lossy(&created.stderr)
        );
    }

    let port = free_port()?;
    let address = format!("127.0.0.1:{port}");
    let log = work_dir.join(format!("{name}-worker.log"));
    let mut worker = crate::run::spawn(
        Command::new(&opts.sluice)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--worker-id", &format!("bench-{name}")])
            .args(["--listen-address", &address, "--summary-json"])
            .env(
                "SLUICE_LOG",
                std::env::var("SLUICE_LOG").unwrap_or_else(|_| "info".into()),
            ),
        &log,
    )?;
    let outcome = (|| -> Result<()> {
        wait_ready(&mut worker, &address, &log)?;
        let coord = runtime.block_on(ZkCoordinator::connect(
            &opts.zookeeper,
            &root,
            Duration::from_secs(10),
            Duration::from_secs(10),
            sluice_coord::ZkSecurity::default(),
        ))?;
        let sampled = sample_run(opts, runtime, &coord, &address, table, enabled, &mut result);
        let end = sampled.and_then(|()| {
            let scopes = runtime.block_on(coord.list_scopes(table))?;
            let retired = runtime.block_on(coord.list_retired(table))?;
            Ok((scopes, retired))
        });
        let _ = runtime.block_on(coord.close());
        let (scopes, retired) = end?;
        result.records_end = scopes.iter().map(|s| s.live_parts).sum();
        result.scopes_end = scopes.len();
        result.sealed_end = scopes.iter().filter(|s| s.state.sealed.is_some()).count();
        result.retired_end = retired.len();
        let metrics = http_get(&address, "/metrics")?.1;
        let counter = |name: &str| metric(&metrics, name, Some(table)) as u64;
        result.flushed_parts = counter("sluice_table_parts_written_total");
        result.flushed_bytes = counter("sluice_table_bytes_committed_total");
        result.merges = counter("sluice_merges_total");
        result.merge_input_parts = counter("sluice_merge_input_parts_total");
        result.merge_bytes = counter("sluice_merge_bytes_written_total");
        result.merge_failures = counter("sluice_merge_failures_total");
        result.merge_seconds = metric(&metrics, "sluice_merge_duration_seconds_sum", None);
        Ok(())
    })();
    // Stop the worker whatever happened (SIGTERM: it leaves, drains and prints its figures).
    let stopped = stop_worker(worker, &log);
    outcome?;
    result.worker = stopped?;
    let (levels, sealed_parts) = final_parts(&opts.sluice, &config)?;
    result.levels = levels;
    result.sealed_parts = sealed_parts;
    // The same count as `sluice scopes` makes it, as a check of this one.
    let (records, sealed) = scopes_json(&opts.sluice, &config, table)?;
    if (records, sealed) != (result.records_end, result.sealed_end) {
        bail!(
            "sluice scopes --json reports {records} live records and {sealed} sealed scopes, \
             the registry read {} and {}",
            result.records_end,
            result.sealed_end
        );
    }
    eprintln!(
        "   {} parts flushed ({:.1} MB), {} merges wrote {:.1} MB; {} part records at the end, {} of {} scopes sealed",
        result.flushed_parts,
        result.flushed_bytes as f64 / 1e6,
        result.merges,
        result.merge_bytes as f64 / 1e6,
        result.records_end,
        result.sealed_end,
        result.scopes_end
    );
    Ok(result)
}

/// Produces while sampling every second; then samples until the run has caught up (and, with
/// merges, until every scope is sealed) or the settle timeout passes.
fn sample_run(
    opts: &MergesOptions,
    runtime: &tokio::runtime::Runtime,
    coord: &ZkCoordinator,
    address: &str,
    table: &str,
    enabled: bool,
    result: &mut RunResult,
) -> Result<()> {
    let started = Instant::now();
    let producer = {
        let (brokers, topic) = (opts.brokers.clone(), result.topic.clone());
        let (events, rate, seed) = (opts.events, opts.rate, opts.seed);
        std::thread::spawn(move || produce_paced(&brokers, &topic, events, rate, seed))
    };
    let mut producer = Some(producer);
    let mut deadline: Option<Instant> = None;
    for k in 0u32.. {
        let due = started + SAMPLE_EVERY * k;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if producer.as_ref().is_some_and(|p| p.is_finished()) {
            let handle = producer.take().expect("checked above");
            let secs = handle
                .join()
                .map_err(|_| anyhow::anyhow!("the producer thread panicked"))??;
            result.produce_s = secs;
            deadline = Some(Instant::now() + opts.settle_timeout);
            eprintln!("   produced {} events in {secs:.1} s", opts.events);
        }
        let scopes = runtime.block_on(coord.list_scopes(table))?;
        let metrics = http_get(address, "/metrics")
            .context("the worker stopped answering")?
            .1;
        let sample = Sample {
            t_s: started.elapsed().as_secs_f64(),
            max_parts: scopes.iter().map(|s| s.live_parts).max().unwrap_or(0),
            part_records: scopes.iter().map(|s| s.live_parts).sum(),
            scopes: scopes.len(),
            sealed_scopes: scopes.iter().filter(|s| s.state.sealed.is_some()).count(),
            rows: metric(&metrics, "sluice_table_rows_committed_total", Some(table)) as u64,
            merges: metric(&metrics, "sluice_merges_total", Some(table)) as u64,
            paused: metric(&metrics, "sluice_ingest_paused_partitions", None) as u64,
        };
        let caught_up = producer.is_none() && sample.rows >= opts.events;
        if caught_up && result.caught_up_s.is_none() {
            result.caught_up_s = Some(sample.t_s);
            result.records_at_catch_up = sample.part_records;
            eprintln!(
                "   caught up after {:.1} s: {} part records, at most {} in one scope",
                sample.t_s, sample.part_records, sample.max_parts
            );
        }
        result.records_peak = result.records_peak.max(sample.part_records);
        let all_sealed =
            sample.scopes > 0 && sample.sealed_scopes == sample.scopes && sample.part_records == 0;
        if caught_up && all_sealed && result.all_sealed_s.is_none() {
            result.all_sealed_s = Some(sample.t_s);
            eprintln!("   every scope sealed after {:.1} s", sample.t_s);
        }
        result.samples.push(sample);
        if caught_up && (!enabled || all_sealed) {
            return Ok(());
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            eprintln!(
                "   WARNING: {} within {:.0} s of the end of production; going on with what there is",
                if caught_up {
                    "not every scope was sealed"
                } else {
                    "the worker did not catch up"
                },
                opts.settle_timeout.as_secs_f64()
            );
            return Ok(());
        }
    }
    unreachable!("the sampling loop returns")
}
