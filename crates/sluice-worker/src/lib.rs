//! The worker: the exactly-once loop that wires source, decode, sink and coordination, as one
//! member of a fleet.
//!
//! Read in this order to follow one event:
//! * [`run`]: opens the seams ([`Services`]: the source, storage, coordination); `rejoin.rs`
//!   runs sessions, opening a new one whenever one is lost or ZooKeeper cannot be reached,
//!   without limit, so a worker never needs a restart to recover and never exits on an outage;
//!   before each, `kafka_ready.rs` waits until the brokers answer for every topic.
//! * `session.rs`, `Session::run`: joins the fleet and loops over what can happen next: a batch
//!   from the reader, a membership change, a flush finishing, a tick.
//! * `rebalance.rs`: which partitions are this worker's by weighted rendezvous hashing
//!   ([`sluice_coord::assignment`]), handing over and taking leases; `retention.rs`: events
//!   Kafka deleted before they were read, recorded as retention gaps.
//! * `ingest.rs`, `Ingest::consume`: each message of a batch ([`sluice_source::Reader`]) is
//!   decoded into the buffers of every table reading its topic ([`sluice_decode::TableBuffer`],
//!   owned per partition by `unit.rs`); the flush policies (rows, bytes, age, and the memory
//!   budget of `budget.rs`) start flushes.
//! * `flush.rs`: one flush as a task of its own: the buffers (and the views over them) become
//!   sorted Parquet parts ([`sluice_sink::build_parts`]) off the async runtime, are uploaded,
//!   and are committed together with the partition's next offset in one coordinator commit that
//!   only succeeds under this worker's lease, after the partition's previous flush committed.
//!   The session goes on consuming meanwhile. Uploads are retried through storage outages
//!   (`retry.rs`, reporting to [`Health`]); a commit whose reply was lost is read back.
//! * `merger/`: merges, off the ingest path: the scopes (a table's partition values) this worker
//!   merges, each under its merge lease, with [`sluice_merge`]'s policy and executor; sealing
//!   quiet scopes; deleting replaced objects after the grace period; back-pressure on ingestion
//!   when a scope reaches its hard part limit.
//! * `stop_at_end.rs`: with `--stop-at-end`, when the whole topic is committed up to its end.
//!
//! Exactly-once follows from three facts: parts are invisible until the commit that also moves
//! the offset; a new owner resumes from the committed offset and drops whatever was buffered or
//! uploaded but not committed; and a worker that lost its lease cannot commit.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use sluice_config::{Config, CoordinationBackend, CoordinationConfig};
use sluice_coord::{
    CoordError, Coordinator, Credentials, EmbeddedCoordinator, UnitId, ZkCoordinator, ZkSecurity,
    ZkTls,
};
use sluice_sink::Storage;
use sluice_source::{KafkaSource, Source, SourceError};
use sluice_transform::Views;

mod budget;
mod failpoint;
mod flush;
mod ingest;
mod kafka_ready;
mod merger;
mod rebalance;
mod rejoin;
mod retention;
mod retry;
mod session;
mod stop_at_end;
#[cfg(test)]
mod tests;
mod unit;
mod views;
mod written;

pub use failpoint::Failpoints;
pub use retry::put_until_stored;
pub use sluice_telemetry::{Health, Telemetry};
pub use views::ensure_view_registry;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Coordination(#[from] CoordError),
    #[error(transparent)]
    Source(#[from] sluice_source::SourceError),
    #[error(transparent)]
    Sink(#[from] sluice_sink::SinkError),
    #[error(transparent)]
    Decode(#[from] sluice_decode::DecodeError),
    #[error("{unit} is assigned to this worker but another worker has held its lease for {waited:?}; if that worker is gone, its ZooKeeper session has not expired yet — raise `worker.lease_wait_ms` or stop the other worker")]
    LeaseWait { unit: UnitId, waited: Duration },
    #[error("{unit} is claimed by backfill `{backfill}`, which has not handed it over, so --stop-at-end cannot reach its end: finish the backfill (`sluice backfill run` with its snapshot) or cancel it (`sluice backfill cancel --id {backfill}`)")]
    ClaimedByBackfill { unit: UnitId, backfill: String },
    #[error(
        "lease of {unit} was lost while committing; the buffered events are left to the new owner"
    )]
    LeaseLost { unit: UnitId },
    #[error("the coordination session ended (expired while the worker was paused or cut off, or closed)")]
    SessionLost,
    #[error("an earlier flush of {unit} failed, so the flush from offset {first_offset} did not commit (it would have skipped the earlier one's offsets); the next owner re-reads from the committed offset")]
    PredecessorFailed { unit: UnitId, first_offset: i64 },
    #[error("the reply to the commit of {unit} from offset {first_offset} was lost, and the committed offset is {committed:?}, so it did not happen; the next owner re-reads from there")]
    NotCommitted {
        unit: UnitId,
        first_offset: i64,
        committed: Option<i64>,
    },
    #[error("the source gave no watermarks for {unit}, so there is no offset to start it from")]
    NoWatermarks { unit: UnitId },
    #[error("the source stopped unexpectedly")]
    SourceStopped,
    #[error("a background task ({task}) failed")]
    Task {
        task: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error(transparent)]
    Telemetry(#[from] sluice_telemetry::TelemetryError),
    #[error(transparent)]
    View(#[from] sluice_transform::TransformError),
    #[error("view `{view}` {problem}; fix: give every worker the view's definition the fleet has (`sluice views` shows it), or stop maintaining it with `sluice views drop {view}`")]
    ViewMismatch { view: String, problem: String },
    #[error("invalid failpoint specification `{spec}`: {reason}")]
    Failpoint { spec: String, reason: String },
}

impl WorkerError {
    /// Errors after which the worker rejoins with a new session instead of stopping: it lost
    /// its session or a lease, or coordination failed. A new session starts from what is
    /// committed, so this is always safe; whatever was not committed is re-read.
    pub fn calls_for_rejoin(&self) -> bool {
        matches!(
            self,
            WorkerError::SessionLost
                | WorkerError::LeaseLost { .. }
                | WorkerError::PredecessorFailed { .. }
                | WorkerError::NotCommitted { .. }
                | WorkerError::Coordination(_)
        ) || matches!(self, WorkerError::Source(e) if !matches!(e, SourceError::Client { .. }))
    }
}

/// Now, in Unix milliseconds (what records and logs carry).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The machine's host name, for worker ids and the member record.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "sluice".to_string())
}

/// How a run behaves beyond its config.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub worker_id: String,
    /// Exit once every partition this worker owns is committed up to the high watermark it
    /// had when the worker took it over.
    pub stop_at_end: bool,
    pub failpoints: Failpoints,
}

/// What a run did, for the CLI's closing line.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub events: u64,
    pub event_bytes: u64,
    pub rows: u64,
    pub quarantined: u64,
    pub parts: u64,
    pub part_bytes: u64,
    pub commits: u64,
    pub garbage_collected: usize,
    /// How many times the worker lost its session and rejoined.
    pub rejoins: u64,
    pub elapsed: Duration,
}

/// Opens a new coordination session (each rejoin opens one).
pub type OpenCoordinator =
    Box<dyn Fn() -> BoxFuture<'static, Result<Arc<dyn Coordinator>, CoordError>> + Send + Sync>;

/// What a worker runs against: the seams. [`Services::from_config`] opens the real ones; tests
/// put in-memory ones in.
pub struct Services {
    pub source: Arc<dyn Source>,
    pub storage: Storage,
    pub coordination: OpenCoordinator,
    /// The views, planned against the tables.
    pub views: Arc<Views>,
}

impl Services {
    /// Kafka, the configured storage and coordination backend; every view planned and checked
    /// before anything is consumed, so a bad one refuses start-up.
    pub async fn from_config(config: &Config) -> Result<Services, WorkerError> {
        let mut kafka = config.kafka.clone();
        kafka.properties.insert(
            sluice_config::KAFKA_PREFETCH_PROPERTY.to_string(),
            config.kafka_prefetch_kib().to_string(),
        );
        let coordination = config.coordination.clone();
        Ok(Services {
            source: Arc::new(KafkaSource::new(kafka)),
            storage: Storage::open(&config.storage)?,
            coordination: Box::new(move || {
                let c = coordination.clone();
                Box::pin(async move {
                    let coord = open_coordinator(&c).await?;
                    // A read-only identity can report, not ingest: said at every attempt,
                    // which the session loop retries slowly and shows in `/readyz`.
                    if !coord.may_write() {
                        return Err(CoordError::NotAuthorized {
                            root: c.root.clone(),
                            identity: c
                                .auth
                                .as_ref()
                                .map_or_else(String::new, |a| format!("user `{}`", a.user)),
                            what: "changing anything".to_string(),
                        });
                    }
                    Ok(coord)
                })
            }),
            views: Arc::new(Views::compile(config).await?),
        })
    }
}

/// Opens the coordination backend a config names.
pub async fn open_coordinator(
    config: &CoordinationConfig,
) -> Result<Arc<dyn Coordinator>, CoordError> {
    Ok(match config.backend {
        CoordinationBackend::Zookeeper => Arc::new(
            ZkCoordinator::connect(
                &config.zookeeper_connect,
                &config.root,
                Duration::from_millis(config.session_timeout_ms),
                Duration::from_millis(config.connect_timeout_ms),
                zk_security(config)?,
            )
            .await?,
        ),
        CoordinationBackend::Embedded => Arc::new(EmbeddedCoordinator::open(&config.embedded_dir)?),
    })
}

/// `[coordination.auth]` and `[coordination.tls]` as the ZooKeeper client takes them, the
/// certificates read from their files.
fn zk_security(config: &CoordinationConfig) -> Result<ZkSecurity, CoordError> {
    let credentials = config.auth.as_ref().map(|a| {
        Credentials::new(
            a.user.clone(),
            a.password.expose(),
            a.read_only_user.clone().zip(
                a.read_only_password
                    .as_ref()
                    .map(|p| p.expose().to_string()),
            ),
        )
    });
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).map_err(|e| CoordError::Tls {
            problem: format!("cannot read {}", path.display()),
            source: e.into(),
        })
    };
    let tls = match &config.tls {
        None => None,
        Some(t) => {
            let identity = match (&t.certificate_file, &t.key_file) {
                (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
                _ => None,
            };
            Some(ZkTls::new(read(&t.ca_file)?, identity))
        }
    };
    Ok(ZkSecurity { credentials, tls })
}

/// Runs the worker until `shutdown` resolves (then leaves the fleet and drains: flushes,
/// commits, releases leases), until every owned partition reached its end with `stop_at_end`,
/// or until an error. A lost coordination session is not an error: the worker rejoins with a
/// new one.
pub async fn run(
    config: Arc<Config>,
    options: RunOptions,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
) -> Result<RunSummary, WorkerError> {
    let services = Services::from_config(&config).await?;
    run_with(config, options, services, shutdown).await
}

/// [`run`] against the given seams.
pub async fn run_with(
    config: Arc<Config>,
    options: RunOptions,
    services: Services,
    mut shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
) -> Result<RunSummary, WorkerError> {
    let started = Instant::now();
    if !services.views.is_empty() {
        tracing::info!(views = ?services.views, "views planned");
    }
    let health = Arc::new(Health::new());
    let telemetry = start_telemetry(&config, &options, &health).await?;
    let sampler = telemetry
        .as_ref()
        .map(|t| tokio::spawn(Arc::clone(t).run_sampler()));
    let outcome = rejoin::run_sessions(
        &config,
        &options,
        &services,
        rejoin::Observers { telemetry, health },
        &mut shutdown,
    )
    .await;
    if let Some(s) = sampler {
        s.abort();
    }
    let mut summary = outcome?;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Starts the HTTP endpoint if enabled; returns the shared state.
async fn start_telemetry(
    config: &Arc<Config>,
    options: &RunOptions,
    health: &Arc<Health>,
) -> Result<Option<Arc<Telemetry>>, WorkerError> {
    if !config.telemetry.enabled {
        return Ok(None);
    }
    let telemetry = Telemetry::new(&options.worker_id, Arc::clone(config), Arc::clone(health))?;
    let bound = sluice_telemetry::serve(Arc::clone(&telemetry)).await?;
    let url = format!("http://{bound}");
    tracing::info!(address = %bound, dashboard = %format!("{url}/"), metrics = %format!("{url}/metrics"), "serving the dashboard, metrics and health endpoints");
    Ok(Some(telemetry))
}
