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

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("storage URL `{url}` is not usable: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("storage option `{key}` is not known to the S3 client: {reason}; see the object_store AmazonS3ConfigKey names (e.g. aws_endpoint, aws_access_key_id)")]
    BadOption { key: String, reason: String },
    #[error("cannot sort table `{table}` ({unit}): {reason}")]
    Sort {
        table: String,
        unit: String,
        reason: String,
    },
    #[error("cannot encode a Parquet part of table `{table}` ({path}): {reason}")]
    Encode {
        table: String,
        path: String,
        reason: String,
    },
    #[error("cannot list the committed parts of table `{table}`: {reason}")]
    Registry { table: String, reason: String },
    #[error("object storage failed at {path}: {reason}")]
    Storage { path: String, reason: String },
}
