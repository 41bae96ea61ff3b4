//! `sluice parts`: the committed parts of the config's tables, as the coordinator records them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use sluice_config::Config;
use sluice_coord::{PartKind, PartRecord};
use sluice_worker::open_coordinator;

use crate::common::{load, print_json_lines};

#[derive(clap::Args, Debug)]
pub struct PartsArgs {
    /// The configuration file: its tables and ZooKeeper.
    #[arg(short, long, env = "SLUICE_CONFIG")]
    config: PathBuf,
    /// Only this table [default: all tables of the config].
    #[arg(long)]
    table: Option<String>,
    /// One JSON object per part instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn parts(args: PartsArgs) -> Result<()> {
    let config = load(&args.config)?;
    let tables = selected_tables(&config, &args.config, args.table)?;
    let coord = open_coordinator(&config.coordination).await?;
    for t in tables {
        let mut parts = coord.list_parts(&t).await?;
        parts.sort_by(|a, b| listing_order(a).cmp(&listing_order(b)));
        if args.json {
            print_json_lines(parts.iter().map(serde_json::to_string))?;
        } else {
            print!("{}", render_table(&t, &parts));
        }
    }
    coord.close().await?;
    Ok(())
}

/// The table asked for, refused with the config's table names if it has no such table; else
/// all of them.
fn selected_tables(config: &Config, path: &Path, table: Option<String>) -> Result<Vec<String>> {
    let names = config.tables.iter().map(|t| t.name.as_str());
    match table {
        Some(t) if !names.clone().any(|n| n == t) => bail!(
            "table `{t}` is not in {}; its tables are: {}",
            path.display(),
            names.collect::<Vec<_>>().join(", ")
        ),
        Some(t) => Ok(vec![t]),
        None => Ok(names.map(str::to_string).collect()),
    }
}

/// Data before quarantine, so a table's rows come first; then by partition value and by the
/// source offsets each part covers.
fn listing_order(p: &PartRecord) -> (bool, &str, &str, i32, i64) {
    (
        p.kind == PartKind::Quarantine,
        &p.partition_value,
        &p.topic,
        p.partition,
        p.first_offset,
    )
}

/// A table's totals (the line the tests and scripts read), then one line per part.
fn render_table(table: &str, parts: &[PartRecord]) -> String {
    let (rows, q): (u64, u64) = parts.iter().fold((0, 0), |(r, q), p| match p.kind {
        PartKind::Data => (r + p.rows, q),
        PartKind::Quarantine => (r, q + p.rows),
    });
    let mut out = format!(
        "table {table}: {} parts, {rows} rows, {q} quarantined\n",
        parts.len()
    );
    out.push_str(&format!(
        "  {:<11} {:<13} {:>9} {:>10} {:>23} {:>6}  path\n",
        "kind", "partition", "rows", "bytes", "offsets", "epoch"
    ));
    for p in parts {
        out.push_str(&format!(
            "  {:<11} {:<13} {:>9} {:>10} {:>23} {:>6}  {}\n",
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
        ));
    }
    out
}
