//! kill -9 of the worker at each step of its cycle, then a restart: the result is still exactly
//! once, and objects uploaded but never committed are collected.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use anyhow::{ensure, Result};
use sluice_tests::{
    committed, describe, prepare, run_sluice, sluice_bin, wait_until, Prepared, StorageKind,
};

const EVENTS: u64 = 2_400;
const PARTITIONS: i32 = 3;

async fn setup(name: &str) -> Result<Prepared> {
    prepare(name, PARTITIONS, EVENTS, 300, |dir| {
        StorageKind::File(dir.join("data"))
    })
    .await
}

/// Runs to the end after a crash and checks the outcome; returns the run's stdout.
async fn restart_and_verify(s: &Prepared) -> Result<String> {
    let out = s.run_to_end().await?;
    s.verify().await?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn crash_at(point: &str) -> Result<Prepared> {
    let s = setup(&format!("crash-{}", point.replace(['_', ':'], "-"))).await?;
    let out = run_sluice(
        &[
            "run",
            "--config",
            s.config.to_str().unwrap(),
            "--stop-at-end",
        ],
        &[("SLUICE_FAILPOINT", point)],
        Duration::from_secs(180),
    )
    .await?;
    ensure!(
        out.status.signal() == Some(9),
        "expected the worker to die of SIGKILL at {point}: {}",
        describe(&out)
    );
    Ok(s)
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_mid_batch() -> Result<()> {
    let s = crash_at("mid_batch:1500").await?;
    restart_and_verify(&s).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_after_upload_before_commit() -> Result<()> {
    let s = crash_at("after_upload:2").await?;
    // The crash left uploaded objects that no commit registers.
    let c = committed(&s.config, "events").await?;
    let committed_paths: std::collections::HashSet<_> =
        c.parts.iter().map(|p| p.path.clone()).collect();
    let orphans = c
        .storage
        .list("events/")
        .await?
        .into_iter()
        .filter(|o| !committed_paths.contains(&o.path))
        .count();
    ensure!(
        orphans > 0,
        "expected uncommitted objects after a crash between upload and commit"
    );
    let stdout = restart_and_verify(&s).await?;
    ensure!(
        stdout.contains(&format!("{orphans} uncommitted objects collected")),
        "restart should collect {orphans} objects: {stdout}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_right_after_commit() -> Result<()> {
    let s = crash_at("after_commit:2").await?;
    let c = committed(&s.config, "events").await?;
    ensure!(
        !c.parts.is_empty(),
        "the crash came after a commit, so parts must be committed"
    );
    restart_and_verify(&s).await?;
    Ok(())
}

/// An external kill -9 at an arbitrary moment of a running worker, after some commits.
#[tokio::test(flavor = "multi_thread")]
async fn kill_externally_while_running() -> Result<()> {
    let s = setup("crash-external").await?;
    let mut child = tokio::process::Command::new(sluice_bin())
        .args(["run", "--config", s.config.to_str().unwrap()])
        .env("SLUICE_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let config = s.config.clone();
    wait_until(
        Duration::from_secs(120),
        Duration::from_millis(100),
        "a first commit",
        || {
            let config = config.clone();
            async move { Ok(!committed(&config, "events").await?.parts.is_empty()) }
        },
    )
    .await?;
    child.start_kill()?; // SIGKILL
    let status = child.wait().await?;
    ensure!(
        status.signal() == Some(9),
        "worker was not killed: {status:?}"
    );
    restart_and_verify(&s).await?;
    Ok(())
}
