//! `sluice gc`: delete objects that were uploaded but never committed.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use sluice_sink::{collect_table_garbage, GcScope, Storage};
use sluice_worker::open_coordinator;

use crate::common::load;

#[derive(clap::Args, Debug)]
pub struct GcArgs {
    /// The configuration file: its tables, ZooKeeper and storage.
    #[arg(short, long, env = "SLUICE_CONFIG")]
    config: PathBuf,
    /// Leave objects younger than this alone: a running worker may be about to commit them.
    #[arg(long, default_value_t = 3_600_000)]
    min_age_ms: u64,
}

pub async fn gc(args: GcArgs) -> Result<()> {
    let config = load(&args.config)?;
    let storage = Storage::open(&config.storage)?;
    let coord = open_coordinator(&config.coordination).await?;
    for t in &config.tables {
        let report = collect_table_garbage(
            &storage,
            &*coord,
            &t.name,
            GcScope::OlderThan(Duration::from_millis(args.min_age_ms)),
        )
        .await
        .with_context(|| format!("collecting garbage of table {}", t.name))?;
        println!(
            "table {}: examined {} objects, deleted {} uncommitted, left {} younger than {} ms",
            t.name,
            report.examined,
            report.deleted.len(),
            report.too_young,
            args.min_age_ms
        );
    }
    coord.close().await?;
    Ok(())
}
