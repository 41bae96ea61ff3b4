//! A view's history parts: the view computed over its source's parts committed before it went
//! live, encoded like a flush's, named after the view, the history lease's epoch, the source
//! scope and the chunk they came from.
//!
//! `<target>/data/<value>/vh.<view>.s<scope>.c<chunk>.e<epoch>.v<version>.parquet`, and under
//! `<target>/quarantine/` for rows the view failed on. The epoch keeps two runs' objects apart,
//! so a run that lost its lease can delete what it wrote without touching the winner's.
//!
//! The record's `spans` are what the history stands for: each source partition from 0 to its
//! point, exclusive; its `partition` is -1.

use arrow::record_batch::RecordBatch;
use sluice_config::TableConfig;
use sluice_coord::{OffsetSpan, UnitId};
use sluice_decode::QuarantineRow;

use crate::backfill_parts::{build_spanned_parts, spanned_fields};
use crate::parts::{EncodedPart, FlushSource};
use crate::SinkError;

/// Where a chunk of a view's history came from.
#[derive(Debug, Clone)]
pub struct HistorySource {
    pub view: String,
    pub epoch: u64,
    /// The source scope's index in the history's reading order, and the chunk within it.
    pub scope: u32,
    pub chunk: u32,
    /// The source topic, and what the history stands for.
    pub topic: String,
    pub spans: Vec<OffsetSpan>,
}

/// A history part's file name (see the module docs).
pub fn history_file_name(source: &HistorySource, version: u32) -> String {
    format!(
        "vh.{}.s{}.c{}.e{}.v{version}.parquet",
        source.view, source.scope, source.chunk, source.epoch
    )
}

/// The view and history lease epoch in a history part's path, if it is one.
pub fn parse_history_name(path: &str) -> Option<(String, u64)> {
    let (view, numbers) = spanned_fields(path, "vh", &['s', 'c', 'e', 'v'])?;
    Some((view.to_string(), numbers[2]))
}

/// Builds the parts of one chunk of a view's history for its target table. CPU-bound: run it
/// on a blocking thread.
pub fn build_history_parts(
    target: &TableConfig,
    source: &HistorySource,
    batch: &RecordBatch,
    quarantine: &[QuarantineRow],
) -> Result<Vec<EncodedPart>, SinkError> {
    // What the encoder records in each part's metadata.
    let flush = FlushSource {
        unit: UnitId::new(source.topic.clone(), -1),
        first_offset: -1,
        last_offset: -1,
        lease_epoch: source.epoch,
    };
    let file = history_file_name(source, target.version);
    build_spanned_parts(
        target,
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
    fn history_names_parse_back_and_no_other_name_does() {
        let source = HistorySource {
            view: "per_country".into(),
            epoch: 2,
            scope: 7,
            chunk: 0,
            topic: "t".into(),
            spans: Vec::new(),
        };
        let name = history_file_name(&source, 1);
        assert_eq!(name, "vh.per_country.s7.c0.e2.v1.parquet");
        assert_eq!(
            parse_history_name(&format!("x/data/_/{name}")),
            Some(("per_country".to_string(), 2))
        );
        for other in [
            "x/data/_/bf.id.f1.c1.e1.v1.parquet",
            "x/data/_/topic-1-00000000000000000001-00000000000000000009-e1-v1.parquet",
            "x/data/_/vh..s1.c1.e1.v1.parquet",
        ] {
            assert_eq!(parse_history_name(other), None, "{other}");
        }
        assert_eq!(crate::parse_backfill_name(&name), None);
    }
}
