//! Backfills: a snapshot of files loaded into a table, whose partitions are then handed over to
//! the stream exactly once.
//!
//! A snapshot is described by a manifest ([`Snapshot`]): its files with their SHA-256, the
//! target table, and per Kafka partition of the table's topic the offset the snapshot is
//! consistent with (the stream's first event after it). Read in this order:
//!
//! * `snapshot.rs`: the manifest, checked at load (naming the field and the fix), and every
//!   file's checksum verified before anything is written.
//! * `plan.rs`: the [`BackfillPlan`](sluice_coord::BackfillPlan) the coordinator records,
//!   checked against what the topic still holds: a snapshot older than the topic's retention
//!   leaves a gap that is refused unless accepted, and then recorded.
//!
//! The coordination side (`sluice_coord`): the claim that keeps workers off the partitions,
//! the backfill lease that fences a zombie, the files staged one by one, and the handoff that
//! registers the staged parts and sets the offsets in one atomic change.

mod plan;
mod snapshot;

pub use plan::{plan, Retained};
pub use snapshot::{FileFormat, Snapshot, SnapshotFile};

/// What can stop a backfill before it writes anything.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("cannot read the snapshot manifest {path}")]
    ReadManifest {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the snapshot manifest {path} is not valid: {problem}")]
    Manifest { path: String, problem: String },
    #[error("cannot read snapshot file {path}")]
    ReadFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot file {path} has SHA-256 {actual}, the manifest says {expected}: the file changed or is not the one the snapshot describes; nothing was loaded")]
    Checksum {
        path: String,
        expected: String,
        actual: String,
    },
    #[error("the snapshot does not fit table `{table}`: {problem}")]
    Plan { table: String, problem: String },
    #[error("partition {partition} of topic `{topic}` no longer holds offsets {from}..{to} (retention deleted them): the snapshot ends at {from} and the stream can only start at {to}, so {missing} events would be in neither. Re-take the snapshot, or pass --accept-gap to load it anyway and record the gap")]
    Gap {
        topic: String,
        partition: i32,
        from: i64,
        to: i64,
        missing: i64,
    },
}
