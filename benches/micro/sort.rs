//! Sort throughput: one flush of the benchmark corpus (decoded into the bench table) sorted by
//! (day, country, path, ts) and cut into one batch per day, as `build_parts` does before
//! encoding; and the sort alone through the packed radix path and through Arrow's lexsort.
//!
//!   cargo bench -p sluice-bench --bench sort

use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::compute::{lexsort_to_indices, SortColumn, SortOptions};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_bench::micro::{bench_table, decoded, flush_source};
use sluice_sink::sort::{sort_to_indices, sorts_by_packed_key};
use sluice_sink::sort_and_split;

const ROWS: usize = 200_000;

fn bench(c: &mut Criterion) {
    let table = bench_table();
    let batch = decoded(&table, ROWS);
    let source = flush_source(&table, ROWS);
    let keys: Vec<ArrayRef> = table
        .sorting_key
        .iter()
        .map(|k| Arc::clone(batch.column(batch.schema().index_of(k).unwrap())))
        .collect();
    assert!(sorts_by_packed_key(&keys));

    let mut group = c.benchmark_group("sort");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.sample_size(20);
    group.bench_function("sort_and_split", |b| {
        b.iter(|| sort_and_split(&table, &source, &batch).unwrap())
    });
    group.bench_function("indices_packed_radix", |b| {
        b.iter(|| sort_to_indices(&keys).unwrap())
    });
    group.bench_function("indices_lexsort", |b| {
        let options = Some(SortOptions {
            descending: false,
            nulls_first: true,
        });
        let columns: Vec<SortColumn> = keys
            .iter()
            .map(|k| SortColumn {
                values: Arc::clone(k),
                options,
            })
            .collect();
        b.iter(|| lexsort_to_indices(&columns, None).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
