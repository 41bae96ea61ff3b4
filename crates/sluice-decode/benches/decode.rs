//! Decode throughput: sample events (the quickstart's table, `sluice produce`'s event shape)
//! into Arrow builders, through the fast path and through the reference path.
//!
//!   cargo bench -p sluice-decode --bench decode

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sluice_config::Config;
use sluice_decode::TableBuffer;

const EVENTS: usize = 10_000;

fn events() -> Vec<Vec<u8>> {
    const COUNTRIES: &[&str] = &["de", "fr", "us", "br", "jp", "ng", "in", "gb"];
    const PATHS: &[&str] = &["/", "/docs", "/pricing", "/blog/post-1", "/signup"];
    (0..EVENTS as u64)
        .map(|seq| {
            format!(
                r#"{{"seq":{seq},"ts":{},"user_id":{},"country":"{}","path":"{}","duration_ms":{}.25,"ok":{}}}"#,
                1_795_132_800_000u64 + seq * 7_919,
                seq * 2_654_435_761 % 1_000_003,
                COUNTRIES[(seq % 8) as usize],
                PATHS[(seq % 5) as usize],
                seq % 5_000,
                seq % 3 != 0
            )
            .into_bytes()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let config_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/quickstart.toml");
    let config = Config::load(&config_path).expect("config/quickstart.toml is valid");
    let table = config.tables[0].clone();
    let events = events();
    let bytes: u64 = events.iter().map(|e| e.len() as u64).sum();

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
