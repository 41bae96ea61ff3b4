use std::sync::Arc;

use arrow::array::{Int64Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use sluice_config::Config;
use sluice_testkit::fixture::config_with;

use super::*;

fn table() -> TableConfig {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, config_with("")).expect("write");
    Config::load(&path).expect("config").tables[0].clone()
}

#[test]
fn ndjson_lines_decode_and_quarantine_with_their_line_numbers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.ndjson");
    let good = r#"{"seq":1,"ts":1700000000000,"country":"de"}"#;
    std::fs::write(&path, format!("{good}\r\nnot json\n\n{good}")).expect("write");
    let mut chunks = Vec::new();
    read_chunks(&table(), &path, FileFormat::Ndjson, false, &mut |c| {
        chunks.push(c);
        Ok(())
    })
    .expect("reads");
    assert_eq!(chunks.len(), 1);
    let c = &chunks[0];
    assert_eq!((c.first_line, c.last_line, c.batch.num_rows()), (1, 4, 2));
    let quarantined: Vec<(Option<i64>, &str, &[u8])> = c
        .quarantine
        .iter()
        .map(|q| (q.offset, q.reason.code(), q.raw.as_slice()))
        .collect();
    assert_eq!(
        quarantined,
        vec![
            (Some(2), "not_json", &b"not json"[..]),
            (Some(3), "empty", &b""[..])
        ]
    );
}

fn write_parquet(path: &Path, fields: Vec<Field>, columns: Vec<arrow::array::ArrayRef>) {
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns).expect("batch");
    let mut writer =
        ArrowWriter::try_new(File::create(path).expect("create"), schema, None).expect("writer");
    writer.write(&batch).expect("write");
    writer.close().expect("close");
}

#[test]
fn parquet_columns_must_match_the_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = table();
    let missing = dir.path().join("missing.parquet");
    write_parquet(
        &missing,
        vec![Field::new("seq", DataType::UInt64, false)],
        vec![Arc::new(UInt64Array::from(vec![1u64]))],
    );
    let e = parquet_columns(&t, &missing)
        .expect_err("missing")
        .to_string();
    assert!(e.contains("has no column `ts`"), "{e}");
    let typed = dir.path().join("typed.parquet");
    write_parquet(
        &typed,
        vec![Field::new("seq", DataType::Int64, false)],
        vec![Arc::new(Int64Array::from(vec![1i64]))],
    );
    let e = parquet_columns(&t, &typed).expect_err("type").to_string();
    assert!(
        e.contains("column `seq` is Int64, table `events` has UInt64"),
        "{e}"
    );
    let text = dir.path().join("a.ndjson");
    std::fs::write(&text, "{}\n").expect("write");
    let e = parquet_columns(&t, &text)
        .expect_err("not parquet")
        .to_string();
    assert!(e.contains("is not a readable Parquet file"), "{e}");
}
