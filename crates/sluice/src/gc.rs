//! `sluice gc`: delete the objects under the tables' directories that nothing references and
//! no running worker can still commit.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use sluice_sink::{collect_table_garbage, GcReport, GcScope, Storage};
use sluice_worker::open_coordinator;

use crate::common::load;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Deleted: objects under a table's directory that the registry does not \
    reference (no live record, no sealed manifest, no merge's retired set), older than \
    --min-age-ms, and whose writer can no longer register them: a flushed part once its \
    partition's lease has moved to a later epoch or is free, a merged part or a manifest once \
    its partition value's merge lease has. Never deleted: live and sealed parts, current \
    manifests, parts a merge replaced that are still in their grace period (the merging worker \
    deletes those), and anything that is not a part or a manifest.\n\n\
    A partition value that a merge or a seal changes while its objects are being listed is \
    skipped, and counted; run again to collect it."
)]
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
    let mut result = Ok(());
    // With replication each endpoint is collected on its own: one that was down when a merge
    // deleted what it replaced still holds those copies, and they are collected here.
    let endpoints = storage.each_endpoint();
    'endpoints: for (endpoint, name) in endpoints.iter().zip(storage.endpoint_names()) {
        for t in &config.tables {
            let report = collect_table_garbage(
                endpoint,
                &*coord,
                &t.name,
                GcScope::OlderThan(Duration::from_millis(args.min_age_ms)),
            )
            .await
            .with_context(|| format!("collecting garbage of table {} on endpoint {name}", t.name));
            match report {
                Ok(report) if storage.is_replicated() => {
                    println!(
                        "endpoint {name}: {}",
                        summary(&t.name, &report, args.min_age_ms)
                    )
                }
                Ok(report) => println!("{}", summary(&t.name, &report, args.min_age_ms)),
                Err(e) => {
                    result = Err(e);
                    break 'endpoints;
                }
            }
        }
    }
    let _ = coord.close().await;
    result
}

/// One line per table: what was deleted, and what was left and why.
fn summary(table: &str, r: &GcReport, min_age_ms: u64) -> String {
    let mut line = format!(
        "table {table}: examined {} objects, deleted {} unreferenced; left {} referenced (live or sealed), \
         {} retired (grace period), {} younger than {min_age_ms} ms, {} possibly in flight (their lease \
         may still commit them)",
        r.examined,
        r.deleted.len(),
        r.referenced,
        r.retired,
        r.too_young,
        r.in_flight
    );
    if r.unrecognised > 0 {
        line.push_str(&format!(
            ", {} not parts or manifests (left alone)",
            r.unrecognised
        ));
    }
    if r.skipped_scopes > 0 {
        line.push_str(&format!(
            "; {} partition values changed by a merge or a seal during the pass were skipped: run again",
            r.skipped_scopes
        ));
    }
    line
}
