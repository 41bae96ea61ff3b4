//! `[storage]`: where Parquet parts are written.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{invalid, ConfigError};

/// Where Parquet parts are written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `file:///absolute/dir`, `file://relative/dir` (from the working directory), or
    /// `s3://bucket/prefix`. Default: `file://sluice-data`.
    pub url: String,
    /// object_store options, e.g. `aws_endpoint`, `aws_access_key_id`, `aws_secret_access_key`,
    /// `aws_region`, `aws_allow_http`. Default: none.
    pub options: BTreeMap<String, String>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            url: "file://sluice-data".to_string(),
            options: BTreeMap::new(),
        }
    }
}

impl StorageConfig {
    /// Only the stores the sink builds are accepted, so a typo fails at load rather than at
    /// the first flush.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let scheme = self.url.split("://").next().unwrap_or_default();
        if !self.url.contains("://") || !matches!(scheme, "file" | "s3") {
            return Err(invalid(
                "storage.url",
                format!("`{}` is not a supported storage URL", self.url),
                "use `file:///dir`, `file://relative/dir` or `s3://bucket/prefix`",
            ));
        }
        Ok(())
    }
}
