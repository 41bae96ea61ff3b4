//! `[worker]`: settings of this worker process.

use serde::Deserialize;

use crate::{invalid, positive, ConfigError};

/// Settings of this worker process.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Identity in leases and logs. Default: none, which the binary turns into
    /// `<hostname>-<pid>`.
    pub id: Option<String>,
    /// Upper bound of the events held in memory: decoded but unflushed in the buffers, and
    /// flushing (sorted, encoded, uploaded) until committed, counted by their raw size. When
    /// reached, the largest buffers flush first and consumption waits for flushes in flight.
    /// librdkafka's prefetch queue is sized from it too (an eighth, see
    /// [`crate::Config::kafka_prefetch_kib`]), so a worker's peak RSS stays within the budget
    /// plus a fixed overhead, whatever the backlog. Default: 268435456 (256 MiB).
    pub memory_budget_bytes: u64,
    /// How often buffers are checked against `flush.max_age_ms`. Default: 100.
    pub flush_check_interval_ms: u64,
    /// Relative capacity in the fleet: a worker's expected share of the partitions is its
    /// weight over the sum of all members' weights (e.g. 2 on a machine with twice the cores).
    /// Default: 1.
    pub weight: f64,
    /// Where operators can reach this worker (e.g. its `host:port`), shown by `sluice members`.
    /// Default: none.
    pub address: Option<String>,
    /// How long a partition this worker should own may stay leased by another worker before
    /// that is reported: a warning in a fleet, an error with `--stop-at-end`. Must exceed the
    /// coordination session timeout, so a crashed holder's lease can expire first.
    /// Default: 60000 (1 min).
    pub lease_wait_ms: u64,
    /// On SIGTERM/SIGINT, how long to spend flushing and committing before exiting anyway
    /// (uncommitted data is then re-read by the next owner: nothing is lost).
    /// Default: 30000 (30 s).
    pub shutdown_deadline_ms: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            id: None,
            memory_budget_bytes: 256 * 1024 * 1024,
            flush_check_interval_ms: 100,
            weight: 1.0,
            address: None,
            lease_wait_ms: 60_000,
            shutdown_deadline_ms: 30_000,
        }
    }
}

impl WorkerConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.validate_id()?;
        positive("worker.memory_budget_bytes", self.memory_budget_bytes)?;
        positive(
            "worker.flush_check_interval_ms",
            self.flush_check_interval_ms,
        )?;
        self.validate_weight()
    }

    /// The id is a znode name in the membership and lease paths.
    fn validate_id(&self) -> Result<(), ConfigError> {
        match &self.id {
            Some(id) if id.is_empty() || id.contains('/') => Err(invalid(
                "worker.id",
                format!("`{id}` is empty or contains `/`"),
                "use letters, digits, `-`, `_` or `.`",
            )),
            _ => Ok(()),
        }
    }

    /// The assignment skips members whose weight is not a positive number, so such a worker
    /// would join the fleet and never be given a partition.
    fn validate_weight(&self) -> Result<(), ConfigError> {
        if self.weight.is_finite() && self.weight > 0.0 {
            return Ok(());
        }
        Err(invalid(
            "worker.weight",
            format!("{} is not a positive number", self.weight),
            format!(
                "use a positive weight such as {} (the default) or the machine's core count",
                WorkerConfig::default().weight
            ),
        ))
    }
}
