//! What the outage tests share: the committed offsets, waiting for every worker's readiness to
//! say something, and the times from a service's return to the first commit and to lag 0.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::fleet::{fleet_state, tail, wait_caught_up, Worker};
use crate::web::{endpoint, get};
use crate::{wait_until, Prepared};

/// How long recovering from an outage, or noticing one, may take.
pub const SETTLE: Duration = Duration::from_secs(120);

/// The committed offsets of every partition.
pub async fn offsets(d: &Prepared) -> Result<BTreeMap<i32, Option<i64>>> {
    Ok(fleet_state(&d.config, &d.topic).await?.offsets)
}

/// Waits until `/readyz` of every worker answers `status` with `why` in its body.
pub async fn wait_ready_state(addrs: &[SocketAddr], status: u16, why: &str) -> Result<()> {
    let mut last = String::new();
    let outcome = wait_until(
        SETTLE,
        Duration::from_millis(100),
        &format!("every worker's /readyz to answer {status} with `{why}`"),
        || {
            let answers: Vec<_> = addrs.iter().map(|a| get(*a, "/readyz")).collect();
            let done = answers
                .iter()
                .all(|r| matches!(r, Ok((s, body)) if *s == status && body.contains(why)));
            last = format!("{answers:?}");
            async move { Ok(done) }
        },
    )
    .await;
    outcome.with_context(|| format!("last answers: {last}"))
}

/// Waits until every worker that holds partitions answers `/readyz` 503 naming storage (the
/// others hold nothing to upload and stay ready); returns the former, at least one.
pub async fn wait_storage_outage_seen(addrs: &[SocketAddr]) -> Result<Vec<SocketAddr>> {
    let mut holders = Vec::new();
    let mut last = String::new();
    let outcome = wait_until(
        SETTLE,
        Duration::from_millis(100),
        "every worker holding partitions to answer /readyz 503 naming storage",
        || {
            let answers: Vec<_> = addrs.iter().map(|a| (*a, get(*a, "/readyz"))).collect();
            let idle = |body: &str| body.contains(r#""owned":0"#);
            let done = answers.iter().all(|(_, r)| match r {
                Ok((503, body)) => body.contains("storage unavailable"),
                Ok((200, body)) => idle(body),
                _ => false,
            });
            holders = answers
                .iter()
                .filter(|(_, r)| matches!(r, Ok((_, body)) if !idle(body)))
                .map(|(a, _)| *a)
                .collect();
            last = format!("{answers:?}");
            let done = done && !holders.is_empty();
            async move { Ok(done) }
        },
    )
    .await;
    outcome.with_context(|| format!("last answers: {last}"))?;
    Ok(holders)
}

/// Times from a service's return (`returned`) to the first commit past `before` and to lag 0.
pub async fn recovery(
    d: &Prepared,
    before: &BTreeMap<i32, Option<i64>>,
    returned: Instant,
) -> Result<(f64, f64)> {
    wait_until(
        SETTLE,
        Duration::from_millis(50),
        "a commit after the outage",
        || async { Ok(offsets(d).await? != *before) },
    )
    .await?;
    let first_commit = returned.elapsed().as_secs_f64();
    wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;
    Ok((first_commit, returned.elapsed().as_secs_f64()))
}

pub fn ensure_running(workers: &mut [Worker]) -> Result<()> {
    for w in workers.iter_mut() {
        ensure!(
            w.is_running(),
            "a worker exited during the outage:\n{}",
            tail(&w.log_text(), 3000)
        );
    }
    Ok(())
}

pub async fn endpoints(workers: &[Worker]) -> Result<Vec<SocketAddr>> {
    let mut addrs = Vec::new();
    for w in workers {
        addrs.push(endpoint(w).await?);
    }
    Ok(addrs)
}

/// Waits until something is committed: the moment a test calls mid-ingest.
pub async fn wait_first_commit(d: &Prepared) -> Result<()> {
    wait_until(
        SETTLE,
        Duration::from_millis(20),
        "a first commit",
        || async { Ok(offsets(d).await?.values().any(|o| o.is_some())) },
    )
    .await
}

/// A deployment's `file://` storage directory taken away: a plain file stands where it was,
/// so nothing can be read or written under it until [`StorageAway::restore`].
pub struct StorageAway {
    data: std::path::PathBuf,
    aside: std::path::PathBuf,
}

impl StorageAway {
    pub fn take(d: &Prepared) -> Result<StorageAway> {
        let (data, aside) = (d.dir.path().join("data"), d.dir.path().join("data-aside"));
        std::fs::rename(&data, &aside)?;
        std::fs::write(&data, b"not a directory")?;
        Ok(StorageAway { data, aside })
    }

    pub fn restore(self) -> Result<()> {
        std::fs::remove_file(&self.data)?;
        std::fs::rename(&self.aside, &self.data)?;
        Ok(())
    }
}
