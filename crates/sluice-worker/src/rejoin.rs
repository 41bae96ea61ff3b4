//! The run as a series of coordination sessions: open one (retrying until the coordinator
//! answers), run it, and after losing it open the next, with a capped backoff and without limit.
//! A worker never exits on a transient fault: only start-up configuration errors and shutdown
//! end it. While there is no session the worker is not ready, and `/readyz` says why (the
//! coordinator unavailable since when, or a rejoin in progress).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_config::Config;
use sluice_coord::{CoordError, Coordinator};
use sluice_telemetry::{Dependency, Health, Telemetry};

use crate::retry::{chain, Backoff};
use crate::{kafka_ready, session, RunOptions, RunSummary, Services, WorkerError};

/// After an error, how long to wait for the client to report that its session has ended.
const SESSION_END_GRACE: Duration = Duration::from_secs(2);
/// A session that lasted this long before failing was not a persistent failure: the backoff
/// starts again from its first step.
const STABLE_SESSION: Duration = Duration::from_secs(30);
/// The first wait before rejoining or reconnecting; doubled on each failure in a row.
const FIRST_RETRY: Duration = Duration::from_millis(200);
/// The longest wait between two attempts to rejoin or reconnect.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// Failures in a row after which the log says ERROR (someone should look) instead of WARN.
const FAILURES_BEFORE_ERROR: u64 = 5;

type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a run reports its state to.
pub(crate) struct Observers {
    pub(crate) telemetry: Option<Arc<Telemetry>>,
    pub(crate) health: Arc<Health>,
}

pub(crate) async fn run_sessions(
    config: &Arc<Config>,
    options: &RunOptions,
    services: &Services,
    observers: Observers,
    shutdown: &mut Shutdown,
) -> Result<RunSummary, WorkerError> {
    let mut summary = RunSummary::default();
    let mut backoff = Backoff::new(FIRST_RETRY, MAX_RETRY);
    let mut failures_in_a_row = 0u64;
    loop {
        let fail_fast = options.stop_at_end;
        let source = &*services.source;
        if !kafka_ready::wait_for_kafka(config, source, &observers.health, fail_fast, shutdown)
            .await?
        {
            tracing::info!("shutdown requested while waiting for Kafka");
            break;
        }
        let Some(coord) = connect(services, &observers.health, shutdown).await else {
            tracing::info!("shutdown requested while no coordination session was open");
            break;
        };
        let session_started = Instant::now();
        let outcome = session::Session::new(
            config,
            Arc::clone(&coord),
            services,
            options,
            &mut summary,
            observers.telemetry.clone(),
            Arc::clone(&observers.health),
        )
        .run(shutdown)
        .await;
        if let Some(t) = &observers.telemetry {
            // The session's buffers are gone with it.
            t.set_coordinator(None);
            t.set_oldest_buffered(Default::default());
        }
        // Rejoin after a lost session, and after any coordination error: a new session starts
        // from what is committed, so it is always safe. Any error once the session is gone
        // counts too, whatever the request that noticed it first said (after a pause, a request
        // sent on the dead connection times out before the client learns the session expired).
        let rejoin = match &outcome {
            Ok(()) => false,
            Err(e) => {
                e.calls_for_rejoin()
                    || tokio::time::timeout(SESSION_END_GRACE, coord.session_ended())
                        .await
                        .is_ok()
            }
        };
        // Ending the session frees any lease left at once, instead of after the session timeout.
        let _ = coord.close().await;
        drop(coord);
        let e = match outcome {
            Ok(()) => break,
            Err(e) if rejoin => e,
            Err(e) => return Err(e),
        };
        if session_started.elapsed() >= STABLE_SESSION {
            backoff = Backoff::new(FIRST_RETRY, MAX_RETRY);
            failures_in_a_row = 0;
        }
        failures_in_a_row += 1;
        summary.rejoins += 1;
        metrics::counter!(sluice_telemetry::metrics::SESSION_REJOINS).increment(1);
        let delay = backoff.next_delay();
        let retry_in_ms = delay.as_millis() as u64;
        if failures_in_a_row >= FAILURES_BEFORE_ERROR {
            tracing::error!(error = %chain(&e), rejoins = summary.rejoins, failures_in_a_row, retry_in_ms, "coordination keeps failing right after rejoining; still rejoining (see the errors above; nothing is committed meanwhile)");
        } else {
            tracing::warn!(error = %chain(&e), rejoins = summary.rejoins, retry_in_ms, "lost ownership; rejoining the fleet with a new session");
        }
        tokio::select! {
            () = &mut *shutdown => break,
            () = tokio::time::sleep(delay) => {}
        }
    }
    Ok(summary)
}

/// Opens a coordination session, retrying until the coordinator answers; `None` on shutdown.
async fn connect(
    services: &Services,
    health: &Health,
    shutdown: &mut Shutdown,
) -> Option<Arc<dyn Coordinator>> {
    let mut backoff = Backoff::new(FIRST_RETRY, MAX_RETRY);
    loop {
        let attempt = tokio::select! {
            biased;
            () = &mut *shutdown => return None,
            attempt = (services.coordination)() => attempt,
        };
        let e = match attempt {
            Ok(coord) => {
                health.succeeded(Dependency::Zookeeper);
                return Some(coord);
            }
            Err(e) => e,
        };
        // Refused credentials and unusable TLS files do not pass by themselves: said at once,
        // and tried again at the backoff's pace in case someone fixes the ACL, the password
        // file or the certificates meanwhile.
        let refused = matches!(e, CoordError::NotAuthorized { .. } | CoordError::Tls { .. });
        let failures = health.failed(Dependency::Zookeeper, &chain(&e), refused);
        let delay = backoff.next_delay();
        let retry_in_ms = delay.as_millis() as u64;
        if refused {
            tracing::error!(error = %chain(&e), failures, retry_in_ms, "ZooKeeper cannot be used as configured (its identity or TLS settings); retrying (not ready meanwhile: nothing is consumed or committed)");
        } else if failures >= FAILURES_BEFORE_ERROR {
            tracing::error!(error = %chain(&e), failures, retry_in_ms, "still cannot open a coordination session; retrying (not ready meanwhile: nothing is consumed or committed)");
        } else {
            tracing::warn!(error = %chain(&e), failures, retry_in_ms, "cannot open a coordination session; retrying");
        }
        tokio::select! {
            () = &mut *shutdown => return None,
            () = tokio::time::sleep(delay) => {}
        }
    }
}
