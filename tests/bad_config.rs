//! Bad configuration is refused at start-up, fast, with a message naming the problem.

use std::time::Duration;

use anyhow::{ensure, Result};
use sluice_tests::{describe, run_sluice, unique, write_config, Stack, StorageKind};

/// Runs `sluice run` on a config and returns stderr, asserting it failed.
async fn refused(config: &std::path::Path) -> Result<String> {
    let out = run_sluice(
        &["run", "--config", config.to_str().unwrap(), "--stop-at-end"],
        &[],
        Duration::from_secs(60),
    )
    .await?;
    ensure!(
        !out.status.success(),
        "a bad config was accepted: {}",
        describe(&out)
    );
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A valid config (against the real stack) with one edit applied.
fn edited(dir: &std::path::Path, edit: impl Fn(String) -> String) -> Result<std::path::PathBuf> {
    let stack = Stack::from_env();
    let path = write_config(
        dir,
        &stack,
        "some-topic",
        "/sluice-test/bad-config",
        &StorageKind::File(dir.join("data")),
        100,
    )?;
    let text = edit(std::fs::read_to_string(&path)?);
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, text)?;
    Ok(bad)
}

#[tokio::test]
async fn unknown_field_is_named() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let err = refused(&edited(dir.path(), |t| {
        t.replace("sorting_key =", "sort_key =")
    })?)
    .await?;
    ensure!(err.contains("unknown field `sort_key`"), "{err}");
    Ok(())
}

#[tokio::test]
async fn unknown_type_is_named() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let err = refused(&edited(dir.path(), |t| {
        t.replace("type = \"float64\"", "type = \"decimal\"")
    })?)
    .await?;
    ensure!(err.contains("unknown column type `decimal`"), "{err}");
    Ok(())
}

#[tokio::test]
async fn sorting_key_naming_a_missing_column_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let err = refused(&edited(dir.path(), |t| {
        t.replace("[\"country\", \"path\", \"ts\"]", "[\"country\", \"city\"]")
    })?)
    .await?;
    ensure!(
        err.contains("sorting_key") && err.contains("`city`"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn unreachable_broker_fails_fast() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let stack = Stack::from_env();
    let started = std::time::Instant::now();
    let err = refused(&edited(dir.path(), |t| {
        t.replace(&format!("\"{}\"", stack.kafka), "\"127.0.0.1:1\"")
    })?)
    .await?;
    ensure!(err.contains("cannot reach Kafka at 127.0.0.1:1"), "{err}");
    ensure!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?} to give up",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn missing_topic_is_named() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let topic = unique("never-created");
    let err = refused(&edited(dir.path(), |t| {
        t.replace("\"some-topic\"", &format!("\"{topic}\""))
    })?)
    .await?;
    ensure!(
        err.contains(&format!("topic `{topic}` does not exist")),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn a_telemetry_port_in_use_is_refused_naming_the_field() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // Something else already listens there.
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.port();
    let err = refused(&edited(dir.path(), |t| {
        t.replace(
            "listen_address = \"127.0.0.1:0\"",
            &format!("listen_address = \"127.0.0.1:{port}\""),
        )
    })?)
    .await?;
    ensure!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}"))
            && err.contains("telemetry.listen_address"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn a_password_in_kafka_properties_is_refused_without_showing_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let secret = unique("canary-kafka");
    let err = refused(&edited(dir.path(), |t| {
        t.replace(
            "[kafka]\n",
            &format!("[kafka]\nproperties = {{ \"sasl.password\" = \"{secret}\" }}\n"),
        )
    })?)
    .await?;
    ensure!(
        err.contains("kafka.properties.\"sasl.password\"") && err.contains("[kafka.security]"),
        "{err}"
    );
    ensure!(
        !err.contains(&secret),
        "the refusal shows the password: {err}"
    );
    Ok(())
}
