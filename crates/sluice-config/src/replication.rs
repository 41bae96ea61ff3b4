//! `[storage]` with several independent endpoints: each part is kept on `replication_factor` of
//! them, committed once `write_quorum` hold it, and repaired onto the others in the background.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::storage::{check_url, refuse_inline_secrets, OptionValue};
use crate::{invalid, positive, ConfigError};

/// One independent storage endpoint (`[[storage.endpoints]]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Required. Names the endpoint in part records, metrics and logs: lowercase letters,
    /// digits, `-` and `_`. Renaming an endpoint makes its copies unknown (they are repaired
    /// onto it again), so keep names stable.
    pub name: String,
    /// Required. `file:///dir` or `s3://bucket/prefix`, as `storage.url`.
    pub url: String,
    /// object_store options of this endpoint, as `storage.options`. Default: none.
    #[serde(default)]
    pub options: BTreeMap<String, OptionValue>,
    /// Being emptied before removal: no new copy is placed on it and the repair copies its
    /// parts to the others, but it is still read from while it holds them. Remove the
    /// endpoint once `sluice parts` shows no part missing a copy. Default: false.
    #[serde(default)]
    pub drain: bool,
}

/// The background repair and scrub of replicated parts (`[storage.repair]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepairConfig {
    /// How often a worker compares the registry of the scopes it merges with each endpoint's
    /// contents and copies what is missing. Default: 30000 (30 s).
    pub interval_ms: u64,
    /// The most a worker copies per second when repairing, across endpoints. Default:
    /// 52428800 (50 MiB/s).
    pub bandwidth_bytes_per_s: u64,
    /// The most a worker re-reads per second to verify copies' checksums (the scrub); 0 turns
    /// the scrub off. Default: 4194304 (4 MiB/s).
    pub scrub_bytes_per_s: u64,
    /// After the write quorum holds a part, how long its commit waits for the remaining
    /// copies; copies still missing then are left to repair. Default: 2000 (2 s).
    pub straggler_wait_ms: u64,
}

impl Default for RepairConfig {
    fn default() -> Self {
        RepairConfig {
            interval_ms: 30_000,
            bandwidth_bytes_per_s: 50 * 1024 * 1024,
            scrub_bytes_per_s: 4 * 1024 * 1024,
            straggler_wait_ms: 2_000,
        }
    }
}

impl RepairConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        positive("storage.repair.interval_ms", self.interval_ms)?;
        positive(
            "storage.repair.bandwidth_bytes_per_s",
            self.bandwidth_bytes_per_s,
        )
    }
}

/// How parts are replicated, resolved from `[storage]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replication {
    pub factor: usize,
    pub quorum: usize,
}

/// Endpoint names become metric labels and record entries: one short safe form.
fn is_endpoint_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Checks `[[storage.endpoints]]`, `replication_factor` and `write_quorum` together.
pub(crate) fn validate_endpoints(
    endpoints: &[EndpointConfig],
    factor: Option<usize>,
    quorum: Option<usize>,
    repair: &RepairConfig,
) -> Result<(), ConfigError> {
    let mut names = BTreeSet::new();
    for (i, e) in endpoints.iter().enumerate() {
        let field = format!("storage.endpoints[{i}]");
        if !is_endpoint_name(&e.name) {
            return Err(invalid(
                format!("{field}.name"),
                format!("`{}` is not a usable endpoint name", e.name),
                "use 1 to 32 lowercase letters, digits, `-` or `_`",
            ));
        }
        if !names.insert(e.name.as_str()) {
            return Err(invalid(
                format!("{field}.name"),
                format!("`{}` names two endpoints", e.name),
                "give every endpoint its own name",
            ));
        }
        check_url(&format!("{field}.url"), &e.url)?;
        refuse_inline_secrets(&format!("{field}.options"), &e.options)?;
    }
    let urls: BTreeSet<_> = endpoints
        .iter()
        .map(|e| {
            (
                &e.url,
                e.options.get("aws_endpoint").map(OptionValue::expose),
            )
        })
        .collect();
    if urls.len() < endpoints.len() {
        return Err(invalid(
            "storage.endpoints",
            "two endpoints have the same url and `aws_endpoint`, so a part's copies would be one object",
            "give each endpoint its own bucket, directory or server",
        ));
    }
    let placeable = placeable(endpoints);
    let resolved = resolve(placeable, factor, quorum);
    if placeable == 0 {
        return Err(invalid(
            "storage.endpoints",
            "every endpoint is draining",
            "keep `drain = false` on at least one endpoint",
        ));
    }
    if resolved.factor == 0 || resolved.factor > placeable {
        return Err(invalid(
            "storage.replication_factor",
            format!("is {}, with {placeable} endpoints not draining", resolved.factor),
            "use 1 to the number of `[[storage.endpoints]]` not draining (leave it out for all of them)",
        ));
    }
    if resolved.quorum == 0 || resolved.quorum > resolved.factor {
        return Err(invalid(
            "storage.write_quorum",
            format!(
                "is {}, with a replication factor of {}",
                resolved.quorum, resolved.factor
            ),
            "use 1 to the replication factor (leave it out for a majority)",
        ));
    }
    repair.validate()
}

/// Endpoints new copies may be placed on: those not draining (one `url` counts as one).
pub(crate) fn placeable(endpoints: &[EndpointConfig]) -> usize {
    if endpoints.is_empty() {
        return 1;
    }
    endpoints.iter().filter(|e| !e.drain).count()
}

/// The factor defaults to every endpoint not draining, the quorum to a majority of the
/// factor.
pub(crate) fn resolve(
    endpoints: usize,
    factor: Option<usize>,
    quorum: Option<usize>,
) -> Replication {
    let factor = factor.unwrap_or(endpoints);
    Replication {
        factor,
        quorum: quorum.unwrap_or(factor / 2 + 1),
    }
}
