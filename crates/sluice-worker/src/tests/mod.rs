//! The worker in-process, with no service running: the in-memory source, the embedded
//! coordinator in memory and `file://` storage in a temporary directory. Each test ends with the
//! exactly-once check of the test kit (every column of every row).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use sluice_config::Config;
use sluice_coord::{assignment, Coordinator, EmbeddedCoordinator, UnitId};
use sluice_sink::Storage;
use sluice_testkit::exactly_once::{self, Committed, Objects, Produced};
use sluice_testkit::fixture::{self, Event};
use sluice_testkit::MemorySource;
use sluice_transform::Views;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{Failpoints, RunOptions, RunSummary, Services, WorkerError};

mod gaps;
mod handover;
mod merges;

const TOPIC: &str = "web";
/// How long any one wait of a test may take before it fails.
const WITHIN: Duration = Duration::from_secs(60);

/// Flush settings a test runs with.
struct Settings {
    partitions: i32,
    max_rows: usize,
    max_age_ms: u64,
    memory_budget_bytes: u64,
    /// The `[merge]` section's settings, as TOML lines.
    merge: &'static str,
    shutdown_deadline_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            partitions: 4,
            max_rows: 100,
            max_age_ms: 50,
            memory_budget_bytes: 64 << 20,
            // Merges only where a test asks for them.
            merge: "enabled = false",
            shutdown_deadline_ms: 30_000,
        }
    }
}

/// One deployment in memory: a topic, a coordinator, storage, and what was produced.
struct Harness {
    dir: tempfile::TempDir,
    /// The config up to its `[merge]` section's settings.
    text: String,
    config: Arc<Config>,
    source: MemorySource,
    partitions: i32,
    coordination: Arc<EmbeddedCoordinator>,
    /// Every session the workers opened, latest last, so a test can end one.
    sessions: Arc<Mutex<Vec<Arc<EmbeddedCoordinator>>>>,
    events: Vec<Event>,
    located: std::collections::HashMap<(i32, i64), u64>,
}

impl Harness {
    fn new(s: Settings) -> Result<Harness> {
        let dir = tempfile::tempdir()?;
        let text = format!(
            r#"
[worker]
memory_budget_bytes = {budget}
flush_check_interval_ms = 20
shutdown_deadline_ms = {deadline}

[coordination]
backend = "embedded"

[kafka]
bootstrap_servers = "in-memory"

[telemetry]
enabled = false

[storage]
url = "file://{data}"

{table}
[merge]
"#,
            budget = s.memory_budget_bytes,
            deadline = s.shutdown_deadline_ms,
            data = dir.path().join("data").display(),
            table = fixture::events_table(TOPIC, s.max_rows, s.max_age_ms),
        );
        let config = Arc::new(Config::from_toml_str(
            &format!("{text}{}", s.merge),
            "worker test",
        )?);
        let source = MemorySource::new();
        source.create_topic(TOPIC, s.partitions);
        Ok(Harness {
            dir,
            text,
            config,
            source,
            partitions: s.partitions,
            coordination: Arc::new(EmbeddedCoordinator::in_memory()),
            sessions: Arc::default(),
            events: Vec::new(),
            located: Default::default(),
        })
    }

    /// Workers started from now on run with these `[merge]` settings.
    fn set_merge(&mut self, merge: &str) -> Result<()> {
        self.config = Arc::new(Config::from_toml_str(
            &format!("{}{merge}", self.text),
            "worker test",
        )?);
        Ok(())
    }

    /// Produces `n` more events, numbered after those already produced.
    fn produce(&mut self, n: u64) {
        for e in fixture::events_from(self.events.len() as u64, n, self.partitions) {
            let offset = self
                .source
                .produce(TOPIC, e.partition, Some(1), e.payload.as_deref());
            self.located.insert((e.partition, offset), e.seq);
            self.events.push(e);
        }
    }

    async fn services(&self) -> Result<Services> {
        let base = Arc::clone(&self.coordination);
        let sessions = Arc::clone(&self.sessions);
        Ok(Services {
            source: Arc::new(self.source.clone()),
            storage: Storage::open(&self.config.storage)?,
            coordination: Box::new(move || {
                let session = Arc::new(base.new_session());
                sessions.lock().unwrap().push(Arc::clone(&session));
                Box::pin(async move { Ok(session as Arc<dyn Coordinator>) })
            }),
            views: Arc::new(Views::compile(&self.config).await?),
        })
    }

    /// Starts a worker as a task; it runs until it stops by itself or is told to shut down.
    async fn spawn(&self, id: &str, stop_at_end: bool) -> Result<Worker> {
        self.spawn_with(id, stop_at_end, self.services().await?)
    }

    /// [`Harness::spawn`] with services made earlier (storage opens only where it is usable).
    fn spawn_with(&self, id: &str, stop_at_end: bool, services: Services) -> Result<Worker> {
        let options = RunOptions {
            worker_id: id.to_string(),
            stop_at_end,
            failpoints: Failpoints::default(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = Box::pin(async move {
            let _ = stopped.await;
        });
        let task = tokio::spawn(crate::run_with(
            Arc::clone(&self.config),
            options,
            services,
            shutdown,
        ));
        Ok(Worker {
            stop: Some(stop),
            task,
        })
    }

    /// A session of the test's own on the coordinator, for reading its state.
    fn observer(&self) -> EmbeddedCoordinator {
        self.coordination.new_session()
    }

    fn ends(&self) -> BTreeMap<i32, i64> {
        self.produced().ends()
    }

    fn produced(&self) -> Produced<'_> {
        Produced {
            events: &self.events,
            located: &self.located,
            backfilled: None,
        }
    }

    /// Waits until every partition's committed offset is at the end of what was produced.
    async fn all_committed(&self) -> Result<()> {
        let ends = self.ends();
        let c = self.observer();
        wait_for("every partition committed to its end", || async {
            let units = c.list_units().await?;
            Ok(ends.iter().all(|(&p, &end)| {
                units
                    .iter()
                    .any(|u| u.unit.partition == p && u.next_offset == Some(end))
            }))
        })
        .await
    }

    /// The exactly-once check over everything committed.
    async fn verify(&self) -> Result<Committed> {
        let c = self.observer();
        let tables: Vec<String> = self.config.tables.iter().map(|t| t.name.clone()).collect();
        let storage = Storage::open(&self.config.storage)?;
        let (store, root) = storage.object_store();
        let objects = Objects::new(store, root.clone());
        let committed = Committed::read(&c, &objects, TOPIC, &tables).await?;
        exactly_once::verify(&committed, &objects, self.produced()).await?;
        Ok(committed)
    }
}

/// A worker running as a task.
struct Worker {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<RunSummary, WorkerError>>,
}

impl Worker {
    /// Asks for a graceful shutdown (as SIGTERM does) and waits for the run's summary.
    async fn shut_down(mut self) -> Result<RunSummary> {
        drop(self.stop.take());
        self.finish().await
    }

    /// Waits for the run to end by itself.
    async fn finish(self) -> Result<RunSummary> {
        let joined = tokio::time::timeout(WITHIN, self.task)
            .await
            .context("the worker did not stop in time")?;
        Ok(joined??)
    }
}

/// Polls `cond` until it holds, failing after [`WITHIN`]: a deadline on an observed condition,
/// not a sleep standing in for one.
async fn wait_for<F, Fut>(what: &str, mut cond: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + WITHIN;
    while !cond().await? {
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_at_end_commits_everything_once_and_stops() -> Result<()> {
    let mut h = Harness::new(Settings::default())?;
    h.produce(700);
    let summary = h.spawn("solo", true).await?.finish().await?;
    ensure!(
        summary.events == 700,
        "consumed {} of 700 events",
        summary.events
    );
    ensure!(summary.rejoins == 0, "rejoined {} times", summary.rejoins);
    h.verify().await?;
    // A second run finds everything committed and reads nothing more.
    let again = h.spawn("solo", true).await?.finish().await?;
    ensure!(
        again.events == 0,
        "the second run consumed {} events",
        again.events
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_budget_alone_forces_flushes() -> Result<()> {
    const BUDGET: u64 = 40_000;
    let mut h = Harness::new(Settings {
        max_rows: 1_000_000,
        max_age_ms: 3_600_000,
        memory_budget_bytes: BUDGET,
        ..Settings::default()
    })?;
    h.produce(3_000);
    let summary = h.spawn("solo", true).await?.finish().await?;
    let committed = h.verify().await?;
    let raw: u64 = h
        .events
        .iter()
        .map(|e| e.payload.as_ref().map_or(0, |p| p.len() as u64))
        .sum();
    ensure!(
        summary.commits >= raw / BUDGET,
        "{} commits for {raw} bytes under a {BUDGET}-byte budget",
        summary.commits
    );
    ensure!(
        committed.of("events").len() as u64 >= summary.commits,
        "fewer parts than commits"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_between_two_sessions_moves_only_the_newcomers_partitions() -> Result<()> {
    let mut h = Harness::new(Settings {
        partitions: 8,
        ..Settings::default()
    })?;
    h.produce(800);
    let a = h.spawn("worker-a", false).await?;
    h.all_committed().await?;
    let before = h.observer().list_units().await?;

    let b = h.spawn("worker-b", false).await?;
    let c = h.observer();
    // Settled: both are members and every partition is held by the worker it is assigned to.
    wait_for("the fleet of two to settle", || async {
        let (members, _) = c.watch_members().await?;
        let units = c.list_units().await?;
        Ok(members.len() == 2
            && units.iter().all(|u| {
                u.holder.is_some()
                    && u.holder.as_deref()
                        == assignment::owner(&u.unit, &members).map(|m| m.id.as_str())
            }))
    })
    .await?;
    let after = c.list_units().await?;
    let moved: Vec<&UnitId> = after
        .iter()
        .filter(|u| u.holder.as_deref() == Some("worker-b"))
        .map(|u| &u.unit)
        .collect();
    ensure!(
        !moved.is_empty(),
        "nothing moved to the newcomer: {after:?}"
    );
    for u in &after {
        let was = before
            .iter()
            .find(|b| b.unit == u.unit)
            .context("unit before")?;
        let handed_over = u.holder.as_deref() == Some("worker-b");
        // A moved partition has a new lease; the others kept theirs.
        ensure!(
            (u.epoch > was.epoch) == handed_over,
            "{}: epoch {} -> {}, holder {:?}",
            u.unit,
            was.epoch,
            u.epoch,
            u.holder
        );
    }
    h.produce(800);
    h.all_committed().await?;
    a.shut_down().await?;
    b.shut_down().await?;
    h.verify().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_session_drops_its_buffers_and_the_next_session_rereads_them() -> Result<()> {
    let mut h = Harness::new(Settings {
        max_rows: 1_000_000,
        max_age_ms: 3_600_000,
        ..Settings::default()
    })?;
    h.produce(500);
    let worker = h.spawn("solo", false).await?;
    // Everything read and buffered, nothing due to flush.
    tokio::time::timeout(WITHIN, h.source.consumed(500))
        .await
        .context("the worker did not read the events")?;
    let first = h
        .sessions
        .lock()
        .unwrap()
        .last()
        .cloned()
        .context("a session")?;
    first.close().await?;
    // The worker notices, rejoins with a new session and takes the leases again.
    let c = h.observer();
    wait_for("the leases under a new session", || async {
        let units = c.list_units().await?;
        Ok(units.len() == 4 && units.iter().all(|u| u.epoch == 2 && u.holder.is_some()))
    })
    .await?;
    ensure!(
        c.list_parts("events").await?.is_empty(),
        "the lost session's buffers were committed"
    );
    // The new session reads everything again from the committed offsets (none yet).
    tokio::time::timeout(WITHIN, h.source.consumed(1_000))
        .await
        .context("the new session did not read the events again")?;
    // Draining commits what the new session read: all of it, exactly once.
    let summary = worker.shut_down().await?;
    ensure!(summary.rejoins == 1, "{} rejoins", summary.rejoins);
    let committed = h.verify().await?;
    ensure!(
        committed.of("events").iter().all(|p| p.lease_epoch == 2),
        "a part was committed under the lost session's leases"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_under_a_stale_lease_is_refused_and_changes_nothing() -> Result<()> {
    let mut h = Harness::new(Settings::default())?;
    h.produce(60);
    let zombie = Arc::new(h.coordination.new_session());
    let unit = UnitId::new(TOPIC, 0);
    let stale = zombie.acquire_lease(&unit, "zombie").await?;
    zombie.release_lease(&stale).await?;
    let owner = h.observer();
    let current = owner.acquire_lease(&unit, "owner").await?;

    let services = h.services().await?;
    let ctx = crate::flush::FlushContext {
        coord: Arc::clone(&zombie) as Arc<dyn Coordinator>,
        storage: services.storage.clone(),
        failpoints: Failpoints::default(),
        views: None,
        live: Arc::new(crate::views::LiveViews::new(&h.config)),
        health: Arc::new(sluice_telemetry::Health::new()),
    };
    let mut owned = crate::unit::OwnedUnit::new(
        stale,
        &[Arc::new(h.config.tables[0].clone())],
        Some(0),
        None,
    );
    let mut reader = sluice_source::Source::open(
        &h.source,
        &[sluice_source::Assignment {
            topic: TOPIC.into(),
            partition: 0,
            start: 0,
        }],
    )
    .await?;
    let batch = reader.next().await.context("a batch")??;
    for m in batch.iter() {
        owned.push(&m);
    }
    let mut budget = crate::budget::Budget::new(1 << 30);
    let mut tasks = crate::flush::FlushTasks::new();
    owned.start_flush(&ctx, &mut tasks, budget.start_flush(owned.bytes()))?;
    let outcome = tasks.join_next().await.context("the flush task")??;
    ensure!(
        matches!(outcome, Err(WorkerError::LeaseLost { .. })),
        "a stale lease's commit gave {outcome:?}"
    );
    ensure!(
        owner.committed_offset(&unit).await?.is_none(),
        "the refused commit moved the offset"
    );
    ensure!(
        owner.list_parts("events").await?.is_empty(),
        "the refused commit registered parts"
    );
    owner.release_lease(&current).await?;
    Ok(())
}
