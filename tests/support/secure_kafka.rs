//! A broker that talks only TLS and SASL, as managed Kafka services do: a private Tansu broker
//! (which cannot serve TLS itself) with SCRAM users and `--authentication`, behind stunnel
//! terminating TLS, with certificates of a test CA ([`Certs`]). `scripts/stack.sh start`
//! installs stunnel.
//!
//! Tansu takes users only from a running broker, and requires authentication only from a
//! restart on: a test prepares its topic and events on the plain broker first
//! ([`crate::private::PrivateKafka`]), then secures it ([`SecureKafka::secure`]).

use std::ffi::OsString;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::certs::Certs;
use crate::private::{free_ports, tools_dir, PrivateKafka, PrivateServer};

/// A SCRAM user of the broker.
pub struct ScramUser<'a> {
    pub name: &'a str,
    pub password: &'a str,
    /// `scram256` or `scram512`, as `tansu user create --mechanism` names them.
    pub mechanism: &'a str,
}

/// The broker behind its TLS proxy. Both are killed when dropped.
pub struct SecureKafka {
    pub broker: PrivateKafka,
    pub proxy: PrivateServer,
    pub certs: Certs,
}

impl SecureKafka {
    /// Adds `users` to `broker`, restarts it requiring SASL and advertising the proxy's address,
    /// and starts the proxy in front of it, requiring a client certificate signed by the test
    /// CA if `mutual_tls`.
    pub async fn secure(
        mut broker: PrivateKafka,
        users: &[ScramUser<'_>],
        mutual_tls: bool,
    ) -> Result<SecureKafka> {
        for user in users {
            add_user(broker.port(), user)?;
        }
        let certs = Certs::make()?;
        let proxy_port = free_ports(1)?[0];
        broker.restart_as(proxy_port, true).await?;
        let mut proxy = stunnel(&certs, proxy_port, broker.port(), mutual_tls)?;
        proxy.start().await?;
        Ok(SecureKafka {
            broker,
            proxy,
            certs,
        })
    }

    /// The `bootstrap_servers` of a Kafka config: the proxy.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.proxy.port())
    }

    /// What the broker and the proxy printed.
    pub fn logs(&self) -> String {
        format!("{}\n{}", self.broker.log_text(), self.proxy.log_text())
    }
}

fn add_user(broker_port: u16, user: &ScramUser<'_>) -> Result<()> {
    let out = Command::new(tools_dir().join("bin/tansu"))
        .args(["user", "create", "--broker"])
        .arg(format!("tcp://127.0.0.1:{broker_port}"))
        .args(["--mechanism", user.mechanism, user.name, user.password])
        .output()
        .context("running tansu user create")?;
    ensure!(
        out.status.success(),
        "tansu user create {}: {}",
        user.name,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// stunnel accepting TLS on `port` and forwarding the plain stream to the broker.
fn stunnel(certs: &Certs, port: u16, broker: u16, mutual_tls: bool) -> Result<PrivateServer> {
    let dir = tempfile::tempdir()?;
    let path = |p: PathBuf| p.display().to_string();
    let mut conf = format!(
        "foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{broker}\ncert = {}\nkey = {}\n",
        path(certs.path("server.pem")),
        path(certs.path("server.key")),
    );
    if mutual_tls {
        conf.push_str(&format!(
            "CAfile = {}\nverifyChain = yes\nrequireCert = yes\n",
            path(certs.path("ca.pem"))
        ));
    }
    let conf_path = dir.path().join("stunnel.conf");
    std::fs::write(&conf_path, conf)?;
    let args: Vec<OsString> = vec![conf_path.into()];
    Ok(PrivateServer::other(
        "stunnel",
        stunnel_program(),
        args,
        port,
        listening,
        dir,
    ))
}

/// Debian's stunnel4 package installs `stunnel4` (and `stunnel` as a link to it).
fn stunnel_program() -> PathBuf {
    let debian = Path::new("/usr/bin/stunnel4");
    if debian.exists() {
        debian.to_path_buf()
    } else {
        PathBuf::from("stunnel")
    }
}

/// stunnel listens once its configuration is loaded and its certificates read.
fn listening(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}
