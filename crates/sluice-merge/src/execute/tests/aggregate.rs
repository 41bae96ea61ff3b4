//! Data parts of an aggregating table: one row per group, its partial states combined.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, Float64Array, Int64Array, StringArray, TimestampMillisecondArray,
    UInt64Array,
};
use sluice_coord::PartKind;
use sluice_transform::hll::Sketch;

use super::*;

/// 2026-11-20T00:00:00Z.
const BASE_MS: i64 = 1_795_132_800_000;

/// A per-minute, per-country aggregation, sorted by `sorting_key` (a TOML array).
fn per_minute(sorting_key: &str) -> TableConfig {
    let extra = format!(
        r#"
[[table]]
name = "per_minute"
sorting_key = {sorting_key}
column = [
    {{ name = "minute", type = "timestamp_ms", nullable = false }},
    {{ name = "country", type = "string" }},
    {{ name = "hits", type = "int64", aggregate = "count" }},
    {{ name = "total", type = "int64", aggregate = "sum" }},
    {{ name = "amount", type = "float64", aggregate = "sum" }},
    {{ name = "volume", type = "uint64", aggregate = "sum" }},
    {{ name = "first_seen", type = "timestamp_ms", aggregate = "min" }},
    {{ name = "last_path", type = "string", aggregate = "max" }},
    {{ name = "users", type = "uint64", aggregate = "approx_distinct" }},
]

[[view]]
name = "per_minute_view"
source = "events"
target = "per_minute"
sql = "SELECT date_trunc('minute', ts) AS minute, country, count(*) AS hits, sum(user_id) AS total, sum(duration_ms) AS amount, sum(seq) AS volume, min(ts) AS first_seen, max(path) AS last_path, approx_distinct(user_id) AS users FROM events GROUP BY 1, 2"
"#
    );
    table(&extra, "per_minute")
}

/// One row of partial states, as a view would write it (`users`: the ids its sketch holds).
#[derive(Debug, Clone)]
struct State {
    minute: i64,
    country: Option<&'static str>,
    hits: i64,
    total: i64,
    amount: f64,
    volume: u64,
    first_seen: Option<i64>,
    last_path: Option<&'static str>,
    users: Vec<i64>,
}

/// SplitMix64: the states are a pure function of (part, row).
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `n` rows of part `part`: 4 minutes x 4 countries (one null), so groups repeat within and
/// across parts; amounts are quarters, whose sums are exact in any order.
fn states(part: u64, n: u64) -> Vec<State> {
    (0..n)
        .map(|i| {
            let h = mix(part * 1_000 + i);
            let bits = |shift: u32, m: u64| (h >> shift) % m;
            State {
                minute: BASE_MS + bits(0, 4) as i64 * 60_000,
                country: [Some("de"), Some("fr"), None, Some("us")][bits(4, 4) as usize],
                hits: bits(8, 5) as i64 + 1,
                total: bits(12, 1000) as i64 - 500,
                amount: bits(24, 64) as f64 * 0.25,
                volume: bits(30, 10_000),
                first_seen: (bits(44, 3) != 0).then(|| BASE_MS + bits(46, 60_000) as i64),
                last_path: [None, Some("/a"), Some("/b"), Some("/c")][bits(52, 4) as usize],
                users: (0..bits(56, 5))
                    .map(|k| (bits(20, 40) + 7 * k) as i64)
                    .collect(),
            }
        })
        .collect()
}

/// The sketch of some user ids; null for none, as the `users` of a row with no users.
fn sketch(users: &[i64]) -> Option<Sketch> {
    if users.is_empty() {
        return None;
    }
    let mut s = Sketch::default();
    s.add_array(&(Arc::new(Int64Array::from(users.to_vec())) as ArrayRef))
        .unwrap();
    Some(s)
}

fn batch(t: &TableConfig, rows: &[State]) -> RecordBatch {
    let col = |a: ArrayRef| a;
    let columns = vec![
        col(Arc::new(
            TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.minute))
                .with_timezone("UTC"),
        )),
        col(Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.country),
        ))),
        col(Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.hits),
        ))),
        col(Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.total),
        ))),
        col(Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.amount),
        ))),
        col(Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.volume),
        ))),
        col(Arc::new(
            TimestampMillisecondArray::from_iter(rows.iter().map(|r| r.first_seen))
                .with_timezone("UTC"),
        )),
        col(Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.last_path),
        ))),
        col(Arc::new(BinaryArray::from_iter(
            rows.iter().map(|r| sketch(&r.users).map(|s| s.to_bytes())),
        ))),
    ];
    RecordBatch::try_new(t.arrow_schema(), columns).unwrap()
}

/// Each row set sorted and encoded by the sink (one part each: no partition key), uploaded.
async fn upload_parts(storage: &Storage, t: &TableConfig, parts: &[Vec<State>]) -> Vec<MergeInput> {
    let mut encoded = Vec::new();
    for (i, rows) in parts.iter().enumerate() {
        let built = build_parts(t, &source(i as i32, 0, rows.len()), &batch(t, rows), &[]).unwrap();
        encoded.extend(built);
    }
    upload(storage, &encoded).await
}

/// A group's states, final after the merge.
#[derive(Debug, Clone, PartialEq, Default)]
struct Group {
    hits: i64,
    total: i64,
    amount: f64,
    volume: u64,
    first_seen: Option<i64>,
    last_path: Option<String>,
    users: Option<Vec<u8>>,
}

type Key = (i64, Option<String>);

/// What one aggregation over every input row gives, in group-key order.
fn expected(parts: &[Vec<State>]) -> Vec<(Key, Group)> {
    let mut groups: BTreeMap<Key, (Group, Vec<i64>)> = BTreeMap::new();
    for r in parts.iter().flatten() {
        let (g, users) = groups
            .entry((r.minute, r.country.map(str::to_string)))
            .or_default();
        g.hits += r.hits;
        g.total += r.total;
        g.amount += r.amount;
        g.volume += r.volume;
        g.first_seen = g.first_seen.into_iter().chain(r.first_seen).min();
        g.last_path = g
            .last_path
            .clone()
            .into_iter()
            .chain(r.last_path.map(str::to_string))
            .max();
        users.extend(&r.users);
    }
    groups
        .into_iter()
        .map(|(k, (mut g, users))| {
            // The sketch of the union of every row's users.
            g.users = sketch(&users).map(|s| s.to_bytes());
            (k, g)
        })
        .collect()
}

fn groups_of(batch: &RecordBatch) -> Vec<(Key, Group)> {
    let c = |i: usize| batch.column(i);
    let (minute, country) = (
        c(0).as_primitive::<TimestampMillisecondType>(),
        c(1).as_string::<i32>(),
    );
    let (hits, total) = (
        c(2).as_primitive::<Int64Type>(),
        c(3).as_primitive::<Int64Type>(),
    );
    let (amount, volume) = (
        c(4).as_primitive::<Float64Type>(),
        c(5).as_primitive::<UInt64Type>(),
    );
    let (first, last) = (
        c(6).as_primitive::<TimestampMillisecondType>(),
        c(7).as_string::<i32>(),
    );
    let users = c(8).as_binary::<i32>();
    (0..batch.num_rows())
        .map(|i| {
            let key = (
                minute.value(i),
                country.is_valid(i).then(|| country.value(i).to_string()),
            );
            let group = Group {
                hits: hits.value(i),
                total: total.value(i),
                amount: amount.value(i),
                volume: volume.value(i),
                first_seen: first.is_valid(i).then(|| first.value(i)),
                last_path: last.is_valid(i).then(|| last.value(i).to_string()),
                users: users.is_valid(i).then(|| users.value(i).to_vec()),
            };
            (key, group)
        })
        .collect()
}

#[tokio::test]
async fn states_of_equal_groups_combine_into_one_row() {
    // The sorting key a subset of the group key (equal groups not adjacent in merge order),
    // the whole group key, and none at all (one run holding every group).
    for sorting_key in [r#"["minute"]"#, r#"["minute", "country"]"#, "[]"] {
        let (_dir, storage) = storage();
        let t = per_minute(sorting_key);
        let parts: Vec<Vec<State>> = [40, 1, 25, 0, 60]
            .iter()
            .enumerate()
            .map(|(p, &n)| states(p as u64, n))
            .collect();
        let inputs = upload_parts(&storage, &t, &parts).await;
        assert_eq!(inputs.len(), 4, "a part without rows is not built");

        let out = merge(&storage, &t, PartKind::Data, &inputs, 3)
            .await
            .unwrap();

        let merged = read_back(&storage, &output_path(&t)).await;
        let wanted = expected(&parts);
        assert_eq!(
            groups_of(&merged.batch),
            wanted,
            "sorting key {sorting_key}"
        );
        assert_eq!(out.rows, wanted.len() as u64);
        assert_eq!(out.checksum, sha256(&merged.bytes));
        // The estimate read from the merged sketch is the one of the union, too.
        let (_, any) = wanted.iter().find(|(_, g)| g.users.is_some()).unwrap();
        let sketch = Sketch::from_bytes(any.users.as_deref().unwrap()).unwrap();
        assert!(sketch.estimate() > 0);
    }
}

#[tokio::test]
async fn an_integer_sum_that_overflows_fails_the_merge() {
    let base = states(0, 1).remove(0);
    let with = |total: i64, volume: u64| State {
        total,
        volume,
        country: Some("de"),
        ..base.clone()
    };
    let cases = [
        ("total", vec![with(i64::MAX - 1, 1)], vec![with(2, 1)]),
        ("total", vec![with(i64::MIN + 1, 1)], vec![with(-2, 1)]),
        ("volume", vec![with(1, u64::MAX)], vec![with(1, 1)]),
    ];
    for (column, a, b) in cases {
        let (_dir, storage) = storage();
        let t = per_minute(r#"["minute"]"#);
        let inputs = upload_parts(&storage, &t, &[a, b]).await;

        let err = merge(&storage, &t, PartKind::Data, &inputs, 3)
            .await
            .unwrap_err();

        match &err {
            MergeError::Overflow {
                table,
                column: c,
                group,
            } => {
                assert_eq!((table.as_str(), c.as_str()), ("per_minute", column));
                assert!(
                    group.contains("country=de") && group.contains("minute=2026-11-20"),
                    "{group}"
                );
            }
            other => panic!("{other}"),
        }
        // Aborted before its upload finished: here, where the part is small, no object at all.
        // (A larger one may be stored whole before an overflow is found; it is never registered
        // and the collector deletes it.)
        assert!(storage.list("per_minute/merged").await.unwrap().is_empty());
    }
}
