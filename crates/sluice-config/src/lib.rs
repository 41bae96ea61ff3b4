//! Sluice configuration: the worker, coordination, Kafka and storage settings, and the table
//! definitions, read from one TOML file and validated at load.
//!
//! Every struct refuses unknown fields, so a misspelt key fails at start-up with its name and
//! line instead of being silently ignored. Validation that needs more than one field (a sorting
//! key naming a missing column, say) happens in [`Config::validate`] and names the field and
//! the fix. `config/sluice.example.toml` documents every field and is parsed by a test.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::Deserialize;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {origin} is not valid: {message}")]
    Parse { origin: String, message: String },
    #[error("config field `{field}`: {problem}; fix: {fix}")]
    Invalid {
        field: String,
        problem: String,
        fix: String,
    },
}

fn invalid(
    field: impl Into<String>,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// The whole configuration of a worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Settings of this worker process.
    #[serde(default)]
    pub worker: WorkerConfig,
    /// Where leases, offsets and the part registry live.
    #[serde(default)]
    pub coordination: CoordinationConfig,
    /// The Kafka cluster events are read from.
    pub kafka: KafkaConfig,
    /// Where Parquet parts are written.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Metrics, health endpoints and the dashboard.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The tables: those with a `topic` are decoded from Kafka, the others are written by a
    /// view. Written as `[[table]]` blocks.
    #[serde(rename = "table")]
    pub tables: Vec<TableConfig>,
    /// Materialized views: SQL run over every batch that lands in a table, written to another
    /// table and committed together with it. Written as `[[view]]` blocks.
    #[serde(rename = "view", default)]
    pub views: Vec<ViewConfig>,
}

/// A materialized view: a SQL `SELECT` run over every batch that lands in its source table (each
/// flush), whose result is written to its target table, sorted and split by the target's own
/// keys, and committed in the same commit as the source's parts and offset.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewConfig {
    /// Lowercase letters, digits and `_`; names the view in logs, errors and quarantine rows.
    pub name: String,
    /// The table the view reads: one with a `topic`, or another view's target (a chain). Not an
    /// aggregating table: its rows are partial states.
    pub source: String,
    /// A `SELECT` over the source table, by its name. Filters, projections, computed columns
    /// and `GROUP BY` with `count`, `sum`, `min`, `max` and `approx_distinct`; nothing that needs
    /// more than one batch at a time (no `ORDER BY`, `LIMIT`, `HAVING`, joins or windows).
    pub sql: String,
    /// The table the rows go to: one without a `topic`, written by this view alone, whose
    /// columns are the query's output columns by name and type.
    pub target: String,
}

/// How an aggregating table's column merges across batches and parts. The rows of a view's
/// batch hold partial states; reading the table merges the states of equal keys (the columns
/// without an aggregate) into final values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    /// `count(...)`: an int64, merged by summing.
    Count,
    /// `sum(x)`: merged by summing.
    Sum,
    /// `min(x)`: merged by taking the minimum.
    Min,
    /// `max(x)`: merged by taking the maximum.
    Max,
    /// `approx_distinct(x)`: a HyperLogLog sketch (binary), merged by union; reads as a uint64.
    ApproxDistinct,
}

impl Aggregate {
    /// The SQL function producing the state in a view.
    pub fn function(self) -> &'static str {
        match self {
            Aggregate::Count => "count",
            Aggregate::Sum => "sum",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
            Aggregate::ApproxDistinct => "approx_distinct",
        }
    }
}

/// The worker's HTTP endpoint: `/metrics` (Prometheus), `/healthz`, `/readyz` and the live
/// dashboard at `/`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Whether the worker serves the endpoint at all.
    #[serde(default = "default_telemetry_enabled")]
    pub enabled: bool,
    /// `host:port` to bind. Loopback by default: the page and the metrics need no
    /// authentication, so expose them deliberately. Port 0 picks a free port (logged, and shown
    /// as the member's address by `sluice members` when `worker.address` is unset).
    #[serde(default = "default_listen_address")]
    pub listen_address: String,
    /// How often watermarks and lag are refreshed (metrics, dashboard samples).
    #[serde(default = "default_refresh_ms")]
    pub refresh_ms: u64,
    /// How much history the dashboard keeps and charts.
    #[serde(default = "default_dashboard_history_s")]
    pub dashboard_history_s: u64,
    /// Lag in seconds above which the dashboard shows a partition and its topic in red.
    #[serde(default = "default_lag_alert_s")]
    pub lag_alert_s: f64,
}

pub const fn default_telemetry_enabled() -> bool {
    true
}
pub fn default_listen_address() -> String {
    "127.0.0.1:9600".to_string()
}
pub const fn default_refresh_ms() -> u64 {
    5_000
}
pub const fn default_dashboard_history_s() -> u64 {
    900
}
pub const fn default_lag_alert_s() -> f64 {
    60.0
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            enabled: default_telemetry_enabled(),
            listen_address: default_listen_address(),
            refresh_ms: default_refresh_ms(),
            dashboard_history_s: default_dashboard_history_s(),
            lag_alert_s: default_lag_alert_s(),
        }
    }
}

/// Settings of this worker process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Identity in leases and logs. Default: `<hostname>-<pid>`.
    #[serde(default)]
    pub id: Option<String>,
    /// Upper bound of the events held in memory: decoded but unflushed in the buffers, and
    /// flushing (sorted, encoded, uploaded) until committed, counted by their raw size. When
    /// reached, the largest buffers flush first and consumption waits for flushes in flight.
    /// librdkafka's prefetch queue is sized from it too (an eighth, see
    /// [`Config::kafka_prefetch_kib`]), so a worker's peak RSS stays within the budget plus a
    /// fixed overhead, whatever the backlog.
    #[serde(default = "default_memory_budget_bytes")]
    pub memory_budget_bytes: u64,
    /// How often buffers are checked against `max_age_ms`.
    #[serde(default = "default_flush_check_interval_ms")]
    pub flush_check_interval_ms: u64,
    /// Relative capacity in the fleet: a worker's expected share of the partitions is its
    /// weight over the sum of all members' weights (e.g. 2 on a machine with twice the cores).
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// Where operators can reach this worker (e.g. its `host:port`), shown by `sluice members`.
    #[serde(default)]
    pub address: Option<String>,
    /// How long a partition this worker should own may stay leased by another worker before
    /// that is reported: a warning in a fleet, an error with `--stop-at-end`. Must exceed the
    /// coordination session timeout, so a crashed holder's lease can expire first.
    #[serde(default = "default_lease_wait_ms")]
    pub lease_wait_ms: u64,
    /// On SIGTERM/SIGINT, how long to spend flushing and committing before exiting anyway
    /// (uncommitted data is then re-read by the next owner: nothing is lost).
    #[serde(default = "default_shutdown_deadline_ms")]
    pub shutdown_deadline_ms: u64,
}

/// librdkafka's property for the size of its prefetch queue, in KiB.
pub const KAFKA_PREFETCH_PROPERTY: &str = "queued.max.messages.kbytes";

pub const fn default_memory_budget_bytes() -> u64 {
    256 * 1024 * 1024
}
pub const fn default_flush_check_interval_ms() -> u64 {
    100
}
pub const fn default_weight() -> f64 {
    1.0
}
pub const fn default_lease_wait_ms() -> u64 {
    60_000
}
pub const fn default_shutdown_deadline_ms() -> u64 {
    30_000
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            id: None,
            memory_budget_bytes: default_memory_budget_bytes(),
            flush_check_interval_ms: default_flush_check_interval_ms(),
            weight: default_weight(),
            address: None,
            lease_wait_ms: default_lease_wait_ms(),
            shutdown_deadline_ms: default_shutdown_deadline_ms(),
        }
    }
}

/// Which coordination backend holds leases, offsets and the part registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CoordinationBackend {
    /// A ZooKeeper ensemble: for fleets.
    Zookeeper,
    /// A single-process store in a local directory: for a laptop and unit tests.
    Embedded,
}

/// Where leases, offsets and the part registry live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinationConfig {
    /// `zookeeper` (default) or `embedded`.
    #[serde(default = "default_backend")]
    pub backend: CoordinationBackend,
    /// ZooKeeper connect string, `host:port[,host:port...]`.
    #[serde(default = "default_zookeeper_connect")]
    pub zookeeper_connect: String,
    /// Root znode of this Sluice deployment; several deployments can share one ensemble.
    #[serde(default = "default_root")]
    pub root: String,
    /// ZooKeeper session timeout; a crashed worker's leases are freed after this long.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// How long to try to reach ZooKeeper at start-up before failing.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Directory of the embedded backend's state file.
    #[serde(default = "default_embedded_dir")]
    pub embedded_dir: PathBuf,
}

pub const fn default_backend() -> CoordinationBackend {
    CoordinationBackend::Zookeeper
}
pub fn default_zookeeper_connect() -> String {
    "127.0.0.1:2181".to_string()
}
pub fn default_root() -> String {
    "/sluice".to_string()
}
pub const fn default_session_timeout_ms() -> u64 {
    10_000
}
pub const fn default_connect_timeout_ms() -> u64 {
    10_000
}
pub fn default_embedded_dir() -> PathBuf {
    PathBuf::from("sluice-state")
}

impl Default for CoordinationConfig {
    fn default() -> Self {
        CoordinationConfig {
            backend: default_backend(),
            zookeeper_connect: default_zookeeper_connect(),
            root: default_root(),
            session_timeout_ms: default_session_timeout_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
            embedded_dir: default_embedded_dir(),
        }
    }
}

/// Where to start a partition that has no committed offset yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    Earliest,
    Latest,
}

/// The Kafka cluster events are read from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`.
    pub bootstrap_servers: String,
    /// librdkafka properties passed through as they are (e.g. `fetch.wait.max.ms`, TLS/SASL).
    /// Sluice sets `enable.auto.commit=false` itself: offsets live in the coordinator.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// `earliest` (default) or `latest`, for partitions with no committed offset.
    #[serde(default = "default_start_from")]
    pub start_from: StartFrom,
    /// How long metadata and watermark requests may take before the broker counts as unreachable.
    #[serde(default = "default_metadata_timeout_ms")]
    pub metadata_timeout_ms: u64,
    /// How often topics are re-read for partitions added since start-up; new partitions are
    /// assigned and ingested without a restart.
    #[serde(default = "default_metadata_refresh_ms")]
    pub metadata_refresh_ms: u64,
}

pub const fn default_start_from() -> StartFrom {
    StartFrom::Earliest
}
pub const fn default_metadata_timeout_ms() -> u64 {
    10_000
}
pub const fn default_metadata_refresh_ms() -> u64 {
    30_000
}

/// Where Parquet parts are written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `file:///absolute/dir`, `file://relative/dir` (from the working directory), or
    /// `s3://bucket/prefix`.
    #[serde(default = "default_storage_url")]
    pub url: String,
    /// object_store options, e.g. `aws_endpoint`, `aws_access_key_id`, `aws_secret_access_key`,
    /// `aws_region`, `aws_allow_http`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

pub fn default_storage_url() -> String {
    "file://sluice-data".to_string()
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            url: default_storage_url(),
            options: BTreeMap::new(),
        }
    }
}

/// One table: a topic decoded into typed columns and written as sorted Parquet parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// Lowercase letters, digits and `_`; names the table's directory in storage.
    pub name: String,
    /// The Kafka topic this table reads. None: the table is a view's target.
    #[serde(default)]
    pub topic: Option<String>,
    /// Definition version, recorded in every part and its object name.
    #[serde(default = "default_version")]
    pub version: u32,
    /// The columns, in order. Written as `[[table.column]]` blocks.
    #[serde(rename = "column")]
    pub columns: Vec<ColumnConfig>,
    /// Columns every part is sorted by, in order.
    #[serde(default)]
    pub sorting_key: Vec<String>,
    /// Splits parts so each holds one value (e.g. one day); none means one part per flush.
    #[serde(default)]
    pub partition_key: Option<PartitionKeyConfig>,
    /// When buffers are written out.
    #[serde(default)]
    pub flush: FlushConfig,
    /// Larger messages go to quarantine.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
}

pub const fn default_version() -> u32 {
    1
}
pub const fn default_max_message_bytes() -> usize {
    1024 * 1024
}

/// One column of a table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnConfig {
    pub name: String,
    /// One of [`ColumnType::NAMES`].
    #[serde(rename = "type")]
    pub column_type: ColumnType,
    /// Whether the column may be null. A non-nullable column without a default sends events
    /// lacking it to quarantine.
    #[serde(default = "default_nullable")]
    pub nullable: bool,
    /// Used when the event lacks the field or has it null.
    #[serde(default)]
    pub default: Option<toml::Value>,
    /// The JSON field, or a dotted path into nested objects (`user.geo.country`).
    /// Default: the column name.
    #[serde(default)]
    pub source: Option<String>,
    /// In a view's target table: the aggregate whose partial states the column holds (`count`,
    /// `sum`, `min`, `max`, `approx_distinct`); the columns without one are the grouping key.
    #[serde(default)]
    pub aggregate: Option<Aggregate>,
}

pub const fn default_nullable() -> bool {
    true
}

impl ColumnConfig {
    /// The Arrow type stored in parts: the declared type, or a binary sketch for
    /// `approx_distinct` states.
    pub fn stored_type(&self) -> DataType {
        match self.aggregate {
            Some(Aggregate::ApproxDistinct) => DataType::Binary,
            _ => self.column_type.arrow_type(),
        }
    }

    /// The JSON path this column is read from, split at dots.
    pub fn source_path(&self) -> Vec<String> {
        self.source
            .as_deref()
            .unwrap_or(&self.name)
            .split('.')
            .map(str::to_string)
            .collect()
    }
}

/// Column types Sluice decodes JSON into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum ColumnType {
    Boolean,
    Int32,
    Int64,
    UInt64,
    Float64,
    String,
    /// Milliseconds since the epoch, UTC; from a JSON integer (ms) or an RFC 3339 string.
    TimestampMs,
    /// Microseconds since the epoch, UTC; from a JSON integer (µs) or an RFC 3339 string.
    TimestampUs,
    /// Days since the epoch; from a `YYYY-MM-DD` string or an integer day number.
    Date,
}

impl ColumnType {
    pub const NAMES: &'static [&'static str] = &[
        "boolean",
        "int32",
        "int64",
        "uint64",
        "float64",
        "string",
        "timestamp_ms",
        "timestamp_us",
        "date",
    ];

    pub fn arrow_type(self) -> DataType {
        match self {
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::Int32 => DataType::Int32,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::UInt64 => DataType::UInt64,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::String => DataType::Utf8,
            ColumnType::TimestampMs => {
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
            }
            ColumnType::TimestampUs => {
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
            }
            ColumnType::Date => DataType::Date32,
        }
    }

    pub fn is_temporal(self) -> bool {
        matches!(
            self,
            ColumnType::TimestampMs | ColumnType::TimestampUs | ColumnType::Date
        )
    }
}

impl TryFrom<String> for ColumnType {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Ok(match s.as_str() {
            "boolean" | "bool" => ColumnType::Boolean,
            "int32" => ColumnType::Int32,
            "int64" => ColumnType::Int64,
            "uint64" => ColumnType::UInt64,
            "float64" | "double" => ColumnType::Float64,
            "string" | "utf8" => ColumnType::String,
            "timestamp_ms" => ColumnType::TimestampMs,
            "timestamp_us" => ColumnType::TimestampUs,
            "date" | "date32" => ColumnType::Date,
            other => {
                return Err(format!(
                    "unknown column type `{other}`; use one of: {}",
                    ColumnType::NAMES.join(", ")
                ))
            }
        })
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ColumnType::Boolean => "boolean",
            ColumnType::Int32 => "int32",
            ColumnType::Int64 => "int64",
            ColumnType::UInt64 => "uint64",
            ColumnType::Float64 => "float64",
            ColumnType::String => "string",
            ColumnType::TimestampMs => "timestamp_ms",
            ColumnType::TimestampUs => "timestamp_us",
            ColumnType::Date => "date",
        };
        f.write_str(name)
    }
}

/// How a part's partition-key value is derived from a column.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionKeyConfig {
    /// The column the value comes from.
    pub column: String,
    /// `hour`, `day` (default), `month` of a timestamp or date column, or `identity` (the value
    /// itself, for integer, boolean and string columns).
    #[serde(default = "default_granularity")]
    pub granularity: Granularity,
}

pub const fn default_granularity() -> Granularity {
    Granularity::Day
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    Identity,
    Hour,
    Day,
    Month,
}

/// When a buffer is written out as parts. Whichever limit is reached first triggers the flush.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlushConfig {
    /// Rows buffered per source partition.
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
    /// Raw event bytes buffered per source partition.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Age of the oldest buffered event.
    #[serde(default = "default_max_age_ms")]
    pub max_age_ms: u64,
}

pub const fn default_max_rows() -> usize {
    200_000
}
pub const fn default_max_bytes() -> u64 {
    64 * 1024 * 1024
}
pub const fn default_max_age_ms() -> u64 {
    10_000
}

impl Default for FlushConfig {
    fn default() -> Self {
        FlushConfig {
            max_rows: default_max_rows(),
            max_bytes: default_max_bytes(),
            max_age_ms: default_max_age_ms(),
        }
    }
}

impl TableConfig {
    /// The Arrow schema of the table's data parts (for an aggregating table, its partial
    /// states: `approx_distinct` columns are binary sketches).
    pub fn arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(&c.name, c.stored_type(), c.nullable))
                .collect::<Vec<_>>(),
        ))
    }

    /// Whether the table holds partial aggregate states (some column has an `aggregate`).
    pub fn is_aggregating(&self) -> bool {
        self.columns.iter().any(|c| c.aggregate.is_some())
    }

    pub fn column(&self, name: &str) -> Option<&ColumnConfig> {
        self.columns.iter().find(|c| c.name == name)
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: relations between fields and value ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let w = &self.worker;
        if let Some(id) = &w.id {
            if id.is_empty() || id.contains('/') {
                return Err(invalid(
                    "worker.id",
                    format!("`{id}` is empty or contains `/`"),
                    "use letters, digits, `-`, `_` or `.`",
                ));
            }
        }
        positive("worker.memory_budget_bytes", w.memory_budget_bytes)?;
        positive("worker.flush_check_interval_ms", w.flush_check_interval_ms)?;
        if !(w.weight.is_finite() && w.weight > 0.0) {
            return Err(invalid(
                "worker.weight",
                format!("{} is not a positive number", w.weight),
                "use a positive weight such as 1 (the default) or the machine's core count",
            ));
        }
        positive("kafka.metadata_refresh_ms", self.kafka.metadata_refresh_ms)?;
        let t = &self.telemetry;
        if t.listen_address.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "telemetry.listen_address",
                format!("`{}` is not an `ip:port` address", t.listen_address),
                "use e.g. `127.0.0.1:9600`, `0.0.0.0:9600` to listen on every interface, or port 0 for a free port",
            ));
        }
        positive("telemetry.refresh_ms", t.refresh_ms)?;
        if t.dashboard_history_s * 1000 < t.refresh_ms {
            return Err(invalid(
                "telemetry.dashboard_history_s",
                format!(
                    "{} s of history is shorter than one refresh ({} ms)",
                    t.dashboard_history_s, t.refresh_ms
                ),
                "keep at least a few refreshes of history, e.g. 900 (the default)",
            ));
        }
        if !(t.lag_alert_s.is_finite() && t.lag_alert_s > 0.0) {
            return Err(invalid(
                "telemetry.lag_alert_s",
                format!("{} is not a positive number of seconds", t.lag_alert_s),
                "use e.g. 60 (the default)",
            ));
        }

        let c = &self.coordination;
        if !c.root.starts_with('/') || (c.root.len() > 1 && c.root.ends_with('/')) {
            return Err(invalid(
                "coordination.root",
                format!("`{}` is not an absolute znode path", c.root),
                "start it with `/` and end it without one, e.g. `/sluice/prod`",
            ));
        }
        if c.backend == CoordinationBackend::Zookeeper {
            if c.zookeeper_connect.trim().is_empty() {
                return Err(invalid(
                    "coordination.zookeeper_connect",
                    "is empty",
                    "set it to `host:port[,host:port...]`",
                ));
            }
            if c.session_timeout_ms < 2_000 {
                return Err(invalid(
                    "coordination.session_timeout_ms",
                    format!("{} ms is below ZooKeeper's minimum", c.session_timeout_ms),
                    "use at least 2000 (ZooKeeper's floor is twice its tickTime)",
                ));
            }
            if w.lease_wait_ms <= c.session_timeout_ms {
                return Err(invalid("worker.lease_wait_ms", format!("{} ms does not exceed coordination.session_timeout_ms ({} ms), so a crashed worker's leases could never be taken over", w.lease_wait_ms, c.session_timeout_ms), "make it larger than the session timeout, e.g. twice it"));
            }
        }

        if self.kafka.bootstrap_servers.trim().is_empty() {
            return Err(invalid(
                "kafka.bootstrap_servers",
                "is empty",
                "set it to `host:port[,host:port...]`",
            ));
        }
        if let Some(v) = self.kafka.properties.get(KAFKA_PREFETCH_PROPERTY) {
            if v.parse::<u64>().map_or(true, |k| k == 0) {
                return Err(invalid(
                    format!("kafka.properties.\"{KAFKA_PREFETCH_PROPERTY}\""),
                    format!("`{v}` is not a positive number of KiB"),
                    "give a size in KiB, e.g. \"32768\", or remove it to size the queue from worker.memory_budget_bytes",
                ));
            }
        }
        for key in ["enable.auto.commit", "group.id"] {
            if self.kafka.properties.contains_key(key) {
                return Err(invalid(
                    format!("kafka.properties.\"{key}\""),
                    "is managed by Sluice (offsets are committed with the parts, not to Kafka)",
                    "remove it",
                ));
            }
        }

        let scheme = self.storage.url.split("://").next().unwrap_or_default();
        if !self.storage.url.contains("://") || !matches!(scheme, "file" | "s3") {
            return Err(invalid(
                "storage.url",
                format!("`{}` is not a supported storage URL", self.storage.url),
                "use `file:///dir`, `file://relative/dir` or `s3://bucket/prefix`",
            ));
        }

        if self.tables.is_empty() {
            return Err(invalid(
                "table",
                "no tables are defined",
                "add at least one `[[table]]` block",
            ));
        }
        let mut names = BTreeSet::new();
        for (i, t) in self.tables.iter().enumerate() {
            t.validate(i)?;
            if !names.insert(t.name.as_str()) {
                return Err(invalid(
                    format!("table[{i}].name"),
                    format!("table `{}` is defined twice", t.name),
                    "give every table a unique name",
                ));
            }
        }
        self.validate_views()
    }

    /// What a view needs of the tables around it; the SQL itself is planned against its
    /// source's schema by the transform stage at start-up.
    fn validate_views(&self) -> Result<(), ConfigError> {
        let mut names = BTreeSet::new();
        let mut writers: BTreeMap<&str, &str> = BTreeMap::new();
        for (i, v) in self.views.iter().enumerate() {
            let at = |field: &str| format!("view[{i}] ({}).{field}", v.name);
            if !is_simple_name(&v.name) {
                return Err(invalid(
                    format!("view[{i}].name"),
                    format!("`{}` is not a valid view name", v.name),
                    "use lowercase letters, digits and `_`, starting with a letter",
                ));
            }
            if !names.insert(v.name.as_str()) {
                return Err(invalid(
                    format!("view[{i}].name"),
                    format!("view `{}` is defined twice", v.name),
                    "give every view a unique name",
                ));
            }
            let tables = || {
                self.tables
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let Some(source) = self.table(&v.source) else {
                return Err(invalid(
                    at("source"),
                    format!("names `{}`, which is not a table", v.source),
                    format!("use one of the tables: {}", tables()),
                ));
            };
            if source.is_aggregating() {
                return Err(invalid(
                    at("source"),
                    format!(
                        "`{}` is an aggregating table: its rows are partial states, not events",
                        v.source
                    ),
                    "read the table the aggregation's view reads, or aggregate in one view",
                ));
            }
            let Some(target) = self.table(&v.target) else {
                return Err(invalid(
                    at("target"),
                    format!("names `{}`, which is not a table", v.target),
                    format!("define a `[[table]]` named `{}` without a topic, with the query's output columns", v.target),
                ));
            };
            if target.topic.is_some() {
                return Err(invalid(
                    at("target"),
                    format!(
                        "table `{}` reads a topic; a view writes only to a table of its own",
                        v.target
                    ),
                    format!(
                        "remove `topic` from table `{}`, or write the view to another table",
                        v.target
                    ),
                ));
            }
            if let Some(other) = writers.insert(v.target.as_str(), v.name.as_str()) {
                return Err(invalid(
                    at("target"),
                    format!(
                        "table `{}` is already the target of view `{other}`",
                        v.target
                    ),
                    "give each view a target table of its own",
                ));
            }
            if v.sql.trim().is_empty() {
                return Err(invalid(
                    at("sql"),
                    "is empty",
                    format!("write a SELECT over `{}`", v.source),
                ));
            }
        }
        for (i, t) in self.tables.iter().enumerate() {
            if t.topic.is_none() && !writers.contains_key(t.name.as_str()) {
                return Err(invalid(
                    format!("table[{i}] ({}).topic", t.name),
                    "the table has no topic and no view writes to it",
                    "give it the `topic` it reads, or a `[[view]]` whose target it is",
                ));
            }
        }
        // Following sources upwards from every view must reach a table that reads a topic.
        for v in &self.views {
            let mut seen = BTreeSet::new();
            let mut table = v.source.as_str();
            while let Some(parent) = self.views.iter().find(|p| p.target == table) {
                if !seen.insert(parent.name.as_str()) {
                    return Err(invalid(
                        format!("view ({}).source", v.name),
                        format!(
                            "views `{}` read each other in a cycle",
                            seen.into_iter().collect::<Vec<_>>().join("`, `")
                        ),
                        "make every chain of views start at a table with a topic",
                    ));
                }
                table = parent.source.as_str();
            }
        }
        Ok(())
    }

    /// The size of librdkafka's prefetch queue (`queued.max.messages.kbytes`), in KiB: as set
    /// in `kafka.properties`, else an eighth of `worker.memory_budget_bytes`, at least 1 MiB and
    /// at most librdkafka's own default of 64 MiB. The queue fills whenever the pipeline applies
    /// backpressure, so it is part of what a worker holds in memory.
    pub fn kafka_prefetch_kib(&self) -> u64 {
        if let Some(v) = self
            .kafka
            .properties
            .get(KAFKA_PREFETCH_PROPERTY)
            .and_then(|v| v.parse().ok())
        {
            return v;
        }
        (self.worker.memory_budget_bytes / 8 / 1024).clamp(1024, 65536)
    }

    /// The distinct topics the tables read, in name order.
    pub fn topics(&self) -> Vec<String> {
        let set: BTreeSet<&str> = self
            .tables
            .iter()
            .filter_map(|t| t.topic.as_deref())
            .collect();
        set.into_iter().map(str::to_string).collect()
    }

    /// The table of this name.
    pub fn table(&self, name: &str) -> Option<&TableConfig> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// The tables a topic's flush writes: those reading the topic, and the targets of every
    /// view downstream of them (chains included), sources before targets.
    pub fn tables_fed_by(&self, topic: &str) -> Vec<&TableConfig> {
        let mut out: Vec<&TableConfig> = self
            .tables
            .iter()
            .filter(|t| t.topic.as_deref() == Some(topic))
            .collect();
        let mut i = 0;
        while i < out.len() {
            let name = out[i].name.clone();
            for v in self.views.iter().filter(|v| v.source == name) {
                if let Some(t) = self.table(&v.target) {
                    if !out.iter().any(|o| o.name == t.name) {
                        out.push(t);
                    }
                }
            }
            i += 1;
        }
        out
    }
}

fn positive(field: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(invalid(field, "is 0", "use a positive value"));
    }
    Ok(())
}

fn is_simple_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl TableConfig {
    fn validate(&self, index: usize) -> Result<(), ConfigError> {
        let at = |field: &str| format!("table[{index}] ({}).{field}", self.name);
        if !is_simple_name(&self.name) {
            return Err(invalid(
                format!("table[{index}].name"),
                format!("`{}` is not a valid table name", self.name),
                "use lowercase letters, digits and `_`, starting with a letter",
            ));
        }
        if let Some(topic) = &self.topic {
            if topic.is_empty() || topic.contains('/') {
                return Err(invalid(
                    at("topic"),
                    format!("`{topic}` is not a valid topic name"),
                    "name the Kafka topic this table reads",
                ));
            }
        }
        if self.columns.is_empty() {
            return Err(invalid(
                at("column"),
                "the table has no columns",
                "add `[[table.column]]` blocks",
            ));
        }
        let mut seen = BTreeSet::new();
        for col in &self.columns {
            if col.name.is_empty() || !seen.insert(col.name.as_str()) {
                return Err(invalid(
                    at("column"),
                    format!("column name `{}` is empty or repeated", col.name),
                    "give every column a unique name",
                ));
            }
            if let Some(src) = &col.source {
                if src.is_empty() || src.split('.').any(str::is_empty) {
                    return Err(invalid(
                        at(&format!("column.{}.source", col.name)),
                        format!("`{src}` is not a field name or dotted path"),
                        "write e.g. `country` or `user.geo.country`",
                    ));
                }
            }
            if let Some(default) = &col.default {
                check_default(col.column_type, default).map_err(|problem| {
                    invalid(
                        at(&format!("column.{}.default", col.name)),
                        problem,
                        format!("give a {} value", col.column_type),
                    )
                })?;
            }
            if self.topic.is_none() && (col.source.is_some() || col.default.is_some()) {
                return Err(invalid(
                    at(&format!("column.{}", col.name)),
                    "`source` and `default` say how to read a JSON event, and a view's target reads none",
                    "remove them: the view's query gives the column's values",
                ));
            }
            if let Some(agg) = col.aggregate {
                if self.topic.is_some() {
                    return Err(invalid(
                        at(&format!("column.{}.aggregate", col.name)),
                        "aggregate states are written by views, and this table reads a topic",
                        "remove `aggregate`, or move the column to a view's target table",
                    ));
                }
                let fits = match agg {
                    Aggregate::Count => col.column_type == ColumnType::Int64,
                    Aggregate::Sum => matches!(
                        col.column_type,
                        ColumnType::Int64 | ColumnType::UInt64 | ColumnType::Float64
                    ),
                    Aggregate::Min | Aggregate::Max => col.column_type != ColumnType::Boolean,
                    Aggregate::ApproxDistinct => col.column_type == ColumnType::UInt64,
                };
                if !fits {
                    let expected = match agg {
                        Aggregate::Count => "int64",
                        Aggregate::Sum => "int64, uint64 or float64 (the sum's type)",
                        Aggregate::Min | Aggregate::Max => "the type of the column it is taken of",
                        Aggregate::ApproxDistinct => "uint64 (the estimate's type)",
                    };
                    return Err(invalid(
                        at(&format!("column.{}.type", col.name)),
                        format!(
                            "{} does not hold `{}` states",
                            col.column_type,
                            agg.function()
                        ),
                        format!("declare it as {expected}"),
                    ));
                }
            }
        }
        for key in &self.sorting_key {
            let Some(col) = self.column(key) else {
                return Err(invalid(
                    at("sorting_key"),
                    format!("names `{key}`, which is not a column of the table"),
                    format!("use columns of the table: {}", self.column_names()),
                ));
            };
            if col.aggregate.is_some() {
                return Err(invalid(
                    at("sorting_key"),
                    format!("names `{key}`, an aggregate state"),
                    "sort by the grouping columns (those without `aggregate`)",
                ));
            }
        }
        if let Some(pk) = &self.partition_key {
            let Some(col) = self.column(&pk.column) else {
                return Err(invalid(
                    at("partition_key.column"),
                    format!("names `{}`, which is not a column of the table", pk.column),
                    format!("use a column of the table: {}", self.column_names()),
                ));
            };
            if col.aggregate.is_some() {
                return Err(invalid(
                    at("partition_key.column"),
                    format!("names `{}`, an aggregate state", pk.column),
                    "partition by a grouping column (one without `aggregate`)",
                ));
            }
            let temporal = col.column_type.is_temporal();
            match pk.granularity {
                Granularity::Identity if col.column_type == ColumnType::Float64 => {
                    return Err(invalid(
                        at("partition_key.granularity"),
                        format!(
                            "column `{}` is float64, which makes no sensible partition value",
                            col.name
                        ),
                        "partition by an integer, boolean, string or temporal column",
                    ));
                }
                Granularity::Hour | Granularity::Day | Granularity::Month if !temporal => {
                    return Err(invalid(
                        at("partition_key.granularity"),
                        format!(
                            "`{:?}` needs a timestamp or date column, and `{}` is {}",
                            pk.granularity, col.name, col.column_type
                        )
                        .to_lowercase(),
                        "use `identity`, or partition by a timestamp/date column",
                    ));
                }
                Granularity::Hour if col.column_type == ColumnType::Date => {
                    return Err(invalid(
                        at("partition_key.granularity"),
                        format!("`hour` of date column `{}`", col.name),
                        "use `day` or `month`",
                    ));
                }
                _ => {}
            }
        }
        if self.flush.max_rows == 0 {
            return Err(invalid(
                at("flush.max_rows"),
                "is 0",
                "use a positive row count",
            ));
        }
        positive(&at("flush.max_bytes"), self.flush.max_bytes)?;
        positive(&at("flush.max_age_ms"), self.flush.max_age_ms)?;
        if self.max_message_bytes == 0 {
            return Err(invalid(
                at("max_message_bytes"),
                "is 0",
                "use a positive size",
            ));
        }
        Ok(())
    }

    fn column_names(&self) -> String {
        self.columns
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn check_default(ty: ColumnType, v: &toml::Value) -> Result<(), String> {
    use toml::Value as V;
    let ok = match (ty, v) {
        (ColumnType::Boolean, V::Boolean(_)) => true,
        (ColumnType::Int32, V::Integer(i)) => i32::try_from(*i).is_ok(),
        (ColumnType::Int64, V::Integer(_)) => true,
        (ColumnType::UInt64, V::Integer(i)) => *i >= 0,
        (ColumnType::Float64, V::Integer(_) | V::Float(_)) => true,
        (ColumnType::String, V::String(_)) => true,
        (ColumnType::TimestampMs | ColumnType::TimestampUs, V::Integer(_)) => true,
        (ColumnType::TimestampMs | ColumnType::TimestampUs, V::String(s)) => {
            chrono::DateTime::parse_from_rfc3339(s).is_ok()
        }
        (ColumnType::Date, V::String(s)) => {
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
        }
        (ColumnType::Date, V::Integer(_)) => true,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("default `{v}` does not fit type {ty}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[kafka]
bootstrap_servers = "127.0.0.1:9092"

[[table]]
name = "events"
topic = "events"
sorting_key = ["country", "ts"]
partition_key = { column = "ts", granularity = "day" }

[[table.column]]
name = "ts"
type = "timestamp_ms"
nullable = false

[[table.column]]
name = "country"
type = "string"
default = "unknown"
source = "geo.country"
"#;

    fn err_of(text: &str) -> String {
        Config::from_toml_str(text, "test.toml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::from_toml_str(MINIMAL, "test.toml").unwrap();
        assert_eq!(c.coordination.backend, CoordinationBackend::Zookeeper);
        assert_eq!(c.tables[0].flush.max_rows, default_max_rows());
        assert_eq!(c.tables[0].columns[1].source_path(), vec!["geo", "country"]);
        assert_eq!(
            c.tables[0].arrow_schema().field(0).data_type(),
            &ColumnType::TimestampMs.arrow_type()
        );
        assert_eq!(c.topics(), vec!["events".to_string()]);
    }

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/sluice.example.toml");
        let c = Config::load(&path).unwrap();
        assert!(!c.tables.is_empty());
    }

    #[test]
    fn unknown_field_is_named() {
        let e = err_of(&MINIMAL.replace("sorting_key", "sort_key"));
        assert!(e.contains("unknown field `sort_key`"), "{e}");
    }

    #[test]
    fn unknown_type_lists_the_known_ones() {
        let e = err_of(&MINIMAL.replace("\"string\"", "\"varchar\""));
        assert!(
            e.contains("unknown column type `varchar`") && e.contains("timestamp_ms"),
            "{e}"
        );
    }

    #[test]
    fn sorting_key_must_name_a_column() {
        let e = err_of(&MINIMAL.replace("[\"country\", \"ts\"]", "[\"city\"]"));
        assert!(
            e.contains("sorting_key") && e.contains("`city`") && e.contains("ts, country"),
            "{e}"
        );
    }

    #[test]
    fn partition_key_granularity_needs_a_temporal_column() {
        let e = err_of(&MINIMAL.replace(
            "column = \"ts\", granularity = \"day\"",
            "column = \"country\", granularity = \"day\"",
        ));
        assert!(e.contains("partition_key.granularity"), "{e}");
    }

    #[test]
    fn default_must_fit_the_type() {
        let e = err_of(&MINIMAL.replace("default = \"unknown\"", "default = 7"));
        assert!(e.contains("column.country.default"), "{e}");
    }

    #[test]
    fn managed_kafka_properties_are_refused() {
        let e = err_of(&MINIMAL.replace("bootstrap_servers = \"127.0.0.1:9092\"", "bootstrap_servers = \"127.0.0.1:9092\"\nproperties = { \"enable.auto.commit\" = \"true\" }"));
        assert!(e.contains("enable.auto.commit"), "{e}");
    }

    #[test]
    fn storage_scheme_is_checked() {
        let e = err_of(&format!("{MINIMAL}\n[storage]\nurl = \"gs://bucket\"\n"));
        assert!(e.contains("storage.url"), "{e}");
    }

    #[test]
    fn kafka_prefetch_follows_the_budget_unless_set() {
        let budget = |b: u64| format!("{MINIMAL}\n[worker]\nmemory_budget_bytes = {b}\n");
        let c = Config::from_toml_str(MINIMAL, "t").unwrap();
        assert_eq!(
            c.kafka_prefetch_kib(),
            32768,
            "an eighth of the default 256 MiB"
        );
        let small = Config::from_toml_str(&budget(40_000), "t").unwrap();
        assert_eq!(small.kafka_prefetch_kib(), 1024);
        let large = Config::from_toml_str(&budget(8 << 30), "t").unwrap();
        assert_eq!(large.kafka_prefetch_kib(), 65536);
        let set = MINIMAL.replace(
            "bootstrap_servers = \"127.0.0.1:9092\"",
            "bootstrap_servers = \"127.0.0.1:9092\"\nproperties = { \"queued.max.messages.kbytes\" = \"2048\" }",
        );
        assert_eq!(
            Config::from_toml_str(&set, "t")
                .unwrap()
                .kafka_prefetch_kib(),
            2048
        );
        let e = err_of(&set.replace("\"2048\"", "\"lots\""));
        assert!(e.contains("queued.max.messages.kbytes"), "{e}");
    }

    /// MINIMAL plus a view target table and a view; `table` and `view` replace their parts.
    fn with_view(table: &str, view: &str) -> String {
        format!("{MINIMAL}\n{table}\n{view}\n")
    }

    const TARGET: &str = r#"
[[table]]
name = "per_country"
[[table.column]]
name = "country"
type = "string"
[[table.column]]
name = "n"
type = "int64"
aggregate = "count"
"#;

    const VIEW: &str = r#"
[[view]]
name = "countries"
source = "events"
target = "per_country"
sql = "SELECT country, count(*) AS n FROM events GROUP BY country"
"#;

    #[test]
    fn a_view_and_its_aggregating_target_parse() {
        let c = Config::from_toml_str(&with_view(TARGET, VIEW), "t").unwrap();
        assert_eq!(c.views.len(), 1);
        let t = c.table("per_country").unwrap();
        assert!(t.is_aggregating() && t.topic.is_none());
        assert_eq!(c.topics(), vec!["events".to_string()]);
        let fed: Vec<&str> = c
            .tables_fed_by("events")
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(fed, vec!["events", "per_country"]);
    }

    #[test]
    fn views_that_do_not_fit_their_tables_are_refused() {
        let cases: Vec<(String, &str)> = vec![
            (with_view(TARGET, &VIEW.replace("source = \"events\"", "source = \"nope\"")), "view[0] (countries).source"),
            (with_view(TARGET, &VIEW.replace("target = \"per_country\"", "target = \"nope\"")), "view[0] (countries).target"),
            (with_view(TARGET, &VIEW.replace("target = \"per_country\"", "target = \"events\"")), "reads a topic"),
            (with_view(TARGET, &format!("{VIEW}{}", VIEW.replace("name = \"countries\"", "name = \"again\""))), "already the target of view `countries`"),
            (with_view(TARGET, ""), "no view writes to it"),
            (with_view(TARGET, &VIEW.replace("sql = \"SELECT country, count(*) AS n FROM events GROUP BY country\"", "sql = \" \"")), "sql"),
            (with_view(&TARGET.replace("type = \"int64\"\naggregate = \"count\"", "type = \"string\"\naggregate = \"count\""), VIEW), "does not hold `count` states"),
            (with_view(&TARGET.replace("name = \"per_country\"\n", "name = \"per_country\"\nsorting_key = [\"n\"]\n"), VIEW), "aggregate state"),
            (
                format!("{}\n{TARGET}\n{VIEW}", MINIMAL.replace("default = \"unknown\"", "default = \"unknown\"\naggregate = \"max\"")),
                "aggregate states are written by views",
            ),
            (
                with_view(
                    &format!("{TARGET}\n[[table]]\nname = \"again\"\n[[table.column]]\nname = \"n\"\ntype = \"int64\"\n"),
                    &format!("{VIEW}\n[[view]]\nname = \"over_states\"\nsource = \"per_country\"\ntarget = \"again\"\nsql = \"SELECT n FROM per_country\"\n"),
                ),
                "partial states",
            ),
        ];
        for (text, wanted) in cases {
            let e = err_of(&text);
            assert!(e.contains(wanted), "expected `{wanted}` in: {e}");
        }
    }

    #[test]
    fn views_reading_each_other_in_a_cycle_are_refused() {
        let plain = |name: &str| {
            format!("\n[[table]]\nname = \"{name}\"\n[[table.column]]\nname = \"country\"\ntype = \"string\"\n")
        };
        let view = |name: &str, source: &str, target: &str| {
            format!("\n[[view]]\nname = \"{name}\"\nsource = \"{source}\"\ntarget = \"{target}\"\nsql = \"SELECT country FROM {source}\"\n")
        };
        let text = format!(
            "{MINIMAL}{}{}{}{}",
            plain("a"),
            plain("b"),
            view("va", "b", "a"),
            view("vb", "a", "b")
        );
        let e = err_of(&text);
        assert!(e.contains("cycle"), "{e}");
    }

    #[test]
    fn telemetry_defaults_to_loopback() {
        let c = Config::from_toml_str(MINIMAL, "test.toml").unwrap();
        assert!(c.telemetry.enabled);
        assert_eq!(c.telemetry.listen_address, "127.0.0.1:9600");
    }

    #[test]
    fn telemetry_listen_address_must_be_ip_and_port() {
        let e = err_of(&format!(
            "{MINIMAL}\n[telemetry]\nlisten_address = \"localhost\"\n"
        ));
        assert!(
            e.contains("telemetry.listen_address") && e.contains("127.0.0.1:9600"),
            "{e}"
        );
    }

    #[test]
    fn telemetry_history_must_hold_a_refresh() {
        let e = err_of(&format!(
            "{MINIMAL}\n[telemetry]\nrefresh_ms = 10000\ndashboard_history_s = 5\n"
        ));
        assert!(e.contains("telemetry.dashboard_history_s"), "{e}");
    }
}
