//! The health of the services a worker depends on: which one is unavailable, since when, how
//! often it was retried and what it last said. The worker reports failures and recoveries as its
//! retries see them; `/readyz` answers 503 naming the service while an outage lasts, the metrics
//! count retries and outages, and the log says when a service came back and after how long.
//!
//! An outage is an observation of the worker's own requests, not a probe: a service nobody asked
//! anything of is not reported unavailable.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::metrics as m;

/// A service the worker depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dependency {
    /// Object storage (`storage.url`).
    Storage,
    /// The coordination backend (`coordination.zookeeper_connect`).
    Zookeeper,
    /// The brokers (`kafka.bootstrap_servers`), as their metadata requests see them.
    Kafka,
}

impl Dependency {
    pub const ALL: [Dependency; 3] = [
        Dependency::Storage,
        Dependency::Zookeeper,
        Dependency::Kafka,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Dependency::Storage => "storage",
            Dependency::Zookeeper => "zookeeper",
            Dependency::Kafka => "kafka",
        }
    }
}

impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One ongoing outage, as `/readyz` and `/api/state` show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outage {
    pub dependency: Dependency,
    /// Seconds since the first failed request of this outage.
    pub unavailable_s: f64,
    /// When it started, Unix milliseconds.
    pub since_ms: u64,
    /// Failed requests so far (each retry counts).
    pub failures: u64,
    /// The last failure, with its cause.
    pub error: String,
    /// The last failure will not go away by itself (credentials refused, a bucket missing):
    /// someone must act; the worker keeps retrying slowly meanwhile.
    pub needs_operator: bool,
}

#[derive(Debug)]
struct Ongoing {
    started: Instant,
    since_ms: u64,
    failures: u64,
    error: String,
    needs_operator: bool,
}

/// The worker's view of its dependencies; shared by everything that talks to them.
#[derive(Debug, Default)]
pub struct Health {
    ongoing: Mutex<BTreeMap<Dependency, Ongoing>>,
    /// Woken when an outage ends, so that every request waiting to retry goes at once instead of
    /// at the end of its own (by then long) backoff.
    available: tokio::sync::Notify,
}

impl Health {
    pub fn new() -> Health {
        Health::default()
    }

    /// Records a failed request to `dependency`; returns the failures of this outage so far.
    pub fn failed(&self, dependency: Dependency, error: &str, needs_operator: bool) -> u64 {
        let mut ongoing = self.lock();
        let entry = ongoing.entry(dependency).or_insert_with(|| {
            metrics::counter!(m::DEPENDENCY_OUTAGES, "dependency" => dependency.name())
                .increment(1);
            Ongoing {
                started: Instant::now(),
                since_ms: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                failures: 0,
                error: String::new(),
                needs_operator,
            }
        });
        entry.failures += 1;
        entry.error = error.to_string();
        entry.needs_operator = needs_operator;
        metrics::counter!(m::DEPENDENCY_FAILURES, "dependency" => dependency.name()).increment(1);
        entry.failures
    }

    /// Records a request to `dependency` that succeeded. Ends its outage if there was one, logs
    /// it, and returns how long it lasted.
    pub fn succeeded(&self, dependency: Dependency) -> Option<Duration> {
        let ended = self.lock().remove(&dependency)?;
        self.available.notify_waiters();
        let lasted = ended.started.elapsed();
        metrics::counter!(m::DEPENDENCY_UNAVAILABLE_SECONDS, "dependency" => dependency.name())
            .increment(lasted.as_secs());
        tracing::info!(
            dependency = dependency.name(),
            unavailable_s = lasted.as_secs_f64(),
            failures = ended.failures,
            "available again"
        );
        Some(lasted)
    }

    /// Resolves when an outage of `dependency` ends (at once if there is none): a retry waits
    /// for this or its backoff, whichever comes first.
    pub async fn available(&self, dependency: Dependency) {
        let notified = self.available.notified();
        if !self.lock().contains_key(&dependency) {
            return;
        }
        notified.await;
    }

    /// The ongoing outages, oldest first.
    pub fn outages(&self) -> Vec<Outage> {
        let mut outages: Vec<Outage> = self
            .lock()
            .iter()
            .map(|(d, o)| Outage {
                dependency: *d,
                unavailable_s: o.started.elapsed().as_secs_f64(),
                since_ms: o.since_ms,
                failures: o.failures,
                error: o.error.clone(),
                needs_operator: o.needs_operator,
            })
            .collect();
        outages.sort_by(|a, b| b.unavailable_s.total_cmp(&a.unavailable_s));
        outages
    }

    /// Sets the per-dependency gauge of the current outage's length (0 when available); called
    /// on every worker tick so that the series never idles out of the exposition.
    pub fn record_gauges(&self) {
        let ongoing = self.lock();
        for d in Dependency::ALL {
            let seconds = ongoing
                .get(&d)
                .map_or(0.0, |o| o.started.elapsed().as_secs_f64());
            metrics::gauge!(m::DEPENDENCY_UNAVAILABLE, "dependency" => d.name()).set(seconds);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Dependency, Ongoing>> {
        // Plain data: still good to read after a panic elsewhere.
        self.ongoing.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Display for Outage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} unavailable for {:.0} s ({} failed requests{}): {}",
            self.dependency,
            self.unavailable_s,
            self.failures,
            if self.needs_operator {
                "; needs an operator"
            } else {
                ""
            },
            self.error
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_lasts_from_the_first_failure_to_the_next_success() {
        let h = Health::new();
        assert!(h.outages().is_empty());
        assert_eq!(h.succeeded(Dependency::Storage), None);
        assert_eq!(h.failed(Dependency::Storage, "refused", false), 1);
        assert_eq!(h.failed(Dependency::Storage, "timed out", false), 2);
        let outages = h.outages();
        assert_eq!(outages.len(), 1);
        assert_eq!(outages[0].dependency, Dependency::Storage);
        assert_eq!(outages[0].failures, 2);
        assert_eq!(outages[0].error, "timed out");
        assert!(outages[0]
            .to_string()
            .starts_with("storage unavailable for"));
        assert!(h.succeeded(Dependency::Storage).is_some());
        assert!(h.outages().is_empty());
    }
}
