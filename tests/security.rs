//! Security of a running worker, as a separate process against the shared stack: the HTTP
//! endpoint's token, ZooKeeper's digest authentication and ACLs, ZooKeeper over TLS (a private
//! server), and secrets that never show up in what the worker prints or serves.

use std::time::Duration;

use anyhow::{ensure, Result};
use base64::Engine as _;
use sluice_tests::certs::Certs;
use sluice_tests::fleet::{deployment, deployment_on, spawn, tail, wait_caught_up, Worker};
use sluice_tests::outage::wait_ready_state;
use sluice_tests::private::PrivateZk;
use sluice_tests::web::{endpoint, get_authorized};
use sluice_tests::{describe, run_sluice, unique, zk_root, Prepared, Stack, StorageKind};

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

/// `[coordination.auth]` of a deployment, its passwords in files under its directory named
/// after `tag`.
fn zookeeper_auth(
    d: &Prepared,
    tag: &str,
    user: &str,
    password: &str,
    viewer: Option<(&str, &str)>,
) -> Result<String> {
    let file = |name: &str, secret: &str| -> Result<String> {
        let path = d.dir.path().join(format!("{tag}-{name}"));
        std::fs::write(&path, format!("{secret}\n"))?;
        Ok(path.display().to_string())
    };
    let mut section = format!(
        "\n[coordination.auth]\nuser = \"{user}\"\npassword = {{ file = {:?} }}\n",
        file(&format!("{user}-password"), password)?
    );
    if let Some((name, secret)) = viewer {
        section.push_str(&format!(
            "read_only_user = \"{name}\"\nread_only_password = {{ file = {:?} }}\n",
            file(&format!("{name}-password"), secret)?
        ));
    }
    Ok(section)
}

/// The deployment's config with `auth` instead of its own `[coordination.auth]`, as a new file.
fn config_with(d: &Prepared, name: &str, auth: &str) -> Result<std::path::PathBuf> {
    let text = std::fs::read_to_string(&d.config)?;
    let base = text.split("\n[coordination.auth]").next().unwrap_or(&text);
    let path = d.dir.path().join(name);
    std::fs::write(&path, format!("{base}{auth}"))?;
    Ok(path)
}

#[tokio::test(flavor = "multi_thread")]
async fn digest_authentication_keeps_the_registry_to_the_deployment_and_its_readers() -> Result<()>
{
    let mut d = deployment("zk_auth", 2, 600, 100).await?;
    let password = unique("canary-zk-password");
    let viewer_password = unique("canary-viewer-password");
    let auth = zookeeper_auth(
        &d,
        "main",
        "sluice",
        &password,
        Some(("viewer", &viewer_password)),
    )?;
    d.edit_config(|t| t + &auth)?;
    let worker = spawn(&d, "w1")?;
    wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;

    // An anonymous session sees nothing of it.
    let stack = Stack::from_env();
    let anonymous = zookeeper_client::Client::connect(&stack.zk).await?;
    let root = zk_root(&d.topic);
    for path in [root.clone(), format!("{root}/members")] {
        let listed = anonymous.list_children(&path).await;
        ensure!(
            matches!(listed, Err(zookeeper_client::Error::NoAuth)),
            "an anonymous session listed {path}: {listed:?}"
        );
    }

    // The read-only identity reports, and cannot run a worker.
    let viewer = config_with(
        &d,
        "viewer.toml",
        &zookeeper_auth(&d, "viewer", "viewer", &viewer_password, None)?,
    )?;
    let viewer_arg = viewer.display().to_string();
    let lag = run_sluice(&["lag", "--config", &viewer_arg], &[], SETTLE).await?;
    ensure!(
        lag.status.success(),
        "sluice lag as the viewer: {}",
        describe(&lag)
    );
    let check = run_sluice(
        &["check", "--config", &viewer_arg, "--connect"],
        &[],
        SETTLE,
    )
    .await?;
    let said = String::from_utf8_lossy(&check.stdout).to_string();
    ensure!(
        check.status.success() && said.contains("read only") && !said.contains("warning"),
        "sluice check as the viewer: {}",
        describe(&check)
    );
    let logs = d.dir.path().join("logs");
    let refused = Worker::spawn(&viewer, "viewer-worker", &[], &logs)?;
    // A wrong password is refused the same way: named, not ready, not exiting.
    let wrong = config_with(
        &d,
        "wrong.toml",
        &zookeeper_auth(&d, "wrong", "sluice", "not-the-password", None)?,
    )?;
    let mut wrong_worker = Worker::spawn(&wrong, "wrong-worker", &[], &logs)?;
    let addrs = vec![endpoint(&refused).await?, endpoint(&wrong_worker).await?];
    wait_ready_state(&addrs, 503, "refuses").await?;
    ensure!(
        wrong_worker.is_running(),
        "the worker with a wrong password exited"
    );
    for a in &addrs {
        let (_, body) = get_authorized(*a, "/readyz", None)?;
        ensure!(body.contains("needs an operator"), "/readyz: {body}");
    }

    d.produce_more(300).await?;
    wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;
    let mut logs_text = String::new();
    for w in [worker, refused, wrong_worker] {
        logs_text.push_str(&w.terminate(Duration::from_secs(60)).await?);
    }
    for secret in [&password, &viewer_password] {
        ensure!(
            !logs_text.contains(secret.as_str()),
            "a log shows a password"
        );
    }
    ensure!(
        !said.contains(&viewer_password),
        "sluice check shows the password"
    );
    d.verify().await
}

/// `[coordination.tls]` of a deployment: the test CA, and the client certificate if `client`.
fn zookeeper_tls(certs: &Certs, client: bool) -> String {
    let path = |name: &str| certs.path(name).display().to_string();
    let mut section = format!("\n[coordination.tls]\nca_file = {:?}\n", path("ca.pem"));
    if client {
        section.push_str(&format!(
            "certificate_file = {:?}\nkey_file = {:?}\n",
            path("client.pem"),
            path("client.key")
        ));
    }
    section
}

#[tokio::test(flavor = "multi_thread")]
async fn zookeeper_over_tls_with_a_client_certificate_and_required_authentication() -> Result<()> {
    let certs = Certs::make()?;
    // Authentication enforced: a session that does not authenticate is closed at its first
    // request.
    let zk = PrivateZk::launch_tls(
        &certs,
        "ssl.clientAuth=need\nenforce.auth.enabled=true\nenforce.auth.schemes=digest\n",
    )
    .await?;
    let d = deployment("zk_tls", 2, 600, 100).await?;
    let password = unique("canary-zk-tls-password");
    let auth = zookeeper_auth(&d, "tls", "sluice", &password, None)?;
    let connect = zk.tls_connect()?;
    let base = std::fs::read_to_string(&d.config)?.replace(
        &format!("zookeeper_connect = \"{}\"", Stack::from_env().zk),
        &format!("zookeeper_connect = \"{connect}\""),
    );
    let write = |name: &str, text: String| -> Result<std::path::PathBuf> {
        let path = d.dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    };
    std::fs::write(
        &d.config,
        format!("{base}{auth}{}", zookeeper_tls(&certs, true)),
    )?;
    let worker = spawn(&d, "w1")?;
    wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;

    // Each of these is refused: plain TCP to the TLS port, TLS without the client
    // certificate, TLS without authentication, a CA file that is not PEM.
    let logs = d.dir.path().join("logs");
    let not_pem = d.dir.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "not a certificate\n")?;
    let bad_ca = format!(
        "{base}{auth}\n[coordination.tls]\nca_file = {:?}\n",
        not_pem.display().to_string()
    );
    let refused_configs = [
        ("bad-ca", bad_ca),
        ("plain", format!("{base}{auth}")),
        (
            "no-certificate",
            format!("{base}{auth}{}", zookeeper_tls(&certs, false)),
        ),
        (
            "anonymous",
            format!("{base}{}", zookeeper_tls(&certs, true)),
        ),
    ];
    let mut refused = Vec::new();
    for (name, text) in refused_configs {
        let path = write(&format!("{name}.toml"), text)?;
        refused.push(Worker::spawn(&path, name, &[], &logs)?);
    }
    let mut addrs = Vec::new();
    for w in &refused {
        addrs.push(endpoint(w).await?);
    }
    wait_ready_state(&addrs, 503, "zookeeper unavailable").await?;
    for w in &mut refused {
        ensure!(w.is_running(), "a refused worker exited");
    }
    // The unusable CA file is the operator's to fix, and said so.
    wait_ready_state(&addrs[..1], 503, "needs an operator").await?;
    let mut printed = String::new();
    for w in refused.into_iter().chain([worker]) {
        printed.push_str(&w.terminate(Duration::from_secs(60)).await?);
    }
    ensure!(!printed.contains(&password), "a log shows the password");
    d.verify().await
}

/// Every secret at once (ZooKeeper password, S3 secret key, HTTP token), a worker logging at
/// trace level from every crate, and every way Sluice shows things: none shows a secret.
#[tokio::test(flavor = "multi_thread")]
async fn no_secret_shows_in_trace_logs_the_commands_or_the_http_endpoint() -> Result<()> {
    let stack = Stack::from_env();
    let d = deployment_on(&stack, "secrets", 2, 400, 100, |_| StorageKind::S3 {
        prefix: unique("secrets"),
    })
    .await?;
    let zk_password = unique("canary-zk");
    let token = unique("canary-token");
    let token_file = d.dir.path().join("token");
    std::fs::write(&token_file, &token)?;
    let auth = zookeeper_auth(&d, "all", "sluice", &zk_password, None)?;
    d.edit_config(|t| {
        t.replace(
            "refresh_ms = 500\n",
            &format!(
                "refresh_ms = 500\ntoken = {{ file = {:?} }}\n",
                token_file.display().to_string()
            ),
        ) + &auth
    })?;
    let worker = Worker::spawn(
        &d.config,
        "w1",
        &[("SLUICE_LOG", "trace")],
        &d.dir.path().join("logs"),
    )?;
    let addr = endpoint(&worker).await?;
    wait_caught_up(&d.config, &d.topic, &d.ends(), SETTLE).await?;

    let mut shown = String::new();
    let bearer = format!("Bearer {token}");
    for path in ["/api/state", "/metrics", "/readyz", "/"] {
        let (status, body) = get_authorized(addr, path, Some(&bearer))?;
        ensure!(status == 200, "{path}: {status}");
        shown.push_str(&body);
    }
    let config = d.config.display().to_string();
    for args in [
        vec!["check", "--config", &config],
        vec!["check", "--config", &config, "--connect"],
        vec!["lag", "--config", &config],
        vec!["members", "--config", &config],
    ] {
        let out = run_sluice(&args, &[], SETTLE).await?;
        ensure!(out.status.success(), "sluice {args:?}: {}", describe(&out));
        shown.push_str(&String::from_utf8_lossy(&out.stdout));
        shown.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    let log = worker.terminate(Duration::from_secs(60)).await?;
    ensure!(
        log.contains("TRACE"),
        "the worker did not log at trace level"
    );
    shown.push_str(&log);
    for (name, secret) in [
        ("the ZooKeeper password", zk_password.as_str()),
        ("the HTTP token", token.as_str()),
        ("the S3 secret key", stack.s3_secret_key.as_str()),
    ] {
        if let Some(at) = shown.find(secret) {
            let from = at.saturating_sub(300);
            anyhow::bail!(
                "{name} shows: ...{}...",
                &shown[from..(at + secret.len() + 100).min(shown.len())]
            );
        }
    }
    d.verify().await
}
