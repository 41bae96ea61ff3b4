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
//!   checked against the configuration and what the topic still holds: a snapshot older than
//!   the topic's retention leaves a gap that is refused unless accepted, and then recorded.
//! * `run.rs`: claim the partitions (workers leave them alone), take the backfill lease, delete
//!   what earlier runs left unstaged, convert the files not staged yet, stage each, hand off.
//! * `read.rs`: a file as chunks, cut the same way on every run: NDJSON lines through the
//!   stream's decoder and quarantine, Parquet rows checked against the table's columns.
//! * `convert.rs`: a chunk into parts, the table's and its views', as a flush makes them
//!   (`sluice_sink::build_backfill_parts`).
//! * `cancel.rs`: a backfill given up: marked, its objects deleted, forgotten.
//!
//! The coordination side (`sluice_coord`): the claim that keeps workers off the partitions,
//! the backfill lease that fences a zombie, the files staged one by one, and the handoff that
//! registers the staged parts and sets the offsets in one atomic change.

mod cancel;
mod convert;
mod plan;
mod progress;
mod read;
mod run;
mod snapshot;

pub use cancel::cancel;
pub use convert::{snapshot_spans, Converted, Converter};
pub use plan::{plan, Retained};
pub use progress::Progress;
pub use read::{parquet_columns, read_chunks, Chunk, CHUNK_BYTES, CHUNK_ROWS};
pub use run::{Report, Run};
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
    #[error("snapshot file {path} {problem}")]
    File { path: String, problem: String },
    #[error("{what} failed")]
    Coordination {
        what: &'static str,
        #[source]
        source: Box<sluice_coord::CoordError>,
    },
    #[error("object storage failed at {path}")]
    Storage {
        path: String,
        #[source]
        source: Box<sluice_sink::SinkError>,
    },
    #[error(
        "backfill `{id}` was cancelled; `sluice backfill cancel --id {id}` finishes cancelling it"
    )]
    Cancelled { id: String },
    #[error("no backfill `{id}` is recorded; `sluice backfill status` lists them")]
    Unknown { id: String },
    #[error("the backfill stopped before its file was read")]
    Stopped,
    #[error("cannot encode the parts of table `{table}` from snapshot file {file}")]
    Encode {
        table: String,
        file: String,
        #[source]
        source: Box<sluice_sink::SinkError>,
    },
    #[error("cannot decode the snapshot's events for table `{table}`")]
    Decode {
        table: String,
        #[source]
        source: sluice_decode::DecodeError,
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

impl BackfillError {
    /// Whether running the backfill again may well succeed: ZooKeeper or storage failed (a
    /// session that expired in an outage, a lost reply, an unreachable server), not a refusal.
    pub fn is_transient(&self) -> bool {
        use sluice_coord::CoordError as C;
        match self {
            BackfillError::Coordination { source, .. } => matches!(
                **source,
                C::SessionEnded { .. }
                    | C::Unreachable { .. }
                    | C::Backend { .. }
                    | C::Ambiguous { .. }
            ),
            BackfillError::Storage { .. } => true,
            _ => false,
        }
    }
}
