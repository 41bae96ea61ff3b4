//! A fleet of two workers on a ZooKeeper ensemble of three, as separate processes, while the
//! ensemble loses its leader and then its quorum (the shared stack's single server stays up for
//! the other tests). The leader's death costs an election and a reconnection but no session, so
//! no worker rejoins; a quorum lost for longer than the session timeout costs the sessions, and
//! the workers rejoin by themselves when it is back (closing their old sessions, which the
//! ensemble restores, so that their leases are free at once). Every worker stays up, says in `/readyz`
//! why it is not ready, and the run ends with the exactly-once check on every column. Prints
//! the time from each fault's end to the first new commit and to lag 0.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use sluice_tests::ensemble::PrivateEnsemble;
use sluice_tests::fleet::{deployment_on, spawn, tail, Worker};
use sluice_tests::outage::{
    endpoints, ensure_running, offsets, recovery, wait_first_commit, wait_ready_state,
};
use sluice_tests::{Stack, StorageKind};

/// The workers' session timeout here: ZooKeeper's usual order, and room for an election on a
/// loaded machine (the deployments' 4 s would make a slow election look like a lost session).
const SESSION_TIMEOUT_MS: u64 = 10_000;
/// How long the quorum stays lost: longer than the session timeout.
const QUORUM_OUTAGE: Duration = Duration::from_secs(14);
const REJOIN: &str = "rejoining the fleet with a new session";

fn rejoins(workers: &[Worker]) -> usize {
    workers
        .iter()
        .map(|w| w.log_text().matches(REJOIN).count())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ensemble_losing_its_leader_then_its_quorum_stops_no_worker_and_loses_nothing(
) -> Result<()> {
    let mut zk = PrivateEnsemble::launch().await?;
    let stack = Stack::from_env().with_ensemble(&zk);
    let mut d = deployment_on(&stack, "ensemble", 4, 20_000, 200, |dir| {
        StorageKind::File(dir.join("data"))
    })
    .await?;
    d.edit_config(|t| {
        t.replace(
            "session_timeout_ms = 4000",
            &format!("session_timeout_ms = {SESSION_TIMEOUT_MS}"),
        )
    })?;
    let mut workers = vec![spawn(&d, "w1")?, spawn(&d, "w2")?];
    let addrs = endpoints(&workers).await?;
    // Mid-ingest: as soon as something is committed.
    wait_first_commit(&d).await?;

    // The leader killed: the others elect a new one, and the clients move to them within
    // their sessions.
    let before = offsets(&d).await?;
    let leader = zk.wait_for_leader().await?;
    zk.member(leader).stop().await?;
    let killed = Instant::now();
    let next = zk.wait_for_leader().await?;
    let elected = killed.elapsed();
    ensure!(next != leader, "the killed member {leader} still leads");
    d.produce_more(2_000).await?;
    let (first_commit, lag_zero) = recovery(&d, &before, killed).await?;
    ensure_running(&mut workers)?;
    println!(
        "ensemble: leader {leader} killed mid-ingest; member {next} elected {elected:.1?} later; from the kill: first commit {first_commit:.1} s, lag 0 {lag_zero:.1} s"
    );
    ensure!(
        rejoins(&workers) == 0,
        "a leader election cost a session:\n{}",
        workers
            .iter()
            .map(|w| tail(&w.log_text(), 3000))
            .collect::<String>()
    );
    zk.member(leader).start().await?;

    // Two of three stopped for longer than the session timeout: no quorum, no session.
    let before = offsets(&d).await?;
    let stopped = [(next + 1) % 3, next];
    for &i in &stopped {
        zk.member(i).stop().await?;
    }
    let lost = Instant::now();
    d.produce_more(3_000).await?;
    wait_ready_state(&addrs, 503, "zookeeper unavailable").await?;
    // The rest of the outage: its length is the point of the test.
    tokio::time::sleep(QUORUM_OUTAGE.saturating_sub(lost.elapsed())).await;
    ensure_running(&mut workers)?;
    let down = lost.elapsed();
    // One member back makes a quorum of two again.
    zk.member(stopped[0]).start().await?;
    let returned = Instant::now();
    zk.member(stopped[1]).start().await?;
    let (first_commit, lag_zero) = recovery(&d, &before, returned).await?;
    wait_ready_state(&addrs, 200, "holding every assigned partition").await?;
    ensure_running(&mut workers)?;
    println!(
        "ensemble: quorum lost for {down:.1?} (session timeout {SESSION_TIMEOUT_MS} ms); after it returned: first commit {first_commit:.1} s, lag 0 {lag_zero:.1} s"
    );
    ensure!(
        rejoins(&workers) >= workers.len(),
        "a quorum lost past the session timeout should have made every worker rejoin"
    );
    // The new leader restored the old sessions with a fresh timeout; each worker closed its
    // own instead of waiting that long for the leases it held.
    for w in &workers {
        ensure!(
            w.log_text().contains("closed the previous session"),
            "a worker left its old session to expire:\n{}",
            tail(&w.log_text(), 3000)
        );
    }
    for w in workers {
        w.terminate(Duration::from_secs(60)).await?;
    }
    d.verify().await
}
