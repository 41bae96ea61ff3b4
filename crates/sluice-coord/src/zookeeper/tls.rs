//! ZooKeeper over TLS (its `secureClientPort`): the CA that signed the servers' certificates,
//! and optionally a client certificate for servers that require one (`ssl.clientAuth=need`).
//! The servers' certificates must name the hosts of `zookeeper_connect`: the check cannot be
//! turned off.

use zookeeper_client as zk;

use crate::CoordError;

/// TLS settings of a ZooKeeper session, as PEM text. Its `Debug` shows no key.
#[derive(Clone)]
pub struct ZkTls {
    ca_pem: String,
    /// Client certificate and private key.
    identity: Option<(String, String)>,
}

impl std::fmt::Debug for ZkTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkTls")
            .field("client_certificate", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl ZkTls {
    pub fn new(ca_pem: impl Into<String>, identity: Option<(String, String)>) -> ZkTls {
        ZkTls {
            ca_pem: ca_pem.into(),
            identity,
        }
    }

    /// The client's TLS options. The process-wide crypto provider is chosen here (ring, as
    /// object storage's HTTPS uses), once: the client asks rustls for the default one.
    pub(super) fn options(&self) -> Result<zk::TlsOptions, CoordError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let bad = |what: &str, e: zk::Error| CoordError::Tls {
            problem: format!("{what} is not usable PEM"),
            source: e.into(),
        };
        let mut options = zk::TlsOptions::new()
            .with_pem_ca(&self.ca_pem)
            .map_err(|e| bad("coordination.tls.ca_file", e))?;
        if let Some((cert, key)) = &self.identity {
            options = options
                .with_pem_identity(cert, key)
                .map_err(|e| bad("coordination.tls.certificate_file or key_file", e))?;
        }
        Ok(options)
    }
}

/// A deployment's ZooKeeper security: authentication and transport.
#[derive(Debug, Clone, Default)]
pub struct ZkSecurity {
    pub credentials: Option<super::Credentials>,
    pub tls: Option<ZkTls>,
}
