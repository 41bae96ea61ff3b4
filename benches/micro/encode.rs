//! Parquet encode throughput: a sorted flush of the benchmark corpus (one day's part) encoded
//! as `build_parts` encodes it (zstd, page statistics, sorting-column metadata).
//!
//!   cargo bench -p sluice-bench --bench encode

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_bench::micro::{bench_table, decoded, flush_source};
use sluice_coord::PartKind;
use sluice_sink::{encode, part_path, sort_and_split};

const ROWS: usize = 200_000;

fn bench(c: &mut Criterion) {
    let table = bench_table();
    let batch = decoded(&table, ROWS);
    let source = flush_source(&table, ROWS);
    let parts = sort_and_split(&table, &source, &batch).unwrap();
    // The day with most rows: what a flush mostly encodes.
    let (value, slice) = parts.iter().max_by_key(|(_, b)| b.num_rows()).unwrap();
    let path = part_path(&table, PartKind::Data, value, &source);
    let size = encode(&table, &source, value, slice, &path, true)
        .unwrap()
        .len();

    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(slice.num_rows() as u64));
    group.sample_size(20);
    group.bench_function("parquet_zstd", |b| {
        b.iter(|| encode(&table, &source, value, slice, &path, true).unwrap())
    });
    group.finish();
    println!(
        "encode: {} rows of day {value} into {size} bytes ({:.1} bytes per row)",
        slice.num_rows(),
        size as f64 / slice.num_rows() as f64
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
