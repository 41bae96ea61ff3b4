//! The merges benchmark (`benches/merges.sh`, `sluice-bench merges`): the same seeded event
//! stream, paced over some tens of seconds into a fresh topic, ingested twice by one worker with
//! tiny flushes: once with `merge.enabled = false`, once with merges on (each run its own
//! ZooKeeper root, storage prefix and topic). While each run ingests, the part registry is
//! sampled every second; afterwards the run with merges waits until every scope was sealed.
//! Then both runs' data are queried, interleaved, with the same one-day `sluice query`.
//!
//! Figures, and where they come from:
//!
//! * **Parts per scope over time**: `Coordinator::list_scopes`, a ZooKeeper read of every scope
//!   znode `<root>/tables/<table>/parts/<value>` whose `numChildren` is the scope's live part
//!   records (what `sluice scopes --json` reports as `live_parts`), once a second.
//! * **Write amplification**: the worker's `/metrics` at the end of the run:
//!   (`sluice_table_bytes_committed_total` + `sluice_merge_bytes_written_total`) /
//!   `sluice_table_bytes_committed_total`; bound: 1 + `merge.max_rewrites`.
//! * **Znodes of the table**: the part records (children of the scope znodes) at catch-up, at
//!   their peak, and once every scope is sealed; plus the `retired` records (replaced objects
//!   waiting out `merge.grace_ms`) and the sealed manifests.
//! * **Query time**: `sluice query --verbose` as a process of its own (wall time, and the time
//!   and parts read it reports), runs of the two data sets interleaved; both must give the same
//!   answer.

mod cli;
mod config;
mod ingest;
mod produce;
mod report;
mod worker;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::convert::Figures;
use cli::{query, same_answer};
use config::query_sql;
use ingest::ingest_run;
pub use report::render;

/// How often the registry is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Where the parts go.
#[derive(Debug, Clone)]
pub enum Store {
    /// `file://<work_dir>/merges/<run>`.
    File,
    /// `s3://<bucket>/merges-<stamp>-<run>` at an S3-compatible endpoint.
    S3 {
        endpoint: String,
        bucket: String,
        access_key: String,
        secret_key: String,
    },
}

#[derive(Debug, Clone)]
pub struct MergesOptions {
    /// The deployment: table, flush policy, `[merge]` (benches/merges.toml).
    pub config: PathBuf,
    pub events: u64,
    /// Events produced per second.
    pub rate: u64,
    pub seed: u64,
    pub partitions: i32,
    pub work_dir: PathBuf,
    pub brokers: String,
    pub zookeeper: String,
    pub store: Store,
    /// The `sluice` binary (workers, topic creation, parts, queries).
    pub sluice: PathBuf,
    /// Runs of the query per data set.
    pub query_runs: usize,
    /// The day the query reads, `YYYY-MM-DD`.
    pub day: String,
    /// How long, after production ends, a run may take to catch up (and, with merges, to seal
    /// every scope).
    pub settle_timeout: Duration,
}

/// One reading of the registry and the worker's counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since production started.
    pub t_s: f64,
    /// The most live part records of one scope.
    pub max_parts: usize,
    /// Live part records of the table (all scopes).
    pub part_records: usize,
    pub scopes: usize,
    pub sealed_scopes: usize,
    /// Rows committed by the worker so far.
    pub rows: u64,
    pub merges: u64,
    /// Partitions ingestion has paused at the hard part limit.
    pub paused: u64,
}

/// Final parts of one merge level.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Level {
    pub level: u32,
    pub parts: u64,
    pub rows: u64,
    pub bytes: u64,
}

/// One ingestion run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunResult {
    pub merges_enabled: bool,
    pub topic: String,
    pub root: String,
    pub storage: String,
    pub config: String,
    pub produce_s: f64,
    /// When every event was committed, since production started.
    pub caught_up_s: Option<f64>,
    /// When every scope was sealed (run with merges).
    pub all_sealed_s: Option<f64>,
    pub samples: Vec<Sample>,
    /// Counters of the worker at the end of the run.
    pub flushed_parts: u64,
    pub flushed_bytes: u64,
    pub merges: u64,
    pub merge_input_parts: u64,
    pub merge_bytes: u64,
    pub merge_failures: u64,
    pub merge_seconds: f64,
    /// Part records at catch-up, at their peak, and at the end; retired records at the end.
    pub records_at_catch_up: usize,
    pub records_peak: usize,
    pub records_end: usize,
    pub retired_end: usize,
    pub scopes_end: usize,
    pub sealed_end: usize,
    /// The parts a reader sees at the end (`sluice parts --json`), by level.
    pub levels: Vec<Level>,
    pub sealed_parts: u64,
    /// The worker's own closing figures (CPU seconds, peak RSS).
    pub worker: Figures,
}

impl RunResult {
    pub fn write_amplification(&self) -> f64 {
        (self.flushed_bytes + self.merge_bytes) as f64 / self.flushed_bytes.max(1) as f64
    }

    pub fn final_parts(&self) -> u64 {
        self.levels.iter().map(|l| l.parts).sum()
    }

    pub fn final_bytes(&self) -> u64 {
        self.levels.iter().map(|l| l.bytes).sum()
    }

    pub fn max_parts_peak(&self) -> usize {
        self.samples.iter().map(|s| s.max_parts).max().unwrap_or(0)
    }
}

/// One run of the query.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct QueryRun {
    /// The process, from spawn to exit.
    pub wall_s: f64,
    /// What `sluice query` reports (config, snapshot, planning, reading, printing).
    pub reported_s: f64,
    pub parts_read: u64,
    pub parts_total: u64,
    pub mb_read: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct QueryFigures {
    pub runs: Vec<QueryRun>,
    /// The answer, as CSV.
    pub answer: String,
}

impl QueryFigures {
    fn stat(&self, f: impl Fn(&QueryRun) -> f64) -> (f64, f64) {
        let mut v: Vec<f64> = self.runs.iter().map(f).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            return (0.0, 0.0);
        }
        let median = if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        (v[0], median)
    }

    /// Min and median wall time.
    pub fn wall(&self) -> (f64, f64) {
        self.stat(|r| r.wall_s)
    }

    /// Min and median of the time the query reports itself.
    pub fn reported(&self) -> (f64, f64) {
        self.stat(|r| r.reported_s)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MergesResults {
    pub events: u64,
    pub rate: u64,
    pub seed: u64,
    pub partitions: i32,
    pub storage: String,
    pub flush_max_rows: u64,
    pub flush_max_age_ms: u64,
    pub fan_in: usize,
    pub max_rewrites: u32,
    pub quiet_after_ms: u64,
    pub sql: String,
    pub without: RunResult,
    pub with: RunResult,
    pub query_without: QueryFigures,
    pub query_with: QueryFigures,
    /// The two data sets gave the same answer.
    pub same_answer: bool,
}

pub fn run(opts: &MergesOptions) -> Result<MergesResults> {
    std::fs::create_dir_all(&opts.work_dir)
        .with_context(|| format!("cannot create {}", opts.work_dir.display()))?;
    let work_dir = std::path::absolute(&opts.work_dir)?;
    let base = sluice_config::Config::load(&opts.config)?;
    let table = base
        .tables
        .first()
        .context("the config has no table")?
        .clone();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    let mut results = MergesResults {
        events: opts.events,
        rate: opts.rate,
        seed: opts.seed,
        partitions: opts.partitions,
        storage: match &opts.store {
            Store::File => "file".into(),
            Store::S3 { endpoint, .. } => format!("s3 ({endpoint})"),
        },
        flush_max_rows: table.flush.max_rows as u64,
        flush_max_age_ms: table.flush.max_age_ms,
        fan_in: base.merge.fan_in,
        max_rewrites: base.merge.max_rewrites,
        quiet_after_ms: base.merge.quiet_after_ms,
        sql: query_sql(&table.name, &opts.day)?,
        ..MergesResults::default()
    };
    for enabled in [false, true] {
        let name = if enabled { "merges" } else { "no-merges" };
        eprintln!(
            "== run {name}: {} events at {}/s into {} partitions, merge.enabled = {enabled}",
            opts.events, opts.rate, opts.partitions
        );
        let run = ingest_run(opts, &runtime, &work_dir, stamp, name, enabled, &table.name)?;
        if enabled {
            results.with = run;
        } else {
            results.without = run;
        }
    }

    eprintln!(
        "== query, {} runs per data set, interleaved: {}",
        opts.query_runs, results.sql
    );
    for i in 0..opts.query_runs {
        for enabled in [false, true] {
            let (run, figures) = if enabled {
                (&results.with, &mut results.query_with)
            } else {
                (&results.without, &mut results.query_without)
            };
            let log = work_dir.join(format!(
                "query-{}-{i}.log",
                if enabled { "merges" } else { "no-merges" }
            ));
            let (q, answer) = query(&opts.sluice, Path::new(&run.config), &results.sql, &log)?;
            figures.runs.push(q);
            figures.answer = answer;
        }
    }
    results.same_answer = same_answer(&results.query_without.answer, &results.query_with.answer);
    Ok(results)
}
