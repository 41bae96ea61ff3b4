//! `[storage]`: where Parquet parts are written: one URL (a store that replicates by itself), or
//! several independent endpoints that Sluice replicates parts across (see [`crate::replication`]).

use std::collections::BTreeMap;

use serde::de::{Error as _, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::replication::{
    placeable, resolve, validate_endpoints, EndpointConfig, RepairConfig, Replication,
};
use crate::secret::{read, SourceVisitor, PROBLEM};
use crate::{invalid, ConfigError, Secret};

/// Where Parquet parts are written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `file:///absolute/dir`, `file://relative/dir` (from the working directory), or
    /// `s3://bucket/prefix`. Default: `file://sluice-data`.
    pub url: String,
    /// object_store options, e.g. `aws_endpoint`, `aws_access_key_id`, `aws_region`,
    /// `aws_allow_http`, and secrets such as `aws_secret_access_key` as
    /// `{ file = "/path" }` or `{ env = "NAME" }` (never inline). Left out, credentials come
    /// from the usual AWS chain (`AWS_*` variables, the instance's role). Default: none.
    pub options: BTreeMap<String, OptionValue>,
    /// Independent storage endpoints to replicate parts across, instead of `url` and
    /// `options` (leave those out). Default: none, the one `url`.
    pub endpoints: Vec<EndpointConfig>,
    /// How many endpoints keep a copy of each part (chosen per part by rendezvous hashing of
    /// its path among the endpoints not draining). Default: every endpoint not draining.
    pub replication_factor: Option<usize>,
    /// How many copies must be stored and verified before a part is committed: a fixed count,
    /// never inferred from which endpoints answer. Default: a majority of the replication
    /// factor.
    pub write_quorum: Option<usize>,
    /// Repair and scrub of the copies.
    pub repair: RepairConfig,
}

/// A value of `storage.options`: text, or a secret read from a file or the environment.
#[derive(Clone, PartialEq, Eq)]
pub enum OptionValue {
    Text(String),
    Secret(Secret),
}

impl OptionValue {
    /// The value itself, to hand to the store's builder only.
    pub fn expose(&self) -> &str {
        match self {
            OptionValue::Text(t) => t,
            OptionValue::Secret(s) => s.expose(),
        }
    }
}

impl From<&str> for OptionValue {
    fn from(text: &str) -> OptionValue {
        OptionValue::Text(text.to_string())
    }
}

impl std::fmt::Debug for OptionValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OptionValue::Text(t) => t.fmt(f),
            OptionValue::Secret(s) => s.fmt(f),
        }
    }
}

impl<'de> Deserialize<'de> for OptionValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<OptionValue, D::Error> {
        deserializer.deserialize_any(OptionVisitor)
    }
}

struct OptionVisitor;

impl<'de> Visitor<'de> for OptionVisitor {
    type Value = OptionValue;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string, or a secret as `{ file = \"/path\" }` or `{ env = \"NAME\" }`")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<OptionValue, E> {
        Ok(OptionValue::Text(text.to_string()))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<OptionValue, A::Error> {
        let source = SourceVisitor.visit_map(map)?;
        read(source)
            .map(OptionValue::Secret)
            .map_err(|e| A::Error::custom(format!("{PROBLEM}{e}")))
    }
}

/// Parts of option names that hold secrets (`aws_secret_access_key`, `aws_session_token`,
/// `azure_storage_account_key`, `google_service_account_key`, ...): refused as text.
const SECRET_OPTION_MARKS: [&str; 4] = ["secret", "token", "password", "account_key"];

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            url: "file://sluice-data".to_string(),
            options: BTreeMap::new(),
            endpoints: Vec::new(),
            replication_factor: None,
            write_quorum: None,
            repair: RepairConfig::default(),
        }
    }
}

impl StorageConfig {
    /// The endpoints parts are written to: the configured ones, or `url` as one endpoint named
    /// `default`.
    pub fn endpoint_list(&self) -> Vec<EndpointConfig> {
        if !self.endpoints.is_empty() {
            return self.endpoints.clone();
        }
        vec![EndpointConfig {
            name: "default".to_string(),
            url: self.url.clone(),
            options: self.options.clone(),
            drain: false,
        }]
    }

    /// The replication factor and write quorum in force (1 and 1 for one `url`).
    pub fn replication(&self) -> Replication {
        resolve(
            placeable(&self.endpoints),
            self.replication_factor,
            self.write_quorum,
        )
    }

    /// Only the stores the sink builds are accepted, so a typo fails at load rather than at
    /// the first flush.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.endpoints.is_empty() {
            check_url("storage.url", &self.url)?;
            refuse_inline_secrets("storage.options", &self.options)?;
        } else if self.url != StorageConfig::default().url || !self.options.is_empty() {
            return Err(invalid(
                "storage.url",
                "is set together with `[[storage.endpoints]]`",
                "move the URL and its options into an endpoint, or remove `[[storage.endpoints]]`",
            ));
        }
        validate_endpoints(
            &self.endpoints,
            self.replication_factor,
            self.write_quorum,
            &self.repair,
        )
    }
}

pub(crate) fn check_url(field: &str, url: &str) -> Result<(), ConfigError> {
    let scheme = url.split("://").next().unwrap_or_default();
    if !url.contains("://") || !matches!(scheme, "file" | "s3") {
        return Err(invalid(
            field,
            format!("`{url}` is not a supported storage URL"),
            "use `file:///dir`, `file://relative/dir` or `s3://bucket/prefix`",
        ));
    }
    Ok(())
}

/// The value is never quoted: it is the secret.
pub(crate) fn refuse_inline_secrets(
    field: &str,
    options: &BTreeMap<String, OptionValue>,
) -> Result<(), ConfigError> {
    for (key, value) in options {
        let secret_name = SECRET_OPTION_MARKS.iter().any(|m| key.contains(m));
        if secret_name && matches!(value, OptionValue::Text(_)) {
            return Err(invalid(
                format!("{field}.{key}"),
                "holds a secret, and secrets are not written in the config",
                format!("write `{key} = {{ file = \"/path\" }}` (a file readable only by the worker's user) or `{{ env = \"NAME\" }}`, or leave it out to use the AWS_* environment variables"),
            ));
        }
    }
    Ok(())
}
