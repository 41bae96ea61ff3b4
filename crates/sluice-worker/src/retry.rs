//! Retrying what the worker cannot go on without, for as long as it takes: a worker never exits
//! on a transient fault. Each retry waits longer, up to a cap, with jitter so that a fleet does
//! not hammer a service that has just come back all at the same instant; [`Health`] is told of
//! every failure and of the success that ends an outage, so `/readyz` names the service and the
//! metrics count it.
//!
//! Uploads are retried here and not in [`sluice_sink::Storage::put`] because only the worker
//! knows for how long it is right to go on: for as long as it owns what the upload holds. When
//! the session ends or the shutdown deadline passes, the flush task doing the retrying is
//! aborted and its events are re-read by the partition's next owner.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use sluice_sink::Storage;
use sluice_telemetry::{Dependency, Health};

/// The first retry of a failed request waits this long; each next one twice as long.
const FIRST_RETRY: Duration = Duration::from_millis(250);
/// Retries of a transient failure wait at most this long. Short enough that a flush is retried
/// within seconds of storage returning even if no other request noticed it first; a success
/// anywhere wakes every waiting retry at once ([`Health::available`]).
const MAX_RETRY: Duration = Duration::from_secs(10);
/// A failure that needs an operator is retried this often (and logged at ERROR each time).
const OPERATOR_RETRY: Duration = Duration::from_secs(60);

/// Capped exponential backoff with jitter.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Backoff {
    pub(crate) fn new(first: Duration, cap: Duration) -> Backoff {
        Backoff { next: first, cap }
    }

    /// The wait before the next attempt: the current step, 20 % either way.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.cap);
        step.mul_f64(rand::thread_rng().gen_range(0.8..1.2))
    }
}

/// Uploads an object, retrying every failure until the write quorum holds it; returns the
/// endpoints that do. Endpoints that already took it are not written again.
pub async fn put_until_stored(
    health: &Health,
    storage: &Storage,
    path: &str,
    bytes: Bytes,
) -> Vec<String> {
    let mut backoff = Backoff::new(FIRST_RETRY, MAX_RETRY);
    let mut stored = BTreeSet::new();
    loop {
        let short = match storage.put_quorum(path, bytes.clone(), &mut stored).await {
            Ok(()) => {
                health.succeeded(Dependency::Storage);
                return stored.into_iter().collect();
            }
            Err(short) => short,
        };
        let operator = short.needs_operator();
        let error = short.describe();
        let failures = health.failed(Dependency::Storage, &error, operator);
        let delay = if operator {
            OPERATOR_RETRY
        } else {
            backoff.next_delay()
        };
        let retry_in_ms = delay.as_millis() as u64;
        if operator {
            tracing::error!(path, storage = %storage.url(), key_id = storage.key_id().unwrap_or("none"), failures, retry_in_ms, %error, "object storage refuses uploads: check storage.url (or the endpoint's url: its bucket or directory must exist) and the credentials (storage.options or the endpoint's options, or the AWS_* environment); retrying until it accepts them, nothing is committed or lost meanwhile");
        } else {
            tracing::warn!(path, failures, retry_in_ms, %error, "upload failed; retrying (the events stay buffered and uncommitted until the write quorum holds them; consumption pauses when the memory budget is full)");
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = health.available(Dependency::Storage) => {}
        }
    }
}

/// An error and its causes, for a log line or a health report.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(700));
        let steps: Vec<u128> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        for (got, step) in steps.iter().zip([100u128, 200, 400, 700, 700, 700]) {
            assert!(
                (step * 8 / 10..=step * 12 / 10).contains(got),
                "{steps:?}: {got} is not within 20 % of {step}"
            );
        }
    }
}
