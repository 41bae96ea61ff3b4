//! The views end to end: planning, refusals, running over batches, chains, and the
//! quarantine of rows a view fails on.

use super::*;
use arrow::array::{
    AsArray, BooleanArray, Float64Array, Int64Array, StringArray, TimestampMillisecondArray,
    UInt64Array,
};
use arrow::datatypes::{Int64Type, UInt64Type};
use sluice_config::Config;
use sluice_decode::{Origins, QuarantineReason};
use sluice_testkit::fixture;

/// The tables and views of these tests, besides the shared events table: an error-only view, a
/// per-minute aggregation and a chained aggregation over the errors.
const VIEWS: &str = r#"
[[table]]
name = "errors"
sorting_key = ["seq"]
column = [
    { name = "seq", type = "uint64", nullable = false },
    { name = "country", type = "string" },
]

[[view]]
name = "errors_only"
source = "events"
target = "errors"
sql = "SELECT seq, country FROM events WHERE NOT ok"

[[table]]
name = "per_minute"
sorting_key = ["minute", "country"]
column = [
    { name = "minute", type = "timestamp_ms" },
    { name = "country", type = "string" },
    { name = "events", type = "int64", aggregate = "count" },
    { name = "duration_ms", type = "float64", aggregate = "sum" },
    { name = "users", type = "uint64", aggregate = "approx_distinct" },
]

[[view]]
name = "minutes"
source = "events"
target = "per_minute"
sql = """
SELECT date_trunc('minute', ts) AS minute, country, count(*) AS events,
       sum(duration_ms) AS duration_ms, approx_distinct(seq) AS users
FROM events GROUP BY date_trunc('minute', ts), country
"""

[[table]]
name = "errors_by_country"
column = [
    { name = "country", type = "string" },
    { name = "errors", type = "int64", aggregate = "count" },
]

[[view]]
name = "error_countries"
source = "errors"
target = "errors_by_country"
sql = "SELECT country, count(*) AS errors FROM errors GROUP BY country"
"#;

/// The shared events table with [`VIEWS`]; `extra` is appended (more tables and views).
fn config(extra: &str) -> String {
    fixture::config_with(&format!("{VIEWS}{extra}"))
}

fn parse(text: &str) -> Config {
    Config::from_toml_str(text, "test").unwrap()
}

/// The shared test rows of events `0..n`, as a batch of the events table.
fn events(n: u64) -> RecordBatch {
    let c = parse(&config(""));
    let schema = c.table("events").unwrap().arrow_schema();
    let rows: Vec<fixture::Row> = (0..n).map(fixture::row).collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.seq))),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.ts))
                    .with_timezone("UTC"),
            ),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.user_id))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.country),
            )),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.path))),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.duration_ms),
            )),
            Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.ok)))),
        ],
    )
    .unwrap()
}

async fn compile_err(extra: &str) -> String {
    let c = parse(&config(extra));
    Views::compile(&c).await.unwrap_err().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_filter_aggregate_and_chain() {
    let c = parse(&config(""));
    let views = Views::compile(&c).await.unwrap();
    let batch = events(200);
    let runtime = tokio::runtime::Handle::current();
    let out = tokio::task::spawn_blocking(move || views.apply(&runtime, "events", &batch, None))
        .await
        .unwrap();
    let by = |name: &str| out.iter().find(|o| o.view == name).unwrap();
    let errors = &by("errors_only").batch;
    let seqs: Vec<u64> = errors
        .column(0)
        .as_primitive::<UInt64Type>()
        .values()
        .to_vec();
    let failed: Vec<u64> = (0..200).filter(|&s| !fixture::row(s).ok).collect();
    assert!(!failed.is_empty() && failed.len() < 200);
    assert_eq!(seqs, failed);
    let minutes = &by("minutes").batch;
    let counts: i64 = minutes
        .column_by_name("events")
        .unwrap()
        .as_primitive::<Int64Type>()
        .values()
        .iter()
        .sum();
    assert_eq!(counts, 200);
    assert_eq!(
        minutes.column_by_name("users").unwrap().data_type(),
        &arrow::datatypes::DataType::Binary,
        "approx_distinct stores a sketch"
    );
    // The chain: counted from the errors view's output.
    let chained: i64 = by("error_countries")
        .batch
        .column_by_name("errors")
        .unwrap()
        .as_primitive::<Int64Type>()
        .values()
        .iter()
        .sum();
    assert_eq!(chained, failed.len() as i64);
    assert!(out.iter().all(|o| o.quarantine.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_a_view_fails_on_are_quarantined_and_the_rest_written() {
    let extra = r#"
[[table]]
name = "ratios"
column = [{ name = "seq", type = "uint64", nullable = false }, { name = "ratio", type = "int64" }]

[[view]]
name = "ratio_view"
source = "events"
target = "ratios"
sql = "SELECT seq, 1000 / (CAST(seq AS BIGINT) % 7) AS ratio FROM events"
"#;
    let c = parse(&config(extra));
    let views = Views::compile(&c).await.unwrap();
    let batch = events(100);
    let origins = Origins {
        offsets: (1_000..1_100).collect(),
        timestamps_ms: vec![Some(5); 100],
    };
    let runtime = tokio::runtime::Handle::current();
    let out = tokio::task::spawn_blocking(move || {
        views.apply(&runtime, "events", &batch, Some(&origins))
    })
    .await
    .unwrap();
    let r = out.iter().find(|o| o.view == "ratio_view").unwrap();
    let failed: Vec<i64> = r.quarantine.iter().map(|q| q.offset.unwrap()).collect();
    let expected: Vec<i64> = (0..100).filter(|i| i % 7 == 0).map(|i| 1_000 + i).collect();
    assert_eq!(failed, expected);
    assert_eq!(
        r.batch.num_rows() + r.quarantine.len(),
        100,
        "counts add up"
    );
    let q = &r.quarantine[1];
    assert_eq!(q.view.as_deref(), Some("ratio_view"));
    assert_eq!(q.reason, QuarantineReason::ViewFailed);
    assert!(
        q.error.contains("view `ratio_view`") && q.error.to_lowercase().contains("divide by zero"),
        "{}",
        q.error
    );
    let raw: serde_json::Value = serde_json::from_slice(&q.raw).unwrap();
    assert_eq!(raw["seq"], 7);
    // The other views were not affected.
    assert!(out
        .iter()
        .filter(|o| o.view != "ratio_view")
        .all(|o| o.quarantine.is_empty()));
}

/// The documented example's and the quickstart's views plan against their tables.
#[tokio::test]
async fn checked_in_configs_views_compile() {
    for file in ["sluice.example.toml", "quickstart.toml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../config")
            .join(file);
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(!config.views.is_empty(), "{file} has no views");
        let views = Views::compile(&config)
            .await
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(views.sources().count(), config.views.len());
    }
}

#[tokio::test]
async fn invalid_views_are_refused_naming_the_view_and_the_problem() {
    let view = |name: &str, target: &str, sql: &str, table: &str| {
        format!("\n[[view]]\nname = \"{name}\"\nsource = \"events\"\ntarget = \"{target}\"\nsql = \"\"\"{sql}\"\"\"\n{table}")
    };
    let plain = |t: &str| {
        format!(
            "\n[[table]]\nname = \"{t}\"\n[[table.column]]\nname = \"seq\"\ntype = \"uint64\"\n"
        )
    };
    let counted = |t: &str| {
        format!("\n[[table]]\nname = \"{t}\"\n[[table.column]]\nname = \"country\"\ntype = \"string\"\n[[table.column]]\nname = \"n\"\ntype = \"int64\"\naggregate = \"count\"\n")
    };
    // One case a line, as a table.
    #[rustfmt::skip]
    let cases: Vec<(String, &[&str])> = vec![
        (view("bad", "t", "SELEC seq FROM events", &plain("t")), &["view `bad`", "does not plan"]),
        (view("bad", "t", "SELECT nope AS seq FROM events", &plain("t")), &["view `bad`", "nope"]),
        (view("bad", "t", "SELECT seq FROM other", &plain("t")), &["view `bad`", "other"]),
        (view("bad", "t", "SELECT seq FROM events ORDER BY seq", &plain("t")), &["view `bad`", "ORDER BY"]),
        (view("bad", "t", "SELECT seq FROM events LIMIT 3", &plain("t")), &["view `bad`", "LIMIT"]),
        (view("bad", "t", "SELECT a.seq FROM events a JOIN events b ON a.seq = b.seq", &plain("t")), &["view `bad`", "joins"]),
        (view("bad", "c", "SELECT country, count(*) AS n FROM events GROUP BY country HAVING count(*) > 1", &counted("c")), &["view `bad`", "HAVING"]),
        (view("bad", "c", "SELECT country, count(DISTINCT seq) AS n FROM events GROUP BY country", &counted("c")), &["view `bad`", "approx_distinct"]),
        (view("bad", "c", "SELECT country, CAST(avg(seq) AS BIGINT) AS n FROM events GROUP BY country", &counted("c")), &["view `bad`", "avg"]),
        (view("bad", "c", "SELECT country, max(CAST(seq AS BIGINT)) AS n FROM events GROUP BY country", &counted("c")), &["view `bad`", "`count`"]),
        (view("bad", "c", "SELECT country, count(*) * 2 AS n FROM events GROUP BY country", &counted("c")), &["view `bad`", "exactly `count(...)`"]),
        (view("bad", "t", "SELECT CAST(seq AS INT) AS seq FROM events", &plain("t")), &["view `bad`", "column `seq`", "Int32"]),
        (view("bad", "t", "SELECT seq, country FROM events", &plain("t")), &["view `bad`", "country"]),
        (view("bad", "t", "SELECT seq AS other FROM events", &plain("t")), &["view `bad`", "other"]),
        (view("bad", "t", "SELECT seq FROM events GROUP BY seq", &plain("t")), &["view `bad`", "aggregates"]),
        (view("bad", "c", "SELECT country, CAST(seq AS BIGINT) AS n FROM events", &counted("c")), &["view `bad`", "does not aggregate"]),
    ];
    for (extra, wanted) in cases {
        let e = compile_err(&extra).await;
        for w in wanted {
            assert!(e.contains(w), "expected `{w}` in: {e}\nfor {extra}");
        }
    }
}
