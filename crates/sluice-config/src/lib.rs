//! Sluice configuration: the worker, coordination, Kafka and storage settings, and the table
//! definitions, read from one TOML file and validated at load.
//!
//! Every struct refuses unknown fields, so a misspelt key fails at start-up with its name and
//! line instead of being silently ignored. Each section validates its own fields; what needs
//! more than one section (a view naming its tables, the lease wait against the session timeout)
//! is checked by [`Config::validate`]. Every error names the field and the fix.
//!
//! Each default is declared once: in the section's `impl Default` when every field of the
//! section has one, else in a private function next to the struct, and stated in the field's
//! doc comment. `config/sluice.example.toml` documents every field; a test checks that each
//! value it writes is the default it documents, unless the file marks it as an example.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod column;
mod coordination;
mod kafka;
mod kafka_security;
mod merge;
mod replication;
mod secret;
mod storage;
mod table;
mod telemetry;
mod tls_files;
mod view;
mod worker;

#[cfg(test)]
mod tests;

pub use column::{Aggregate, ColumnConfig, ColumnType};
pub use coordination::{CoordinationBackend, CoordinationConfig, ZookeeperAuth, ZookeeperTls};
pub use kafka::{KafkaConfig, StartFrom, KAFKA_PREFETCH_PROPERTY};
pub use kafka_security::{KafkaSecurity, SaslMechanism, SecurityProtocol};
pub use merge::MergeConfig;
pub use replication::{EndpointConfig, RepairConfig, Replication};
pub use secret::{Secret, REDACTED};
pub use storage::{OptionValue, StorageConfig};
pub use table::{FlushConfig, Granularity, PartitionKeyConfig, TableConfig};
pub use telemetry::TelemetryConfig;
pub use view::ViewConfig;
pub use worker::WorkerConfig;

/// Why a configuration was refused. The I/O and TOML errors are the causes (`source`), so
/// printing the chain (`{e:#}` with anyhow) shows each once.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Syntax, an unknown or missing field, or a value of the wrong type; the TOML error
    /// shows the line and column.
    #[error("config file {origin} is not valid")]
    Parse {
        origin: String,
        #[source]
        source: toml::de::Error,
    },
    /// A secret written wrongly or unreadable. Unlike [`ConfigError::Parse`] it does not quote
    /// the line, which may hold the secret itself.
    #[error("config file {origin}, line {line}, column {column}: {problem}")]
    Secret {
        origin: String,
        line: usize,
        column: usize,
        problem: String,
    },
    #[error("config field `{field}`: {problem}; fix: {fix}")]
    Invalid {
        field: String,
        problem: String,
        fix: String,
    },
}

pub(crate) fn invalid(
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

pub(crate) fn positive(field: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(invalid(field, "is 0", "use a positive value"));
    }
    Ok(())
}

/// Table and view names end up in object paths and SQL, so they are kept to one safe form.
pub(crate) fn is_simple_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The whole configuration of a worker.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Settings of this worker process. Default: every field's own default.
    #[serde(default)]
    pub worker: WorkerConfig,
    /// Where leases, offsets and the part registry live. Default: every field's own default.
    #[serde(default)]
    pub coordination: CoordinationConfig,
    /// The Kafka cluster events are read from. Required (for `bootstrap_servers`).
    pub kafka: KafkaConfig,
    /// Where Parquet parts are written. Default: every field's own default.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Metrics, health endpoints and the dashboard. Default: every field's own default.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Merges of each scope's parts, and when ingestion waits for them. Default: every field's
    /// own default.
    #[serde(default)]
    pub merge: MergeConfig,
    /// The tables: those with a `topic` are decoded from Kafka, the others are written by a
    /// view. Written as `[[table]]` blocks. Required: at least one.
    #[serde(rename = "table")]
    pub tables: Vec<TableConfig>,
    /// Materialized views: SQL run over every batch that lands in a table, written to another
    /// table and committed together with it. Written as `[[view]]` blocks. Default: none.
    #[serde(rename = "view", default)]
    pub views: Vec<ViewConfig>,
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
        let config: Config = toml::from_str(text).map_err(|source| {
            match source.message().strip_prefix(secret::PROBLEM) {
                Some(problem) => {
                    let at = source.span().map_or(0, |s| s.start);
                    let before = &text[..at.min(text.len())];
                    ConfigError::Secret {
                        origin: origin.to_string(),
                        line: before.matches('\n').count() + 1,
                        column: before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1,
                        problem: problem.to_string(),
                    }
                }
                None => ConfigError::Parse {
                    origin: origin.to_string(),
                    source,
                },
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: relations between fields and value ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.worker.validate()?;
        self.telemetry.validate()?;
        self.coordination.validate()?;
        self.validate_lease_wait()?;
        self.kafka.validate()?;
        self.storage.validate()?;
        self.merge.validate()?;
        self.validate_merge_memory()?;
        table::validate_tables(&self.tables)?;
        view::validate_views(self)
    }

    /// A crashed worker's leases are freed only when its session expires, so waiting less than
    /// that for a lease would report every such takeover as a failure.
    fn validate_lease_wait(&self) -> Result<(), ConfigError> {
        let (wait, session) = (
            self.worker.lease_wait_ms,
            self.coordination.session_timeout_ms,
        );
        if self.coordination.backend == CoordinationBackend::Zookeeper && wait <= session {
            return Err(invalid(
                "worker.lease_wait_ms",
                format!("{wait} ms does not exceed coordination.session_timeout_ms ({session} ms), so a crashed worker's leases could never be taken over"),
                "make it larger than the session timeout, e.g. twice it",
            ));
        }
        Ok(())
    }

    /// A merge is counted against the worker's memory budget; one that could take most of it
    /// would starve ingestion of buffer space.
    fn validate_merge_memory(&self) -> Result<(), ConfigError> {
        let budget = self.worker.memory_budget_bytes;
        match self.merge.memory_bytes {
            Some(merge) if merge > budget / 2 => Err(invalid(
                "merge.memory_bytes",
                format!("{merge} bytes exceed half of worker.memory_budget_bytes ({budget} bytes), leaving ingestion too little of the budget"),
                format!("lower it to at most {}, leave it out (64 MiB or half the budget), or raise worker.memory_budget_bytes to at least {}", budget / 2, merge.saturating_mul(2)),
            )),
            _ => Ok(()),
        }
    }

    /// What one running merge is counted for against `worker.memory_budget_bytes`:
    /// `merge.memory_bytes` as set, else 64 MiB or half the budget, whichever is smaller.
    pub fn merge_memory_bytes(&self) -> u64 {
        self.merge
            .memory_bytes
            .unwrap_or(MergeConfig::DEFAULT_MEMORY_BYTES.min(self.worker.memory_budget_bytes / 2))
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
