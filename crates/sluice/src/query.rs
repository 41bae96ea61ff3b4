//! `sluice query`: SQL over the committed parts of the configuration's tables.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use arrow::array::RecordBatch;
use clap::{Args, ValueEnum};
use sluice_query::{QueryEngine, Snapshot};
use sluice_sink::Storage;
use sluice_worker::open_coordinator;

#[derive(Args, Debug)]
#[command(
    after_help = "Tables: every table of the config by its name (an aggregating table's \
    partial states merged into final values; its raw states as `states.<table>`), and each \
    table's quarantine as `quarantine.<table>`. Filters on a table's partition key skip the \
    parts of other partition values without reading them; other filters skip row groups by \
    their Parquet statistics.\n\nExamples:\n  sluice query --config my.toml \"SELECT country, \
    count(*) FROM page_views WHERE ts >= '2026-11-20' AND ts < '2026-11-21' GROUP BY country\"\n  \
    sluice query --config my.toml --format csv \"SELECT * FROM quarantine.page_views\""
)]
pub struct QueryArgs {
    /// The configuration file: its tables, ZooKeeper and storage.
    #[arg(short, long, env = "SLUICE_CONFIG")]
    config: PathBuf,
    /// The SQL statement (DataFusion's dialect: PostgreSQL-like).
    sql: String,
    /// How to print the rows.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Also list the parts the query read (to stderr).
    #[arg(long)]
    verbose: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// An aligned text table.
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON object per row and line.
    Json,
}

pub async fn query(args: QueryArgs) -> Result<()> {
    let started = Instant::now();
    let config = crate::common::load(&args.config)?;
    let storage = Storage::open(&config.storage)?;
    let coord = open_coordinator(&config.coordination).await?;
    let snapshot = Snapshot::take(&*coord, &config).await;
    let _ = coord.close().await;
    let snapshot = snapshot.context("reading the committed parts")?;
    let engine = QueryEngine::open(&config, &storage, &snapshot).await?;
    let (schema, batches) = engine.sql(&args.sql).await?;
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Table => {
            let text = arrow::util::pretty::pretty_format_batches_with_schema(schema, &batches)?;
            writeln!(out, "{text}")?;
        }
        Format::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            if batches.is_empty() {
                writer.write(&RecordBatch::new_empty(schema))?;
            }
            for b in &batches {
                writer.write(b)?;
            }
        }
        Format::Json => {
            let mut writer = arrow::json::LineDelimitedWriter::new(&mut out);
            for b in &batches {
                writer.write(b)?;
            }
            writer.finish()?;
        }
    }
    out.flush()?;
    let stats = engine.scan_stats();
    eprintln!(
        "{rows} {} in {:.2} s; read {} of {} parts ({:.1} MB)",
        if rows == 1 { "row" } else { "rows" },
        started.elapsed().as_secs_f64(),
        stats.parts_read,
        stats.parts_total,
        stats.bytes_read as f64 / 1e6
    );
    if args.verbose {
        for p in &stats.paths {
            eprintln!("  read {p}");
        }
    }
    report_corrupt_copies(&storage);
    Ok(())
}

/// Copies skipped because their bytes did not match their part's checksum: the answer came
/// from good copies, and the workers' repair rewrites these (their scrub finds them too).
fn report_corrupt_copies(storage: &Storage) {
    let corrupt = storage.take_corrupt();
    if corrupt.is_empty() {
        return;
    }
    eprintln!(
        "{} corrupt {} skipped (read from other copies; the workers' repair rewrites them):",
        corrupt.len(),
        if corrupt.len() == 1 { "copy" } else { "copies" }
    );
    for (path, endpoint) in corrupt {
        eprintln!("  {path} on endpoint {endpoint}");
    }
}
