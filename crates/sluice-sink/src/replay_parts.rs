//! A replay's parts: a range of source offsets rebuilt from the topic, encoded like a flush's,
//! named after the replay, the run, the source partition and the chunk they came from.
//!
//! `<table>/data/<value>/rp.<id>.t<run>.p<partition>.c<chunk>.v<version>.parquet`, and under
//! `<table>/quarantine/` for events that did not decode. `run` (the run's start, ms) keeps a
//! frozen earlier run's late uploads from overwriting the objects of a later run of the same id.
//!
//! The record's `spans` are the chunk's offsets: the part holds every row of them that falls
//! into its scope, as a flushed part does for its flush. Its `partition` is -1.

use arrow::record_batch::RecordBatch;
use sluice_config::TableConfig;
use sluice_coord::{OffsetSpan, UnitId};
use sluice_decode::QuarantineRow;

use crate::backfill_parts::{build_spanned_parts, spanned_fields};
use crate::parts::{EncodedPart, FlushSource};
use crate::SinkError;

/// Where a chunk of a replay came from.
#[derive(Debug, Clone)]
pub struct ReplaySource {
    pub id: String,
    /// When the run started (ms since the epoch).
    pub run: i64,
    pub topic: String,
    pub partition: i32,
    pub chunk: u32,
    /// The chunk's offsets, inclusive.
    pub first_offset: i64,
    pub last_offset: i64,
    /// What the parts stand for: the chunk's offsets.
    pub spans: Vec<OffsetSpan>,
}

/// A replay part's file name (see the module docs).
pub fn replay_file_name(source: &ReplaySource, version: u32) -> String {
    format!(
        "rp.{}.t{}.p{}.c{}.v{version}.parquet",
        source.id, source.run, source.partition, source.chunk
    )
}

/// The replay id in a replay part's path, if it is one.
pub fn parse_replay_name(path: &str) -> Option<String> {
    let (id, _) = spanned_fields(path, "rp", &['t', 'p', 'c', 'v'])?;
    sluice_coord::valid_replay_id(id).then(|| id.to_string())
}

/// Builds the parts of one chunk of a replay for one table (the replayed one or a view's
/// target). CPU-bound: run it on a blocking thread.
pub fn build_replay_parts(
    table: &TableConfig,
    source: &ReplaySource,
    batch: &RecordBatch,
    quarantine: &[QuarantineRow],
) -> Result<Vec<EncodedPart>, SinkError> {
    // The quarantine rows' origin is the chunk's partition, as a flush's would be.
    let flush = FlushSource {
        unit: UnitId::new(source.topic.clone(), source.partition),
        first_offset: source.first_offset,
        last_offset: source.last_offset,
        lease_epoch: 0,
    };
    let file = replay_file_name(source, table.version);
    build_spanned_parts(
        table,
        &flush,
        &file,
        &source.topic,
        &source.spans,
        batch,
        quarantine,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_names_parse_back_and_no_other_part_name_does() {
        let source = ReplaySource {
            id: "fix-amounts".into(),
            run: 1_764_000_000_000,
            topic: "t".into(),
            partition: 3,
            chunk: 2,
            first_offset: 10,
            last_offset: 20,
            spans: Vec::new(),
        };
        let name = replay_file_name(&source, 2);
        assert_eq!(name, "rp.fix-amounts.t1764000000000.p3.c2.v2.parquet");
        assert_eq!(
            parse_replay_name(&format!("events/data/2026-11-20/{name}")),
            Some("fix-amounts".to_string())
        );
        for other in [
            "events/data/x/topic-1-00000000000000000001-00000000000000000009-e1-v1.parquet",
            "events/data/x/m1-0123456789abcdef-e2-v1.parquet",
            "events/data/x/bf.id.f1.c1.e1.v1.parquet",
            "events/data/x/vh.v.s1.c1.e1.v1.parquet",
            "events/data/x/rp..t1.p1.c1.v1.parquet",
            "events/data/x/rp.a.b.t1.p1.c1.v1.parquet",
        ] {
            assert_eq!(parse_replay_name(other), None, "{other}");
        }
        assert_eq!(crate::parse_part_name(&name), None);
        assert_eq!(crate::parse_merged_name(&name), None);
        assert_eq!(crate::parse_backfill_name(&name), None);
    }
}
