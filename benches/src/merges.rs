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

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::ClientContext;
use serde::{Deserialize, Serialize};
use sluice_coord::{Coordinator, ZkCoordinator};
use sluice_source::sample::SampleEvents;

use crate::convert::Figures;

/// How often the registry is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How long a worker may take to answer /readyz.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

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

/// The one-day query: events and total duration per country.
fn query_sql(table: &str, day: &str) -> Result<String> {
    let next = next_day(day)?;
    Ok(format!(
        "SELECT country, count(*) AS events, sum(duration_ms) AS duration_ms FROM {table} \
         WHERE ts >= '{day}' AND ts < '{next}' GROUP BY country ORDER BY country"
    ))
}

/// `YYYY-MM-DD` plus one day.
fn next_day(day: &str) -> Result<String> {
    let parts: Vec<&str> = day.split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        bail!("--day must be YYYY-MM-DD, not {day}");
    };
    let (y, m, d): (i64, u32, u32) = (y.parse()?, m.parse()?, d.parse()?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => bail!("--day {day}: no month {m}"),
    };
    if d == 0 || d > days {
        bail!("--day {day}: no day {d} in that month");
    }
    let (y, m, d) = match (d == days, m == 12) {
        (false, _) => (y, m, d + 1),
        (true, false) => (y, m + 1, 1),
        (true, true) => (y + 1, 1, 1),
    };
    Ok(format!("{y:04}-{m:02}-{d:02}"))
}

/// The config of one run: connection fields pointed at this run's stack, root, storage and
/// topic, and `merge.enabled`.
fn run_config(
    opts: &MergesOptions,
    topic: &str,
    root: &str,
    storage_url: &str,
    enabled: bool,
) -> Result<String> {
    let text = std::fs::read_to_string(&opts.config)
        .with_context(|| format!("cannot read {}", opts.config.display()))?;
    let mut doc: toml::Table = toml::from_str(&text)?;
    let mut section = |name: &str| -> Result<toml::Table> {
        Ok(match doc.remove(name) {
            Some(toml::Value::Table(t)) => t,
            None => toml::Table::new(),
            Some(_) => bail!("`{name}` in {} is not a table", opts.config.display()),
        })
    };
    let mut coordination = section("coordination")?;
    let mut kafka = section("kafka")?;
    let mut merge = section("merge")?;
    coordination.insert("zookeeper_connect".into(), opts.zookeeper.clone().into());
    coordination.insert("root".into(), root.into());
    kafka.insert("bootstrap_servers".into(), opts.brokers.clone().into());
    merge.insert("enabled".into(), enabled.into());
    let mut storage = toml::Table::new();
    storage.insert("url".into(), storage_url.into());
    if let Store::S3 {
        endpoint,
        access_key,
        secret_key,
        ..
    } = &opts.store
    {
        let mut o = toml::Table::new();
        o.insert("aws_endpoint".into(), endpoint.clone().into());
        o.insert("aws_access_key_id".into(), access_key.clone().into());
        o.insert("aws_secret_access_key".into(), secret_key.clone().into());
        o.insert("aws_region".into(), "us-east-1".into());
        o.insert("aws_allow_http".into(), "true".into());
        o.insert("aws_virtual_hosted_style_request".into(), "false".into());
        storage.insert("options".into(), o.into());
    }
    doc.insert("coordination".into(), coordination.into());
    doc.insert("kafka".into(), kafka.into());
    doc.insert("merge".into(), merge.into());
    doc.insert("storage".into(), storage.into());
    if let Some(toml::Value::Array(tables)) = doc.get_mut("table") {
        for t in tables.iter_mut() {
            if let toml::Value::Table(t) = t {
                if t.contains_key("topic") {
                    t.insert("topic".into(), topic.into());
                }
            }
        }
    }
    Ok(toml::to_string(&doc)?)
}

#[allow(clippy::too_many_arguments)]
fn ingest_run(
    opts: &MergesOptions,
    runtime: &tokio::runtime::Runtime,
    work_dir: &Path,
    stamp: u64,
    name: &str,
    enabled: bool,
    table: &str,
) -> Result<RunResult> {
    let topic = format!("merges-{stamp}-{name}");
    let root = format!("/sluice/bench-merges/{stamp}/{name}");
    let storage_url = match &opts.store {
        Store::File => {
            let dir = work_dir.join(format!("data-{name}"));
            let _ = std::fs::remove_dir_all(&dir);
            format!("file://{}", dir.display())
        }
        Store::S3 { bucket, .. } => format!("s3://{bucket}/merges-{stamp}-{name}"),
    };
    let config = work_dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        run_config(opts, &topic, &root, &storage_url, enabled)?,
    )?;
    sluice_config::Config::load(&config)?;
    let mut result = RunResult {
        merges_enabled: enabled,
        topic: topic.clone(),
        root: root.clone(),
        storage: storage_url,
        config: config.display().to_string(),
        ..RunResult::default()
    };

    // The topic first, so the worker finds its partitions at once.
    let created = Command::new(&opts.sluice)
        .args(["produce", "--brokers", &opts.brokers, "--topic", &topic])
        .args(["--partitions", &opts.partitions.to_string(), "--count", "0"])
        .output()?;
    if !created.status.success() {
        bail!(
            "cannot create topic {topic}: {}",
            String::from_utf8_lossy(&created.stderr)
        );
    }

    let port = free_port()?;
    let address = format!("127.0.0.1:{port}");
    let log = work_dir.join(format!("{name}-worker.log"));
    let mut worker = crate::run::spawn(
        Command::new(&opts.sluice)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--worker-id", &format!("bench-{name}")])
            .args(["--listen-address", &address, "--summary-json"])
            .env(
                "SLUICE_LOG",
                std::env::var("SLUICE_LOG").unwrap_or_else(|_| "info".into()),
            ),
        &log,
    )?;
    let outcome = (|| -> Result<()> {
        wait_ready(&mut worker, &address, &log)?;
        let coord = runtime.block_on(ZkCoordinator::connect(
            &opts.zookeeper,
            &root,
            Duration::from_secs(10),
            Duration::from_secs(10),
        ))?;
        let sampled = sample_run(opts, runtime, &coord, &address, table, enabled, &mut result);
        let end = sampled.and_then(|()| {
            let scopes = runtime.block_on(coord.list_scopes(table))?;
            let retired = runtime.block_on(coord.list_retired(table))?;
            Ok((scopes, retired))
        });
        let _ = runtime.block_on(coord.close());
        let (scopes, retired) = end?;
        result.records_end = scopes.iter().map(|s| s.live_parts).sum();
        result.scopes_end = scopes.len();
        result.sealed_end = scopes.iter().filter(|s| s.state.sealed.is_some()).count();
        result.retired_end = retired.len();
        let metrics = http_get(&address, "/metrics")?.1;
        let counter = |name: &str| metric(&metrics, name, Some(table)) as u64;
        result.flushed_parts = counter("sluice_table_parts_written_total");
        result.flushed_bytes = counter("sluice_table_bytes_committed_total");
        result.merges = counter("sluice_merges_total");
        result.merge_input_parts = counter("sluice_merge_input_parts_total");
        result.merge_bytes = counter("sluice_merge_bytes_written_total");
        result.merge_failures = counter("sluice_merge_failures_total");
        result.merge_seconds = metric(&metrics, "sluice_merge_duration_seconds_sum", None);
        Ok(())
    })();
    // Stop the worker whatever happened (SIGTERM: it leaves, drains and prints its figures).
    let stopped = stop_worker(worker, &log);
    outcome?;
    result.worker = stopped?;
    let (levels, sealed_parts) = final_parts(&opts.sluice, &config)?;
    result.levels = levels;
    result.sealed_parts = sealed_parts;
    // The same count as `sluice scopes` makes it, as a check of this one.
    let (records, sealed) = scopes_json(&opts.sluice, &config, table)?;
    if (records, sealed) != (result.records_end, result.sealed_end) {
        bail!(
            "sluice scopes --json reports {records} live records and {sealed} sealed scopes, \
             the registry read {} and {}",
            result.records_end,
            result.sealed_end
        );
    }
    eprintln!(
        "   {} parts flushed ({:.1} MB), {} merges wrote {:.1} MB; {} part records at the end, {} of {} scopes sealed",
        result.flushed_parts,
        result.flushed_bytes as f64 / 1e6,
        result.merges,
        result.merge_bytes as f64 / 1e6,
        result.records_end,
        result.sealed_end,
        result.scopes_end
    );
    Ok(result)
}

/// Produces while sampling every second; then samples until the run has caught up (and, with
/// merges, until every scope is sealed) or the settle timeout passes.
fn sample_run(
    opts: &MergesOptions,
    runtime: &tokio::runtime::Runtime,
    coord: &ZkCoordinator,
    address: &str,
    table: &str,
    enabled: bool,
    result: &mut RunResult,
) -> Result<()> {
    let started = Instant::now();
    let producer = {
        let (brokers, topic) = (opts.brokers.clone(), result.topic.clone());
        let (events, rate, seed) = (opts.events, opts.rate, opts.seed);
        std::thread::spawn(move || produce_paced(&brokers, &topic, events, rate, seed))
    };
    let mut producer = Some(producer);
    let mut deadline: Option<Instant> = None;
    for k in 0u32.. {
        let due = started + SAMPLE_EVERY * k;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if producer.as_ref().is_some_and(|p| p.is_finished()) {
            let handle = producer.take().expect("checked above");
            let secs = handle
                .join()
                .map_err(|_| anyhow::anyhow!("the producer thread panicked"))??;
            result.produce_s = secs;
            deadline = Some(Instant::now() + opts.settle_timeout);
            eprintln!("   produced {} events in {secs:.1} s", opts.events);
        }
        let scopes = runtime.block_on(coord.list_scopes(table))?;
        let metrics = http_get(address, "/metrics")
            .context("the worker stopped answering")?
            .1;
        let sample = Sample {
            t_s: started.elapsed().as_secs_f64(),
            max_parts: scopes.iter().map(|s| s.live_parts).max().unwrap_or(0),
            part_records: scopes.iter().map(|s| s.live_parts).sum(),
            scopes: scopes.len(),
            sealed_scopes: scopes.iter().filter(|s| s.state.sealed.is_some()).count(),
            rows: metric(&metrics, "sluice_table_rows_committed_total", Some(table)) as u64,
            merges: metric(&metrics, "sluice_merges_total", Some(table)) as u64,
            paused: metric(&metrics, "sluice_ingest_paused_partitions", None) as u64,
        };
        let caught_up = producer.is_none() && sample.rows >= opts.events;
        if caught_up && result.caught_up_s.is_none() {
            result.caught_up_s = Some(sample.t_s);
            result.records_at_catch_up = sample.part_records;
            eprintln!(
                "   caught up after {:.1} s: {} part records, at most {} in one scope",
                sample.t_s, sample.part_records, sample.max_parts
            );
        }
        result.records_peak = result.records_peak.max(sample.part_records);
        let all_sealed =
            sample.scopes > 0 && sample.sealed_scopes == sample.scopes && sample.part_records == 0;
        if caught_up && all_sealed && result.all_sealed_s.is_none() {
            result.all_sealed_s = Some(sample.t_s);
            eprintln!("   every scope sealed after {:.1} s", sample.t_s);
        }
        result.samples.push(sample);
        if caught_up && (!enabled || all_sealed) {
            return Ok(());
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            eprintln!(
                "   WARNING: {} within {:.0} s of the end of production; going on with what there is",
                if caught_up {
                    "not every scope was sealed"
                } else {
                    "the worker did not catch up"
                },
                opts.settle_timeout.as_secs_f64()
            );
            return Ok(());
        }
    }
    unreachable!("the sampling loop returns")
}

/// Counts failed deliveries; the producer's own thread calls it.
#[derive(Clone, Default)]
struct Failures(Arc<AtomicU64>);

impl ClientContext for Failures {}

impl ProducerContext for Failures {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `sluice produce`'s events and keys (so the same partitions), `rate` a second; returns the
/// seconds it took.
fn produce_paced(brokers: &str, topic: &str, events: u64, rate: u64, seed: u64) -> Result<f64> {
    let failures = Failures::default();
    let producer: BaseProducer<Failures> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("message.timeout.ms", "60000")
        .create_with_context(failures.clone())
        .context("creating the Kafka producer")?;
    let generator = SampleEvents::new(seed);
    let started = Instant::now();
    let mut payload = String::with_capacity(256);
    for seq in 0..events {
        if seq % 250 == 0 {
            let due = started + Duration::from_secs_f64(seq as f64 / rate.max(1) as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            producer.poll(Duration::ZERO);
        }
        payload.clear();
        generator.write(seq, &mut payload);
        let key = seq.to_string();
        loop {
            match producer.send(BaseRecord::to(topic).payload(&payload).key(&key)) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => bail!("cannot queue event {seq} for {topic}: {e}"),
            }
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .context("waiting for the last deliveries")?;
    let failed = failures.0.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} events were not delivered to {topic}");
    }
    Ok(started.elapsed().as_secs_f64())
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn wait_ready(worker: &mut Child, address: &str, log: &Path) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = worker.try_wait()? {
            bail!(
                "the worker exited ({status}) before it was ready; end of {}:\n{}",
                log.display(),
                tail(log)
            );
        }
        if matches!(http_get(address, "/readyz"), Ok((200, _))) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the worker was not ready within {READY_TIMEOUT:?}; end of {}:\n{}",
                log.display(),
                tail(log)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop_worker(worker: Child, log: &Path) -> Result<Figures> {
    let pid = worker.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status()?;
    if !status.success() {
        bail!("cannot send SIGTERM to the worker (pid {pid})");
    }
    crate::run::finish(worker, log)
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A plain HTTP/1.0 GET: the status and the body.
fn http_get(address: &str, path: &str) -> Result<(u16, String)> {
    let addr: std::net::SocketAddr = address.parse()?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status from {address}{path}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    Ok((status, body))
}

/// The sum of a metric's samples in Prometheus text, those of `table` only if given.
fn metric(text: &str, name: &str, table: Option<&str>) -> f64 {
    let label = table.map(|t| format!("table=\"{t}\""));
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => {
                    let (labels, value) = r.split_once('}')?;
                    (labels, value)
                }
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            if let Some(label) = &label {
                if !labels.split(',').any(|l| l == label) {
                    return None;
                }
            }
            value.trim().parse::<f64>().ok()
        })
        .sum()
}

/// The parts a reader sees (`sluice parts --json`), by level, and how many come from manifests.
fn final_parts(sluice: &Path, config: &Path) -> Result<(Vec<Level>, u64)> {
    let out = Command::new(sluice)
        .arg("parts")
        .arg("--config")
        .arg(config)
        .arg("--json")
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("sluice parts failed ({})", out.status);
    }
    let mut levels: std::collections::BTreeMap<u32, Level> = Default::default();
    let mut sealed = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let p: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("cannot read a part from {line}"))?;
        let level = p["level"].as_u64().unwrap_or(0) as u32;
        let l = levels.entry(level).or_insert(Level {
            level,
            ..Level::default()
        });
        l.parts += 1;
        l.rows += p["rows"].as_u64().unwrap_or(0);
        l.bytes += p["bytes"].as_u64().unwrap_or(0);
        sealed += u64::from(p["sealed"].as_bool().unwrap_or(false));
    }
    Ok((levels.into_values().collect(), sealed))
}

/// `sluice scopes --json`: the table's live part records and sealed scopes.
fn scopes_json(sluice: &Path, config: &Path, table: &str) -> Result<(usize, usize)> {
    let out = Command::new(sluice)
        .arg("scopes")
        .arg("--config")
        .arg(config)
        .args(["--table", table, "--json"])
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("sluice scopes failed ({})", out.status);
    }
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let t = &doc["tables"][0];
    let count = |key: &str| -> Result<usize> {
        t[key]
            .as_u64()
            .map(|n| n as usize)
            .with_context(|| format!("no {key} in sluice scopes --json"))
    };
    Ok((count("live_records")?, count("sealed_scopes")?))
}

/// Runs the query once: its figures, and its answer as CSV.
fn query(sluice: &Path, config: &Path, sql: &str, log: &Path) -> Result<(QueryRun, String)> {
    let started = Instant::now();
    let out = Command::new(sluice)
        .arg("query")
        .arg("--config")
        .arg(config)
        .args(["--verbose", "--format", "csv", sql])
        .output()?;
    let wall_s = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    std::fs::write(log, stderr.as_bytes())?;
    if !out.status.success() {
        bail!("sluice query failed ({}): {stderr}", out.status);
    }
    // "N rows in X s; read A of B parts (C MB)"
    let line = stderr
        .lines()
        .find(|l| l.contains(" parts (") && l.contains("; read "))
        .with_context(|| format!("no figures in the query's output: {stderr}"))?;
    let number = |after: &str, until: &str| -> Result<f64> {
        let rest = line
            .split_once(after)
            .with_context(|| format!("no `{after}` in {line}"))?
            .1;
        let value = rest.split_once(until).map_or(rest, |(v, _)| v);
        value
            .trim()
            .parse()
            .with_context(|| format!("cannot read `{value}` in {line}"))
    };
    let run = QueryRun {
        wall_s,
        reported_s: number(" in ", " s;")?,
        parts_read: number("; read ", " of ")? as u64,
        parts_total: number(" of ", " parts")? as u64,
        mb_read: number(" parts (", " MB)")?,
    };
    let listed = stderr.lines().filter(|l| l.starts_with("  read ")).count() as u64;
    if listed != run.parts_read {
        bail!(
            "sluice query --verbose listed {listed} parts but reported {} read",
            run.parts_read
        );
    }
    Ok((run, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// The same countries and counts, and sums equal but for the order they were added in.
fn same_answer(a: &str, b: &str) -> bool {
    let rows = |s: &str| -> Vec<Vec<String>> {
        s.lines()
            .skip(1)
            .map(|l| l.split(',').map(str::to_string).collect())
            .collect()
    };
    let (a, b) = (rows(a), rows(b));
    !a.is_empty()
        && a.len() == b.len()
        && a.iter().zip(&b).all(|(x, y)| {
            x.len() == 3
                && y.len() == 3
                && x[0] == y[0]
                && x[1] == y[1]
                && match (x[2].parse::<f64>(), y[2].parse::<f64>()) {
                    (Ok(p), Ok(q)) => (p - q).abs() <= 1e-9 * p.abs().max(q.abs()).max(1.0),
                    _ => false,
                }
        })
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// The two series side by side, then the summary.
pub fn render(r: &MergesResults) -> String {
    let (off, on) = (&r.without, &r.with);
    let mut s = String::new();
    s.push_str(&format!(
        "{} events (seed {}) produced at {}/s into {} partitions; flush every {} ms or {} rows; \
         storage {}; merge fan_in {}, max_rewrites {}, quiet_after_ms {}\n\n",
        r.events,
        r.seed,
        r.rate,
        r.partitions,
        r.flush_max_age_ms,
        r.flush_max_rows,
        r.storage,
        r.fan_in,
        r.max_rewrites,
        r.quiet_after_ms
    ));
    s.push_str("== part records per scope over time (ZooKeeper, every second from the start of production)\n");
    s.push_str(&format!(
        "{:>5}  {:>21}  {:>21}  {:>21}  {:>13}\n",
        "t (s)", "max parts per scope", "part records (table)", "rows committed", "with merges"
    ));
    s.push_str(&format!(
        "{:>5}  {:>10} {:>10}  {:>10} {:>10}  {:>10} {:>10}  {:>6} {:>6}\n",
        "", "without", "with", "without", "with", "without", "with", "merges", "sealed"
    ));
    let n = off.samples.len().max(on.samples.len());
    for i in 0..n {
        // A run that ended earlier keeps its last reading (nothing changes without merges once
        // it has caught up); marked with '='.
        let cell = |run: &RunResult, f: &dyn Fn(&Sample) -> String| -> String {
            match run.samples.get(i) {
                Some(x) => f(x),
                None => run
                    .samples
                    .last()
                    .map_or("-".into(), |x| format!("={}", f(x))),
            }
        };
        let t = on
            .samples
            .get(i)
            .or(off.samples.get(i))
            .map_or(i as f64, |x| x.t_s);
        s.push_str(&format!(
            "{:>5.0}  {:>10} {:>10}  {:>10} {:>10}  {:>10} {:>10}  {:>6} {:>6}\n",
            t,
            cell(off, &|x| x.max_parts.to_string()),
            cell(on, &|x| x.max_parts.to_string()),
            cell(off, &|x| x.part_records.to_string()),
            cell(on, &|x| x.part_records.to_string()),
            cell(off, &|x| x.rows.to_string()),
            cell(on, &|x| x.rows.to_string()),
            cell(on, &|x| x.merges.to_string()),
            cell(on, &|x| format!("{}/{}", x.sealed_scopes, x.scopes)),
        ));
    }

    let secs = |v: Option<f64>| v.map_or("never".to_string(), |t| format!("{t:.0} s"));
    s.push_str("\n== summary\n");
    s.push_str(&format!(
        "{:<58} {:>18} {:>18}\n",
        "", "without merges", "with merges"
    ));
    let mut row = |name: &str, a: String, b: String| {
        s.push_str(&format!("{name:<58} {a:>18} {b:>18}\n"));
    };
    row(
        "production took / all committed at",
        format!("{:.0} s / {}", off.produce_s, secs(off.caught_up_s)),
        format!("{:.0} s / {}", on.produce_s, secs(on.caught_up_s)),
    );
    row(
        "max part records in one scope (peak)",
        off.max_parts_peak().to_string(),
        on.max_parts_peak().to_string(),
    );
    row(
        "part records of the table (znodes), at catch-up",
        off.records_at_catch_up.to_string(),
        on.records_at_catch_up.to_string(),
    );
    row(
        "part records of the table (znodes), peak",
        off.records_peak.to_string(),
        on.records_peak.to_string(),
    );
    row(
        "part records at the end / scopes sealed",
        format!(
            "{} / {} of {}",
            off.records_end, off.sealed_end, off.scopes_end
        ),
        format!(
            "{} / {} of {}",
            on.records_end, on.sealed_end, on.scopes_end
        ),
    );
    row("every scope sealed at", "-".into(), secs(on.all_sealed_s));
    row(
        "retired records at the end (replaced, in grace)",
        off.retired_end.to_string(),
        on.retired_end.to_string(),
    );
    row(
        "parts flushed (MB)",
        format!("{} ({:.2})", off.flushed_parts, mb(off.flushed_bytes)),
        format!("{} ({:.2})", on.flushed_parts, mb(on.flushed_bytes)),
    );
    row(
        "merges (parts in; MB written)",
        format!(
            "{} ({}; {:.2})",
            off.merges,
            off.merge_input_parts,
            mb(off.merge_bytes)
        ),
        format!(
            "{} ({}; {:.2})",
            on.merges,
            on.merge_input_parts,
            mb(on.merge_bytes)
        ),
    );
    row(
        "merge time, total (mean per merge)",
        "-".into(),
        format!(
            "{:.1} s ({:.0} ms)",
            on.merge_seconds,
            1e3 * on.merge_seconds / on.merges.max(1) as f64
        ),
    );
    row(
        "write amplification (flushed + merged) / flushed",
        format!("{:.2}", off.write_amplification()),
        format!(
            "{:.2} (bound {})",
            on.write_amplification(),
            1 + r.max_rewrites
        ),
    );
    let levels = |run: &RunResult| -> String {
        run.levels
            .iter()
            .map(|l| format!("L{} {}", l.level, l.parts))
            .collect::<Vec<_>>()
            .join(", ")
    };
    row(
        "parts a reader sees at the end, by level",
        levels(off),
        levels(on),
    );
    row(
        "  of which from sealed manifests; MB",
        format!("{}; {:.2}", off.sealed_parts, mb(off.final_bytes())),
        format!("{}; {:.2}", on.sealed_parts, mb(on.final_bytes())),
    );
    row(
        "worker CPU s / peak RSS",
        format!(
            "{:.1} / {} MiB",
            off.worker.cpu_s,
            off.worker.peak_rss_bytes >> 20
        ),
        format!(
            "{:.1} / {} MiB",
            on.worker.cpu_s,
            on.worker.peak_rss_bytes >> 20
        ),
    );
    let (qa, qb) = (&r.query_without, &r.query_with);
    let parts = |q: &QueryFigures| {
        q.runs.first().map_or("-".into(), |x| {
            format!(
                "{} of {} ({:.2} MB)",
                x.parts_read, x.parts_total, x.mb_read
            )
        })
    };
    row("one-day query: parts read", parts(qa), parts(qb));
    let (a_min, a_med) = qa.wall();
    let (b_min, b_med) = qb.wall();
    row(
        &format!(
            "one-day query, {} runs: wall s, min / median",
            qa.runs.len()
        ),
        format!("{a_min:.3} / {a_med:.3}"),
        format!("{b_min:.3} / {b_med:.3}"),
    );
    let (a_min, a_med) = qa.reported();
    let (b_min, b_med) = qb.reported();
    row(
        "  as sluice query reports it: s, min / median",
        format!("{a_min:.3} / {a_med:.3}"),
        format!("{b_min:.3} / {b_med:.3}"),
    );
    s.push_str(&format!(
        "\nquery: {}\nsame answer from both data sets: {}\n",
        r.sql,
        if r.same_answer { "yes" } else { "NO" }
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_day_rolls_over_months_and_years() {
        assert_eq!(next_day("2026-11-20").unwrap(), "2026-11-21");
        assert_eq!(next_day("2026-11-30").unwrap(), "2026-12-01");
        assert_eq!(next_day("2026-12-31").unwrap(), "2027-01-01");
        assert_eq!(next_day("2028-02-28").unwrap(), "2028-02-29");
        assert!(next_day("2026-02-29").is_err());
    }

    #[test]
    fn metrics_are_summed_by_name_and_table() {
        let text =
            "# HELP x\nsluice_merges_total{table=\"a\"} 3\nsluice_merges_total{table=\"b\"} 4\n\
                    sluice_merges_total_other 9\nsluice_ingest_paused_partitions 2\n";
        assert_eq!(metric(text, "sluice_merges_total", Some("a")), 3.0);
        assert_eq!(metric(text, "sluice_merges_total", None), 7.0);
        assert_eq!(metric(text, "sluice_ingest_paused_partitions", None), 2.0);
    }

    #[test]
    fn answers_compare_sums_loosely() {
        let a = "country,events,duration_ms\nde,2,10.000000000001\nus,3,5\n";
        let b = "country,events,duration_ms\nde,2,10.0\nus,3,5\n";
        assert!(same_answer(a, b));
        assert!(!same_answer(
            a,
            "country,events,duration_ms\nde,3,10\nus,3,5\n"
        ));
    }
}
