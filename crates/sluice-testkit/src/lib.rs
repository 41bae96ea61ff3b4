//! What Sluice's tests share, kept out of production builds:
//!
//! * [`fixture`]: the shared test table and its sequence-numbered events, every field a function
//!   of the sequence number;
//! * [`coord_conformance`] and [`source_conformance`]: the suites every implementation of the
//!   `Coordinator` and `Source` seams must pass (the real ones against ZooKeeper and Kafka in
//!   the integration tests, the in-memory ones in unit tests);
//! * [`MemorySource`]: the in-memory source the worker's unit tests run against;
//! * [`exactly_once`]: the checker that reads committed parts back and compares every column of
//!   every row with the event that produced it.

use std::fmt::Display;

pub mod coord_conformance;
pub mod exactly_once;
pub mod fixture;
mod memory_source;
pub mod source_conformance;

pub use memory_source::{MemorySource, ReadProgress};

/// A failed expectation of a conformance suite, with the case it failed in.
#[derive(Debug, thiserror::Error)]
#[error("conformance case `{case}` failed: {message}")]
pub struct ConformanceFailure {
    pub case: &'static str,
    pub message: String,
}

pub(crate) fn fail(case: &'static str, message: impl Into<String>) -> ConformanceFailure {
    ConformanceFailure {
        case,
        message: message.into(),
    }
}

/// Turns any error into the failure of a conformance case.
pub(crate) trait OrFail<T> {
    fn or_fail(self, case: &'static str) -> Result<T, ConformanceFailure>;
}

impl<T, E: Display> OrFail<T> for Result<T, E> {
    fn or_fail(self, case: &'static str) -> Result<T, ConformanceFailure> {
        self.map_err(|e| fail(case, e.to_string()))
    }
}

/// A name no other test run uses: the process id and the time.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sluice_coord::{Coordinator, EmbeddedCoordinator};
    use sluice_source::{Assignment, Source};

    use super::*;

    #[tokio::test]
    async fn the_embedded_coordinator_in_memory_passes_the_conformance_suite() {
        let base = Arc::new(EmbeddedCoordinator::in_memory());
        let result = coord_conformance::run_all(move || {
            let base = Arc::clone(&base);
            async move { Ok(Box::new(base.new_session()) as Box<dyn Coordinator>) }
        })
        .await;
        if let Err(e) = result {
            panic!("{e}");
        }
    }

    #[tokio::test]
    async fn the_memory_source_passes_the_conformance_suite() {
        let source = MemorySource::new();
        if let Err(e) = source_conformance::run_all(&source, &source).await {
            panic!("{e}");
        }
    }

    /// Retention cannot be exercised against the test broker, so the memory source's own test
    /// holds it to the contract: a reader starting below the low watermark goes on from there.
    #[tokio::test]
    async fn the_memory_source_reads_on_from_the_low_watermark_after_retention() {
        let source = MemorySource::new();
        source.create_topic("t", 1);
        for i in 0..10u8 {
            source.produce("t", 0, Some(1), Some(&[i]));
        }
        source.delete_before("t", 0, 6);
        assert_eq!(source.watermarks("t", &[0]).await.unwrap()[&0], (6, 10));
        let mut reader = source
            .open(&[Assignment {
                topic: "t".into(),
                partition: 0,
                start: 2,
            }])
            .await
            .unwrap();
        let batch = reader.next().await.unwrap().unwrap();
        let offsets: Vec<i64> = batch.iter().map(|m| m.offset).collect();
        assert_eq!(offsets, vec![6, 7, 8, 9]);
    }
}
