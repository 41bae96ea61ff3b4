//! Sink: turns a flushed buffer into sorted Parquet parts, one per partition-key value, names
//! them deterministically, uploads them, and collects objects that were uploaded but never
//! committed (flushed parts, merged parts, manifests), never a live, sealed or retired one.
//!
//! Encoding is CPU work: callers run [`build_parts`] on a blocking thread.

mod backfill_parts;
mod gc;
mod history_parts;
mod manifest;
mod parts;
pub mod repair;
mod replay_parts;
pub mod sort;
mod storage;

pub use backfill_parts::{
    backfill_file_name, build_backfill_parts, parse_backfill_name, BackfillSource,
};
pub use gc::{
    collect_merge_orphans, collect_table_garbage, parse_merged_name, parse_part_name, GcReport,
    GcScope, MergedName, PartName,
};
pub use history_parts::{
    build_history_parts, history_file_name, parse_history_name, HistorySource,
};
pub use manifest::{read_manifest, sha256_hex, write_manifest};
pub use parts::{
    build_parts, encode, part_path, path_segment, quarantine_schema, sort_and_split,
    writer_properties, EncodedPart, FlushSource, ROW_GROUP_ROWS,
};
pub use replay_parts::{build_replay_parts, parse_replay_name, replay_file_name, ReplaySource};
pub use storage::{EndpointCounts, ObjectInfo, QuorumShort, Storage};

/// A cause that may be only a message.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("storage URL `{url}` is not usable: {problem}")]
    BadUrl {
        url: String,
        problem: String,
        #[source]
        source: Option<Cause>,
    },
    #[error("storage option `{key}` is not known to the S3 client; see the object_store AmazonS3ConfigKey names (e.g. aws_endpoint, aws_access_key_id)")]
    BadOption {
        key: String,
        #[source]
        source: object_store::Error,
    },
    #[error("cannot sort table `{table}` ({unit})")]
    Sort {
        table: String,
        unit: String,
        #[source]
        source: Cause,
    },
    #[error("cannot encode a Parquet part of table `{table}` ({path})")]
    Encode {
        table: String,
        path: String,
        #[source]
        source: Cause,
    },
    #[error("cannot list the committed parts of table `{table}`")]
    Registry {
        table: String,
        #[source]
        source: sluice_coord::CoordError,
    },
    #[error("the manifest {path} does not hold what its pointer says")]
    Manifest {
        path: String,
        #[source]
        source: Cause,
    },
    #[error("the copy of {path} on endpoint `{endpoint}` is not what was written: {problem}")]
    Corrupt {
        endpoint: String,
        path: String,
        problem: String,
    },
    #[error("{path} was not stored on enough endpoints: {problem}")]
    Quorum { path: String, problem: String },
    #[error("part unavailable: no good copy of {path} ({problem})")]
    Unavailable { path: String, problem: String },
    #[error("no storage endpoint is named `{endpoint}`")]
    UnknownEndpoint { endpoint: String },
    #[error("object storage failed at {path}")]
    Storage {
        path: String,
        #[source]
        source: object_store::Error,
    },
}

/// What S3 says when only an operator can help: credentials refused, the bucket missing.
const REFUSALS: &[&str] = &[
    "403 Forbidden",
    "401 Unauthorized",
    "SignatureDoesNotMatch",
    "InvalidAccessKeyId",
    "AccessDenied",
    "NoSuchBucket",
];

/// An error and its causes as one text.
fn chain_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

impl SinkError {
    /// A storage failure that will not go away by itself (credentials refused, the bucket or
    /// root missing): retrying is still right, since an operator may fix it at any time, but
    /// slowly and loudly. Everything else (connections refused or reset, timeouts, 5xx,
    /// throttling, a full disk) is expected to pass.
    pub fn needs_operator(&self) -> bool {
        match self {
            SinkError::Storage {
                source:
                    object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
                    | object_store::Error::NotFound { .. },
                ..
            } => true,
            // The S3 client reports most refusals as a generic error carrying the server's
            // answer: read the status and the S3 error code from it.
            SinkError::Storage {
                source: source @ object_store::Error::Generic { .. },
                ..
            } => {
                let text = chain_text(source);
                REFUSALS.iter().any(|r| text.contains(r))
            }
            _ => false,
        }
    }
}
