//! `sluice backfill`: check a snapshot against the table and the topic, and show backfills.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use sluice_backfill::{parquet_columns, plan, FileFormat, Report, Run, Snapshot};
use sluice_config::Config;
use sluice_coord::{BackfillStatus, CoordError, Coordinator, UnitId};
use sluice_worker::open_coordinator;
use sluice_worker::Failpoints;

use crate::common::{load, now_ms, print_json_lines};

#[derive(clap::Args, Debug)]
pub struct BackfillArgs {
    #[command(subcommand)]
    command: BackfillCommand,
}

#[derive(clap::Subcommand, Debug)]
enum BackfillCommand {
    /// Load a snapshot into its table and hand the topic's partitions over to the stream: the
    /// events go through the stream's decode, quarantine, views, sort and Parquet, invisible
    /// until one atomic handoff registers them and sets every partition's committed offset to
    /// the snapshot's. Workers leave the partitions alone meanwhile. Run the same command again
    /// to resume after a crash or Ctrl-C: files already staged are not read again.
    Run(RunArgs),
    /// Check a snapshot without loading it: the manifest, every file's SHA-256, the table,
    /// and each partition's offset against what the topic holds and what was committed. Reads
    /// the files whole; claims and writes nothing.
    Check(CheckArgs),
    /// Cancel a backfill that was not handed off: it can no longer hand off, its objects are
    /// deleted, and its partitions go back to the workers (with nothing committed, so they
    /// start where `kafka.start_from` says). Run it again if it stopped half-way.
    Cancel(CancelArgs),
    /// Show the recorded backfills: running (and by whom), waiting for a resume, or handed
    /// over to the stream, with their files staged and each partition's handoff offset.
    Status(StatusArgs),
}

#[derive(clap::Args, Debug)]
struct CheckArgs {
    /// The configuration file: the table, its topic, ZooKeeper and Kafka.
    #[arg(short, long, env = "SLUICE_CONFIG")]
    config: PathBuf,
    /// The snapshot's manifest (JSON: table, offsets per partition, files with their SHA-256).
    #[arg(long)]
    snapshot: PathBuf,
    /// Names the backfill in the registry. Default: `<table>-` and the manifest's SHA-256's
    /// first 12 hex digits.
    #[arg(long)]
    id: Option<String>,
    /// Accept losing the events retention deleted between the snapshot and what the topic
    /// still holds (the gap is recorded); refused without it.
    #[arg(long)]
    accept_gap: bool,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    snapshot: CheckArgs,
    /// Files converted at once. Default: the number of cores.
    #[arg(long)]
    parallel_files: Option<usize>,
}

#[derive(clap::Args, Debug)]
struct CancelArgs {
    /// The configuration file: its ZooKeeper, storage and tables.
    #[arg(short, long, env = "SLUICE_CONFIG")]
    config: PathBuf,
    /// The backfill to cancel, as `sluice backfill status` lists it.
    #[arg(long)]
    id: String,
}

#[derive(clap::Args, Debug)]
struct StatusArgs {
    /// The configuration file: its ZooKeeper.
    #[arg(short, long, env = "SLUICE_CONFIG")]
    config: PathBuf,
    /// One JSON object per backfill instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn backfill(args: BackfillArgs) -> Result<()> {
    match args.command {
        BackfillCommand::Check(a) => check(a).await,
        BackfillCommand::Run(a) => run(a).await,
        BackfillCommand::Cancel(a) => cancel(a).await,
        BackfillCommand::Status(a) => status(a).await,
    }
}

/// Loads the snapshot and checks every file: its SHA-256, and a Parquet file's columns.
async fn verified(config: &Config, args: &CheckArgs) -> Result<(Snapshot, String)> {
    let snapshot = Snapshot::load(&args.snapshot)?;
    let verifying = snapshot.clone();
    let table = config.table(&snapshot.table).cloned();
    let bytes = tokio::task::spawn_blocking(move || {
        let bytes = verifying.verify_files()?;
        if let Some(table) = table {
            for f in verifying
                .files
                .iter()
                .filter(|f| f.format == FileFormat::Parquet)
            {
                parquet_columns(&table, &verifying.location(f))?;
            }
        }
        Ok::<_, sluice_backfill::BackfillError>(bytes)
    })
    .await
    .context("verifying the snapshot's files")??;
    println!(
        "snapshot {}: {} files, {bytes} bytes, every SHA-256 matches",
        args.snapshot.display(),
        snapshot.files.len()
    );
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| format!("{}-{}", snapshot.table, &snapshot.sha256[..12]));
    Ok((snapshot, id))
}

/// The longest wait before a backfill stopped by an outage resumes.
const RESUME_MAX_WAIT: Duration = Duration::from_secs(30);

async fn run(args: RunArgs) -> Result<()> {
    let config = Arc::new(load(&args.snapshot.config)?);
    let (snapshot, id) = verified(&config, &args.snapshot).await?;
    let views = sluice_transform::Views::compile(&config).await?;
    let fixed = Fixed {
        views: (!views.is_empty()).then(|| Arc::new(views)),
        storage: sluice_sink::Storage::open(&config.storage)?,
        failpoints: Failpoints::parse(std::env::var("SLUICE_FAILPOINT").ok().as_deref())?,
    };
    // A backfill resumes where it stopped, so an outage of ZooKeeper or storage is waited out
    // by running it again, as a worker rejoins.
    let mut wait = Duration::from_secs(1);
    let report = loop {
        match attempt(&config, &snapshot, &id, &args, &fixed).await {
            Err(e) if is_transient(&e) => {
                tracing::warn!(backfill = %id, error = %format!("{e:#}"), retry_in_ms = wait.as_millis() as u64, "the backfill stopped on an outage; resuming it once ZooKeeper and storage answer (nothing of it is visible meanwhile)");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RESUME_MAX_WAIT);
            }
            other => break other?,
        }
    };
    if report.already_handed_off {
        println!("backfill `{id}` was handed over to the stream already; nothing to do");
        return Ok(());
    }
    let secs = report.elapsed.as_secs_f64().max(1e-3);
    println!(
        "backfill `{id}` handed over: {} rows, {} quarantined, {} parts ({:.1} MB); this run converted {} files ({} were staged by an earlier run), {:.1} MB in {secs:.1} s: {:.1} MB/s{}",
        report.rows,
        report.quarantined,
        report.parts,
        report.part_bytes as f64 / 1e6,
        report.files_converted,
        report.files_resumed,
        report.bytes_read as f64 / 1e6,
        report.bytes_read as f64 / 1e6 / secs,
        if report.swept > 0 {
            format!("; {} objects an earlier run left unstaged deleted", report.swept)
        } else {
            String::new()
        }
    );
    Ok(())
}

/// What every attempt of a run shares.
struct Fixed {
    views: Option<Arc<sluice_transform::Views>>,
    storage: sluice_sink::Storage,
    failpoints: Failpoints,
}

/// Whether an attempt stopped on an outage (ZooKeeper or storage), not a refusal.
fn is_transient(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<sluice_backfill::BackfillError>()
            .is_some_and(sluice_backfill::BackfillError::is_transient)
            || cause.downcast_ref::<CoordError>().is_some_and(|c| {
                matches!(
                    c,
                    CoordError::SessionEnded { .. }
                        | CoordError::Unreachable { .. }
                        | CoordError::Backend { .. }
                        | CoordError::Ambiguous { .. }
                )
            })
    })
}

/// One attempt: a session of its own, the plan (the recorded one on a resume), the run.
async fn attempt(
    config: &Arc<Config>,
    snapshot: &Snapshot,
    id: &str,
    args: &RunArgs,
    fixed: &Fixed,
) -> Result<Report> {
    let coord = open_coordinator(&config.coordination).await?;
    let outcome = plan_and_run(config, snapshot, id, args, fixed, Arc::clone(&coord)).await;
    let _ = coord.close().await;
    outcome
}

async fn plan_and_run(
    config: &Arc<Config>,
    snapshot: &Snapshot,
    id: &str,
    args: &RunArgs,
    fixed: &Fixed,
    coord: Arc<dyn Coordinator>,
) -> Result<Report> {
    // A resume hands over what was claimed, whatever the topic's retention did since.
    let plan = match coord.read_backfill(id).await? {
        Some(b) if b.state.plan.snapshot_sha256 != snapshot.sha256 => anyhow::bail!(
            "backfill `{id}` was started with another snapshot manifest (SHA-256 {}); resume it with that manifest, or give this snapshot another --id",
            b.state.plan.snapshot_sha256
        ),
        Some(b) => b.state.plan,
        None => {
            let topic = config
                .table(&snapshot.table)
                .and_then(|t| t.topic.clone())
                .unwrap_or_default();
            let retained = retained(config, &topic).await?;
            plan(snapshot, config, id, &retained, args.snapshot.accept_gap, now_ms())?
        }
    };
    let run = Run {
        config: Arc::clone(config),
        snapshot: snapshot.clone(),
        plan,
        coord,
        storage: fixed.storage.clone(),
        views: fixed.views.clone(),
        failpoints: fixed.failpoints.clone(),
        holder: format!(
            "backfill@{}:{}",
            sluice_worker::hostname(),
            std::process::id()
        ),
        parallel_files: args
            .parallel_files
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
    };
    Ok(run.run().await?)
}

async fn cancel(args: CancelArgs) -> Result<()> {
    let config = load(&args.config)?;
    let coord = open_coordinator(&config.coordination).await?;
    let storage = sluice_sink::Storage::open(&config.storage)?;
    let holder = format!(
        "cancel@{}:{}",
        sluice_worker::hostname(),
        std::process::id()
    );
    let outcome = sluice_backfill::cancel(&config, &*coord, &storage, &args.id, &holder).await;
    coord.close().await?;
    let deleted = outcome?;
    println!(
        "backfill `{}` cancelled: {deleted} objects deleted, its partitions given back to the workers",
        args.id
    );
    Ok(())
}

async fn check(args: CheckArgs) -> Result<()> {
    let config = load(&args.config)?;
    let (snapshot, id) = verified(&config, &args).await?;
    let topic = config
        .table(&snapshot.table)
        .and_then(|t| t.topic.clone())
        .unwrap_or_default();
    let retained = retained(&config, &topic).await?;
    let plan = plan(
        &snapshot,
        &config,
        &id,
        &retained,
        args.accept_gap,
        now_ms(),
    )?;
    println!(
        "backfill `{id}` of table `{}`, handing over topic `{}`:",
        plan.table, plan.topic
    );
    for (p, offset) in &plan.offsets {
        let (low, high) = retained[p];
        println!("  partition {p}: the stream starts at {offset} (the topic holds {low}..{high})");
    }
    for (p, gap) in &plan.accepted_gaps {
        println!(
            "  partition {p}: {} events ({}..{}) are in neither the snapshot nor the topic: accepted, recorded as a gap",
            gap.messages(),
            gap.from,
            gap.to
        );
    }
    let coord = open_coordinator(&config.coordination).await?;
    let problems = registry_problems(&*coord, &plan.topic, &plan.id, plan.offsets.keys()).await;
    coord.close().await?;
    let problems = problems?;
    if problems.is_empty() {
        println!("no partition has a committed offset or another backfill's claim: the snapshot can be loaded");
        return Ok(());
    }
    for p in &problems {
        println!("  refused: {p}");
    }
    anyhow::bail!(
        "{} partitions cannot be handed over (see above)",
        problems.len()
    )
}

/// (low, high) watermarks of every partition of `topic`.
async fn retained(
    config: &sluice_config::Config,
    topic: &str,
) -> Result<BTreeMap<i32, (i64, i64)>> {
    let kafka = config.kafka.clone();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let partitions = sluice_source::partitions(&kafka, &topic)?;
        let marks = sluice_source::watermarks(&kafka, &topic, &partitions)?;
        Ok::<_, anyhow::Error>(marks.into_iter().collect())
    })
    .await
    .context("asking Kafka for the topic's partitions")?
}

/// Why partitions of the topic cannot be handed over: a committed offset, another backfill's
/// claim.
async fn registry_problems(
    coord: &dyn Coordinator,
    topic: &str,
    id: &str,
    partitions: impl Iterator<Item = &i32>,
) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let claims: Vec<BackfillStatus> = coord.list_backfills().await?;
    for &p in partitions {
        let unit = UnitId::new(topic, p);
        if let Some(next_offset) = coord.committed_offset(&unit).await? {
            problems.push(CoordError::AlreadyCommitted { unit, next_offset }.to_string());
            continue;
        }
        let other = claims.iter().find(|b| {
            b.state.plan.id != id
                && b.state.handed_off_at_ms.is_none()
                && b.state.plan.topic == topic
                && b.state.plan.offsets.contains_key(&p)
        });
        if let Some(b) = other {
            problems.push(
                CoordError::HandoffPending {
                    unit,
                    backfill: b.state.plan.id.clone(),
                }
                .to_string(),
            );
        }
    }
    Ok(problems)
}

async fn status(args: StatusArgs) -> Result<()> {
    let config = load(&args.config)?;
    let coord = open_coordinator(&config.coordination).await?;
    let listed = coord.list_backfills().await;
    coord.close().await?;
    let mut backfills = listed?;
    backfills.sort_by_key(|b| b.state.plan.created_at_ms);
    if args.json {
        return print_json_lines(backfills.iter().map(|b| {
            serde_json::to_string(&serde_json::json!({
                "id": b.state.plan.id,
                "table": b.state.plan.table,
                "topic": b.state.plan.topic,
                "state": state_of(b),
                "holder": b.holder,
                "files": b.state.plan.files,
                "files_done": files_done(b),
                "rows": rows_of(b),
                "offsets": b.state.plan.offsets,
                "accepted_gaps": b.state.plan.accepted_gaps,
                "handed_off_at_ms": b.state.handed_off_at_ms,
            }))
        }));
    }
    if backfills.is_empty() {
        println!("no backfills recorded");
        return Ok(());
    }
    println!(
        "{:<32} {:<16} {:<24} {:>11} {:>12}  handoff offsets",
        "backfill", "table", "state", "files", "rows"
    );
    for b in &backfills {
        let plan = &b.state.plan;
        let offsets: Vec<String> = plan
            .offsets
            .iter()
            .map(|(p, o)| format!("{p}:{o}"))
            .collect();
        println!(
            "{:<32} {:<16} {:<24} {:>11} {:>12}  {}",
            plan.id,
            plan.table,
            state_of(b),
            format!("{}/{}", files_done(b), plan.files),
            rows_of(b),
            offsets.join(" ")
        );
    }
    Ok(())
}

/// Files staged, or all of them once handed off (the handoff deletes the staged records).
fn files_done(b: &BackfillStatus) -> u64 {
    if b.state.handed_off_at_ms.is_some() {
        u64::from(b.state.plan.files)
    } else {
        b.staged.len() as u64
    }
}

/// Rows of the table staged so far, or registered by the handoff.
fn rows_of(b: &BackfillStatus) -> u64 {
    if b.state.handed_off_at_ms.is_some() {
        b.state.rows
    } else {
        b.staged.values().map(|f| f.rows).sum()
    }
}

fn state_of(b: &BackfillStatus) -> String {
    match (&b.state.handed_off_at_ms, &b.holder) {
        (Some(_), _) => "handed off".to_string(),
        (None, _) if b.state.cancelled_at_ms.is_some() => "cancelling".to_string(),
        (None, Some(h)) => format!("running ({h})"),
        (None, None) => "stopped; resumable".to_string(),
    }
}
