//! Before a worker joins the fleet, the brokers must answer for every topic it reads: a member
//! that cannot read would be assigned partitions that nobody ingests. A worker started while
//! Kafka is down, or refuses its credentials, or lacks a topic, stays up and not ready, `/readyz`
//! naming Kafka and why, and joins once the brokers answer. A run with `--stop-at-end` is a
//! one-off job: it fails at once instead, with the same message.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use sluice_config::Config;
use sluice_source::{Source, SourceError};
use sluice_telemetry::{Dependency, Health};

use crate::retry::{chain, Backoff};
use crate::WorkerError;

/// The first wait before asking again; doubled on each failure in a row.
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// The longest wait between two attempts.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Whether a failure needs someone to act (and is said at ERROR): credentials or certificates
/// refused, or a topic missing. Unreachable brokers come back by themselves.
pub(crate) fn needs_operator(e: &SourceError) -> bool {
    matches!(
        e,
        SourceError::Refused { .. } | SourceError::TopicMissing { .. }
    )
}

/// Asks for every topic's partitions until all answer. `Ok(false)` if shutdown came first; an
/// error if the client cannot even be made (a bad librdkafka property), or at the first
/// failure with `fail_fast`.
pub(crate) async fn wait_for_kafka(
    config: &Config,
    source: &dyn Source,
    health: &Health,
    fail_fast: bool,
    shutdown: &mut Pin<Box<dyn Future<Output = ()> + Send>>,
) -> Result<bool, WorkerError> {
    let mut topics: Vec<&str> = config
        .tables
        .iter()
        .filter_map(|t| t.topic.as_deref())
        .collect();
    topics.sort_unstable();
    topics.dedup();
    let mut backoff = Backoff::new(FIRST_RETRY, MAX_RETRY);
    loop {
        let asked = tokio::select! {
            biased;
            () = &mut *shutdown => return Ok(false),
            asked = ask_all(source, &topics) => asked,
        };
        let e = match asked {
            Ok(()) => {
                health.succeeded(Dependency::Kafka);
                return Ok(true);
            }
            Err(e @ SourceError::Client { .. }) => return Err(e.into()),
            Err(e) if fail_fast => return Err(e.into()),
            Err(e) => e,
        };
        let operator = needs_operator(&e);
        let failures = health.failed(Dependency::Kafka, &chain(&e), operator);
        let delay = backoff.next_delay();
        let retry_in_ms = delay.as_millis() as u64;
        if operator {
            tracing::error!(error = %chain(&e), failures, retry_in_ms, "Kafka cannot be read as configured; not joining the fleet until it can (not ready meanwhile)");
        } else {
            tracing::warn!(error = %chain(&e), failures, retry_in_ms, "Kafka does not answer; not joining the fleet until it does (not ready meanwhile)");
        }
        tokio::select! {
            () = &mut *shutdown => return Ok(false),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

async fn ask_all(source: &dyn Source, topics: &[&str]) -> Result<(), SourceError> {
    for topic in topics {
        source.partitions(topic).await?;
    }
    Ok(())
}
