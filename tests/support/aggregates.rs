//! The aggregating view's table read back by the test: every part's partial states merged per
//! group with `parquet` and the sketches of `sluice-transform`, compared with the totals of the
//! produced events (not with `sluice query`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use arrow::array::{ArrayRef, AsArray, Int64Array};
use arrow::datatypes::{Float64Type, Int64Type, TimestampMillisecondType};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sluice_coord::PartKind;
use sluice_testkit::exactly_once::Objects;
use sluice_testkit::fixture::day_of;
use sluice_transform::hll::Sketch;

use crate::per_hour::{per_hour_groups, PER_HOUR_TABLE};
use crate::{committed, Prepared};

/// The totals of one (hour, country) group, merged from the partial states of every part.
#[derive(Debug, Default)]
pub struct Totals {
    rows: usize,
    events: i64,
    sum: f64,
    min: Option<f64>,
    max: Option<f64>,
    users: Sketch,
}

/// Reads every part of the aggregating table with `parquet` and merges its states per group:
/// counts and sums added, minimums and maximums taken, sketches united. Each part must hold a
/// group at most once, and only groups of its partition value (the hour's day). Returns the
/// groups and how many parts were read.
async fn merged_states(d: &Prepared) -> Result<(BTreeMap<(i64, String), Totals>, usize)> {
    let registry = committed(&d.config, PER_HOUR_TABLE).await?;
    let (store, root) = registry.storage.object_store();
    let objects = Objects::new(store, root.clone());
    let mut groups: BTreeMap<(i64, String), Totals> = BTreeMap::new();
    let parts: Vec<_> = registry
        .parts
        .iter()
        .filter(|p| p.kind == PartKind::Data)
        .collect();
    for part in &parts {
        let bytes = objects.get(&part.path).await?;
        let mut in_part = BTreeSet::new();
        for batch in ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()? {
            let b = batch?;
            let col = |name: &str| {
                b.column_by_name(name)
                    .with_context(|| format!("{name} column"))
            };
            let hour = col("hour")?.as_primitive::<TimestampMillisecondType>();
            let country = col("country")?.as_string::<i32>();
            let events = col("events")?.as_primitive::<Int64Type>();
            let sum = col("duration_ms")?.as_primitive::<Float64Type>();
            let min = col("min_duration_ms")?.as_primitive::<Float64Type>();
            let max = col("max_duration_ms")?.as_primitive::<Float64Type>();
            let users = col("users")?.as_binary::<i32>();
            for i in 0..b.num_rows() {
                let key = (hour.value(i), country.value(i).to_string());
                ensure!(
                    in_part.insert(key.clone()),
                    "part {} holds group {key:?} more than once",
                    part.path
                );
                ensure!(
                    day_of(key.0) == part.partition_value,
                    "part {} (partition value {}) holds hour {}",
                    part.path,
                    part.partition_value,
                    key.0
                );
                let g = groups.entry(key).or_default();
                g.rows += 1;
                g.events += events.value(i);
                g.sum += sum.value(i);
                g.min = Some(g.min.map_or(min.value(i), |m| m.min(min.value(i))));
                g.max = Some(g.max.map_or(max.value(i), |m| m.max(max.value(i))));
                g.users.merge(&Sketch::from_bytes(users.value(i))?);
            }
        }
    }
    Ok((groups, parts.len()))
}

/// The aggregating table's states, merged by the test, equal the totals of the produced events:
/// counts, minimums and maximums exactly, sums exactly too (every duration is a multiple of 0.5
/// far below 2^52, so every partial sum is exact in any order), and each group's united sketch
/// equals the sketch of one pass over the group's user ids, register for register, hence the
/// same estimate. Returns (groups, state rows, parts).
pub async fn check_aggregates(d: &Prepared) -> Result<(usize, usize, usize)> {
    let expected = per_hour_groups(&d.landing_rows());
    let (actual, parts) = merged_states(d).await?;
    ensure!(
        actual.keys().eq(expected.keys()),
        "{} groups in the table, {} expected",
        actual.len(),
        expected.len()
    );
    for (key, want) in &expected {
        let got = &actual[key];
        ensure!(
            got.events == want.events
                && got.sum == want.sum
                && got.min == Some(want.min)
                && got.max == Some(want.max),
            "group {key:?}: {got:?}, expected {want:?}"
        );
        let mut one_pass = Sketch::default();
        let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(want.users.iter().copied()));
        one_pass
            .add_array(&ids)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        ensure!(
            got.users == one_pass && got.users.estimate() == one_pass.estimate(),
            "group {key:?}: the united sketch estimates {} users, one pass over its {} users {}",
            got.users.estimate(),
            want.users.len(),
            one_pass.estimate()
        );
    }
    let rows = actual.values().map(|g| g.rows).sum();
    Ok((expected.len(), rows, parts))
}
