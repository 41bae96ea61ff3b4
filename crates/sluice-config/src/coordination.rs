//! `[coordination]`: where leases, offsets and the part registry live.

use std::path::PathBuf;

use serde::Deserialize;

use crate::tls_files::{client_certificate_pair, readable_files};
use crate::{invalid, ConfigError, Secret};

/// Which coordination backend holds leases, offsets and the part registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CoordinationBackend {
    /// A ZooKeeper ensemble: for fleets.
    Zookeeper,
    /// A single-process store in a local directory: for a laptop and unit tests.
    Embedded,
}

/// Where leases, offsets and the part registry live.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinationConfig {
    /// `zookeeper` or `embedded`. Default: `zookeeper`.
    pub backend: CoordinationBackend,
    /// ZooKeeper connect string, `host:port[,host:port...]`. Default: `127.0.0.1:2181`.
    pub zookeeper_connect: String,
    /// Root znode of this Sluice deployment; several deployments can share one ensemble.
    /// Default: `/sluice`.
    pub root: String,
    /// ZooKeeper session timeout; a crashed worker's leases are freed after this long.
    /// Default: 10000 (10 s).
    pub session_timeout_ms: u64,
    /// How long to try to reach ZooKeeper at start-up before failing. Default: 10000 (10 s).
    pub connect_timeout_ms: u64,
    /// Directory of the embedded backend's state file. Default: `sluice-state` (relative to
    /// the working directory).
    pub embedded_dir: PathBuf,
    /// ZooKeeper authentication, and the ACL of every znode Sluice creates. Default: none
    /// (anonymous; the znodes are open to anyone who reaches ZooKeeper).
    pub auth: Option<ZookeeperAuth>,
    /// ZooKeeper over TLS, to the servers' `secureClientPort` (the ports `zookeeper_connect`
    /// gives). Default: none (plain TCP).
    pub tls: Option<ZookeeperTls>,
}

/// TLS to ZooKeeper. The servers' certificates must name the hosts of `zookeeper_connect`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZookeeperTls {
    /// A PEM file of the certificate authorities that signed the servers' certificates.
    /// Required.
    pub ca_file: PathBuf,
    /// A client certificate (PEM), for servers that require one (`ssl.clientAuth=need`).
    /// Default: none.
    #[serde(default)]
    pub certificate_file: Option<PathBuf>,
    /// Its private key (PEM, unencrypted; readable only by the worker's user). Default: none.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// ZooKeeper's `digest` authentication: the session authenticates as `user`, and every znode
/// it creates grants all rights to that identity only (and reading to `read_only_user`, if
/// set). Every worker and tool of a deployment uses the same identity.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZookeeperAuth {
    /// The identity's name. Required.
    pub user: String,
    /// Its password, from a file or an environment variable ([`crate::Secret`]). Required.
    pub password: Secret,
    /// An identity allowed to read Sluice's znodes, and nothing else: for `sluice lag` and
    /// dashboards run by others (who configure it as their `user`). Default: none.
    #[serde(default)]
    pub read_only_user: Option<String>,
    /// Its password; required with `read_only_user` (its digest goes into the ACLs).
    #[serde(default)]
    pub read_only_password: Option<Secret>,
}

impl Default for CoordinationConfig {
    fn default() -> Self {
        CoordinationConfig {
            backend: CoordinationBackend::Zookeeper,
            zookeeper_connect: "127.0.0.1:2181".to_string(),
            root: "/sluice".to_string(),
            session_timeout_ms: 10_000,
            connect_timeout_ms: 10_000,
            embedded_dir: PathBuf::from("sluice-state"),
            auth: None,
            tls: None,
        }
    }
}

impl CoordinationConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.validate_root()?;
        if self.backend == CoordinationBackend::Zookeeper {
            self.validate_zookeeper_connect()?;
            self.validate_session_timeout()?;
        }
        self.validate_auth()?;
        self.validate_tls()
    }

    fn validate_tls(&self) -> Result<(), ConfigError> {
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        if self.backend != CoordinationBackend::Zookeeper {
            return Err(invalid(
                "coordination.tls",
                "is set but the backend is not ZooKeeper",
                "remove `[coordination.tls]`, or set `backend = \"zookeeper\"`",
            ));
        }
        client_certificate_pair("coordination.tls", &tls.certificate_file, &tls.key_file)?;
        readable_files(
            "coordination.tls",
            [
                ("ca_file", Some(tls.ca_file.as_path())),
                ("certificate_file", tls.certificate_file.as_deref()),
                ("key_file", tls.key_file.as_deref()),
            ],
        )
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        let Some(auth) = &self.auth else {
            return Ok(());
        };
        if self.backend != CoordinationBackend::Zookeeper {
            return Err(invalid(
                "coordination.auth",
                "is set but the backend is not ZooKeeper",
                "remove `[coordination.auth]`, or set `backend = \"zookeeper\"`",
            ));
        }
        // `user:password` is what digest authentication sends; a colon in the name would
        // split it elsewhere.
        if auth.user.is_empty() || auth.user.contains(':') {
            return Err(invalid(
                "coordination.auth.user",
                format!("`{}` is empty or contains `:`", auth.user),
                "use a plain name, e.g. `sluice`",
            ));
        }
        match (&auth.read_only_user, &auth.read_only_password) {
            (Some(u), Some(_)) if !u.is_empty() && !u.contains(':') && *u != auth.user => Ok(()),
            (None, None) => Ok(()),
            (Some(_), None) => Err(invalid(
                "coordination.auth.read_only_password",
                "is missing while `read_only_user` is set",
                "set it to `{ file = \"/path\" }` with that identity's password",
            )),
            (None, Some(_)) => Err(invalid(
                "coordination.auth.read_only_user",
                "is missing while `read_only_password` is set",
                "set the read-only identity's name, or remove the password",
            )),
            (Some(u), Some(_)) => Err(invalid(
                "coordination.auth.read_only_user",
                format!("`{u}` is empty, contains `:`, or is the same as `user`"),
                "use another plain name, e.g. `viewer`",
            )),
        }
    }

    /// Every znode path is the root joined with `/`, so a relative root or a trailing slash
    /// would make paths ZooKeeper refuses.
    fn validate_root(&self) -> Result<(), ConfigError> {
        let root = &self.root;
        if root.starts_with('/') && (root.len() == 1 || !root.ends_with('/')) {
            return Ok(());
        }
        Err(invalid(
            "coordination.root",
            format!("`{root}` is not an absolute znode path"),
            "start it with `/` and end it without one, e.g. `/sluice/prod`",
        ))
    }

    fn validate_zookeeper_connect(&self) -> Result<(), ConfigError> {
        if self.zookeeper_connect.trim().is_empty() {
            return Err(invalid(
                "coordination.zookeeper_connect",
                "is empty",
                "set it to `host:port[,host:port...]`",
            ));
        }
        Ok(())
    }

    /// ZooKeeper raises a shorter timeout to its minimum silently; refusing it keeps the
    /// configured value the one in effect.
    fn validate_session_timeout(&self) -> Result<(), ConfigError> {
        if self.session_timeout_ms < 2_000 {
            return Err(invalid(
                "coordination.session_timeout_ms",
                format!(
                    "{} ms is below ZooKeeper's minimum",
                    self.session_timeout_ms
                ),
                "use at least 2000 (ZooKeeper's floor is twice its tickTime)",
            ));
        }
        Ok(())
    }
}
