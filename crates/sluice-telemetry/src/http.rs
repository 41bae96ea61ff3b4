//! The worker's HTTP endpoint and the state behind it.
//!
//! | path | answer |
//! |---|---|
//! | `/metrics` | Prometheus text exposition of [`crate::metrics`] |
//! | `/healthz` | 200 while the process serves requests (liveness) |
//! | `/readyz` | 200 when the worker holds its session and every partition assigned to it and no dependency is unavailable, else 503; the body says which (an outage first, naming the service and for how long) |
//! | `/` | the live dashboard (HTML and JavaScript compiled into the binary; no other request leaves the page) |
//! | `/api/state` | the JSON the dashboard draws: the latest [`FleetReport`] and its history, and the latest [`PartsReport`] (the fullest scopes of every table against the merge limits), and with replicated storage the last repair pass's [`ReplicationState`] |
//!
//! With `telemetry.token` set, the dashboard and `/api/*` (and, if configured, the rest) answer
//! 401 without it (`crate::auth`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use sluice_config::Config;
use sluice_coord::Coordinator;
use sluice_source::KafkaProbe;

use crate::health::Health;
use crate::lag::{fleet_report, FleetReport, OldestBuffered};
use crate::metrics as m;
use crate::parts::{parts_report, record_gauges, PartsReport};
use crate::TelemetryError;

const DASHBOARD: &str = include_str!("dashboard.html");

/// What `/readyz` answers from; the worker updates it as it joins, rebalances and loses its
/// session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// The worker holds a coordination session and is a fleet member.
    pub session_up: bool,
    /// Partitions rendezvous hashing assigns to this worker.
    pub assigned: usize,
    /// Partitions whose lease this worker holds.
    pub owned: usize,
    /// Assigned partitions whose lease another worker still holds (a handover in progress, or a
    /// crashed holder whose session has not expired).
    pub waiting: usize,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.session_up && self.waiting == 0
    }
}

/// One partition's lag at one point of the history.
#[derive(Debug, Clone, Serialize)]
pub struct UnitPoint {
    /// `topic/partition`.
    pub unit: String,
    pub lag_messages: i64,
    pub lag_seconds: Option<f64>,
}

/// One point of the dashboard's history.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_ms: i64,
    pub topics: Vec<crate::lag::TopicLag>,
    pub units: Vec<UnitPoint>,
    /// This worker's counters at that moment (rates are drawn from their differences).
    pub consumed_events: u64,
    pub quarantined_rows: u64,
}

/// Replicated storage as this worker's last repair pass found it (the scopes it merges), for
/// the dashboard.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplicationState {
    pub replication_factor: usize,
    pub write_quorum: usize,
    /// Each endpoint, and whether the pass could list it.
    pub endpoints: Vec<(String, bool)>,
    /// Parts (and manifests) with fewer good copies than the factor.
    pub under_replicated: usize,
    /// Copies the pass could not store.
    pub missing_copies: usize,
    pub checked_at_ms: i64,
}

/// Telemetry state shared by the worker, the sampler and the HTTP handlers.
pub struct Telemetry {
    worker_id: String,
    config: Arc<Config>,
    handle: PrometheusHandle,
    readiness: Mutex<Readiness>,
    coord: Mutex<Option<Arc<dyn Coordinator>>>,
    latest: Mutex<Option<FleetReport>>,
    /// Why the last refresh failed, if it did.
    last_error: Mutex<Option<String>>,
    /// The latest part counts per scope, read on the same refresh as the lag.
    parts: Mutex<Option<PartsReport>>,
    /// Why the last reading of the part counts failed, if it did.
    parts_error: Mutex<Option<String>>,
    history: Mutex<VecDeque<Sample>>,
    consumed_events: AtomicU64,
    quarantined_rows: AtomicU64,
    /// The worker's own partitions' oldest buffered messages (see [`OldestBuffered`]).
    oldest: Mutex<OldestBuffered>,
    /// Where [`serve`] bound.
    bound: std::sync::OnceLock<SocketAddr>,
    /// The dependencies' outages, reported by the worker's retries.
    health: Arc<Health>,
    /// With several storage endpoints: what the last repair pass found.
    replication: Mutex<Option<ReplicationState>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("worker_id", &self.worker_id)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A handler that panicked mid-update leaves plain data behind, still good to read.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Telemetry {
    /// Installs the metrics recorder (once per process) and sets up the shared state.
    pub fn new(
        worker_id: &str,
        config: Arc<Config>,
        health: Arc<Health>,
    ) -> Result<Arc<Telemetry>, TelemetryError> {
        let refresh = Duration::from_millis(config.telemetry.refresh_ms);
        let handle = m::install(refresh * 3)?;
        Ok(Arc::new(Telemetry {
            worker_id: worker_id.to_string(),
            config,
            handle,
            readiness: Mutex::new(Readiness::default()),
            coord: Mutex::new(None),
            latest: Mutex::new(None),
            last_error: Mutex::new(None),
            parts: Mutex::new(None),
            parts_error: Mutex::new(None),
            history: Mutex::new(VecDeque::new()),
            consumed_events: AtomicU64::new(0),
            quarantined_rows: AtomicU64::new(0),
            oldest: Mutex::new(OldestBuffered::new()),
            bound: std::sync::OnceLock::new(),
            health,
            replication: Mutex::new(None),
        }))
    }

    /// `http://<bound address>` once [`serve`] has bound, to show as the member's address.
    pub fn url(&self) -> Option<String> {
        self.bound.get().map(|a| format!("http://{a}"))
    }

    /// The coordination session the sampler reads through (`None` between sessions).
    pub fn set_coordinator(&self, coord: Option<Arc<dyn Coordinator>>) {
        *lock(&self.coord) = coord;
    }

    /// Called by the worker as its state changes and on every tick: gauges that are not
    /// refreshed disappear from the exposition (see [`m::install`]).
    pub fn update(&self, r: Readiness, buffered_bytes: u64) {
        metrics::gauge!(m::SESSION_UP).set(if r.session_up { 1.0 } else { 0.0 });
        metrics::gauge!(m::OWNED_PARTITIONS).set(r.owned as f64);
        metrics::gauge!(m::ASSIGNED_PARTITIONS).set(r.assigned as f64);
        metrics::gauge!(m::BUFFERED_BYTES).set(buffered_bytes as f64);
        metrics::gauge!(m::MEMORY_BUDGET_BYTES).set(self.config.worker.memory_budget_bytes as f64);
        *lock(&self.readiness) = r;
    }

    pub fn readiness(&self) -> Readiness {
        lock(&self.readiness).clone()
    }

    /// This worker's running totals, for the dashboard's own-throughput chart (the labelled
    /// Prometheus counters are recorded where the events are).
    pub fn set_totals(&self, consumed_events: u64, quarantined_rows: u64) {
        self.consumed_events
            .store(consumed_events, Ordering::Relaxed);
        self.quarantined_rows
            .store(quarantined_rows, Ordering::Relaxed);
    }

    /// The worker's own partitions' first uncommitted (offset, Kafka timestamp), so that lag
    /// refreshes need not fetch them from Kafka.
    pub fn set_oldest_buffered(&self, oldest: OldestBuffered) {
        *lock(&self.oldest) = oldest;
    }

    /// What the worker's last repair pass found (replicated storage only).
    pub fn set_replication(&self, state: ReplicationState) {
        *lock(&self.replication) = Some(state);
    }

    /// The latest report, if a refresh has succeeded.
    pub fn latest(&self) -> Option<FleetReport> {
        lock(&self.latest).clone()
    }

    /// The latest part counts, if a refresh has read them.
    pub fn latest_parts(&self) -> Option<PartsReport> {
        lock(&self.parts).clone()
    }

    /// Refreshes the fleet report, the per-partition gauges of the partitions this worker
    /// holds, the part counts per scope, and the history, every `telemetry.refresh_ms`, until
    /// the task is aborted.
    pub async fn run_sampler(self: Arc<Self>) {
        let mut tick =
            tokio::time::interval(Duration::from_millis(self.config.telemetry.refresh_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One Kafka client for every refresh: a new one per refresh costs the broker more
        // than the questions do.
        let mut probe: Option<Arc<KafkaProbe>> = None;
        loop {
            tick.tick().await;
            self.handle.run_upkeep();
            self.keep_worker_gauges();
            let coord = lock(&self.coord).clone();
            let Some(coord) = coord else { continue };
            self.refresh_parts(&*coord).await;
            let p = match &probe {
                Some(p) => Arc::clone(p),
                None => match KafkaProbe::new(&self.config.kafka) {
                    Ok(p) => Arc::clone(probe.insert(Arc::new(p))),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot create the Kafka client for lag refreshes; trying again at the next one");
                        continue;
                    }
                },
            };
            let known = lock(&self.oldest).clone();
            match fleet_report(&self.config, &*coord, &p, &known).await {
                Ok(report) => {
                    self.record(report);
                    *lock(&self.last_error) = None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot refresh lag; metrics and dashboard keep the previous figures");
                    *lock(&self.last_error) = Some(e.to_string());
                }
            }
        }
    }

    /// Gauges the worker sets only when they change (the partitions paused at a scope's hard
    /// part limit) or at each merge check (the merge backlog): touched here at every refresh,
    /// without changing their value, so that they do not idle out of the exposition between
    /// two updates (an alert on them needs the series to stay).
    fn keep_worker_gauges(&self) {
        metrics::gauge!(m::INGEST_PAUSED_PARTITIONS).increment(0.0);
        for t in &self.config.tables {
            metrics::gauge!(m::TABLE_MERGE_BACKLOG, "table" => t.name.clone()).increment(0.0);
        }
    }

    /// Reads every table's scopes (one listing per table) and sets the registry gauges; on an
    /// error the dashboard keeps the previous figures and shows why.
    async fn refresh_parts(&self, coord: &dyn Coordinator) {
        match parts_report(&self.config, coord).await {
            Ok(report) => {
                record_gauges(&report);
                *lock(&self.parts) = Some(report);
                *lock(&self.parts_error) = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the part counts per scope; the dashboard keeps the previous figures");
                *lock(&self.parts_error) = Some(e.to_string());
            }
        }
    }

    /// Takes in one report: gauges, history, latest.
    pub fn record(&self, report: FleetReport) {
        for u in report
            .units
            .iter()
            .filter(|u| u.owner.as_deref() == Some(self.worker_id.as_str()))
        {
            let labels = [
                ("topic", u.topic.clone()),
                ("partition", u.partition.to_string()),
            ];
            if let Some(c) = u.committed {
                metrics::gauge!(m::PARTITION_COMMITTED_OFFSET, &labels).set(c as f64);
            }
            metrics::gauge!(m::PARTITION_HIGH_WATERMARK, &labels).set(u.high_watermark as f64);
            metrics::gauge!(m::PARTITION_LAG_MESSAGES, &labels).set(u.lag_messages as f64);
            if let Some(s) = u.lag_seconds {
                metrics::gauge!(m::PARTITION_LAG_SECONDS, &labels).set(s);
            }
        }
        for t in &report.topics {
            metrics::gauge!(m::TOPIC_UNOWNED_PARTITIONS, "topic" => t.topic.clone())
                .set(t.unowned as f64);
        }
        let sample = Sample {
            t_ms: report.taken_at_ms,
            topics: report.topics.clone(),
            units: report
                .units
                .iter()
                .map(|u| UnitPoint {
                    unit: format!("{}/{}", u.topic, u.partition),
                    lag_messages: u.lag_messages,
                    lag_seconds: u.lag_seconds,
                })
                .collect(),
            consumed_events: self.consumed_events.load(Ordering::Relaxed),
            quarantined_rows: self.quarantined_rows.load(Ordering::Relaxed),
        };
        let keep_from =
            report.taken_at_ms - self.config.telemetry.dashboard_history_s as i64 * 1000;
        {
            let mut history = lock(&self.history);
            history.push_back(sample);
            while history.front().is_some_and(|s| s.t_ms < keep_from) {
                history.pop_front();
            }
        }
        *lock(&self.latest) = Some(report);
    }

    fn state(&self) -> serde_json::Value {
        serde_json::json!({
            "worker": self.worker_id,
            "lag_alert_s": self.config.telemetry.lag_alert_s,
            "refresh_ms": self.config.telemetry.refresh_ms,
            "readiness": self.readiness(),
            "ready": self.readiness().is_ready() && self.health.outages().is_empty(),
            "outages": self.health.outages(),
            "report": self.latest(),
            "last_error": lock(&self.last_error).clone(),
            "parts": self.latest_parts(),
            "parts_error": lock(&self.parts_error).clone(),
            "replication": lock(&self.replication).clone(),
            "history": lock(&self.history).iter().collect::<Vec<_>>(),
        })
    }
}

/// Binds `telemetry.listen_address` and serves the endpoint in the background; returns the
/// bound address (the real port when the configured one is 0).
pub async fn serve(telemetry: Arc<Telemetry>) -> Result<SocketAddr, TelemetryError> {
    let address = telemetry.config.telemetry.listen_address.clone();
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .map_err(|source| TelemetryError::Bind {
            address: address.clone(),
            source,
        })?;
    let bound = listener
        .local_addr()
        .map_err(|source| TelemetryError::Bind { address, source })?;
    let _ = telemetry.bound.set(bound);
    let token = telemetry.config.telemetry.token.clone();
    let covers = telemetry.config.telemetry.token_covers_health_and_metrics;
    let mut app = Router::new()
        .route("/", get(dashboard))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/state", get(api_state))
        .with_state(telemetry);
    if let Some(token) = token {
        app = app.layer(axum::middleware::from_fn_with_state(
            crate::auth::Guard::new(token, covers),
            crate::auth::require_token,
        ));
    }
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics and dashboard endpoint stopped; the worker goes on ingesting");
        }
    });
    Ok(bound)
}

async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
}

async fn metrics_text(State(t): State<Arc<Telemetry>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        t.handle.render(),
    )
        .into_response()
}

async fn readyz(State(t): State<Arc<Telemetry>>) -> Response {
    let r = t.readiness();
    let outages = t.health.outages();
    let ready = r.is_ready() && outages.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // An outage first: it is what keeps the worker from its work, whatever else follows from it.
    let why = if let Some(o) = outages.first() {
        o.to_string()
    } else if !r.session_up {
        "not a fleet member: no coordination session (starting, or rejoining after losing it)"
            .to_string()
    } else if r.waiting > 0 {
        format!(
            "waiting for {} of {} assigned partitions still leased by another worker",
            r.waiting, r.assigned
        )
    } else {
        format!("holding every assigned partition ({})", r.assigned)
    };
    (
        status,
        Json(serde_json::json!({"ready": ready, "why": why, "readiness": r, "outages": outages})),
    )
        .into_response()
}

async fn api_state(State(t): State<Arc<Telemetry>>) -> Json<serde_json::Value> {
    Json(t.state())
}
