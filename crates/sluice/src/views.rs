//! `sluice views`: the views the fleet maintains (the coordinator's view registry), when each
//! went live, and whether its history over the data already there is computed; `sluice views
//! drop NAME` stops maintaining one.

use std::path::PathBuf;

use anyhow::{bail, Result};
use sluice_coord::{LiveView, ViewRegistry};
use sluice_worker::open_coordinator;

use crate::common::{load, now_ms, print_json_lines};

#[derive(clap::Args, Debug)]
pub struct ViewsArgs {
    /// The configuration file: its ZooKeeper.
    #[arg(short, long, env = "SLUICE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// One JSON object per view instead of a table.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Stop maintaining a view: flushes no longer carry it, and it never goes live again under
    /// this name (add it under another name to start over). Its table keeps its data. Remove it
    /// from every worker's configuration afterwards; a worker whose configuration lacks a live
    /// view refuses to start, so drop it first.
    Drop {
        /// The view's name.
        name: String,
    },
}

pub async fn views(args: ViewsArgs) -> Result<()> {
    let Some(path) = &args.config else {
        bail!("--config is required (or SLUICE_CONFIG)");
    };
    let config = load(path)?;
    let coord = open_coordinator(&config.coordination).await?;
    let registry = coord.read_views().await?;
    match args.action {
        Some(Action::Drop { name }) => {
            if !registry.applied(&name) {
                bail!("no view `{name}` is live (see `sluice views`)");
            }
            coord.drop_view(registry.version, &name, now_ms()).await?;
            println!("view `{name}` dropped: flushes no longer carry it; remove it from the workers' configurations");
        }
        None if args.json => print_json_lines(registry.views.iter().map(|v| {
            let mut row = serde_json::to_value(v)?;
            row["state"] = state(&registry, v).into();
            serde_json::to_string(&row)
        }))?,
        None => print!("{}", render_table(&registry)),
    }
    coord.close().await?;
    Ok(())
}

/// `live`, `history pending` (with who computes it), `history done (N rows)` or `dropped`.
fn state(registry: &ViewRegistry, v: &LiveView) -> String {
    if v.dropped_at_ms.is_some() {
        return "dropped".into();
    }
    if let Some(h) = registry.histories.get(&v.name) {
        return format!(
            "live, history done ({} rows from {} parts)",
            h.rows, h.source_parts
        );
    }
    if !registry.history_pending(&v.name) {
        return "live".into();
    }
    match registry.history_holders.get(&v.name) {
        Some(w) => format!("live, history computed by {w}"),
        None => "live, history pending".into(),
    }
}

fn render_table(registry: &ViewRegistry) -> String {
    if !registry.exists() {
        return "no view registry yet: it is created when the first worker starts\n".into();
    }
    let mut out = format!(
        "{:<24} {:<20} {:<20} {:<24}  state\n",
        "view", "source", "target", "live since"
    );
    for v in &registry.views {
        let since = chrono::DateTime::from_timestamp_millis(v.activated_at_ms)
            .map_or("-".into(), |t| {
                t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
            });
        out.push_str(&format!(
            "{:<24} {:<20} {:<20} {:<24}  {}\n",
            v.name,
            v.source,
            v.target,
            since,
            state(registry, v)
        ));
    }
    out
}
