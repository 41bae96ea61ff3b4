//! `sluice backfill`: check a snapshot against the table and the topic, and show backfills.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use sluice_backfill::{plan, Snapshot};
use sluice_coord::{BackfillStatus, CoordError, Coordinator, UnitId};
use sluice_worker::open_coordinator;

use crate::common::{load, now_ms, print_json_lines};

#[derive(clap::Args, Debug)]
pub struct BackfillArgs {
    #[command(subcommand)]
    command: BackfillCommand,
}

#[derive(clap::Subcommand, Debug)]
enum BackfillCommand {
    /// Check a snapshot without loading it: the manifest, every file's SHA-256, the table,
    /// and each partition's offset against what the topic holds and what was committed. Reads
    /// the files whole; claims and writes nothing.
    Check(CheckArgs),
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
        BackfillCommand::Status(a) => status(a).await,
    }
}

async fn check(args: CheckArgs) -> Result<()> {
    let config = load(&args.config)?;
    let snapshot = Snapshot::load(&args.snapshot)?;
    let verifying = snapshot.clone();
    let bytes = tokio::task::spawn_blocking(move || verifying.verify_files())
        .await
        .context("verifying the snapshot's files")??;
    println!(
        "snapshot {}: {} files, {bytes} bytes, every SHA-256 matches",
        args.snapshot.display(),
        snapshot.files.len()
    );
    let id = args
        .id
        .unwrap_or_else(|| format!("{}-{}", snapshot.table, &snapshot.sha256[..12]));
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
                "files_staged": b.staged.len(),
                "rows_staged": b.staged.values().map(|f| f.rows).sum::<u64>(),
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
        "backfill", "table", "state", "files", "rows staged"
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
            format!("{}/{}", b.staged.len(), plan.files),
            b.staged.values().map(|f| f.rows).sum::<u64>(),
            offsets.join(" ")
        );
    }
    Ok(())
}

fn state_of(b: &BackfillStatus) -> String {
    match (&b.state.handed_off_at_ms, &b.holder) {
        (Some(_), _) => "handed off".to_string(),
        (None, Some(h)) => format!("running ({h})"),
        (None, None) => "stopped; resumable".to_string(),
    }
}
