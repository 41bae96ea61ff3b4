//! Replays: a range of a table rebuilt from its topic (after a bug was fixed in its
//! configuration, say) and swapped in for the parts that held it, with its views, in one atomic
//! change; the old generation is kept for a rollback until it is collected.
//!
//! Read in this order:
//!
//! * `resolve.rs`: the time range asked for as offsets per partition (the first message at or
//!   after each time), never past what was committed when the replay started.
//! * `scan.rs`: every scope of the table and of the views it feeds, read under the merge
//!   leases of the scopes the range meets (so no merge or seal changes them meanwhile);
//!   `range.rs` widens the range until no record straddles its edges.
//! * `rebuild.rs`: the widened range read again from the topic, partition by partition, through
//!   the stream's decode, quarantine, views, sort and Parquet, uploaded as parts named after the
//!   replay (`sluice_sink::build_replay_parts`). Invisible until the swap.
//! * `run.rs`: the run from start to swap ([`sluice_coord::Coordinator::replace_range`]): the old
//!   records out, the new in, the generation recorded; a run that fails deletes what it wrote.
//! * `rollback.rs`: the inverse swap, while the old generation is kept.
//!
//! Ingestion goes on meanwhile: commits only add records of offsets past the range, which the
//! swap leaves alone. Workers delete the old generation's objects once `keep_until_ms` passed
//! ([`sluice_coord::Coordinator::collect_replay`]), and until then do not merge or seal the
//! replay's parts, so a rollback stays possible.

mod range;
mod rebuild;
mod resolve;
mod rollback;
mod run;
mod scan;

pub use range::{widen, Ranges, Widened};
pub use resolve::{asked_range, Committed};
pub use rollback::roll_back;
pub use run::{Report, Run};

/// What stops a replay. Nothing of a failed replay is visible; what it uploaded is deleted
/// (or, after a kill, collected by `sluice gc` as objects nothing references).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
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
    #[error("{what} failed")]
    Source {
        what: String,
        #[source]
        source: sluice_source::SourceError,
    },
    #[error("cannot encode the parts of table `{table}`")]
    Encode {
        table: String,
        #[source]
        source: Box<sluice_sink::SinkError>,
    },
    #[error("cannot decode the events of table `{table}`")]
    Decode {
        table: String,
        #[source]
        source: sluice_decode::DecodeError,
    },
    #[error("table `{table}` cannot be replayed: {problem}")]
    Plan { table: String, problem: String },
    #[error("partition {partition} of topic `{topic}` no longer holds offsets {first}..{low} (retention deleted them), and the replay must read from {first}: the parts holding those rows would be replaced by nothing. Replay a later range")]
    Retention {
        topic: String,
        partition: i32,
        first: i64,
        low: i64,
    },
    #[error(
        "nothing of table `{table}` was committed in that time range: there is nothing to replay"
    )]
    Nothing { table: String },
    #[error("the merge lease of table `{table}` at `{value}` stayed with `{holder}` for {waited_s} s; run the replay again when that merge is done")]
    Busy {
        table: String,
        value: String,
        holder: String,
        waited_s: u64,
    },
    #[error("replay `{id}` lost the merge lease of a scope it changes before its swap (its session ended, or another replay took it over); nothing of it is visible and what it uploaded was deleted: run it again")]
    Superseded {
        id: String,
        #[source]
        source: Box<sluice_coord::CoordError>,
    },
    #[error("the reply to replay `{id}`'s swap was lost and it cannot be read back: `sluice replay status` shows whether it was swapped; its objects were kept in case it was")]
    Unknown {
        id: String,
        #[source]
        source: Box<sluice_coord::CoordError>,
    },
    #[error("no replay `{id}` is recorded: it was rolled back or collected already (`sluice replay status` lists the replays that can be rolled back)")]
    NoReplay { id: String },
    #[error("the replay's reading of partition {partition} stopped before offset {wanted}")]
    Stopped { partition: i32, wanted: i64 },
}

fn coord_err(what: &'static str) -> impl Fn(sluice_coord::CoordError) -> ReplayError {
    move |source| ReplayError::Coordination {
        what,
        source: Box::new(source),
    }
}

/// Milliseconds since the Unix epoch, now.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
