//! Outages of the services a worker depends on, as separate processes against private
//! ZooKeeper and S3 servers this binary kills and restarts (the shared stack stays up for the
//! other tests): storage (S3, and a `file://` directory that disappears) down for a long time,
//! ZooKeeper down for longer than the session timeout, a commit whose reply is lost, and SIGTERM
//! while storage is down. Every worker stays up through the outage and says why it is not ready;
//! every test ends with the exactly-once check on every column. Each prints the time from the
//! service's return to the first new commit and to lag 0.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use sluice_tests::fleet::{deployment, deployment_on, spawn, tail, wait_caught_up};
use sluice_tests::outage::{
    endpoints, ensure_running, offsets, recovery, wait_first_commit, wait_ready_state,
    wait_storage_outage_seen, SETTLE,
};
use sluice_tests::private::{PrivateKafka, PrivateS3, PrivateZk};
use sluice_tests::web::{endpoint, get};
use sluice_tests::zk_proxy::ZkProxy;
use sluice_tests::{s3_secret_file, unique, wait_until, Prepared, Stack, StorageKind};

/// How long each storage outage lasts.
const STORAGE_OUTAGE: Duration = Duration::from_secs(60);
/// Longer than the deployments' 4 s session timeout.
const ZOOKEEPER_OUTAGE: Duration = Duration::from_secs(12);

/// What a storage outage takes away and gives back.
enum Storage<'a> {
    /// The S3 server, killed and restarted.
    S3(&'a mut PrivateS3),
    /// A `file://` directory moved aside, a plain file in its place so that nothing can be
    /// written under it (the tests run as root: a read-only mode would stop nothing).
    Directory { data: PathBuf, aside: PathBuf },
}

impl Storage<'_> {
    async fn take_away(&mut self) -> Result<()> {
        match self {
            Storage::S3(s3) => s3.stop().await,
            Storage::Directory { data, aside } => {
                std::fs::rename(&*data, &*aside)?;
                std::fs::write(&*data, b"not a directory")?;
                Ok(())
            }
        }
    }

    async fn give_back(&mut self) -> Result<()> {
        match self {
            Storage::S3(s3) => s3.start().await.map(drop),
            Storage::Directory { data, aside } => {
                std::fs::remove_file(&*data)?;
                std::fs::rename(&*aside, &*data)?;
                Ok(())
            }
        }
    }
}

/// Ingests a first lot, then takes storage away while more events arrive, keeps it away for
/// [`STORAGE_OUTAGE`], gives it back, and checks that both workers rode it out, said so in
/// `/readyz`, and caught up exactly once.
async fn storage_outage(name: &str, d: &mut Prepared, mut storage: Storage<'_>) -> Result<()> {
    let mut workers = vec![spawn(d, "w1")?, spawn(d, "w2")?];
    let addrs = endpoints(&workers).await?;
    wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;
    wait_ready_state(&addrs, 200, "holding every assigned partition").await?;
    let before = offsets(d).await?;
    storage.take_away().await?;
    d.produce_more(3_000).await?;
    // Every worker holding a partition has flushes to upload (a worker rendezvous hashing gave
    // none to has nothing to write, and stays ready).
    let holders = wait_storage_outage_seen(&addrs).await?;
    // The dashboard's data names it too (the page shows it as DEGRADED).
    for a in &holders {
        let (_, state) = get(*a, "/api/state")?;
        ensure!(
            state.contains(r#""dependency":"storage""#),
            "/api/state shows no storage outage: {state}"
        );
    }
    // The outage itself: its length is the point of the test, not a wait for something.
    tokio::time::sleep(STORAGE_OUTAGE).await;
    ensure_running(&mut workers)?;
    ensure!(
        offsets(d).await? == before,
        "something committed while storage was down"
    );
    storage.give_back().await?;
    let (first_commit, lag_zero) = recovery(d, &before, Instant::now()).await?;
    wait_ready_state(&addrs, 200, "holding every assigned partition").await?;
    ensure_running(&mut workers)?;
    println!(
        "{name}: storage down {STORAGE_OUTAGE:?}; after it returned: first commit {first_commit:.1} s, lag 0 {lag_zero:.1} s"
    );
    let mut saw_outage = 0;
    for w in workers {
        let log = w.terminate(Duration::from_secs(60)).await?;
        let failed = log.contains("upload failed; retrying");
        ensure!(
            !failed || log.contains("available again"),
            "the worker's log shows the outage but not its end:\n{}",
            tail(&log, 3000)
        );
        saw_outage += usize::from(failed);
    }
    ensure!(saw_outage > 0, "no worker's log shows the outage");
    d.verify().await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_s3_outage_stops_no_worker_and_loses_nothing() -> Result<()> {
    let mut s3 = PrivateS3::launch().await?;
    let stack = Stack::from_env().with_s3(&s3);
    let mut d = deployment_on(&stack, "s3_outage", 4, 2_000, 200, |_| StorageKind::S3 {
        prefix: unique("s3-outage"),
    })
    .await?;
    storage_outage("s3", &mut d, Storage::S3(&mut s3)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vanished_storage_directory_stops_no_worker_and_loses_nothing() -> Result<()> {
    let mut d = deployment("dir_outage", 4, 2_000, 200).await?;
    let storage = Storage::Directory {
        data: d.dir.path().join("data"),
        aside: d.dir.path().join("data-aside"),
    };
    storage_outage("file", &mut d, storage).await
}

#[tokio::test(flavor = "multi_thread")]
async fn zookeeper_down_longer_than_the_session_timeout_stops_no_worker() -> Result<()> {
    let mut zk = PrivateZk::launch().await?;
    let stack = Stack::from_env().with_zk(&zk);
    let mut d = deployment_on(&stack, "zk_outage", 4, 2_000, 200, |dir| {
        StorageKind::File(dir.join("data"))
    })
    .await?;
    let mut workers = vec![spawn(&d, "w1")?, spawn(&d, "w2")?];
    let addrs = endpoints(&workers).await?;
    wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;
    wait_ready_state(&addrs, 200, "holding every assigned partition").await?;
    let before = offsets(&d).await?;
    let stopped = Instant::now();
    zk.stop().await?;
    d.produce_more(3_000).await?;
    // Once their sessions are gone they try to open new ones, and say what stops them.
    wait_ready_state(&addrs, 503, "zookeeper unavailable").await?;
    // The rest of the outage: its length is the point of the test.
    tokio::time::sleep(ZOOKEEPER_OUTAGE.saturating_sub(stopped.elapsed())).await;
    ensure_running(&mut workers)?;
    let down = stopped.elapsed();
    zk.start().await?;
    let (first_commit, lag_zero) = recovery(&d, &before, Instant::now()).await?;
    wait_ready_state(&addrs, 200, "holding every assigned partition").await?;
    ensure_running(&mut workers)?;
    println!(
        "zookeeper: down {down:.1?}; after it returned: first commit {first_commit:.1} s, lag 0 {lag_zero:.1} s"
    );
    for w in workers {
        let log = w.terminate(Duration::from_secs(60)).await?;
        ensure!(
            log.contains("rejoining the fleet with a new session"),
            "the worker's log does not show a rejoin:\n{}",
            tail(&log, 3000)
        );
    }
    d.verify().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_whose_reply_is_lost_is_resolved_without_a_rejoin() -> Result<()> {
    const LOST: u64 = 3;
    let proxy = ZkProxy::start(&Stack::from_env().zk).await?;
    let mut stack = Stack::from_env();
    stack.zk = proxy.connect();
    let mut d = deployment_on(&stack, "lost_reply", 2, 1_000, 100, |dir| {
        StorageKind::File(dir.join("data"))
    })
    .await?;
    // Merges swap with multi-ops too; only commits may lose their replies here.
    d.edit_config(|t| t + "\n[merge]\nenabled = false\n")?;
    let w = spawn(&d, "w1")?;
    wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;
    proxy.lose_next_multi_replies(LOST);
    d.produce_more(1_000).await?;
    wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;
    ensure!(
        proxy.replies_lost() == LOST,
        "{} replies lost, {LOST} armed",
        proxy.replies_lost()
    );
    let log = w.terminate(Duration::from_secs(60)).await?;
    let resolved = log
        .matches("the commit whose reply was lost had succeeded")
        .count() as u64;
    ensure!(
        resolved == LOST && !log.contains("rejoining"),
        "{resolved} lost replies resolved of {LOST}, or a rejoin followed:\n{}",
        tail(&log, 4000)
    );
    d.verify().await
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_storage_is_down_exits_by_the_deadline_and_commits_nothing() -> Result<()> {
    const DEADLINE_MS: u64 = 3_000;
    let mut d = deployment("sigterm_outage", 2, 1_000, 200).await?;
    d.edit_config(|t| {
        t.replace(
            "[worker]\n",
            &format!("[worker]\nshutdown_deadline_ms = {DEADLINE_MS}\n"),
        )
    })?;
    let mut w = spawn(&d, "w1")?;
    let addr = endpoint(&w).await?;
    wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;
    let before = offsets(&d).await?;
    let mut storage = Storage::Directory {
        data: d.dir.path().join("data"),
        aside: d.dir.path().join("data-aside"),
    };
    storage.take_away().await?;
    d.produce_more(2_000).await?;
    wait_ready_state(&[addr], 503, "storage unavailable").await?;
    let asked = Instant::now();
    w.signal("TERM")?;
    let status = w.wait(Duration::from_secs(60)).await?;
    let took = asked.elapsed();
    let log = w.log_text();
    ensure!(
        status.success() && took < Duration::from_millis(DEADLINE_MS) + Duration::from_secs(10),
        "exit {status:?} {took:?} after SIGTERM (deadline {DEADLINE_MS} ms):\n{}",
        tail(&log, 3000)
    );
    ensure!(
        log.contains("shutdown deadline passed") && offsets(&d).await? == before,
        "something was committed after SIGTERM, or the deadline was not what ended it:\n{}",
        tail(&log, 3000)
    );
    println!("sigterm during a storage outage: exited {took:?} after SIGTERM (deadline {DEADLINE_MS} ms)");
    storage.give_back().await?;
    d.run_to_end().await?;
    d.verify().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_started_while_zookeeper_is_unreachable_waits_not_ready() -> Result<()> {
    let d = deployment("zk_unreachable", 1, 10, 100).await?;
    d.edit_config(|t| t.replace(&format!("\"{}\"", Stack::from_env().zk), "\"127.0.0.1:1\""))?;
    let mut w = spawn(&d, "w1")?;
    let addr = endpoint(&w).await?;
    wait_ready_state(&[addr], 503, "zookeeper unavailable").await?;
    wait_until(
        SETTLE,
        Duration::from_millis(100),
        "the worker to log why it cannot start",
        || {
            let logged = w
                .log_text()
                .contains("cannot reach ZooKeeper at 127.0.0.1:1");
            async move { Ok(logged) }
        },
    )
    .await?;
    ensure_running(std::slice::from_mut(&mut w))?;
    let asked = Instant::now();
    w.terminate(Duration::from_secs(10)).await?;
    println!(
        "unreachable ZooKeeper: the waiting worker exited {:?} after SIGTERM",
        asked.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn zookeeper_restarts_within_the_session_timeout_cost_no_rejoin() -> Result<()> {
    const BOUNCES: usize = 3;
    let mut zk = PrivateZk::launch().await?;
    let stack = Stack::from_env().with_zk(&zk);
    let mut d = deployment_on(&stack, "zk_bounce", 4, 2_000, 200, |dir| {
        StorageKind::File(dir.join("data"))
    })
    .await?;
    // Merge checks list the registry every 100 ms, so that requests other than commits are in
    // flight when the connection drops too.
    d.edit_config(|t| t + "\n[merge]\ncheck_interval_ms = 100\n")?;
    let mut workers = vec![spawn(&d, "w1")?, spawn(&d, "w2")?];
    let addrs = endpoints(&workers).await?;
    wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;
    wait_ready_state(&addrs, 200, "holding every assigned partition").await?;
    for bounce in 0..BOUNCES {
        let before = offsets(&d).await?;
        d.produce_more(2_000).await?;
        // Down and up again within the 4 s session timeout (a server restart, a leader
        // election): the sessions survive on the server and the clients reconnect to them.
        zk.stop().await?;
        let down = Instant::now();
        zk.start().await?;
        let down = down.elapsed();
        let (first_commit, lag_zero) = recovery(&d, &before, Instant::now()).await?;
        println!(
            "zookeeper restart {bounce} took {down:.1?}: first commit {first_commit:.1} s, lag 0 {lag_zero:.1} s after it returned"
        );
    }
    ensure_running(&mut workers)?;
    for w in workers {
        let log = w.terminate(Duration::from_secs(60)).await?;
        ensure!(
            !log.contains("rejoining"),
            "a restart within the session timeout made a worker rejoin:\n{}",
            tail(&log, 4000)
        );
    }
    d.verify().await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_broker_down_for_30_s_mid_ingest_stops_no_worker() -> Result<()> {
    const BROKER_OUTAGE: Duration = Duration::from_secs(30);
    let mut kafka = PrivateKafka::launch().await?;
    let stack = Stack::from_env().with_kafka(&kafka);
    let mut d = deployment_on(&stack, "broker_outage", 4, 20_000, 200, |dir| {
        StorageKind::File(dir.join("data"))
    })
    .await?;
    let mut workers = vec![spawn(&d, "w1")?, spawn(&d, "w2")?];
    // Mid-ingest: as soon as something is committed.
    wait_first_commit(&d).await?;
    let before = offsets(&d).await?;
    kafka.stop().await?;
    // The outage itself: its length is the point of the test.
    tokio::time::sleep(BROKER_OUTAGE).await;
    ensure_running(&mut workers)?;
    kafka.start().await?;
    let returned = Instant::now();
    d.produce_more(2_000).await?;
    let (first_commit, lag_zero) = recovery(&d, &before, returned).await?;
    ensure_running(&mut workers)?;
    println!(
        "kafka: broker down {BROKER_OUTAGE:?} mid-ingest (committed before: {before:?}); after it returned: first commit {first_commit:.1} s, lag 0 {lag_zero:.1} s"
    );
    for w in workers {
        w.terminate(Duration::from_secs(60)).await?;
    }
    d.verify().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_started_while_the_broker_is_down_waits_not_ready_then_ingests() -> Result<()> {
    let mut kafka = PrivateKafka::launch().await?;
    let stack = Stack::from_env().with_kafka(&kafka);
    let d = deployment_on(&stack, "broker_down_at_start", 2, 1_000, 200, |dir| {
        StorageKind::File(dir.join("data"))
    })
    .await?;
    kafka.stop().await?;
    let mut workers = vec![spawn(&d, "w1")?];
    let addrs = endpoints(&workers).await?;
    wait_ready_state(&addrs, 503, "kafka unavailable").await?;
    ensure_running(&mut workers)?;
    kafka.start().await?;
    let returned = Instant::now();
    wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;
    wait_ready_state(&addrs, 200, "holding every assigned partition").await?;
    println!(
        "kafka down at start-up: caught up {:.1} s after the broker returned",
        returned.elapsed().as_secs_f64()
    );
    for w in workers {
        w.terminate(Duration::from_secs(60)).await?;
    }
    d.verify().await
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_refusing_the_credentials_keeps_the_worker_up_and_says_who_must_act() -> Result<()>
{
    let stack = Stack::from_env();
    let d = deployment_on(&stack, "bad_credentials", 1, 300, 100, |_| {
        StorageKind::S3 {
            prefix: unique("bad-credentials"),
        }
    })
    .await?;
    let secret = s3_secret_file(d.dir.path());
    std::fs::write(&secret, "not-the-secret")?;
    d.edit_config(|t| t.replace("[worker]\n", "[worker]\nshutdown_deadline_ms = 2000\n"))?;
    let mut w = spawn(&d, "w1")?;
    let addr = endpoint(&w).await?;
    wait_ready_state(&[addr], 503, "needs an operator")
        .await
        .with_context(|| tail(&w.log_text(), 3000))?;
    wait_until(
        SETTLE,
        Duration::from_millis(100),
        "the fix in the log",
        || {
            let logged = w.log_text().contains("ERROR")
                && w.log_text().contains("check storage.url")
                && w.log_text().contains("key_id=");
            async move { Ok(logged) }
        },
    )
    .await?;
    ensure_running(std::slice::from_mut(&mut w))?;
    ensure!(
        offsets(&d).await?.values().all(Option::is_none),
        "something was committed without storage"
    );
    let log = w.terminate(Duration::from_secs(30)).await?;
    ensure!(
        !log.contains("not-the-secret"),
        "the log shows the secret key:\n{}",
        tail(&log, 3000)
    );
    // The operator fixes the credentials and restarts: everything lands exactly once.
    std::fs::write(&secret, &stack.s3_secret_key)?;
    d.run_to_end().await?;
    d.verify().await
}
