//! `sluice replay`: rebuild a time range of a table (and of its views) from its topic and swap
//! it in for the parts that held it; roll a replay back; show the replays that can be.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sluice_config::Config;
use sluice_coord::{PartKind, ReplayGeneration};
use sluice_replay::{ReplayError, Report, Run};
use sluice_worker::{open_coordinator, Failpoints};

use crate::common::{load, now_ms, print_json_lines, print_out};

/// The longest wait before a replay stopped by an outage runs again.
const RETRY_MAX_WAIT: Duration = Duration::from_secs(30);

#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    #[command(subcommand)]
    command: ReplayCommand,
}

#[derive(clap::Subcommand, Debug)]
enum ReplayCommand {
    /// Rebuild what a table's topic holds from one time to another (Kafka timestamps) with this
    /// configuration, say after fixing a column's definition, and swap it in for the parts that
    /// held those events, with the table's views, in one atomic change. Ingestion goes on
    /// meanwhile; queries see each scope all old or all new. The range widens to the edges of
    /// the parts it meets (a merged part is replaced whole). The old parts are kept for
    /// `--keep-hours`, during which `sluice replay rollback` restores them.
    Run(RunArgs),
    /// Put a replay's old generation back and remove what it swapped in, in one atomic change.
    /// Possible until the old generation is collected (`--keep-hours` after the replay).
    Rollback(RollbackArgs),
    /// Show the replays whose old generation is kept: their ranges, what they replaced, until
    /// when they can be rolled back.
    Status(StatusArgs),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The configuration file: the table, its views, ZooKeeper, Kafka and storage. Use the
    /// configuration the workers run (a view live in the fleet must be in it).
    #[arg(short, long, env = "SLUICE_CONFIG")]
    config: PathBuf,
    /// The table to replay (not a view's target: replaying its source rebuilds it).
    #[arg(long)]
    table: String,
    /// The first time to replay: RFC 3339 (`2026-11-28T06:00:00Z`) or ms since the epoch,
    /// compared with the Kafka messages' timestamps.
    #[arg(long)]
    from: String,
    /// Where to stop (not included), as --from. Default: what was committed when the replay
    /// started.
    #[arg(long)]
    to: Option<String>,
    /// Names the replay (letters, digits, `-`, `_`). Default: `<table>-` and the start time.
    #[arg(long)]
    id: Option<String>,
    /// How long the old generation is kept for a rollback before workers delete it.
    #[arg(long, default_value_t = 24)]
    keep_hours: u64,
    /// How long to wait for a worker's merge of a scope the replay needs before giving up.
    #[arg(long, default_value_t = 120)]
    lease_wait_s: u64,
}

#[derive(clap::Args, Debug)]
struct RollbackArgs {
    /// The configuration file: its ZooKeeper.
    #[arg(short, long, env = "SLUICE_CONFIG")]
    config: PathBuf,
    /// The replay, as `sluice replay status` lists it.
    #[arg(long)]
    id: String,
    /// How long to wait for a worker's merge of a scope the rollback needs before giving up.
    #[arg(long, default_value_t = 120)]
    lease_wait_s: u64,
}

#[derive(clap::Args, Debug)]
struct StatusArgs {
    /// The configuration file: its ZooKeeper.
    #[arg(short, long, env = "SLUICE_CONFIG")]
    config: PathBuf,
    /// One JSON object per replay instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn replay(args: ReplayArgs) -> Result<()> {
    match args.command {
        ReplayCommand::Run(a) => run(a).await,
        ReplayCommand::Rollback(a) => rollback(a).await,
        ReplayCommand::Status(a) => status(a).await,
    }
}

/// A time as RFC 3339 or ms since the epoch.
fn parse_time(flag: &str, text: &str) -> Result<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .with_context(|| {
            format!(
                "{flag} `{text}` is neither RFC 3339 (2026-11-28T06:00:00Z) nor ms since the epoch"
            )
        })
}

fn holder() -> String {
    format!(
        "replay@{}:{}",
        sluice_worker::hostname(),
        std::process::id()
    )
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

async fn run(args: RunArgs) -> Result<()> {
    let config = Arc::new(load(&args.config)?);
    let from_ms = parse_time("--from", &args.from)?;
    let to_ms = args
        .to
        .as_deref()
        .map(|t| parse_time("--to", t))
        .transpose()?;
    if to_ms.is_some_and(|to| to <= from_ms) {
        bail!("--to must be after --from");
    }
    if config.table(&args.table).is_none() {
        bail!(
            "table `{}` is not in {}; its tables are: {}",
            args.table,
            args.config.display(),
            config
                .tables
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let id = args.id.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            args.table,
            chrono::Utc::now().format("%Y%m%dT%H%M%S")
        )
    });
    let views = sluice_transform::Views::compile(&config).await?;
    let views = (!views.is_empty()).then(|| Arc::new(views));
    let failpoints = Failpoints::parse(std::env::var("SLUICE_FAILPOINT").ok().as_deref())?;
    // Nothing of a run that stopped is visible and its id is not recorded, so an outage is
    // waited out by running it again; a run swapped in already is refused by its id.
    let mut wait = Duration::from_secs(1);
    let report = loop {
        match attempt(&config, &args, &id, (from_ms, to_ms), &views, &failpoints).await {
            Err(e) if is_transient(&e) => {
                tracing::warn!(replay = %id, error = %format!("{e:#}"), retry_in_ms = wait.as_millis() as u64, "the replay stopped on an outage; running it again once ZooKeeper, Kafka and storage answer (nothing of it is visible meanwhile)");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_MAX_WAIT);
            }
            other => break other?,
        }
    };
    print_report(&config, &report);
    Ok(())
}

/// One run with a session of its own.
async fn attempt(
    config: &Arc<Config>,
    args: &RunArgs,
    id: &str,
    (from_ms, to_ms): (i64, Option<i64>),
    views: &Option<Arc<sluice_transform::Views>>,
    failpoints: &Failpoints,
) -> Result<Report> {
    let coord = open_coordinator(&config.coordination).await?;
    let run = Run {
        config: Arc::clone(config),
        table: args.table.clone(),
        from_ms,
        to_ms,
        id: id.to_string(),
        keep_ms: i64::try_from(args.keep_hours.saturating_mul(3_600_000)).unwrap_or(i64::MAX),
        coord: Arc::clone(&coord),
        storage: sluice_sink::Storage::open(&config.storage)?,
        source: Arc::new(sluice_source::KafkaSource::new(config.kafka.clone())),
        views: views.clone(),
        failpoints: failpoints.clone(),
        holder: holder(),
        lease_wait: Duration::from_secs(args.lease_wait_s),
    };
    let outcome = run.run().await;
    let _ = coord.close().await;
    Ok(outcome?)
}

/// Whether a run stopped on an outage (or lost its leases with its session), not a refusal.
fn is_transient(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<ReplayError>()
            .is_some_and(transient_replay)
            || cause
                .downcast_ref::<sluice_coord::CoordError>()
                .is_some_and(|c| {
                    matches!(
                        c,
                        sluice_coord::CoordError::SessionEnded { .. }
                            | sluice_coord::CoordError::Unreachable { .. }
                            | sluice_coord::CoordError::Backend { .. }
                    )
                })
    })
}

fn transient_replay(e: &ReplayError) -> bool {
    use sluice_coord::CoordError as C;
    match e {
        ReplayError::Coordination { source, .. } => matches!(
            **source,
            C::SessionEnded { .. }
                | C::Unreachable { .. }
                | C::Backend { .. }
                | C::Ambiguous { .. }
        ),
        ReplayError::Superseded { source, .. } => matches!(**source, C::SessionEnded { .. }),
        ReplayError::Storage { .. } | ReplayError::Source { .. } | ReplayError::Stopped { .. } => {
            true
        }
        _ => false,
    }
}

fn ranges_text(g: &ReplayGeneration) -> String {
    g.ranges
        .iter()
        .map(|s| format!("{}: {}..{}", s.partition, s.first_offset, s.last_offset))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_report(config: &Config, r: &Report) {
    let g = &r.generation;
    let asked: u64 = r.asked.values().map(|(a, b)| (b - a + 1) as u64).sum();
    let rebuilt: u64 = g
        .ranges
        .iter()
        .map(|s| (s.last_offset - s.first_offset + 1) as u64)
        .sum();
    let views = config.views.iter().filter(|v| v.source == g.table).count();
    let widened = if rebuilt > asked {
        format!(
            ", widened from the {asked} asked to the edges of the parts that straddled the range"
        )
    } else {
        String::new()
    };
    println!(
        "replay `{}` of `{}` swapped in: {rebuilt} offsets rebuilt (partition: first..last {}){widened}; {} rows replaced by {} ({} quarantined), {} parts by {} in the table{}; {:.1} s",
        g.id,
        g.table,
        ranges_text(g),
        r.old_rows,
        r.new_rows,
        r.quarantined,
        g.old.len(),
        g.new.len(),
        if views > 0 { format!(" and its {views} views") } else { String::new() },
        r.elapsed.as_secs_f64()
    );
    println!(
        "the old generation is kept until {}: `sluice replay rollback --id {}` restores it until then",
        rfc3339(g.keep_until_ms),
        g.id
    );
}

async fn rollback(args: RollbackArgs) -> Result<()> {
    let config = load(&args.config)?;
    let coord = open_coordinator(&config.coordination).await?;
    let outcome = sluice_replay::roll_back(
        &*coord,
        &args.id,
        &holder(),
        Duration::from_secs(args.lease_wait_s),
    )
    .await;
    let _ = coord.close().await;
    let g = outcome?;
    println!(
        "replay `{}` of `{}` rolled back: {} parts restored, {} parts of the replay retired (deleted after the grace period)",
        g.id,
        g.table,
        g.old.len(),
        g.new.len()
    );
    Ok(())
}

fn data_rows(records: &[sluice_coord::PartRecord], table: &str) -> u64 {
    records
        .iter()
        .filter(|r| r.table == table && r.kind == PartKind::Data)
        .map(|r| r.rows)
        .sum()
}

async fn status(args: StatusArgs) -> Result<()> {
    let config = load(&args.config)?;
    let coord = open_coordinator(&config.coordination).await?;
    let replays = coord.list_replays().await;
    let _ = coord.close().await;
    let replays = replays?;
    if args.json {
        return print_json_lines(replays.iter().map(|g| {
            serde_json::to_string(&serde_json::json!({
                "id": g.id,
                "table": g.table,
                "from_ms": g.from_ms,
                "to_ms": g.to_ms,
                "ranges": g.ranges,
                "swapped_at_ms": g.swapped_at_ms,
                "keep_until_ms": g.keep_until_ms,
                "old_parts": g.old.len(),
                "new_parts": g.new.len(),
                "old_rows": data_rows(&g.old, &g.table),
                "new_rows": data_rows(&g.new, &g.table),
            }))
        }));
    }
    if replays.is_empty() {
        return print_out("no replay is kept for a rollback\n");
    }
    let now = now_ms();
    let mut out = format!(
        "{:<24} {:<16} {:<20} {:<20} {:<11} {:<15} offsets rebuilt\n",
        "replay", "table", "swapped", "rollback until", "parts", "rows"
    );
    for g in &replays {
        let until = if g.keep_until_ms <= now {
            "due".to_string()
        } else {
            rfc3339(g.keep_until_ms)
        };
        out.push_str(&format!(
            "{:<24} {:<16} {:<20} {:<20} {:<11} {:<15} {}\n",
            g.id,
            g.table,
            rfc3339(g.swapped_at_ms),
            until,
            format!("{} -> {}", g.old.len(), g.new.len()),
            format!(
                "{} -> {}",
                data_rows(&g.old, &g.table),
                data_rows(&g.new, &g.table)
            ),
            ranges_text(g)
        ));
    }
    print_out(&out)
}
