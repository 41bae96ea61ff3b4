//! Shared machinery of the end-to-end tests: the real services started by `scripts/stack.sh`,
//! test deployments (a topic with the test kit's events produced to it, a ZooKeeper root,
//! storage and a config with the shared events table), worker processes, and the test kit's
//! exactly-once checker run against what a deployment committed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use sluice_config::Config;
use sluice_coord::PartRecord;
use sluice_sink::Storage;
use sluice_testkit::exactly_once::{self, Objects, Produced};

pub mod aggregates;
pub mod ansible;
pub mod certs;
pub mod ensemble;
pub mod fleet;
pub mod kafka;
pub mod merges;
pub mod outage;
pub mod per_hour;
pub mod private;
pub mod replicas;
pub mod secure_kafka;
pub mod snapshot;
pub mod web;
pub mod zk_proxy;

pub use kafka::{create_topic, produce, produce_at, BrokerTopics};
pub use sluice_testkit::fixture::{
    event_day, event_ts, events, events_from, Event, Expect, MAX_MESSAGE_BYTES,
};
pub use sluice_testkit::unique;

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

/// The workspace root (this crate sits in its `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

/// The `sluice` binary of this build (scripts/test.sh builds it before the tests). Panics when
/// it is missing, or when a source it may be built from changed since cargo last built it,
/// rather than testing an old build; checked once per test process.
pub fn sluice_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test> -> target/<profile>/sluice
        let bin = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .join("sluice");
        let built = last_built(&bin);
        let (changed, source) = newest_source(&workspace_root());
        assert!(
            built >= changed,
            "{} is stale: built {}, but {} changed at {}; run `cargo build --workspace --bins` first (scripts/test.sh does)",
            bin.display(),
            utc(built),
            source.display(),
            utc(changed)
        );
        bin
    })
    .clone()
}

/// When cargo last built the binary or found it up to date. A build that finds nothing to
/// rebuild leaves the binary's mtime alone (after an edit of a file it is not built from: a
/// `#[cfg(test)]` module, the test kit, a test crate's dependency in `Cargo.lock`), but rewrites
/// the dep-info file next to it (`sluice.d`), so that `cargo build --workspace --bins` always
/// clears a stale verdict.
fn last_built(bin: &Path) -> SystemTime {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified());
    let built = modified(bin).unwrap_or_else(|e| {
        panic!(
            "{} is missing ({e}): run `cargo build --workspace --bins` first (scripts/test.sh does)",
            bin.display()
        )
    });
    modified(&bin.with_extension("d")).map_or(built, |checked| built.max(checked))
}

fn utc(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339()
}

/// The newest modification among the files the binary may be built from: everything under
/// `crates/`, and the workspace's `Cargo.toml` and `Cargo.lock`. Files that vanish while being
/// looked at (an editor's temporary files) are skipped.
fn newest_source(root: &Path) -> (SystemTime, PathBuf) {
    let mut newest = (SystemTime::UNIX_EPOCH, PathBuf::new());
    let mut consider = |path: PathBuf| match std::fs::metadata(&path).and_then(|m| m.modified()) {
        Ok(t) if t > newest.0 => newest = (t, path),
        _ => {}
    };
    consider(root.join("Cargo.toml"));
    consider(root.join("Cargo.lock"));
    let mut dirs = vec![root.join("crates")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => dirs.push(entry.path()),
                Ok(_) => consider(entry.path()),
                Err(_) => {}
            }
        }
    }
    newest
}

/// Where a test's parts go.
#[derive(Debug, Clone)]
pub enum StorageKind {
    File(PathBuf),
    S3 { prefix: String },
}

/// Loads and validates a config.
pub fn load_config(path: &Path) -> Result<Config> {
    Ok(Config::load(path)?)
}

/// Where [`write_config`] puts the S3 secret key of a deployment in `dir`.
pub fn s3_secret_file(dir: &Path) -> PathBuf {
    dir.join("s3-secret-key")
}

/// Writes the config of a test deployment (its own topic, ZooKeeper root and storage), with the
/// test kit's events table flushing at `max_rows` rows or 300 ms.
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
        StorageKind::S3 { prefix } => {
            // Secrets are never written in a config: the key is read from a file.
            let secret = s3_secret_file(dir);
            std::fs::write(&secret, &stack.s3_secret_key)?;
            format!(
                "[storage]\nurl = \"s3://{}/{prefix}\"\n[storage.options]\naws_endpoint = \"{}\"\naws_access_key_id = \"{}\"\naws_secret_access_key = {{ file = {:?} }}\naws_region = \"us-east-1\"\naws_allow_http = \"true\"\naws_virtual_hosted_style_request = \"false\"\n",
                stack.s3_bucket,
                stack.s3_endpoint,
                stack.s3_access_key,
                secret.display().to_string()
            )
        }
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
{table}"#,
        zk = stack.zk,
        kafka = stack.kafka,
        table = sluice_testkit::fixture::events_table(topic, max_rows, 300),
    );
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text)?;
    load_config(&path)?;
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

/// Everything a deployment's coordinator registered (the parts of every table of its config
/// and the committed offsets of its topic, the one its tables read), and its storage.
pub(crate) async fn registered(config: &Config) -> Result<(exactly_once::Committed, Objects)> {
    // Read with object_store itself, not Sluice's storage layer (the first endpoint's copies
    // where parts are replicated: `replicas::verify_every_endpoint` checks each).
    let first = config.storage.endpoint_list().remove(0);
    let objects = replicas::raw_objects(&first)?;
    let topic = config
        .tables
        .iter()
        .find_map(|t| t.topic.clone())
        .context("no table of the config reads a topic")?;
    let tables: Vec<String> = config.tables.iter().map(|t| t.name.clone()).collect();
    let coord = sluice_worker::open_coordinator(&config.coordination).await?;
    let read = exactly_once::Committed::read(&*coord, &objects, &topic, &tables).await;
    coord.close().await?;
    Ok((read?, objects))
}

/// What a test deployment committed to one table, its topic's committed offsets, and its storage.
pub struct Registry {
    pub storage: Storage,
    pub parts: Vec<PartRecord>,
    pub offsets: BTreeMap<i32, Option<i64>>,
}

pub async fn committed(config_path: &Path, table: &str) -> Result<Registry> {
    let config = load_config(config_path)?;
    let (c, _) = registered(&config).await?;
    Ok(Registry {
        storage: Storage::open(&config.storage)?,
        parts: c.of(table).to_vec(),
        offsets: c.offsets,
    })
}

/// The test kit's exactly-once check of a deployment for the `events` produced (at `located`):
/// every column of every row of the events table, its quarantine rows, the parts of every table
/// (views' included), the committed offsets, and nothing in storage but committed parts.
pub async fn verify_exactly_once(
    config_path: &Path,
    events: &[Event],
    located: &HashMap<(i32, i64), u64>,
) -> Result<()> {
    let (c, objects) = registered(&load_config(config_path)?).await?;
    exactly_once::verify(
        &c,
        &objects,
        Produced {
            events,
            located,
            backfilled: None,
        },
    )
    .await
}

/// [`verify_exactly_once`] after a backfill: `backfilled` says which snapshot file line each
/// backfilled event was on, which is where its quarantine row, if any, says it came from.
pub async fn verify_backfilled(
    config_path: &Path,
    events: &[Event],
    located: &HashMap<(i32, i64), u64>,
    backfilled: &HashMap<(String, i64), u64>,
) -> Result<()> {
    let (c, objects) = registered(&load_config(config_path)?).await?;
    let produced = Produced {
        events,
        located,
        backfilled: Some(backfilled),
    };
    exactly_once::verify(&c, &objects, produced).await
}

/// A ZooKeeper session of its own on the stack's server, to read znodes directly.
pub async fn zk_client() -> Result<zookeeper_client::Client> {
    let stack = Stack::from_env();
    let connect = zookeeper_client::Client::connector()
        .with_session_timeout(Duration::from_secs(4))
        .connect(&stack.zk);
    tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .context("ZooKeeper did not answer within 10 s")?
        .context("connecting to ZooKeeper")
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
    /// The broker the topic is on (the shared one, or a private one a test restarts).
    pub kafka: String,
}

/// The ZooKeeper root of a deployment reading `topic`.
pub fn zk_root(topic: &str) -> String {
    format!("/sluice-test/{topic}")
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
    prepare_on(
        &Stack::from_env(),
        name,
        partitions,
        count,
        max_rows,
        storage,
    )
    .await
}

/// [`prepare`] against `stack`: the shared stack with private servers in some places
/// ([`Stack::with_zk`], [`Stack::with_s3`], [`Stack::with_kafka`]), for tests that stop them.
pub async fn prepare_on(
    stack: &Stack,
    name: &str,
    partitions: i32,
    count: u64,
    max_rows: usize,
    storage: impl FnOnce(&Path) -> StorageKind,
) -> Result<Prepared> {
    let dir = tempfile::tempdir()?;
    let topic = unique(name);
    create_topic(&stack.kafka, &topic, partitions).await?;
    let events = events(count, partitions);
    let located = produce(&stack.kafka, &topic, &events).await?;
    let storage = storage(dir.path());
    let config = write_config(
        dir.path(),
        stack,
        &topic,
        &zk_root(&topic),
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
        kafka: stack.kafka.clone(),
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

    /// `sluice <args> --config <the deployment's config>`, which must succeed; returns its output.
    pub async fn sluice(&self, args: &[&str]) -> Result<Output> {
        let mut all = args.to_vec();
        all.extend(["--config", self.config_arg()]);
        let out = run_sluice(&all, &[], Duration::from_secs(120)).await?;
        ensure!(
            out.status.success(),
            "sluice {} failed: {}",
            args.join(" "),
            describe(&out)
        );
        Ok(out)
    }

    /// `sluice query --format json --verbose <sql>`: the rows as JSON objects, and stderr (the
    /// parts read).
    pub async fn query(&self, sql: &str) -> Result<(Vec<serde_json::Value>, String)> {
        let out = self
            .sluice(&["query", "--format", "json", "--verbose", sql])
            .await?;
        let rows = String::from_utf8(out.stdout.clone())?
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("query output of `{sql}`"))?;
        Ok((rows, String::from_utf8_lossy(&out.stderr).into_owned()))
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
        let more = events_from(self.events.len() as u64, n, self.partitions);
        let located = produce_at(&self.kafka, &self.topic, &more, timestamp_ms).await?;
        self.events.extend(more);
        self.located.extend(located);
        Ok(())
    }

    /// The end offset of every partition (0 where nothing was produced).
    pub fn ends(&self) -> BTreeMap<i32, i64> {
        let mut ends: BTreeMap<i32, i64> = (0..self.partitions).map(|p| (p, 0)).collect();
        ends.extend(self.produced().ends());
        ends
    }

    /// What was produced, as the exactly-once checker takes it.
    pub fn produced(&self) -> Produced<'_> {
        Produced {
            events: &self.events,
            located: &self.located,
            backfilled: None,
        }
    }

    /// [`verify_exactly_once`] for this deployment's events.
    pub async fn verify(&self) -> Result<()> {
        verify_exactly_once(&self.config, &self.events, &self.located).await
    }

    /// [`Prepared::verify`] with the rows of the events in `nulled` holding a null
    /// `duration_ms` (ingested with a configuration that read it from the wrong field).
    pub async fn verify_nulled(&self, nulled: &std::collections::HashSet<u64>) -> Result<()> {
        let (c, objects) = registered(&load_config(&self.config)?).await?;
        exactly_once::verify_with_nulled(&c, &objects, self.produced(), nulled).await
    }
}
