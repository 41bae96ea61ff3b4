//! A worker reading a broker that accepts only TLS with SASL SCRAM (and, here, a client
//! certificate), as managed Kafka services do: it ingests exactly once; refused credentials or
//! certificates leave it up, not ready and naming the problem; no password shows anywhere.
//! The broker is a private Tansu behind stunnel ([`sluice_tests::secure_kafka`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Result};
use sluice_tests::fleet::{deployment_on, wait_caught_up, Worker};
use sluice_tests::outage::wait_ready_state;
use sluice_tests::private::PrivateKafka;
use sluice_tests::secure_kafka::{ScramUser, SecureKafka};
use sluice_tests::web::{endpoint, get};
use sluice_tests::{describe, run_sluice, unique, Prepared, Stack, StorageKind};

const SETTLE: Duration = Duration::from_secs(120);

/// What a worker's `[kafka.security]` says, beyond the protocol: the SASL identity and the
/// files it reads.
#[derive(Clone)]
struct Identity<'a> {
    mechanism: &'a str,
    user: &'a str,
    password_file: &'a Path,
    ca: PathBuf,
    client_certificate: bool,
}

/// The deployment's config pointed at `bootstrap` with `identity`, as a new file `name`.
fn secured_config(
    d: &Prepared,
    name: &str,
    bootstrap: &str,
    kafka: &SecureKafka,
    identity: &Identity<'_>,
) -> Result<PathBuf> {
    let text = std::fs::read_to_string(&d.config)?.replace(
        &format!("bootstrap_servers = \"{}\"", d.kafka),
        &format!("bootstrap_servers = \"{bootstrap}\""),
    );
    let mut section = format!(
        "\n[kafka.security]\nprotocol = \"sasl_ssl\"\nsasl_mechanism = \"{}\"\nsasl_username = \"{}\"\nsasl_password = {{ file = {:?} }}\nca_file = {:?}\n",
        identity.mechanism,
        identity.user,
        identity.password_file.display().to_string(),
        identity.ca.display().to_string(),
    );
    if identity.client_certificate {
        section.push_str(&format!(
            "certificate_file = {:?}\nkey_file = {:?}\n",
            kafka.certs.path("client.pem").display().to_string(),
            kafka.certs.path("client.key").display().to_string(),
        ));
    }
    let path = d.dir.path().join(name);
    std::fs::write(&path, text + &section)?;
    Ok(path)
}

fn secret_file(d: &Prepared, name: &str, secret: &str) -> Result<PathBuf> {
    let path = d.dir.path().join(name);
    std::fs::write(&path, format!("{secret}\n"))?;
    Ok(path)
}

#[tokio::test(flavor = "multi_thread")]
async fn sasl_ssl_with_scram_and_a_client_certificate_ingests_exactly_once_and_shows_no_secret(
) -> Result<()> {
    // The topic and its events go in while the broker is still plain.
    let broker = PrivateKafka::launch().await?;
    let stack = Stack::from_env().with_kafka(&broker);
    let d = deployment_on(&stack, "kafka_tls", 2, 600, 100, |dir| {
        StorageKind::File(dir.join("data"))
    })
    .await?;
    let password = unique("canary-kafka-password");
    let viewer_password = unique("canary-kafka-viewer");
    let users = [
        ScramUser {
            name: "sluice",
            password: &password,
            mechanism: "scram512",
        },
        ScramUser {
            name: "viewer",
            password: &viewer_password,
            mechanism: "scram256",
        },
    ];
    let kafka = SecureKafka::secure(broker, &users, true).await?;
    let bootstrap = kafka.bootstrap();
    let password_file = secret_file(&d, "kafka-password", &password)?;
    let identity = Identity {
        mechanism: "SCRAM-SHA-512",
        user: "sluice",
        password_file: &password_file,
        ca: kafka.certs.path("ca.pem"),
        client_certificate: true,
    };
    let config = secured_config(&d, "secured.toml", &bootstrap, &kafka, &identity)?;
    let logs = d.dir.path().join("logs");
    let worker = Worker::spawn(&config, "w1", &[], &logs)?;
    wait_caught_up(&config, &d.topic, &d.ends(), SETTLE).await?;
    let (status, _) = get(endpoint(&worker).await?, "/readyz")?;
    ensure!(status == 200, "/readyz of the worker: {status}");

    // Another mechanism (SCRAM-SHA-256) for a reader: `sluice lag` through the same proxy.
    let viewer_file = secret_file(&d, "viewer-password", &viewer_password)?;
    let viewer = secured_config(
        &d,
        "viewer.toml",
        &bootstrap,
        &kafka,
        &Identity {
            mechanism: "SCRAM-SHA-256",
            user: "viewer",
            password_file: &viewer_file,
            ..identity.clone()
        },
    )?;
    let viewer_arg = viewer.display().to_string();
    let lag = run_sluice(&["lag", "--config", &viewer_arg, "--json"], &[], SETTLE).await?;
    let lag_out = String::from_utf8_lossy(&lag.stdout).to_string();
    ensure!(
        lag.status.success() && lag_out.contains(&d.topic),
        "sluice lag over SASL_SSL: {}",
        describe(&lag)
    );

    // Refused either way: a wrong password, no client certificate, a CA that did not sign the
    // broker's certificate. Each worker stays up, not ready, naming Kafka.
    let wrong_file = secret_file(&d, "wrong-password", "not-the-password")?;
    let refused_identities = [
        (
            "wrong-password",
            Identity {
                password_file: &wrong_file,
                ..identity.clone()
            },
        ),
        (
            "no-certificate",
            Identity {
                client_certificate: false,
                ..identity.clone()
            },
        ),
        (
            "untrusted-ca",
            Identity {
                ca: kafka.certs.path("other-ca.pem"),
                ..identity.clone()
            },
        ),
    ];
    let mut refused = Vec::new();
    for (name, who) in &refused_identities {
        let path = secured_config(&d, &format!("{name}.toml"), &bootstrap, &kafka, who)?;
        refused.push(Worker::spawn(&path, name, &[], &logs)?);
    }
    let mut addrs = Vec::new();
    for w in &refused {
        addrs.push(endpoint(w).await?);
    }
    wait_ready_state(&addrs, 503, "kafka unavailable").await?;
    for (w, a) in refused.iter_mut().zip(&addrs) {
        ensure!(w.is_running(), "a refused worker exited");
        let (_, body) = get(*a, "/readyz")?;
        ensure!(
            body.contains("needs an operator") && body.contains("authentication with Kafka"),
            "/readyz of a refused worker: {body}"
        );
    }

    let mut printed = lag_out + &String::from_utf8_lossy(&lag.stderr);
    for w in refused.into_iter().chain([worker]) {
        printed.push_str(&w.terminate(Duration::from_secs(60)).await?);
    }
    for secret in [&password, &viewer_password] {
        ensure!(
            !printed.contains(secret.as_str()),
            "a worker's log or sluice lag shows a Kafka password"
        );
    }
    ensure!(
        !kafka.logs().is_empty(),
        "the broker and proxy printed nothing"
    );
    // The deployment's own config points at the plain broker, now gone: the oracle reads
    // ZooKeeper and storage through the secured one.
    sluice_tests::verify_exactly_once(&config, &d.events, &d.located).await
}
