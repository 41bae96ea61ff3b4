//! A backfill's parts: encoded like a flush's (sorted, split by partition value, the same
//! Parquet), named after the backfill, the file and the chunk they came from.
//!
//! `<table>/data/<value>/bf.<id>.f<file>.c<chunk>.e<epoch>.v<version>.parquet`, and under
//! `<table>/quarantine/` for events that did not decode. The name is deterministic, so a
//! resumed backfill rewrites the same object; the backfill lease's epoch in it keeps a zombie's
//! late upload from overwriting another run's. No flushed or merged part's name parses as one
//! (they have no `.` before `.parquet`).
//!
//! The record's `spans` are the offsets the snapshot stands for (each partition from 0 to the
//! offset the stream takes over at, exclusive), and its `partition` is -1: the rows came from
//! files, not from one partition.

use arrow::record_batch::RecordBatch;
use sluice_config::TableConfig;
use sluice_coord::{OffsetSpan, PartKind, PartRecord, UnitId};
use sluice_decode::QuarantineRow;

use crate::parts::{
    encode, path_segment, quarantine_batch, record, sort_and_split, EncodedPart, FlushSource,
};
use crate::SinkError;

/// Where a chunk of a backfill came from.
#[derive(Debug, Clone)]
pub struct BackfillSource {
    pub id: String,
    /// The backfill lease's epoch the parts are written under.
    pub epoch: u64,
    pub file_index: u32,
    pub chunk: u32,
    /// The file as the manifest names it: the `topic` of its quarantine rows, whose `offset`
    /// is the line number (NDJSON) or the row number (Parquet), counted from 1.
    pub file: String,
    pub first_line: i64,
    pub last_line: i64,
    /// The offsets the snapshot stands for.
    pub spans: Vec<OffsetSpan>,
    /// The topic the table reads.
    pub topic: String,
}

/// A backfill part's file name (see the module docs).
pub fn backfill_file_name(source: &BackfillSource, version: u32) -> String {
    format!(
        "bf.{}.f{}.c{}.e{}.v{version}.parquet",
        source.id, source.file_index, source.chunk, source.epoch
    )
}

/// The backfill id and lease epoch in a backfill part's path, if it is one.
pub fn parse_backfill_name(path: &str) -> Option<(String, u64)> {
    let (id, numbers) = spanned_fields(path, "bf", &['f', 'c', 'e', 'v'])?;
    Some((id.to_string(), numbers[2]))
}

/// The fields of a spanned part's file name `<prefix>.<id>.<tag><digits>...parquet` (a
/// backfill's, a view history's, a replay's): the id, which may hold dots, and the number of
/// each of `tags`, in order; `None` if the name does not have exactly that form.
pub(crate) fn spanned_fields<'a>(
    path: &'a str,
    prefix: &str,
    tags: &[char],
) -> Option<(&'a str, Vec<u64>)> {
    let name = path.rsplit('/').next()?.strip_suffix(".parquet")?;
    let rest = name.strip_prefix(prefix)?.strip_prefix('.')?;
    let mut fields = rest.rsplitn(tags.len() + 1, '.');
    let mut numbers = vec![0; tags.len()];
    for (i, tag) in tags.iter().enumerate().rev() {
        let digits = fields.next()?.strip_prefix(*tag)?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        numbers[i] = digits.parse().ok()?;
    }
    let id = fields.next()?;
    (!id.is_empty()).then_some((id, numbers))
}

/// Builds the parts of one chunk of a backfill for one table, as [`crate::build_parts`] does
/// for a flush. CPU-bound: run it on a blocking thread.
pub fn build_backfill_parts(
    table: &TableConfig,
    source: &BackfillSource,
    batch: &RecordBatch,
    quarantine: &[QuarantineRow],
) -> Result<Vec<EncodedPart>, SinkError> {
    // What the encoder records in each part's metadata, and the quarantine rows' origin.
    let flush = FlushSource {
        unit: UnitId::new(source.file.clone(), -1),
        first_offset: source.first_line,
        last_offset: source.last_line,
        lease_epoch: source.epoch,
    };
    let file = backfill_file_name(source, table.version);
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

/// Parts that stand for `spans` rather than one flush's offsets (a backfill's, a view's
/// history), all named `file` in their directories.
pub(crate) fn build_spanned_parts(
    table: &TableConfig,
    flush: &FlushSource,
    file: &str,
    topic: &str,
    spans: &[OffsetSpan],
    batch: &RecordBatch,
    quarantine: &[QuarantineRow],
) -> Result<Vec<EncodedPart>, SinkError> {
    let mut out = Vec::new();
    if batch.num_rows() > 0 {
        for (value, slice) in sort_and_split(table, flush, batch)? {
            let path = format!("{}/data/{}/{file}", table.name, path_segment(&value));
            let bytes = encode(table, flush, &value, &slice, &path, true)?;
            let rows = slice.num_rows();
            let flushed = record(table, flush, PartKind::Data, value, path, rows, &bytes);
            let record = spanned(flushed, topic, spans);
            out.push(EncodedPart { record, bytes });
        }
    }
    if !quarantine.is_empty() {
        let batch = quarantine_batch(&flush.unit, quarantine).map_err(|e| SinkError::Encode {
            table: table.name.clone(),
            path: "quarantine".into(),
            source: e.into(),
        })?;
        let path = format!("{}/quarantine/{file}", table.name);
        let bytes = encode(table, flush, "", &batch, &path, false)?;
        let rows = batch.num_rows();
        let flushed = record(
            table,
            flush,
            PartKind::Quarantine,
            String::new(),
            path,
            rows,
            &bytes,
        );
        let record = spanned(flushed, topic, spans);
        out.push(EncodedPart { record, bytes });
    }
    Ok(out)
}

/// A flush's record of the part made a spanned one: the table's topic, no one partition or
/// offset range, the spans it stands for.
fn spanned(flushed: PartRecord, topic: &str, spans: &[OffsetSpan]) -> PartRecord {
    PartRecord {
        topic: topic.to_string(),
        partition: -1,
        first_offset: -1,
        last_offset: -1,
        spans: spans.to_vec(),
        ..flushed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backfill_names_parse_back_and_no_flushed_or_merged_name_does() {
        let source = BackfillSource {
            id: "events-2026.11".into(),
            epoch: 3,
            file_index: 12,
            chunk: 4,
            file: "a.ndjson".into(),
            first_line: 1,
            last_line: 9,
            spans: Vec::new(),
            topic: "t".into(),
        };
        let name = backfill_file_name(&source, 2);
        assert_eq!(name, "bf.events-2026.11.f12.c4.e3.v2.parquet");
        assert_eq!(
            parse_backfill_name(&format!("events/data/2026-11-20/{name}")),
            Some(("events-2026.11".to_string(), 3))
        );
        for other in [
            "events/data/x/topic-1-00000000000000000001-00000000000000000009-e1-v1.parquet",
            "events/data/x/m1-0123456789abcdef-e2-v1.parquet",
            "events/data/x/bf..f1.c1.e1.v1.parquet",
            "events/data/x/bf.id.f1.c.e1.v1.parquet",
        ] {
            assert_eq!(parse_backfill_name(other), None, "{other}");
        }
        assert_eq!(crate::parse_part_name(&name), None);
        assert_eq!(crate::parse_merged_name(&name), None);
    }
}
