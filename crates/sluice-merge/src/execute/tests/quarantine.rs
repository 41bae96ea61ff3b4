//! Quarantine parts: every row kept, in (topic, partition, offset) order, offsets nulls first.

use arrow::datatypes::Int32Type;
use sluice_coord::PartKind;
use sluice_decode::{QuarantineReason, QuarantineRow};
use sluice_testkit::fixture;

use super::*;

/// (topic, partition, offset, reason, raw) of every quarantine row.
type Quarantined = (String, i32, Option<i64>, String, Vec<u8>);

fn quarantined(batch: &RecordBatch) -> Vec<Quarantined> {
    let c = |name: &str| batch.column_by_name(name).unwrap();
    let (topic, partition) = (
        c("topic").as_string::<i32>(),
        c("partition").as_primitive::<Int32Type>(),
    );
    let (offset, reason) = (
        c("offset").as_primitive::<Int64Type>(),
        c("reason").as_string::<i32>(),
    );
    let raw = c("raw").as_binary::<i32>();
    (0..batch.num_rows())
        .map(|i| {
            (
                topic.value(i).to_string(),
                partition.value(i),
                offset.is_valid(i).then(|| offset.value(i)),
                reason.value(i).to_string(),
                raw.value(i).to_vec(),
            )
        })
        .collect()
}

#[tokio::test]
async fn quarantine_parts_merge_in_partition_and_offset_order() {
    let (_dir, storage) = storage();
    let t = table("", "events");
    let mut parts: Vec<_> = flushes(&t, &fixture::events(500, 5), 30)
        .into_iter()
        .filter(|p| p.record.kind == PartKind::Quarantine)
        .collect();
    // Malformed events are seq % 48 in {5, 11, 17, 23, 29, 35}: 5 partitions all get some.
    // Rows a chained view failed on have no offset.
    let view_failed: Vec<QuarantineRow> = (0..4)
        .map(|i| QuarantineRow {
            offset: None,
            timestamp_ms: None,
            raw: format!("{{\"row\":{i}}}").into_bytes(),
            reason: QuarantineReason::ViewFailed,
            error: "view `v`: division by zero".into(),
            view: Some("v".into()),
        })
        .collect();
    let empty = RecordBatch::new_empty(t.arrow_schema());
    parts.extend(build_parts(&t, &source(1, 1_000, 4), &empty, &view_failed).unwrap());
    let names: Vec<_> = parts.iter().map(|p| p.record.path.clone()).collect();
    assert!(parts.len() >= 7, "{names:?}");
    let inputs = upload(&storage, &parts).await;

    let out = merge(&storage, &t, PartKind::Quarantine, &inputs, 5)
        .await
        .unwrap();

    let merged = read_back(&storage, &output_path(&t)).await;
    let rows = quarantined(&merged.batch);
    let mut wanted: Vec<Quarantined> = parts
        .iter()
        .flat_map(|p| quarantined(&read_bytes(p.bytes.clone()).batch))
        .collect();
    // (topic, partition, offset) with `None` first is exactly the merge order; no two rows of
    // a partition share an offset, so the order is total.
    wanted.sort_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
    assert_eq!(rows, wanted);
    assert_eq!(out.rows, wanted.len() as u64);
    assert!(rows.iter().any(|r| r.2.is_none()));
    assert_eq!(out.checksum, sha256(&merged.bytes));
    // Quarantine parts carry no sorting-column metadata, as flushed ones.
    assert!(merged.metadata.row_group(0).sorting_columns().is_none());
}
