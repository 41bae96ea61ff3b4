//! Security of a running worker, as a separate process against the shared stack: the HTTP
//! endpoint's token, and secrets that never show up in what the worker prints or serves.

use std::time::Duration;

use anyhow::{ensure, Result};
use base64::Engine as _;
use sluice_tests::fleet::{deployment, spawn, tail, wait_caught_up};
use sluice_tests::unique;
use sluice_tests::web::{endpoint, get_authorized};

const SETTLE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn the_http_token_guards_the_dashboard_and_the_api_and_leaves_health_and_metrics_open(
) -> Result<()> {
    let d = deployment("http_token", 2, 400, 100).await?;
    let token = unique("canary-token");
    let token_file = d.dir.path().join("http-token");
    std::fs::write(&token_file, format!("{token}\n"))?;
    let with_token = |covers: bool| {
        let file = token_file.display().to_string();
        move |t: String| {
            t.replace(
                "refresh_ms = 500\n",
                &format!(
                    "refresh_ms = 500\ntoken = {{ file = {file:?} }}\ntoken_covers_health_and_metrics = {covers}\n"
                ),
            )
        }
    };
    d.edit_config(with_token(false))?;
    let worker = spawn(&d, "w1")?;
    let addr = endpoint(&worker).await?;
    wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;

    let bearer = format!("Bearer {token}");
    let basic = |password: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("operator:{password}"))
        )
    };
    for path in ["/", "/api/state"] {
        for wrong in [None, Some("Bearer nope".to_string()), Some(basic("nope"))] {
            let (status, body) = get_authorized(addr, path, wrong.as_deref())?;
            ensure!(status == 401, "{path} with {wrong:?}: {status} {body}");
            ensure!(
                !body.contains(&token),
                "the refusal shows the token: {body}"
            );
        }
        for right in [&bearer, &basic(&token)] {
            let (status, body) = get_authorized(addr, path, Some(right))?;
            ensure!(status == 200, "{path} with the token: {status} {body}");
        }
    }
    let (_, state) = get_authorized(addr, "/api/state", Some(&bearer))?;
    ensure!(state.contains(r#""worker":"w1""#), "/api/state: {state}");
    for path in ["/metrics", "/healthz", "/readyz"] {
        let (status, body) = get_authorized(addr, path, None)?;
        ensure!(status == 200, "{path} without the token: {status} {body}");
    }
    let log = worker.terminate(Duration::from_secs(60)).await?;
    ensure!(
        !log.contains(&token),
        "the worker's log shows the token:\n{}",
        tail(&log, 3000)
    );

    // Covering health and metrics too.
    d.edit_config(|t| {
        t.replace(
            "token_covers_health_and_metrics = false",
            "token_covers_health_and_metrics = true",
        )
    })?;
    // Another id: a worker's log file (where its address is read from) is per id.
    let worker = spawn(&d, "w2")?;
    let addr = endpoint(&worker).await?;
    for path in ["/metrics", "/healthz", "/readyz"] {
        let (status, _) = get_authorized(addr, path, None)?;
        ensure!(status == 401, "{path} without the token: {status}");
        let (status, body) = get_authorized(addr, path, Some(&bearer))?;
        ensure!(
            status == 200 || (path == "/readyz" && status == 503),
            "{path} with the token: {status} {body}"
        );
    }
    worker.terminate(Duration::from_secs(60)).await?;
    d.verify().await
}
