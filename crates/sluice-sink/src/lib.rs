//! Sink: turns a flushed buffer into sorted Parquet parts, one per partition-key value, names
//! them deterministically, uploads them, and collects objects that were uploaded but never
//! committed.
//!
//! Encoding is CPU work: callers run [`build_parts`] on a blocking thread.

mod gc;
mod parts;
pub mod sort;
mod storage;

pub use gc::{
    collect_garbage, collect_table_garbage, parse_part_name, GcReport, GcScope, PartName,
};
pub use parts::{
    build_parts, encode, part_path, quarantine_schema, sort_and_split, EncodedPart, FlushSource,
};
pub use storage::{ObjectInfo, Storage};

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
    #[error("object storage failed at {path}")]
    Storage {
        path: String,
        #[source]
        source: object_store::Error,
    },
}
