//! `sluice`: the command-line entry point. `sluice run` starts a worker; the other commands
//! inspect what was committed or help set up a stack.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use sluice_config::Config;
use sluice_coord::PartKind;
use sluice_sink::{collect_table_garbage, GcScope, Storage};
use sluice_telemetry::process::ProcessUsage;
use sluice_worker::{open_coordinator, Failpoints, RunOptions};

mod lag;
mod produce;
mod query;

#[derive(Parser, Debug)]
#[command(
    name = "sluice",
    version,
    about = "Kafka to sorted Parquet parts on object storage, exactly once",
    long_about = "Sluice reads Kafka topics, decodes JSON events into typed tables, and writes them as sorted \
                  Parquet parts to object storage. Parts and the Kafka offsets that produced them are committed \
                  together in ZooKeeper, so every event lands exactly once: in its table, or in the table's \
                  quarantine with the reason it could not be decoded. Materialized views (SQL over each \
                  batch, filters and mergeable aggregations) write further tables in the same commit; \
                  `sluice query` runs SQL over what is committed.\n\nSee config/sluice.example.toml for every \
                  configuration field."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a worker: take the leases of the configured topics' partitions and ingest them.
    Run {
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
    },
    /// Validate a configuration file (views planned against their source tables) and report
    /// what it defines; with --connect, also reach ZooKeeper, Kafka and storage.
    Check {
        #[arg(short, long, env = "SLUICE_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        connect: bool,
    },
    /// List a table's committed parts: partition value, rows, offset range, bytes.
    Parts {
        #[arg(short, long, env = "SLUICE_CONFIG")]
        config: PathBuf,
        /// Only this table [default: all tables of the config].
        #[arg(long)]
        table: Option<String>,
        /// One JSON object per part instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show each source partition's committed offset, lease epoch and holder.
    Offsets {
        #[arg(short, long, env = "SLUICE_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Show the fleet: live workers with their weights and addresses, which partitions each
    /// holds (with lease epochs) and which rendezvous hashing assigns it, and partitions that
    /// have no holder or are being handed over.
    Members {
        #[arg(short, long, env = "SLUICE_CONFIG")]
        config: PathBuf,
        /// One JSON document instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Show every partition's lag: owner, committed offset, end (high watermark), lag in
    /// messages and in seconds (age of the oldest uncommitted event), with totals per topic.
    /// Reads ZooKeeper and Kafka only, so it works with no worker running.
    Lag(lag::LagArgs),
    /// Run SQL over the committed parts of the tables (a consistent snapshot), views'
    /// aggregate states merged into final values.
    Query(query::QueryArgs),
    /// Delete objects that were uploaded but never committed (crashes between upload and commit).
    Gc {
        #[arg(short, long, env = "SLUICE_CONFIG")]
        config: PathBuf,
        /// Leave objects younger than this alone: a running worker may be about to commit them.
        #[arg(long, default_value_t = 3_600_000)]
        min_age_ms: u64,
    },
    /// Produce seeded sample events (sequence-numbered web-analytics JSON, 130-200 bytes each) to
    /// a topic, or write them to an NDJSON file.
    Produce(produce::ProduceArgs),
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,zookeeper_client=warn"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

pub(crate) fn load(path: &std::path::Path) -> Result<Config> {
    Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

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

fn main() {
    limit_malloc_arenas();
    init_tracing();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(dispatch(cli)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// glibc gives each thread that allocates an arena of its own, up to eight per core, and each
/// arena keeps what its thread freed. A worker allocates on its Kafka poll thread, its runtime
/// threads and its encoding threads alike, so that retained memory came on top of the memory
/// budget: with a 64 MiB budget and a 4-million-event backlog, peak RSS was 195 MiB with the
/// default arenas and 152 MiB with two, at the same throughput (docs/performance.md), which
/// keeps the promise of the budget plus 100 MB. Called first, before any other thread exists.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets an allocator parameter; no other thread is running yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

async fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run {
            config,
            worker_id,
            stop_at_end,
            listen_address,
            summary_json,
        } => run(config, worker_id, stop_at_end, listen_address, summary_json).await,
        Command::Check { config, connect } => check(config, connect).await,
        Command::Parts {
            config,
            table,
            json,
        } => parts(config, table, json).await,
        Command::Offsets { config, json } => offsets(config, json).await,
        Command::Members { config, json } => members(config, json).await,
        Command::Lag(args) => lag::lag(args).await,
        Command::Query(args) => query::query(args).await,
        Command::Gc { config, min_age_ms } => gc(config, min_age_ms).await,
        Command::Produce(args) => produce::produce(args).await,
    }
}

async fn run(
    path: PathBuf,
    worker_id: Option<String>,
    stop_at_end: bool,
    listen_address: Option<String>,
    summary_json: bool,
) -> Result<()> {
    let shutdown = shutdown_signal()?;
    let mut config = load(&path)?;
    if let Some(address) = listen_address {
        config.telemetry.listen_address = address;
        // The same validation as the file's field, naming the flag's value.
        config.validate()?;
    }
    let config = Arc::new(config);
    let failpoints = Failpoints::parse(std::env::var("SLUICE_FAILPOINT").ok().as_deref())?;
    let worker_id = worker_id
        .or_else(|| config.worker.id.clone())
        .unwrap_or_else(default_worker_id);
    tracing::info!(worker = %worker_id, config = %path.display(), tables = config.tables.len(), "starting worker");
    let options = RunOptions {
        worker_id,
        stop_at_end,
        failpoints,
    };
    let result = sluice_worker::run(Arc::clone(&config), options, Box::pin(shutdown)).await;
    let s = result?;
    let usage = ProcessUsage::now().unwrap_or_default();
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    if summary_json {
        // The field names of sluice-bench's figures, so it reads this line as it is.
        let summary = serde_json::json!({
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
        });
        println!("{summary}");
        return Ok(());
    }
    println!(
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
    );
    Ok(())
}

async fn check(path: PathBuf, connect: bool) -> Result<()> {
    let config = load(&path)?;
    println!("{}: valid", path.display());
    for t in &config.tables {
        let fed_by = match &t.topic {
            Some(topic) => format!("topic {topic}"),
            None => config
                .views
                .iter()
                .find(|v| v.target == t.name)
                .map_or_else(String::new, |v| {
                    format!("view {} over {}", v.name, v.source)
                }),
        };
        println!(
            "  table {} <- {} ({} columns, sorted by [{}], partitioned by {})",
            t.name,
            fed_by,
            t.columns.len(),
            t.sorting_key.join(", "),
            t.partition_key
                .as_ref()
                .map_or("nothing".to_string(), |p| format!(
                    "{:?} of {}",
                    p.granularity, p.column
                )
                .to_lowercase())
        );
    }
    let views = sluice_transform::Views::compile(&config).await?;
    for v in &config.views {
        println!(
            "  view {} over {} -> {}: plans against {}'s columns",
            v.name, v.source, v.target, v.source
        );
    }
    drop(views);
    if connect {
        Storage::open(&config.storage)?;
        println!("  storage {}: ok", config.storage.url);
        let coord = open_coordinator(&config.coordination).await?;
        coord.list_units().await?;
        coord.close().await?;
        println!("  coordination: ok");
        for topic in config.topics() {
            let kafka = config.kafka.clone();
            let t = topic.clone();
            let partitions =
                tokio::task::spawn_blocking(move || sluice_source::partitions(&kafka, &t))
                    .await??;
            println!("  topic {topic}: {} partitions", partitions.len());
        }
    }
    Ok(())
}

async fn parts(path: PathBuf, table: Option<String>, json: bool) -> Result<()> {
    let config = load(&path)?;
    let tables: Vec<String> = match table {
        Some(t) => {
            if !config.tables.iter().any(|c| c.name == t) {
                bail!(
                    "table `{t}` is not in {}; its tables are: {}",
                    path.display(),
                    config
                        .tables
                        .iter()
                        .map(|t| t.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            vec![t]
        }
        None => config.tables.iter().map(|t| t.name.clone()).collect(),
    };
    let coord = open_coordinator(&config.coordination).await?;
    for t in tables {
        let mut parts = coord.list_parts(&t).await?;
        parts.sort_by(|a, b| {
            (
                a.kind == PartKind::Quarantine,
                &a.partition_value,
                &a.topic,
                a.partition,
                a.first_offset,
            )
                .cmp(&(
                    b.kind == PartKind::Quarantine,
                    &b.partition_value,
                    &b.topic,
                    b.partition,
                    b.first_offset,
                ))
        });
        if json {
            for p in &parts {
                println!("{}", serde_json::to_string(p)?);
            }
            continue;
        }
        let (rows, q): (u64, u64) = parts.iter().fold((0, 0), |(r, q), p| match p.kind {
            PartKind::Data => (r + p.rows, q),
            PartKind::Quarantine => (r, q + p.rows),
        });
        println!(
            "table {t}: {} parts, {rows} rows, {q} quarantined",
            parts.len()
        );
        println!(
            "  {:<11} {:<13} {:>9} {:>10} {:>23} {:>6}  path",
            "kind", "partition", "rows", "bytes", "offsets", "epoch"
        );
        for p in &parts {
            println!(
                "  {:<11} {:<13} {:>9} {:>10} {:>23} {:>6}  {}",
                p.kind.to_string(),
                if p.partition_value.is_empty() {
                    "-"
                } else {
                    &p.partition_value
                },
                p.rows,
                p.bytes,
                format!(
                    "{}/{} {}..{}",
                    p.topic, p.partition, p.first_offset, p.last_offset
                ),
                p.lease_epoch,
                p.path
            );
        }
    }
    coord.close().await?;
    Ok(())
}

/// The units the coordinator knows of the config's topics (a deployment root may hold others).
async fn config_units(
    config: &Config,
    coord: &dyn sluice_coord::Coordinator,
) -> Result<Vec<sluice_coord::UnitState>> {
    let topics: HashSet<String> = config.topics().into_iter().collect();
    Ok(coord
        .list_units()
        .await?
        .into_iter()
        .filter(|u| topics.contains(&u.unit.topic))
        .collect())
}

async fn offsets(path: PathBuf, json: bool) -> Result<()> {
    let config = load(&path)?;
    let coord = open_coordinator(&config.coordination).await?;
    let units = config_units(&config, &*coord).await?;
    if json {
        for u in &units {
            println!("{}", serde_json::to_string(u)?);
        }
    } else {
        println!(
            "{:<30} {:>14} {:>6}  holder",
            "unit", "next offset", "epoch"
        );
        for u in &units {
            println!(
                "{:<30} {:>14} {:>6}  {}",
                u.unit.to_string(),
                u.next_offset.map_or("-".to_string(), |o| o.to_string()),
                u.epoch,
                u.holder.as_deref().unwrap_or("-")
            );
        }
    }
    coord.close().await?;
    Ok(())
}

async fn members(path: PathBuf, json: bool) -> Result<()> {
    let config = load(&path)?;
    let coord = open_coordinator(&config.coordination).await?;
    let (members, _) = coord.watch_members().await?;
    let units = config_units(&config, &*coord).await?;
    coord.close().await?;
    let assigned = |u: &sluice_coord::UnitId| {
        sluice_coord::assignment::owner(u, &members).map(|m| m.id.clone())
    };
    if json {
        let doc = serde_json::json!({
            "members": members.iter().map(|m| serde_json::json!({
                "id": m.id,
                "weight": m.weight,
                "address": m.address,
                "host": m.host,
                "pid": m.pid,
                "joined_at_ms": m.joined_at_ms,
                "holds": units.iter().filter(|u| u.holder.as_deref() == Some(m.id.as_str()))
                    .map(|u| serde_json::json!({"unit": u.unit.to_string(), "epoch": u.epoch}))
                    .collect::<Vec<_>>(),
                "assigned": units.iter().filter(|u| assigned(&u.unit).as_deref() == Some(m.id.as_str()))
                    .map(|u| u.unit.to_string())
                    .collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "units": units.iter().map(|u| serde_json::json!({
                "unit": u.unit.to_string(),
                "topic": u.unit.topic,
                "partition": u.unit.partition,
                "holder": u.holder,
                "assigned": assigned(&u.unit),
                "epoch": u.epoch,
                "next_offset": u.next_offset,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let unheld = units.iter().filter(|u| u.holder.is_none()).count();
    let moving = units
        .iter()
        .filter(|u| u.holder.is_some() && u.holder != assigned(&u.unit))
        .count();
    println!(
        "{} members, {} partitions: {} held, {} without a holder, {} held by a worker other than their assignee (handover in progress)",
        members.len(),
        units.len(),
        units.len() - unheld,
        unheld,
        moving
    );
    println!();
    println!(
        "{:<24} {:>6} {:<22} {:<24} {:>5} {:>8}  partitions held (lease epoch)",
        "member", "weight", "address", "host/pid", "holds", "assigned"
    );
    for m in &members {
        let holds: Vec<String> = units
            .iter()
            .filter(|u| u.holder.as_deref() == Some(m.id.as_str()))
            .map(|u| format!("{} ({})", u.unit, u.epoch))
            .collect();
        let n_assigned = units
            .iter()
            .filter(|u| assigned(&u.unit).as_deref() == Some(m.id.as_str()))
            .count();
        println!(
            "{:<24} {:>6} {:<22} {:<24} {:>5} {:>8}  {}",
            m.id,
            m.weight,
            m.address.as_deref().unwrap_or("-"),
            format!("{}/{}", m.host, m.pid),
            holds.len(),
            n_assigned,
            holds.join(", ")
        );
    }
    let odd: Vec<_> = units
        .iter()
        .filter(|u| u.holder.is_none() || u.holder != assigned(&u.unit))
        .collect();
    if !odd.is_empty() {
        println!();
        println!(
            "{:<30} {:<24} {:<24} {:>6}",
            "partition", "holder", "assigned to", "epoch"
        );
        for u in odd {
            println!(
                "{:<30} {:<24} {:<24} {:>6}",
                u.unit.to_string(),
                u.holder.as_deref().unwrap_or("-"),
                assigned(&u.unit).as_deref().unwrap_or("-"),
                u.epoch
            );
        }
    }
    Ok(())
}

async fn gc(path: PathBuf, min_age_ms: u64) -> Result<()> {
    let config = load(&path)?;
    let storage = Storage::open(&config.storage)?;
    let coord = open_coordinator(&config.coordination).await?;
    for t in &config.tables {
        let report = collect_table_garbage(
            &storage,
            &*coord,
            &t.name,
            GcScope::OlderThan(Duration::from_millis(min_age_ms)),
        )
        .await
        .with_context(|| format!("collecting garbage of table {}", t.name))?;
        println!(
            "table {}: examined {} objects, deleted {} uncommitted, left {} younger than {} ms",
            t.name,
            report.examined,
            report.deleted.len(),
            report.too_young,
            min_age_ms
        );
    }
    coord.close().await?;
    Ok(())
}
