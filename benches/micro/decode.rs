//! Decode throughput: the benchmark corpus's events (`sluice_source::sample`, 130-200 bytes of
//! JSON) into the bench table's Arrow builders, through the fast path and the reference path.
//!
//!   cargo bench -p sluice-bench --bench decode

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sluice_bench::micro::{bench_table, corpus};
use sluice_decode::TableBuffer;

const EVENTS: usize = 20_000;

fn bench(c: &mut Criterion) {
    let table = bench_table();
    let events = corpus(EVENTS);
    let bytes: usize = events.iter().map(Vec::len).sum();

    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(EVENTS as u64));
    for (name, make) in [
        ("fast", TableBuffer::new as fn(&_) -> TableBuffer),
        ("reference", TableBuffer::reference_only),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || make(&table),
                |mut buffer| {
                    for (i, e) in events.iter().enumerate() {
                        buffer.push(i as i64, Some(0), Some(e));
                    }
                    assert_eq!(buffer.rows(), EVENTS);
                    buffer
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
    println!(
        "decode corpus: {EVENTS} events, {:.1} bytes each",
        bytes as f64 / EVENTS as f64
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
