//! Data parts of a plain table: the sorted union of the inputs, every row and column kept.

use std::collections::BTreeMap;

use parquet::basic::Compression;
use sluice_coord::PartKind;
use sluice_sink::{encode, EncodedPart};
use sluice_testkit::fixture;

use super::*;

/// The events table: sorted by (country, path, ts), one part per day.
fn events_table() -> TableConfig {
    table("", "events")
}

/// The data parts of the day with the most parts, over several flushes of several partitions.
fn one_day(parts: Vec<EncodedPart>) -> (String, Vec<EncodedPart>) {
    let mut days: BTreeMap<String, Vec<EncodedPart>> = BTreeMap::new();
    for p in parts
        .into_iter()
        .filter(|p| p.record.kind == PartKind::Data)
    {
        days.entry(p.record.partition_value.clone())
            .or_default()
            .push(p);
    }
    days.into_iter().max_by_key(|(_, p)| p.len()).unwrap()
}

/// The fixture's rows of `day`, in the table's order: what the merged part must hold.
fn expected_rows(events: &[fixture::Event], day: &str) -> Vec<EventRow> {
    let mut rows: Vec<fixture::Row> = events
        .iter()
        .filter(|e| e.expect == fixture::Expect::Row && fixture::event_day(e.seq) == day)
        .map(|e| fixture::row(e.seq))
        .collect();
    rows.sort_by_key(|r| (r.country, r.path, r.ts));
    rows.iter().map(|r| fixture_row(r.seq)).collect()
}

#[tokio::test]
async fn plain_parts_merge_into_their_sorted_union() {
    let (_dir, storage) = storage();
    let t = events_table();
    let events = fixture::events(600, 3);
    let (day, parts) = one_day(flushes(&t, &events, 40));
    assert!(parts.len() >= 6, "{} parts", parts.len());
    let inputs = upload(&storage, &parts).await;

    // 7 rows per batch: input and output batches end in the middle of runs of equal keys.
    let out = merge(&storage, &t, PartKind::Data, &inputs, 7)
        .await
        .unwrap();

    let merged = read_back(&storage, &output_path(&t)).await;
    let wanted = expected_rows(&events, &day);
    assert_eq!(event_rows(&merged.batch), wanted);
    assert_eq!(out.rows, wanted.len() as u64);
    assert_eq!(out.rows, inputs.iter().map(|i| i.rows).sum::<u64>());
    assert_eq!(out.bytes, merged.bytes.len() as u64);
    assert_eq!(out.checksum, sha256(&merged.bytes));

    // Encoded as a flushed part is: zstd, sorting-column metadata, the table's footer keys
    // and the caller's.
    let footer = &merged.metadata;
    assert_eq!(
        footer_value(footer, "sluice.table").as_deref(),
        Some("events")
    );
    assert_eq!(
        footer_value(footer, "sluice.definition_version").as_deref(),
        Some("1")
    );
    assert_eq!(footer_value(footer, "sluice.level").as_deref(), Some("1"));
    let group = footer.row_group(0);
    let sorting: Vec<i32> = group
        .sorting_columns()
        .unwrap()
        .iter()
        .map(|c| c.column_idx)
        .collect();
    assert_eq!(sorting, vec![3, 4, 1]);
    assert!(matches!(
        group.column(0).compression(),
        Compression::ZSTD(_)
    ));
    let flushed = read_bytes(parts[0].bytes.clone());
    let encodings = |m: &ParquetMetaData| -> Vec<Vec<parquet::basic::Encoding>> {
        m.row_group(0)
            .columns()
            .iter()
            .map(|c| c.encodings().collect())
            .collect()
    };
    assert_eq!(encodings(footer), encodings(&flushed.metadata));
}

#[tokio::test]
async fn parts_of_one_row_and_of_none_merge() {
    let (_dir, storage) = storage();
    let t = events_table();
    let events: Vec<fixture::Event> = fixture::events(40, 1)
        .into_iter()
        .filter(|e| e.expect == fixture::Expect::Row)
        .collect();
    // One part per event (of whatever day: the scope is the caller's business here).
    let mut parts: Vec<EncodedPart> = events
        .iter()
        .enumerate()
        .flat_map(|(i, e)| flush(&t, 0, i as i64, std::slice::from_ref(e)))
        .collect();
    // And a part without rows.
    let empty = RecordBatch::new_empty(t.arrow_schema());
    let path = "events/data/empty.parquet".to_string();
    let bytes = encode(&t, &source(0, 0, 1), "", &empty, &path, true).unwrap();
    let mut record = parts[0].record.clone();
    (record.path, record.rows) = (path, 0);
    parts.push(EncodedPart { record, bytes });
    let inputs = upload(&storage, &parts).await;

    let out = merge(&storage, &t, PartKind::Data, &inputs, 3)
        .await
        .unwrap();

    let merged = read_back(&storage, &output_path(&t)).await;
    let mut wanted: Vec<fixture::Row> = events.iter().map(|e| fixture::row(e.seq)).collect();
    wanted.sort_by_key(|r| (r.country, r.path, r.ts));
    let wanted: Vec<EventRow> = wanted.iter().map(|r| fixture_row(r.seq)).collect();
    assert_eq!(event_rows(&merged.batch), wanted);
    assert_eq!(out.rows, events.len() as u64);
}

#[tokio::test]
async fn fewer_than_two_inputs_are_refused() {
    let (_dir, storage) = storage();
    let t = events_table();
    let parts = flush(&t, 0, 0, &fixture::events(10, 1));
    let inputs = upload(&storage, &parts[..1]).await;
    for given in [&inputs[..0], &inputs[..1]] {
        let err = merge(&storage, &t, PartKind::Data, given, 7)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, MergeError::TooFewInputs { inputs, .. } if *inputs == given.len()),
            "{err}"
        );
    }
    assert!(storage.list("events/merged").await.unwrap().is_empty());
}

#[tokio::test]
async fn an_input_whose_rows_differ_from_its_record_is_refused() {
    let (_dir, storage) = storage();
    let t = events_table();
    let (_, parts) = one_day(flushes(&t, &fixture::events(200, 2), 50));
    for delta in [1i64, -1] {
        let mut inputs = upload(&storage, &parts).await;
        let wrong = inputs.len() - 1;
        inputs[wrong].rows = (inputs[wrong].rows as i64 + delta) as u64;
        let err = merge(&storage, &t, PartKind::Data, &inputs, 7)
            .await
            .unwrap_err();
        match &err {
            MergeError::InputRows {
                path,
                registered,
                actual,
                ..
            } => {
                assert_eq!(path, &inputs[wrong].path);
                assert_eq!(*registered as i64, *actual as i64 + delta);
            }
            other => panic!("{other}"),
        }
    }
    assert!(storage.list("events/merged").await.unwrap().is_empty());
}

#[tokio::test]
async fn an_unsorted_input_is_refused() {
    let (_dir, storage) = storage();
    let t = events_table();
    let parts = flush(&t, 0, 0, &fixture::events(30, 1));
    // The decoded rows in arrival (seq) order, encoded without the sink's sort.
    let mut buf = TableBuffer::new(&t);
    for (i, e) in fixture::events(30, 1).iter().enumerate() {
        buf.push(i as i64, None, e.payload.as_deref());
    }
    let batch = buf.drain().unwrap().batch;
    let path = "events/data/unsorted.parquet".to_string();
    let bytes = encode(&t, &source(0, 0, 30), "", &batch, &path, true).unwrap();
    let mut record = parts[0].record.clone();
    (record.path, record.rows) = (path.clone(), batch.num_rows() as u64);
    let inputs = upload(&storage, &[parts[0].clone(), EncodedPart { record, bytes }]).await;

    let err = merge(&storage, &t, PartKind::Data, &inputs, 4)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MergeError::Unsorted { path: p, key, .. } if *p == path && key == "country, path, ts"),
        "{err}"
    );
}

#[tokio::test]
async fn a_table_without_a_sorting_key_keeps_its_inputs_in_order() {
    let (_dir, storage) = storage();
    let extra = format!(
        "[[table]]\nname = \"raw\"\ntopic = \"events\"\n{}",
        fixture::columns(&["seq", "country"])
    );
    let t = table(&extra, "raw");
    assert!(t.sorting_key.is_empty());
    let events = fixture::events(60, 1);
    let parts: Vec<EncodedPart> = flushes(&t, &events, 20)
        .into_iter()
        .filter(|p| p.record.kind == PartKind::Data)
        .collect();
    let inputs = upload(&storage, &parts).await;

    merge(&storage, &t, PartKind::Data, &inputs, 7)
        .await
        .unwrap();

    let merged = read_back(&storage, &output_path(&t)).await;
    let seqs = |b: &RecordBatch| b.column(0).as_primitive::<UInt64Type>().values().to_vec();
    let wanted: Vec<u64> = parts
        .iter()
        .flat_map(|p| seqs(&read_bytes(p.bytes.clone()).batch))
        .collect();
    assert_eq!(seqs(&merged.batch), wanted);
    assert!(wanted.len() > 40, "{} rows", wanted.len());
}
