//! Fixtures shared by the criterion micro-benchmarks under `micro/`.

use sluice_config::{Config, TableConfig};
use sluice_source::sample::SampleEvents;

/// The table of `benches/bench.toml`: page views sorted by country, path and timestamp.
pub fn bench_table() -> TableConfig {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench.toml");
    Config::load(&path)
        .expect("benches/bench.toml is valid")
        .tables
        .remove(0)
}

/// The first `n` events of the benchmark corpus (seed 42), as JSON bytes.
pub fn corpus(n: usize) -> Vec<Vec<u8>> {
    let g = SampleEvents::new(42);
    (0..n as u64).map(|s| g.event(s).into_bytes()).collect()
}

/// The first `n` corpus events decoded into `table`'s columns, as one flush would hold them.
pub fn decoded(table: &TableConfig, n: usize) -> arrow::record_batch::RecordBatch {
    let mut buffer = sluice_decode::TableBuffer::new(table);
    for (i, e) in corpus(n).iter().enumerate() {
        buffer.push(i as i64, None, Some(e));
    }
    buffer.drain().expect("the corpus decodes").batch
}

/// The source of a flush of `n` events from partition 0.
pub fn flush_source(table: &TableConfig, n: usize) -> sluice_sink::FlushSource {
    sluice_sink::FlushSource {
        unit: sluice_coord::UnitId::new(
            table.topic.clone().unwrap_or_else(|| table.name.clone()),
            0,
        ),
        first_offset: 0,
        last_offset: n as i64 - 1,
        lease_epoch: 1,
    }
}
