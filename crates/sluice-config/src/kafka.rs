//! `[kafka]`: the Kafka cluster events are read from.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::kafka_security::KafkaSecurity;
use crate::{invalid, positive, ConfigError};

/// librdkafka's property for the size of its prefetch queue, in KiB.
pub const KAFKA_PREFETCH_PROPERTY: &str = "queued.max.messages.kbytes";

/// Where to start a partition that has no committed offset yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    Earliest,
    Latest,
}

/// The Kafka cluster events are read from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`. Required.
    pub bootstrap_servers: String,
    /// librdkafka properties passed through as they are (e.g. `fetch.wait.max.ms`). Sluice
    /// sets `enable.auto.commit=false` itself: offsets live in the coordinator. TLS and SASL
    /// are set in `[kafka.security]`, and properties that hold a secret are refused here.
    /// Default: none.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// `earliest` or `latest`, for partitions with no committed offset. Default: `earliest`.
    #[serde(default = "default_start_from")]
    pub start_from: StartFrom,
    /// How long metadata and watermark requests may take before the broker counts as
    /// unreachable. Default: 10000 (10 s).
    #[serde(default = "default_metadata_timeout_ms")]
    pub metadata_timeout_ms: u64,
    /// How often topics are re-read for partitions added since start-up; new partitions are
    /// assigned and ingested without a restart. Default: 30000 (30 s).
    #[serde(default = "default_metadata_refresh_ms")]
    pub metadata_refresh_ms: u64,
    /// TLS and SASL to the brokers. Default: plaintext, no authentication.
    #[serde(default)]
    pub security: KafkaSecurity,
}

// `bootstrap_servers` has no default, so the others are declared one by one instead of in an
// `impl Default`.
fn default_start_from() -> StartFrom {
    StartFrom::Earliest
}
fn default_metadata_timeout_ms() -> u64 {
    10_000
}
fn default_metadata_refresh_ms() -> u64 {
    30_000
}

/// Properties Sluice sets itself: offsets are committed with the parts, never to Kafka.
const MANAGED_PROPERTIES: [&str; 2] = ["enable.auto.commit", "group.id"];

/// Properties `[kafka.security]` sets, each with the field that does.
const SECURITY_PROPERTIES: [(&str, &str); 14] = [
    ("security.protocol", "protocol"),
    ("sasl.mechanism", "sasl_mechanism"),
    ("sasl.mechanisms", "sasl_mechanism"),
    ("sasl.username", "sasl_username"),
    ("sasl.password", "sasl_password"),
    ("sasl.oauthbearer.method", "sasl_mechanism"),
    ("sasl.oauthbearer.client.id", "sasl_username"),
    ("sasl.oauthbearer.client.secret", "sasl_password"),
    (
        "sasl.oauthbearer.token.endpoint.url",
        "oauthbearer_token_endpoint_url",
    ),
    ("sasl.oauthbearer.scope", "oauthbearer_scope"),
    ("ssl.ca.location", "ca_file"),
    ("ssl.certificate.location", "certificate_file"),
    ("ssl.key.location", "key_file"),
    ("ssl.endpoint.identification.algorithm", "verify_hostname"),
];

/// Parts of property names that hold secrets (`ssl.key.password`, `ssl.key.pem`,
/// `sasl.oauthbearer.config`, ...): never accepted in plain text.
const SECRET_PROPERTY_MARKS: [&str; 6] = [
    "password",
    "secret",
    "passphrase",
    "key.pem",
    "private.key",
    "oauthbearer.config",
];

impl KafkaConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.validate_bootstrap_servers()?;
        positive("kafka.metadata_refresh_ms", self.metadata_refresh_ms)?;
        self.validate_prefetch()?;
        self.validate_managed_properties()?;
        self.validate_security_properties()?;
        self.security.validate()
    }

    fn validate_bootstrap_servers(&self) -> Result<(), ConfigError> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(invalid(
                "kafka.bootstrap_servers",
                "is empty",
                "set it to `host:port[,host:port...]`",
            ));
        }
        Ok(())
    }

    /// The worker counts this queue in its memory budget (see
    /// [`crate::Config::kafka_prefetch_kib`]), so the value must be a size it can read.
    fn validate_prefetch(&self) -> Result<(), ConfigError> {
        let Some(v) = self.properties.get(KAFKA_PREFETCH_PROPERTY) else {
            return Ok(());
        };
        if v.parse::<u64>().map_or(true, |k| k == 0) {
            return Err(invalid(
                format!("kafka.properties.\"{KAFKA_PREFETCH_PROPERTY}\""),
                format!("`{v}` is not a positive number of KiB"),
                "give a size in KiB, e.g. \"32768\", or remove it to size the queue from worker.memory_budget_bytes",
            ));
        }
        Ok(())
    }

    fn validate_managed_properties(&self) -> Result<(), ConfigError> {
        match MANAGED_PROPERTIES
            .iter()
            .find(|key| self.properties.contains_key(**key))
        {
            Some(key) => Err(invalid(
                format!("kafka.properties.\"{key}\""),
                "is managed by Sluice (offsets are committed with the parts, not to Kafka)",
                "remove it",
            )),
            None => Ok(()),
        }
    }

    /// The value is never quoted: it may be the secret.
    fn validate_security_properties(&self) -> Result<(), ConfigError> {
        for key in self.properties.keys() {
            let field = format!("kafka.properties.\"{key}\"");
            if let Some((_, typed)) = SECURITY_PROPERTIES.iter().find(|(k, _)| k == key) {
                return Err(invalid(
                    field,
                    "is set by [kafka.security]",
                    format!("remove it and set `kafka.security.{typed}` instead (secrets as `{{ file = \"/path\" }}`)"),
                ));
            }
            if SECRET_PROPERTY_MARKS.iter().any(|m| key.contains(m)) {
                return Err(invalid(
                    field,
                    "holds a secret, and secrets are not written in the config",
                    "remove it; passwords go in [kafka.security] as `{ file = \"/path\" }` or `{ env = \"NAME\" }`, keys in files named by key_file",
                ));
            }
        }
        Ok(())
    }
}
