//! SIGTERM drains: what is buffered is flushed and committed, the leases are released at once
//! (the next worker does not wait for a session to expire), and nothing is lost or duplicated.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use sluice_tests::{committed, prepare, sluice_bin, StorageKind};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_commits_what_is_buffered_and_releases_leases() -> Result<()> {
    let d = prepare("sigterm", 3, 2_400, 1_000_000, |dir| {
        StorageKind::File(dir.join("data"))
    })
    .await?;
    // No flush policy can fire: only the drain on SIGTERM commits anything.
    d.edit_config(|text| text.replace("max_age_ms = 300", "max_age_ms = 600000"))?;

    let mut child = tokio::process::Command::new(sluice_bin())
        .args(["run", "--config", d.config_arg()])
        .env(
            "SLUICE_LOG",
            "info,sluice_worker=debug,rdkafka=warn,zookeeper_client=warn",
        )
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
    let buffering = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if line.contains("buffering") {
                return Ok::<_, anyhow::Error>(true);
            }
        }
        Ok(false)
    })
    .await
    .context("no `buffering` log line within 60 s")??;
    ensure!(buffering, "the worker exited before buffering anything");
    let drain_log = tokio::spawn(async move {
        let mut log = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    ensure!(
        committed(&d.config, "events").await?.parts.is_empty(),
        "something was committed before SIGTERM"
    );

    let pid = child.id().context("worker pid")?.to_string();
    let kill = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await?;
    ensure!(kill.success(), "kill -TERM failed");
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .context("worker did not exit within 60 s of SIGTERM")??;
    let log = drain_log.await?;
    if !status.success() {
        bail!("worker exited with {status:?} after SIGTERM:\n{log}");
    }
    ensure!(
        log.contains("shutdown requested; draining"),
        "no drain in the log:\n{log}"
    );
    let c = committed(&d.config, "events").await?;
    ensure!(!c.parts.is_empty(), "SIGTERM committed nothing:\n{log}");
    ensure!(
        c.offsets.values().all(|o| o.is_none_or(|o| o > 0)),
        "offsets after drain: {:?}",
        c.offsets
    );

    // The leases were released: the next worker starts without waiting for a session expiry.
    let out = d.run_to_end().await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !stderr.contains("waiting for the previous owner"),
        "the restart had to wait for leases: {stderr}"
    );
    d.verify().await
}
