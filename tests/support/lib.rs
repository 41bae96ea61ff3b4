//! Shared machinery of the end-to-end tests: the real services started by `scripts/stack.sh`,
//! sequence-numbered events with known malformed ones, worker processes, and the exactly-once
//! verification that reads the committed Parquet parts back.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int32Type, Int64Type, TimestampMillisecondType, UInt64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_config::Config;
use sluice_coord::{PartKind, PartRecord};
use sluice_sink::Storage;

pub mod fleet;
pub mod web;

/// The services of `scripts/stack.sh`, from the variables `scripts/stack.sh env` prints.
#[derive(Debug, Clone)]
pub struct Stack {
    pub zk: String,
    pub kafka: String,
    pub s3_endpoint: String,
    pub s3_bucket: String,
    pub s3_access_key: String,
    pub s3_secret_key: String,
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests through scripts/test.sh, which starts ZooKeeper, the broker and S3 and exports their addresses")
    })
}

impl Stack {
    pub fn from_env() -> Stack {
        Stack {
            zk: env("SLUICE_ZK"),
            kafka: env("SLUICE_KAFKA"),
            s3_endpoint: env("SLUICE_S3_ENDPOINT"),
            s3_bucket: env("SLUICE_S3_BUCKET"),
            s3_access_key: env("SLUICE_S3_ACCESS_KEY"),
            s3_secret_key: env("SLUICE_S3_SECRET_KEY"),
        }
    }
}

/// A name no other test run uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

/// The `sluice` binary of this build (scripts/test.sh builds it before the tests).
pub fn sluice_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/sluice
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("sluice");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p sluice` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// What should become of one produced event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// A row with this `seq`.
    Row,
    /// A quarantine row with this reason code.
    Quarantine(&'static str),
}

/// One produced event.
#[derive(Debug, Clone)]
pub struct Event {
    pub seq: u64,
    pub partition: i32,
    pub payload: Option<Vec<u8>>,
    pub expect: Expect,
}

pub const MAX_MESSAGE_BYTES: usize = 2048;
const COUNTRIES: &[&str] = &["de", "fr", "us", "br", "jp", "ng"];
const PATHS: &[&str] = &["/", "/docs", "/pricing", "/blog"];
const DAY_MS: i64 = 86_400_000;
const BASE_MS: i64 = 1_795_132_800_000;

/// `n` sequence-numbered events over `partitions` partitions; about one in eight is malformed,
/// in each of the ways the decoder must quarantine.
pub fn events(n: u64, partitions: i32) -> Vec<Event> {
    events_from(0, n, partitions)
}

/// The event time of event `seq` (ms since the epoch): spread over three days.
pub fn event_ts(seq: u64) -> i64 {
    BASE_MS + (seq as i64 * 7_919_000).rem_euclid(3 * DAY_MS)
}

/// The day (`YYYY-MM-DD`) of event `seq`: its part's partition value.
pub fn event_day(seq: u64) -> String {
    chrono::DateTime::from_timestamp_millis(event_ts(seq))
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// [`events`] with sequence numbers `start..start + n`, for a stream produced in rounds.
pub fn events_from(start: u64, n: u64, partitions: i32) -> Vec<Event> {
    (start..start + n)
        .map(|seq| {
            let partition = (seq % partitions as u64) as i32;
            let ts = event_ts(seq);
            let country = COUNTRIES[(seq * 7 % COUNTRIES.len() as u64) as usize];
            let path = PATHS[(seq * 3 % PATHS.len() as u64) as usize];
            let good = format!(r#"{{"seq":{seq},"ts":{ts},"user_id":{},"country":"{country}","path":"{path}","duration_ms":{}.5,"ok":{}}}"#, seq % 97, seq % 1000, seq % 2 == 0);
            let (payload, expect) = match seq % 48 {
                5 => (Some(format!(r#"{{"seq":{seq},"ts":{ts},"country":"de"#)), Expect::Quarantine("not_json")),
                11 => (Some(format!(r#"{{"seq":{seq},"ts":"noon","country":"de"}}"#)), Expect::Quarantine("wrong_type")),
                17 => (Some(format!(r#"{{"seq":{seq},"ts":{ts}}}"#)), Expect::Quarantine("missing_field")),
                23 => (Some(format!(r#"{{"seq":{seq},"ts":{ts},"country":"de","pad":"{}"}}"#, "x".repeat(MAX_MESSAGE_BYTES))), Expect::Quarantine("oversized")),
                29 => (Some(format!("[{seq}]")), Expect::Quarantine("not_object")),
                35 => (None, Expect::Quarantine("empty")),
                _ => (Some(good), Expect::Row),
            };
            Event {
                seq,
                partition,
                payload: payload.map(String::into_bytes),
                expect,
            }
        })
        .collect()
}

fn kafka_config(brokers: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000");
    cfg
}

pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = kafka_config(brokers).create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin
        .create_topics(
            [&NewTopic::new(
                topic,
                partitions,
                TopicReplication::Fixed(1),
            )],
            &opts,
        )
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
    }
    Ok(())
}

/// Produces the events to their partitions; returns (partition, offset) -> seq.
pub async fn produce(
    brokers: &str,
    topic: &str,
    events: &[Event],
) -> Result<HashMap<(i32, i64), u64>> {
    produce_at(brokers, topic, events, None).await
}

/// [`produce`] with every record's Kafka timestamp set to `timestamp_ms` (default: now), for
/// a backlog of a known age.
pub async fn produce_at(
    brokers: &str,
    topic: &str,
    events: &[Event],
    timestamp_ms: Option<i64>,
) -> Result<HashMap<(i32, i64), u64>> {
    let producer: FutureProducer = kafka_config(brokers).create()?;
    let mut located = HashMap::new();
    for chunk in events.chunks(2000) {
        let mut pending = Vec::with_capacity(chunk.len());
        for e in chunk {
            let key = e.seq.to_string();
            let mut record = FutureRecord::<String, Vec<u8>>::to(topic)
                .key(&key)
                .partition(e.partition);
            if let Some(p) = &e.payload {
                record = record.payload(p);
            }
            if let Some(ts) = timestamp_ms {
                record = record.timestamp(ts);
            }
            let delivery = producer
                .send_result(record)
                .map_err(|(err, _)| anyhow::anyhow!("cannot queue seq {}: {err}", e.seq))?;
            pending.push((e.seq, delivery));
        }
        for (seq, delivery) in pending {
            let d = delivery
                .await
                .context("producer dropped")?
                .map_err(|(e, _)| anyhow::anyhow!("delivery of seq {seq} failed: {e}"))?;
            located.insert((d.partition, d.offset), seq);
        }
    }
    ensure!(
        located.len() == events.len(),
        "{} deliveries for {} events",
        located.len(),
        events.len()
    );
    Ok(located)
}

/// Where a test's parts go.
#[derive(Debug, Clone)]
pub enum StorageKind {
    File(PathBuf),
    S3 { prefix: String },
}

/// Writes the config of a test deployment (its own topic, ZooKeeper root and storage).
pub fn write_config(
    dir: &Path,
    stack: &Stack,
    topic: &str,
    root: &str,
    storage: &StorageKind,
    max_rows: usize,
) -> Result<PathBuf> {
    let storage_toml = match storage {
        StorageKind::File(path) => format!("[storage]\nurl = \"file://{}\"\n", path.display()),
        StorageKind::S3 { prefix } => format!(
            "[storage]\nurl = \"s3://{}/{prefix}\"\n[storage.options]\naws_endpoint = \"{}\"\naws_access_key_id = \"{}\"\naws_secret_access_key = \"{}\"\naws_region = \"us-east-1\"\naws_allow_http = \"true\"\naws_virtual_hosted_style_request = \"false\"\n",
            stack.s3_bucket, stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key
        ),
    };
    let text = format!(
        r#"
[worker]
lease_wait_ms = 30000
flush_check_interval_ms = 50

[coordination]
zookeeper_connect = "{zk}"
root = "{root}"
session_timeout_ms = 4000
connect_timeout_ms = 5000

[kafka]
bootstrap_servers = "{kafka}"
metadata_timeout_ms = 5000

[telemetry]
# Any free port: several workers share this machine.
listen_address = "127.0.0.1:0"
refresh_ms = 500

{storage_toml}

[[table]]
name = "events"
topic = "{topic}"
sorting_key = ["country", "path", "ts"]
partition_key = {{ column = "ts", granularity = "day" }}
max_message_bytes = {MAX_MESSAGE_BYTES}
flush = {{ max_rows = {max_rows}, max_age_ms = 300 }}

[[table.column]]
name = "seq"
type = "uint64"
nullable = false
[[table.column]]
name = "ts"
type = "timestamp_ms"
nullable = false
[[table.column]]
name = "user_id"
type = "int64"
[[table.column]]
name = "country"
type = "string"
nullable = false
[[table.column]]
name = "path"
type = "string"
[[table.column]]
name = "duration_ms"
type = "float64"
[[table.column]]
name = "ok"
type = "boolean"
"#,
        zk = stack.zk,
        kafka = stack.kafka,
    );
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text)?;
    Config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(path)
}

/// Runs `sluice <args>` to completion (killing it after `limit`), with extra environment.
pub async fn run_sluice(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Result<Output> {
    let mut cmd = tokio::process::Command::new(sluice_bin());
    cmd.args(args)
        .kill_on_drop(true)
        .env("SLUICE_LOG", "info,rdkafka=warn,zookeeper_client=warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let output = tokio::time::timeout(limit, cmd.output())
        .await
        .with_context(|| format!("sluice {args:?} did not finish within {limit:?}"))??;
    Ok(output)
}

pub fn describe(output: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr (last 4000 chars)\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        {
            let s = String::from_utf8_lossy(&output.stderr);
            s.chars()
                .skip(s.chars().count().saturating_sub(4000))
                .collect::<String>()
        }
    )
}

/// A test deployment's view of what was committed.
pub struct Committed {
    pub config: Config,
    pub storage: Storage,
    pub parts: Vec<PartRecord>,
    pub offsets: BTreeMap<i32, Option<i64>>,
}

pub async fn committed(config_path: &Path, table: &str) -> Result<Committed> {
    let config = Config::load(config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let coord = sluice_worker::open_coordinator(&config.coordination).await?;
    let parts = coord.list_parts(table).await?;
    let offsets = coord
        .list_units()
        .await?
        .into_iter()
        .map(|u| (u.unit.partition, u.next_offset))
        .collect();
    coord.close().await?;
    let storage = Storage::open(&config.storage)?;
    Ok(Committed {
        config,
        storage,
        parts,
        offsets,
    })
}

/// Reads every committed part back and checks the product's promise for `events`: every
/// well-formed event in exactly one row, every malformed one in exactly one quarantine row with
/// its reason, each part sorted by the sorting key and within one day, the committed offsets at
/// the end of every partition, and no object in storage that is not a committed part.
pub async fn verify_exactly_once(
    config_path: &Path,
    events: &[Event],
    located: &HashMap<(i32, i64), u64>,
) -> Result<()> {
    let c = committed(config_path, "events").await?;
    let by_seq: HashMap<u64, &Event> = events.iter().map(|e| (e.seq, e)).collect();
    let mut rows_seen: HashMap<u64, usize> = HashMap::new();
    let mut quarantine_seen: HashMap<u64, usize> = HashMap::new();

    for part in &c.parts {
        let bytes = c.storage.get(&part.path).await?;
        let batches: Vec<_> = ParquetRecordBatchReaderBuilder::try_new(bytes)?
            .build()?
            .collect::<Result<_, _>>()?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        ensure!(
            rows as u64 == part.rows,
            "part {} registers {} rows but holds {rows}",
            part.path,
            part.rows
        );
        match part.kind {
            PartKind::Data => {
                let mut keys: Vec<(String, String, i64)> = Vec::new();
                for b in &batches {
                    let seq = b
                        .column_by_name("seq")
                        .context("seq column")?
                        .as_primitive::<UInt64Type>();
                    let ts = b
                        .column_by_name("ts")
                        .context("ts column")?
                        .as_primitive::<TimestampMillisecondType>();
                    let country = b
                        .column_by_name("country")
                        .context("country column")?
                        .as_string::<i32>();
                    let path = b
                        .column_by_name("path")
                        .context("path column")?
                        .as_string::<i32>();
                    for i in 0..b.num_rows() {
                        *rows_seen.entry(seq.value(i)).or_default() += 1;
                        let day = chrono::DateTime::from_timestamp_millis(ts.value(i))
                            .context("ts")?
                            .format("%Y-%m-%d")
                            .to_string();
                        ensure!(
                            day == part.partition_value,
                            "part {} (partition value {}) holds a row of day {day}",
                            part.path,
                            part.partition_value
                        );
                        keys.push((
                            country.value(i).to_string(),
                            if path.is_null(i) {
                                String::new()
                            } else {
                                path.value(i).to_string()
                            },
                            ts.value(i),
                        ));
                    }
                }
                ensure!(
                    keys.windows(2).all(|w| w[0] <= w[1]),
                    "part {} is not sorted by (country, path, ts)",
                    part.path
                );
            }
            PartKind::Quarantine => {
                for b in &batches {
                    let partition = b
                        .column_by_name("partition")
                        .context("partition column")?
                        .as_primitive::<Int32Type>();
                    let offset = b
                        .column_by_name("offset")
                        .context("offset column")?
                        .as_primitive::<Int64Type>();
                    let reason = b
                        .column_by_name("reason")
                        .context("reason column")?
                        .as_string::<i32>();
                    let raw = b
                        .column_by_name("raw")
                        .context("raw column")?
                        .as_binary::<i32>();
                    for i in 0..b.num_rows() {
                        let seq = *located
                            .get(&(partition.value(i), offset.value(i)))
                            .with_context(|| {
                                format!(
                                    "quarantine row at {}/{} matches no produced event",
                                    partition.value(i),
                                    offset.value(i)
                                )
                            })?;
                        let event = by_seq[&seq];
                        ensure!(
                            matches!(event.expect, Expect::Quarantine(r) if r == reason.value(i)),
                            "seq {seq} quarantined as {}, expected {:?}",
                            reason.value(i),
                            event.expect
                        );
                        ensure!(
                            raw.value(i) == event.payload.as_deref().unwrap_or_default(),
                            "seq {seq}: quarantined raw bytes differ from what was produced"
                        );
                        *quarantine_seen.entry(seq).or_default() += 1;
                    }
                }
            }
        }
    }

    let mut problems = Vec::new();
    for e in events {
        let (r, q) = (
            rows_seen.get(&e.seq).copied().unwrap_or(0),
            quarantine_seen.get(&e.seq).copied().unwrap_or(0),
        );
        let ok = match e.expect {
            Expect::Row => r == 1 && q == 0,
            Expect::Quarantine(_) => r == 0 && q == 1,
        };
        if !ok {
            problems.push(format!(
                "seq {} ({:?}): {r} rows, {q} quarantine rows",
                e.seq, e.expect
            ));
        }
    }
    let unknown: Vec<_> = rows_seen
        .keys()
        .filter(|s| !by_seq.contains_key(s))
        .collect();
    if !unknown.is_empty() {
        problems.push(format!("rows with unknown seqs: {unknown:?}"));
    }
    if !problems.is_empty() {
        bail!(
            "exactly-once violated for {} events, first: {:?}",
            problems.len(),
            &problems[..problems.len().min(10)]
        );
    }

    let mut per_partition: BTreeMap<i32, i64> = BTreeMap::new();
    for &(p, o) in located.keys() {
        let e = per_partition.entry(p).or_default();
        *e = (*e).max(o + 1);
    }
    for (p, end) in &per_partition {
        let got = c.offsets.get(p).copied().flatten();
        ensure!(
            got == Some(*end),
            "partition {p}: committed offset {got:?}, expected {end}"
        );
    }

    let committed_paths: HashSet<&str> = c.parts.iter().map(|p| p.path.as_str()).collect();
    let stored = c.storage.list("events/").await?;
    let orphans: Vec<_> = stored
        .iter()
        .filter(|o| !committed_paths.contains(o.path.as_str()))
        .map(|o| o.path.clone())
        .collect();
    ensure!(
        orphans.is_empty(),
        "objects in storage that are not committed parts: {orphans:?}"
    );
    ensure!(
        stored.len() == c.parts.len(),
        "{} objects stored for {} committed parts",
        stored.len(),
        c.parts.len()
    );
    Ok(())
}

/// Waits until `cond` holds, checking every `every`, for at most `limit`.
pub async fn wait_until<F, Fut>(
    limit: Duration,
    every: Duration,
    what: &str,
    mut cond: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let start = Instant::now();
    loop {
        if cond().await? {
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}

/// A test deployment: its own topic with produced events, ZooKeeper root, storage and config.
pub struct Prepared {
    /// Holds the config and `file://` storage; removed on drop.
    pub dir: tempfile::TempDir,
    pub topic: String,
    pub partitions: i32,
    pub config: PathBuf,
    pub events: Vec<Event>,
    pub located: HashMap<(i32, i64), u64>,
}

/// Creates a fresh topic named after `name`, produces `count` events to it, and writes a config
/// flushing at `max_rows` with the storage `storage` picks for the deployment's directory.
pub async fn prepare(
    name: &str,
    partitions: i32,
    count: u64,
    max_rows: usize,
    storage: impl FnOnce(&Path) -> StorageKind,
) -> Result<Prepared> {
    let stack = Stack::from_env();
    let dir = tempfile::tempdir()?;
    let topic = unique(name);
    create_topic(&stack.kafka, &topic, partitions).await?;
    let events = events(count, partitions);
    let located = produce(&stack.kafka, &topic, &events).await?;
    let storage = storage(dir.path());
    let config = write_config(
        dir.path(),
        &stack,
        &topic,
        &format!("/sluice-test/{topic}"),
        &storage,
        max_rows,
    )?;
    Ok(Prepared {
        dir,
        topic,
        partitions,
        config,
        events,
        located,
    })
}

impl Prepared {
    pub fn config_arg(&self) -> &str {
        self.config.to_str().expect("temp paths are UTF-8")
    }

    /// Rewrites the config text.
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) -> Result<()> {
        let text = edit(std::fs::read_to_string(&self.config)?);
        std::fs::write(&self.config, text)?;
        Ok(())
    }

    /// `sluice run --stop-at-end`, which must succeed; returns its output.
    pub async fn run_to_end(&self) -> Result<Output> {
        let out = run_sluice(
            &["run", "--config", self.config_arg(), "--stop-at-end"],
            &[],
            Duration::from_secs(180),
        )
        .await?;
        ensure!(out.status.success(), "worker failed: {}", describe(&out));
        Ok(out)
    }

    /// Produces `n` more events to the topic, numbered after the ones already produced.
    pub async fn produce_more(&mut self, n: u64) -> Result<()> {
        self.produce_more_at(n, None).await
    }

    /// [`Prepared::produce_more`] with the records' Kafka timestamps set to `timestamp_ms`.
    pub async fn produce_more_at(&mut self, n: u64, timestamp_ms: Option<i64>) -> Result<()> {
        let stack = Stack::from_env();
        let more = events_from(self.events.len() as u64, n, self.partitions);
        let located = produce_at(&stack.kafka, &self.topic, &more, timestamp_ms).await?;
        self.events.extend(more);
        self.located.extend(located);
        Ok(())
    }

    /// The end offset of every partition, from what was produced.
    pub fn ends(&self) -> BTreeMap<i32, i64> {
        let mut ends: BTreeMap<i32, i64> = (0..self.partitions).map(|p| (p, 0)).collect();
        for &(p, o) in self.located.keys() {
            let e = ends.entry(p).or_default();
            *e = (*e).max(o + 1);
        }
        ends
    }

    /// [`verify_exactly_once`] for this deployment's events.
    pub async fn verify(&self) -> Result<()> {
        verify_exactly_once(&self.config, &self.events, &self.located).await
    }
}
