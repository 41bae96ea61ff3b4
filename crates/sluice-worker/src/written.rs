//! Bytes written per table by this process, flushed and merged, for the write-amplification
//! gauge. Process-wide like the metrics themselves: they outlive sessions.

use std::collections::BTreeMap;
use std::sync::Mutex;

use sluice_telemetry::metrics as m;

/// Per table: (bytes committed by flushes, bytes written by merges).
static WRITTEN: Mutex<BTreeMap<String, (u64, u64)>> = Mutex::new(BTreeMap::new());

/// Counts `flushed` and `merged` bytes of `table` and updates its write amplification:
/// 1 + merged / flushed.
pub(crate) fn add(table: &str, flushed: u64, merged: u64) {
    let (f, g) = {
        let mut w = WRITTEN.lock().expect("written lock poisoned");
        let e = w.entry(table.to_string()).or_default();
        e.0 += flushed;
        e.1 += merged;
        *e
    };
    if f > 0 {
        metrics::gauge!(m::TABLE_WRITE_AMPLIFICATION, "table" => table.to_string())
            .set(1.0 + g as f64 / f as f64);
    }
}
