//! ZooKeeper, Kafka (Tansu) and S3 servers private to one test, which it may kill and restart mid-run: every
//! test shares the servers of `scripts/stack.sh`, so stopping one of those would fail the others.
//!
//! Each is the program `scripts/stack.sh` runs, started the way it starts it (same binary or jar,
//! arguments, credentials, bucket layout and ZooKeeper settings), but on a free loopback port and
//! with its state in a temporary directory of its own. A restart reuses the port and the state,
//! as a real server restart would, so clients find it where they left it. [`Stack::with_zk`] and
//! [`Stack::with_s3`] and [`Stack::with_kafka`] point a deployment at them
//! ([`crate::prepare_on`]).
//!
//! They are killed when dropped, which a panicking test does too; a test process that is itself
//! killed leaves them running, as it leaves its workers.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};

use crate::certs::Certs;
use crate::fleet::tail;
use crate::Stack;

const HOST: &str = "127.0.0.1";
/// How long a start may take before it counts as failed: a JVM on a loaded 2-core CI machine
/// is slow, but not this slow.
const READY_LIMIT: Duration = Duration::from_secs(60);
const PROBE_EVERY: Duration = Duration::from_millis(50);

/// ZooKeeper from Debian's package, as in `scripts/stack.sh`.
const ZK_JAR: &str = "/usr/share/java/zookeeper.jar";
/// The SLF4J binding `scripts/stack.sh` adds so that ZooKeeper logs at all.
const ZK_LOG_JARS: &str = "/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar";

/// Debian's netty codec, from the `libnetty-java` package ZooKeeper depends on.
const NETTY_CODEC_JAR: &str = "/usr/share/java/netty-codec.jar";

/// A private s3s-fs server: the shared stack's bucket and credentials, so a config written for
/// the shared S3 works against it with only the endpoint changed ([`Stack::with_s3`]).
pub struct PrivateS3 {
    server: PrivateServer,
}

impl PrivateS3 {
    /// Starts a server on a free port with an empty bucket, and waits until it serves.
    pub async fn launch() -> Result<PrivateS3> {
        let stack = Stack::from_env();
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("s3");
        // s3s-fs serves each directory under its root as a bucket.
        std::fs::create_dir_all(data.join(&stack.s3_bucket))?;
        let port = free_port()?;
        let args: Vec<OsString> = vec![
            "--host".into(),
            HOST.into(),
            "--port".into(),
            port.to_string().into(),
            "--access-key".into(),
            stack.s3_access_key.into(),
            "--secret-key".into(),
            stack.s3_secret_key.into(),
            data.clone().into(),
        ];
        let mut server = PrivateServer {
            name: "s3s-fs",
            program: tools_dir().join("bin/s3s-fs"),
            args,
            cwd: data,
            port,
            log: dir.path().join("s3s-fs.log"),
            probe: s3_ready,
            child: None,
            dir,
        };
        server.start().await?;
        Ok(PrivateS3 { server })
    }

    /// The `aws_endpoint` of a storage config.
    pub fn endpoint(&self) -> String {
        format!("http://{HOST}:{}", self.server.port)
    }
}

/// A private Tansu broker on its sqlite engine (as the shared stack's), so that what was
/// produced survives a restart.
pub struct PrivateKafka {
    server: PrivateServer,
}

impl PrivateKafka {
    /// Starts a broker on a free port with empty storage, and waits until it serves.
    pub async fn launch() -> Result<PrivateKafka> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let args = tansu_args(port, port, false);
        let mut server = PrivateServer {
            name: "tansu",
            program: tools_dir().join("bin/tansu"),
            args,
            cwd: dir.path().to_path_buf(),
            port,
            log: dir.path().join("tansu.log"),
            probe: kafka_ready,
            child: None,
            dir,
        };
        server.start().await?;
        Ok(PrivateKafka { server })
    }

    /// The `bootstrap_servers` of a Kafka config.
    pub fn bootstrap(&self) -> String {
        format!("{HOST}:{}", self.server.port)
    }

    /// Restarts it on its port and state, advertising `advertised` as its address (a proxy in
    /// front of it) and, with `authentication`, requiring SASL from every client.
    pub(crate) async fn restart_as(&mut self, advertised: u16, authentication: bool) -> Result<()> {
        self.server.stop().await?;
        self.server.args = tansu_args(self.server.port, advertised, authentication);
        self.server.start().await?;
        Ok(())
    }
}

/// Tansu's command line: listening on `port`, its state in a sqlite file in its working
/// directory.
fn tansu_args(port: u16, advertised: u16, authentication: bool) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "broker".into(),
        "--listener-url".into(),
        format!("tcp://{HOST}:{port}").into(),
        "--advertised-listener-url".into(),
        format!("tcp://{HOST}:{advertised}").into(),
        "--storage-engine".into(),
        "sqlite://tansu.db".into(),
    ];
    if authentication {
        args.push("--authentication".into());
    }
    args
}

/// A private single-node ZooKeeper with the shared stack's settings: in particular its 500 ms
/// tick, with which sessions of a few seconds are allowed and expire on time.
pub struct PrivateZk {
    server: PrivateServer,
    /// Its `secureClientPort`, if it serves TLS.
    tls_port: Option<u16>,
}

impl PrivateZk {
    /// Starts a server on a free port with an empty data dir, and waits until it serves.
    pub async fn launch() -> Result<PrivateZk> {
        let mut server = zookeeper_server(tempfile::tempdir()?, free_port()?, "")?;
        server.start().await?;
        Ok(PrivateZk {
            server,
            tls_port: None,
        })
    }

    /// A server that also serves TLS on a port of its own ([`PrivateZk::tls_connect`]) with
    /// `certs`' server certificate, trusting `certs`' CA for client certificates; `extra`
    /// lines go into its `zoo.cfg` (`ssl.clientAuth=need`, `enforce.auth.enabled=true`, ...).
    /// The plain port stays open for the readiness probe.
    pub async fn launch_tls(certs: &Certs, extra: &str) -> Result<PrivateZk> {
        let ports = free_ports(2)?;
        let tls = format!(
            "secureClientPort={}\n\
             serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory\n\
             ssl.keyStore.location={}\n\
             ssl.keyStore.type=PEM\n\
             ssl.trustStore.location={}\n\
             ssl.trustStore.type=PEM\n\
             {extra}",
            ports[1],
            certs.path("server-bundle.pem").display(),
            certs.path("ca.pem").display(),
        );
        let mut server = zookeeper_server(tempfile::tempdir()?, ports[0], &tls)?;
        server.start().await?;
        Ok(PrivateZk {
            server,
            tls_port: Some(ports[1]),
        })
    }

    /// The `zookeeper_connect` of its TLS port, with `[coordination.tls]`.
    pub fn tls_connect(&self) -> Result<String> {
        let port = self.tls_port.context("this ZooKeeper serves no TLS")?;
        Ok(format!("{HOST}:{port}"))
    }

    /// The `zookeeper_connect` of a coordination config.
    pub fn connect(&self) -> String {
        format!("{HOST}:{}", self.server.port)
    }

    /// A session of its own (4 s timeout), to read and write znodes directly.
    pub async fn client(&self) -> Result<zookeeper_client::Client> {
        let cluster = self.connect();
        let connect = zookeeper_client::Client::connector()
            .with_session_timeout(Duration::from_secs(4))
            .connect(&cluster);
        tokio::time::timeout(Duration::from_secs(10), connect)
            .await
            .context("the private ZooKeeper did not answer within 10 s")?
            .context("connecting to the private ZooKeeper")
    }
}

/// A ZooKeeper server with its state in `dir`, serving clients on `port`, configured as
/// `scripts/stack.sh` configures it plus `extra` (lines of `zoo.cfg`: an ensemble's members);
/// not started.
pub(crate) fn zookeeper_server(
    dir: tempfile::TempDir,
    port: u16,
    extra: &str,
) -> Result<PrivateServer> {
    let conf = dir.path().join("conf");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&conf)?;
    std::fs::create_dir_all(&data)?;
    // What scripts/stack.sh writes, but for the port and dataDir. Whitelisting `stat` enables
    // `srvr` too, which the readiness probe asks.
    let zoo_cfg = format!(
        "tickTime=500\n\
         dataDir={data}\n\
         clientPort={port}\n\
         clientPortAddress={HOST}\n\
         admin.enableServer=false\n\
         4lw.commands.whitelist=ruok,stat,mntr\n\
         maxSessionTimeout=120000\n\
         autopurge.snapRetainCount=3\n\
         autopurge.purgeInterval=1\n\
         {extra}",
        data = data.display()
    );
    std::fs::write(conf.join("zoo.cfg"), zoo_cfg)?;
    // The conf dir is first on the classpath, so log4j finds this file.
    std::fs::write(
        conf.join("log4j.properties"),
        "log4j.rootLogger=INFO, CONSOLE\n\
         log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender\n\
         log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout\n\
         log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} %-5p [%t:%C{1}@%L] - %m%n\n",
    )?;
    let mut classpath = format!("{}:{ZK_JAR}:{ZK_LOG_JARS}", conf.display());
    // The Netty connection factory (which TLS needs) uses netty-codec, which zookeeper.jar's
    // manifest leaves off its class path: without it the TLS handshake fails with
    // NoClassDefFoundError.
    if Path::new(NETTY_CODEC_JAR).exists() {
        classpath.push(':');
        classpath.push_str(NETTY_CODEC_JAR);
    }
    let args: Vec<OsString> = vec![
        "-Xmx512m".into(),
        "-cp".into(),
        classpath.into(),
        "org.apache.zookeeper.server.quorum.QuorumPeerMain".into(),
        conf.join("zoo.cfg").into(),
    ];
    Ok(PrivateServer {
        name: "zookeeper",
        program: "java".into(),
        args,
        cwd: dir.path().to_path_buf(),
        port,
        log: dir.path().join("zookeeper.log"),
        probe: zk_ready,
        child: None,
        dir,
    })
}

impl Stack {
    /// This stack with `zk` as its ZooKeeper.
    #[must_use]
    pub fn with_zk(mut self, zk: &PrivateZk) -> Stack {
        self.zk = zk.connect();
        self
    }

    /// This stack with `kafka` as its broker.
    #[must_use]
    pub fn with_kafka(mut self, kafka: &PrivateKafka) -> Stack {
        self.kafka = kafka.bootstrap();
        self
    }

    /// This stack with `s3` as its S3 server (same bucket and credentials).
    #[must_use]
    pub fn with_s3(mut self, s3: &PrivateS3) -> Stack {
        self.s3_endpoint = s3.endpoint();
        self
    }
}

/// One server process: how to start it, and the running child, killed on drop. A
/// [`PrivateS3`] or [`PrivateZk`] is one of these (`Deref`), with what is particular to it.
pub struct PrivateServer {
    name: &'static str,
    program: PathBuf,
    args: Vec<OsString>,
    cwd: PathBuf,
    port: u16,
    /// Appended to by every start.
    log: PathBuf,
    /// Blocking: true once the server answers on the port over its own protocol.
    probe: fn(u16) -> bool,
    child: Option<Child>,
    /// Its state and log; dropped after `child` (fields drop in order), so the process is
    /// killed first.
    dir: tempfile::TempDir,
}

impl PrivateServer {
    /// A server of another kind (a TLS proxy), its state and log in `dir`; not started yet.
    pub(crate) fn other(
        name: &'static str,
        program: PathBuf,
        args: Vec<OsString>,
        port: u16,
        probe: fn(u16) -> bool,
        dir: tempfile::TempDir,
    ) -> PrivateServer {
        PrivateServer {
            name,
            program,
            args,
            cwd: dir.path().to_path_buf(),
            port,
            log: dir.path().join(format!("{name}.log")),
            probe,
            child: None,
            dir,
        }
    }

    /// Starts it (again: on the same port and state, as a real restart), and waits until it
    /// serves; returns how long that took. A restarted ZooKeeper reloads its snapshot and
    /// transaction log: znodes survive, and sessions that reconnect within their timeout.
    pub async fn start(&mut self) -> Result<Duration> {
        let started = Instant::now();
        self.spawn()?;
        self.wait_serving(started).await?;
        Ok(started.elapsed())
    }

    /// Starts the process, without waiting for it to serve (an ensemble's members serve only
    /// once a quorum of them runs).
    pub(crate) fn spawn(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("{} on port {} is already running", self.name, self.port);
        }
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        writeln!(
            log,
            "\n===== {}: starting {} {:?}",
            chrono::Utc::now().to_rfc3339(),
            self.program.display(),
            self.args
        )?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (`scripts/stack.sh start` installs it)",
                    self.program.display()
                )
            })?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the spawned process serves, failing if it exits or takes longer than
    /// [`READY_LIMIT`] from `started`.
    pub(crate) async fn wait_serving(&mut self, started: Instant) -> Result<()> {
        loop {
            let child = self
                .child
                .as_mut()
                .with_context(|| format!("{} is not running", self.name))?;
            if let Some(status) = child.try_wait()? {
                self.child = None;
                bail!(
                    "{} exited during startup ({status}); its log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if self.serves().await? {
                return Ok(());
            }
            if started.elapsed() > READY_LIMIT {
                bail!(
                    "{} on port {} not ready after {READY_LIMIT:?}; its log:\n{}",
                    self.name,
                    self.port,
                    self.log_tail()
                );
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }

    /// Whether it answers on its port over its own protocol now.
    pub async fn serves(&self) -> Result<bool> {
        let (probe, port) = (self.probe, self.port);
        Ok(tokio::task::spawn_blocking(move || probe(port)).await?)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// kill -9, and waits until the process is gone: connections are refused from then on.
    pub async fn stop(&mut self) -> Result<()> {
        let mut child = self
            .child
            .take()
            .with_context(|| format!("{} on port {} is not running", self.name, self.port))?;
        // SIGKILL, then waits for the exit, so the port is closed when this returns.
        child.kill().await?;
        Ok(())
    }

    /// The directory holding its state and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its output so far, across restarts.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        tail(
            &std::fs::read_to_string(&self.log).unwrap_or_default(),
            4000,
        )
    }
}

macro_rules! deref_to_server {
    ($t:ty) => {
        impl std::ops::Deref for $t {
            type Target = PrivateServer;
            fn deref(&self) -> &PrivateServer {
                &self.server
            }
        }
        impl std::ops::DerefMut for $t {
            fn deref_mut(&mut self) -> &mut PrivateServer {
                &mut self.server
            }
        }
    };
}
deref_to_server!(PrivateS3);
deref_to_server!(PrivateZk);
deref_to_server!(PrivateKafka);

/// The cargo install root of `scripts/stack.sh`, where its s3s-fs and tansu are.
pub(crate) fn tools_dir() -> PathBuf {
    std::env::var_os("SLUICE_TOOLS_DIR").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/sluice/tools"),
        PathBuf::from,
    )
}

/// A loopback port nothing listens on. Linux hands out ports for `bind(0)` from the other half
/// of the ephemeral range than the one `connect()` takes first, so while the server is down a
/// client retrying is unlikely to take its port.
pub fn free_port() -> Result<u16> {
    Ok(free_ports(1)?[0])
}

/// `count` distinct free ports: every listener is held until all are bound, since a port
/// released by one bind may be handed out again by the next.
pub(crate) fn free_ports(count: usize) -> Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind((HOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Sends `request` and reads the answer to EOF, or what came within 3 s.
pub(crate) fn ask(port: u16, request: &[u8]) -> Option<String> {
    ask_bytes(port, request).map(|a| String::from_utf8_lossy(&a).into_owned())
}

/// [`ask`], the answer as bytes.
fn ask_bytes(port: u16, request: &[u8]) -> Option<Vec<u8>> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    stream.write_all(request).ok()?;
    let mut answer = Vec::new();
    // A timeout still leaves what was read in `answer`.
    let _ = stream.read_to_end(&mut answer);
    Some(answer)
}

/// `srvr` answers with the version and mode only once the server serves (until then: "This
/// ZooKeeper instance is not currently serving requests"), where `ruok` says `imok` as soon as
/// the port is open, before the data is loaded.
fn zk_ready(port: u16) -> bool {
    ask(port, b"srvr").is_some_and(|a| a.starts_with("Zookeeper version:"))
}

/// A Kafka ApiVersions request (v0, correlation id 1) answered proves the broker serves: the
/// answer repeats the correlation id after its length.
fn kafka_ready(port: u16) -> bool {
    // Length 10: api key 18, version 0, correlation id 1, client id null (-1).
    let request = [0, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 1, 0xff, 0xff];
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let answered = || -> std::io::Result<[u8; 8]> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        stream.write_all(&request)?;
        // The broker keeps the connection open: read just the length and correlation id.
        let mut head = [0u8; 8];
        stream.read_exact(&mut head)?;
        Ok(head)
    };
    answered().is_ok_and(|head| head[4..8] == [0, 0, 0, 1])
}

/// Any HTTP status line proves s3s-fs serves (an unsigned request gets an S3 error document).
fn s3_ready(port: u16) -> bool {
    let request = format!("GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n");
    ask(port, request.as_bytes()).is_some_and(|a| a.starts_with("HTTP/"))
}
