//! Fleet tests' machinery: worker processes that log to files, and the fleet's state as
//! ZooKeeper holds it (members, lease holders, committed offsets).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use sluice_coord::{assignment, Member, UnitId};

use crate::{load_config, prepare_on, sluice_bin, wait_until, Prepared, Stack, StorageKind};

/// A fresh deployment with `file://` storage and a `logs/` directory for its workers.
pub async fn deployment(
    name: &str,
    partitions: i32,
    events: u64,
    max_rows: usize,
) -> Result<Prepared> {
    deployment_on(
        &Stack::from_env(),
        name,
        partitions,
        events,
        max_rows,
        |dir| StorageKind::File(dir.join("data")),
    )
    .await
}

/// [`deployment`] with the config's ZooKeeper and S3 taken from `stack` (see [`prepare_on`]) and
/// the storage `storage` picks, for tests that stop private servers under running workers.
pub async fn deployment_on(
    stack: &Stack,
    name: &str,
    partitions: i32,
    events: u64,
    max_rows: usize,
    storage: impl FnOnce(&Path) -> StorageKind,
) -> Result<Prepared> {
    let d = prepare_on(stack, name, partitions, events, max_rows, storage).await?;
    std::fs::create_dir_all(d.dir.path().join("logs"))?;
    Ok(d)
}

/// Starts a worker of the deployment, logging under its `logs/`.
pub fn spawn(d: &Prepared, id: &str) -> Result<Worker> {
    Worker::spawn(&d.config, id, &[], &d.dir.path().join("logs"))
}

/// Starts a worker of the deployment armed with `failpoint` (`<point>:<n>:stop`), and waits
/// until it has stopped itself there.
pub async fn spawn_frozen(d: &Prepared, id: &str, failpoint: &str) -> Result<Worker> {
    let mut worker = Worker::spawn(
        &d.config,
        id,
        &[("SLUICE_FAILPOINT", failpoint)],
        &d.dir.path().join("logs"),
    )?;
    worker
        .wait_stopped(Duration::from_secs(60))
        .await
        .with_context(|| format!("{id} at {failpoint}"))?;
    Ok(worker)
}

/// A `sluice run` process with its output in a log file.
pub struct Worker {
    pub id: String,
    pub log: PathBuf,
    child: tokio::process::Child,
    pid: u32,
}

impl Worker {
    /// Starts `sluice run --config <config> --worker-id <id>`, logging to `<log_dir>/<id>.log`
    /// (appended to, so a restarted id keeps one log).
    pub fn spawn(config: &Path, id: &str, env: &[(&str, &str)], log_dir: &Path) -> Result<Worker> {
        let config = config.to_str().context("temp paths are UTF-8")?;
        let args = ["run", "--config", config, "--worker-id", id];
        Worker::spawn_args(&args, id, env, log_dir)
    }

    /// Starts `sluice <args>` as process `id`, logging to `<log_dir>/<id>.log` (appended to).
    pub fn spawn_args(
        args: &[&str],
        id: &str,
        env: &[(&str, &str)],
        log_dir: &Path,
    ) -> Result<Worker> {
        let log = log_dir.join(format!("{id}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut cmd = tokio::process::Command::new(sluice_bin());
        cmd.args(args)
            .env("SLUICE_LOG", "info,rdkafka=warn,zookeeper_client=warn")
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn()?;
        let pid = child.id().context("worker pid")?;
        Ok(Worker {
            id: id.to_string(),
            log,
            child,
            pid,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends a signal by name (`TERM`, `KILL`, `STOP`, `CONT`).
    pub fn signal(&self, name: &str) -> Result<()> {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid.to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{name} {} ({}) failed", self.pid, self.id);
        }
        Ok(())
    }

    /// Whether the process is stopped (SIGSTOP), from /proc.
    pub fn is_stopped(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|stat| {
                // The state follows the parenthesised command name.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_string))
            })
            .is_some_and(|state| state == "T" || state == "t")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the process has stopped itself (a failpoint's `stop`), at most `limit`;
    /// fails at once if it exits instead.
    pub async fn wait_stopped(&mut self, limit: Duration) -> Result<()> {
        let id = self.id.clone();
        wait_until(
            limit,
            Duration::from_millis(50),
            &format!("{id} to stop itself"),
            || {
                let (stopped, running, log) =
                    (self.is_stopped(), self.is_running(), self.log_text());
                let id = self.id.clone();
                async move {
                    ensure!(running, "{id} exited instead:\n{}", tail(&log, 4000));
                    Ok(stopped)
                }
            },
        )
        .await
    }

    /// Whether the process has not exited (a stopped one counts as running).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit, at most `limit`.
    pub async fn wait(&mut self, limit: Duration) -> Result<ExitStatus> {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => bail!(
                "worker {} did not exit within {limit:?}; its log:\n{}",
                self.id,
                tail(&self.log_text(), 4000)
            ),
        }
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn terminate(mut self, limit: Duration) -> Result<String> {
        self.signal("TERM")?;
        let status = self.wait(limit).await?;
        let log = self.log_text();
        if !status.success() {
            bail!(
                "worker {} exited with {status:?} after SIGTERM; its log:\n{}",
                self.id,
                tail(&log, 4000)
            );
        }
        Ok(log)
    }

    /// kill -9, and reaps the process.
    pub async fn kill(mut self) -> Result<String> {
        self.signal("KILL")?;
        self.wait(Duration::from_secs(10)).await?;
        Ok(self.log_text())
    }
}

pub fn tail(text: &str, chars: usize) -> String {
    text.chars()
        .skip(text.chars().count().saturating_sub(chars))
        .collect()
}

/// What ZooKeeper says about the fleet of one deployment.
#[derive(Debug, Clone)]
pub struct FleetState {
    pub members: Vec<Member>,
    /// Partition to lease holder.
    pub holders: BTreeMap<i32, Option<String>>,
    /// Partition to committed next offset.
    pub offsets: BTreeMap<i32, Option<i64>>,
}

impl FleetState {
    pub fn member_ids(&self) -> Vec<String> {
        self.members.iter().map(|m| m.id.clone()).collect()
    }

    /// Where weighted rendezvous hashing puts each partition among the current members.
    pub fn assigned(&self, topic: &str, partitions: i32) -> BTreeMap<i32, String> {
        (0..partitions)
            .filter_map(|p| {
                assignment::owner(&UnitId::new(topic, p), &self.members).map(|m| (p, m.id.clone()))
            })
            .collect()
    }

    /// Every partition held by exactly the member rendezvous hashing assigns it to.
    pub fn balanced(&self, topic: &str, partitions: i32) -> bool {
        let assigned = self.assigned(topic, partitions);
        (0..partitions).all(|p| {
            self.holders.get(&p).cloned().flatten().as_ref() == assigned.get(&p)
                && assigned.contains_key(&p)
        })
    }
}

pub async fn fleet_state(config_path: &Path, topic: &str) -> Result<FleetState> {
    let config = load_config(config_path)?;
    let coord = sluice_worker::open_coordinator(&config.coordination).await?;
    let (members, _) = coord.watch_members().await?;
    let units = coord.list_units().await?;
    coord.close().await?;
    let mut holders = BTreeMap::new();
    let mut offsets = BTreeMap::new();
    for u in units.into_iter().filter(|u| u.unit.topic == topic) {
        holders.insert(u.unit.partition, u.holder);
        offsets.insert(u.unit.partition, u.next_offset);
    }
    Ok(FleetState {
        members,
        holders,
        offsets,
    })
}

/// Waits until the members are exactly `ids` and every partition is held by its assignee;
/// returns the holders then.
pub async fn wait_balanced(
    config: &Path,
    topic: &str,
    partitions: i32,
    ids: &[&str],
    limit: Duration,
) -> Result<BTreeMap<i32, String>> {
    let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    want.sort_unstable();
    let last: Arc<Mutex<Option<FleetState>>> = Arc::default();
    let outcome = wait_until(
        limit,
        Duration::from_millis(100),
        "a balanced fleet",
        || {
            let want = want.clone();
            let last = Arc::clone(&last);
            async move {
                let state = fleet_state(config, topic).await?;
                let done = state.member_ids() == want && state.balanced(topic, partitions);
                *last.lock().unwrap() = Some(state);
                Ok(done)
            }
        },
    )
    .await;
    let state = last.lock().unwrap().take().context("no fleet state read")?;
    outcome.with_context(|| {
        format!(
            "members {:?} (want {want:?}), holders {:?}, assigned {:?}",
            state.member_ids(),
            state.holders,
            state.assigned(topic, partitions)
        )
    })?;
    Ok(state
        .holders
        .into_iter()
        .map(|(p, h)| (p, h.unwrap_or_default()))
        .collect())
}

/// Waits until every partition's committed offset reached `ends`; returns how long it took.
pub async fn wait_caught_up(
    config: &Path,
    topic: &str,
    ends: &BTreeMap<i32, i64>,
    limit: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    let last: Arc<Mutex<BTreeMap<i32, Option<i64>>>> = Arc::default();
    let outcome = wait_until(
        limit,
        Duration::from_millis(100),
        "committed offsets at the end",
        || {
            let last = Arc::clone(&last);
            async move {
                let state = fleet_state(config, topic).await?;
                let done = ends.iter().all(|(p, end)| {
                    *end == 0 || state.offsets.get(p).copied().flatten() == Some(*end)
                });
                *last.lock().unwrap() = state.offsets;
                Ok(done)
            }
        },
    )
    .await;
    outcome.with_context(|| format!("committed {:?}, ends {ends:?}", last.lock().unwrap()))?;
    Ok(started.elapsed())
}
