//! `sluice offsets`: each source partition's committed offset, lease epoch and holder.

use std::path::PathBuf;

use anyhow::Result;
use sluice_coord::UnitState;
use sluice_worker::open_coordinator;

use crate::common::{config_units, load, print_json_lines};

#[derive(clap::Args, Debug)]
pub struct OffsetsArgs {
    /// The configuration file: its tables' topics and ZooKeeper.
    #[arg(short, long, env = "SLUICE_CONFIG")]
    config: PathBuf,
    /// One JSON object per partition instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn offsets(args: OffsetsArgs) -> Result<()> {
    let config = load(&args.config)?;
    let coord = open_coordinator(&config.coordination).await?;
    let units = config_units(&config, &*coord).await?;
    if args.json {
        print_json_lines(units.iter().map(serde_json::to_string))?;
    } else {
        print!("{}", render_table(&units));
    }
    coord.close().await?;
    Ok(())
}

fn render_table(units: &[UnitState]) -> String {
    let mut out = format!(
        "{:<30} {:>14} {:>6}  holder\n",
        "unit", "next offset", "epoch"
    );
    for u in units {
        out.push_str(&format!(
            "{:<30} {:>14} {:>6}  {}\n",
            u.unit.to_string(),
            u.next_offset.map_or("-".to_string(), |o| o.to_string()),
            u.epoch,
            u.holder.as_deref().unwrap_or("-")
        ));
    }
    out
}
