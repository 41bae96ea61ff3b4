//! Decode and batch: JSON messages become rows of Arrow column builders, typed against the
//! table's schema; a message that cannot become a row becomes a quarantine row with the reason.
//!
//! A row is appended only after every column of it converted, so a bad event never leaves a
//! half-written row behind. Nothing is dropped: every message pushed ends up either as a row or
//! as a [`QuarantineRow`].
//!
//! How to read it, from the entry point down:
//!
//! * `buffer.rs`: [`TableBuffer`], one table's buffer; `push` decodes a message into a row or a
//!   quarantine row, `drain` hands both to a flush.
//! * `fast.rs`: the fast path, a hand-written JSON scanner that decodes nearly every event.
//! * `reference.rs`: the reference path, a `serde_json::Value` per event; it decides every event
//!   the fast path does not, and the quarantine reason.
//! * `column.rs`: what both paths share: the columns, the typed cells of a row, the Arrow
//!   builders.
//! * `tests.rs`: the unit tests, and the property test holding the fast path to the reference
//!   path.
//!
//! This file holds the types the rest of Sluice sees: [`QuarantineRow`] and its
//! [`QuarantineReason`], [`Drained`] with its [`Origins`], and [`DecodeError`].

mod buffer;
mod column;
mod fast;
mod reference;
#[cfg(test)]
mod tests;

use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

pub use buffer::TableBuffer;
// `fast.rs` names these from the crate root.
use column::{Cell, EPOCH_DAY};

/// Why an event was quarantined; the stable code is what metrics and queries group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuarantineReason {
    /// The message had no payload (a tombstone) or an empty one.
    Empty,
    /// The payload exceeded the table's `max_message_bytes`.
    Oversized,
    /// The payload is not valid JSON.
    NotJson,
    /// Valid JSON, but not an object.
    NotObject,
    /// A non-nullable column without default had no value.
    MissingField,
    /// A value did not convert to its column's type.
    WrongType,
    /// A view's query failed on the row (its `view` names the view).
    ViewFailed,
}

impl QuarantineReason {
    pub fn code(self) -> &'static str {
        match self {
            QuarantineReason::Empty => "empty",
            QuarantineReason::Oversized => "oversized",
            QuarantineReason::NotJson => "not_json",
            QuarantineReason::NotObject => "not_object",
            QuarantineReason::MissingField => "missing_field",
            QuarantineReason::WrongType => "wrong_type",
            QuarantineReason::ViewFailed => "view_failed",
        }
    }
}

/// One event that could not become a row, kept whole with the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct QuarantineRow {
    /// The Kafka offset of the event; unknown for a row a chained view failed on (its input
    /// rows are another view's output).
    pub offset: Option<i64>,
    pub timestamp_ms: Option<i64>,
    /// The event's payload; for a view's failure, the input row as JSON.
    pub raw: Vec<u8>,
    pub reason: QuarantineReason,
    pub error: String,
    /// The view that failed on the row (`reason` [`QuarantineReason::ViewFailed`]).
    pub view: Option<String>,
}

impl QuarantineReason {
    /// Every reason code, for metrics and documentation.
    pub const CODES: &'static [&'static str] = &[
        "empty",
        "oversized",
        "not_json",
        "not_object",
        "missing_field",
        "wrong_type",
        "view_failed",
    ];
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("cannot build the record batch of table `{table}`: {source}")]
    Batch { table: String, source: ArrowError },
}

/// What a flush takes out of a buffer.
#[derive(Debug)]
pub struct Drained {
    pub batch: RecordBatch,
    pub quarantine: Vec<QuarantineRow>,
    /// Each row's Kafka offset and timestamp, in row order, if the buffer records them
    /// ([`TableBuffer::record_origins`]).
    pub origins: Option<Origins>,
}

/// Where the rows of a batch came from: their Kafka offsets and timestamps, in row order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Origins {
    pub offsets: Vec<i64>,
    pub timestamps_ms: Vec<Option<i64>>,
}
