//! Telemetry: what an on-call engineer needs to see whether ingestion keeps up.
//!
//! * [`metrics`]: the Prometheus metrics every worker records (names, units, labels) and the
//!   recorder that renders them.
//! * [`lag`]: the lag of every partition, straight from the coordinator (committed offsets,
//!   lease holders) and Kafka (watermarks, the timestamp of the oldest uncommitted message). It
//!   needs no running worker: `sluice lag` and the dashboard share it.
//! * [`parts`]: live part records per scope (a table's partition value) against the merge
//!   limits, from the registry; the dashboard's "Parts per scope" panel.
//! * [`health`]: which dependency (storage, ZooKeeper) is unavailable, since when, and why;
//!   `/readyz` answers 503 naming it.
//! * [`process`]: this process's CPU seconds and peak memory, for closing summaries and
//!   benchmarks.
//! * [`http`]: the worker's endpoint: `/metrics`, `/healthz`, `/readyz`, the dashboard at `/`
//!   and the JSON behind it at `/api/state`; `auth` checks its optional token.
//!
//! Label cardinality is bounded by design: per-partition series carry only `topic` and
//! `partition` of partitions the worker holds; per-table series carry `table` (and a fixed set
//! of quarantine `reason` codes); nothing is labelled by offset, worker or event content.

mod auth;
pub mod health;
pub mod http;
pub mod lag;
pub mod metrics;
pub mod parts;
pub mod process;

pub use health::{Dependency, Health, Outage};
pub use http::{serve, Readiness, ReplicationState, Telemetry};
pub use lag::{fleet_report, FleetReport, OldestBuffered, TopicLag, UnitLag};
pub use parts::{parts_report, PartsReport, ScopeParts, TableParts};

/// Errors of the telemetry stage.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(transparent)]
    Coordination(#[from] sluice_coord::CoordError),
    #[error(transparent)]
    Source(#[from] sluice_source::SourceError),
    #[error("cannot listen on {address} (telemetry.listen_address); pick a free port, or 0 for any free port")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the metrics recorder cannot be installed")]
    Recorder {
        #[source]
        source: metrics_exporter_prometheus::BuildError,
    },
    #[error("a background task ({task}) failed")]
    Task {
        task: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}
