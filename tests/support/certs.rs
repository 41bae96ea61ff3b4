//! Certificates for the TLS tests, made with `openssl` (RSA: Java's PEM key store, which
//! ZooKeeper uses, reads RSA keys).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{ensure, Context, Result};

/// A test CA, the broker's certificate (for 127.0.0.1) and a client certificate, all signed by
/// it, and another CA nobody signed with.
pub struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    pub fn make() -> Result<Certs> {
        let dir = tempfile::tempdir()?;
        let certs = Certs { dir };
        certs.self_signed("ca", "sluice-test-ca")?;
        certs.self_signed("other-ca", "someone-else")?;
        certs.signed("server", "127.0.0.1", Some("subjectAltName=IP:127.0.0.1"))?;
        certs.signed("client", "sluice-worker", None)?;
        // Java's PEM key store (ZooKeeper's) wants the certificate and its key in one file.
        let bundle = std::fs::read_to_string(certs.path("server.pem"))?
            + &std::fs::read_to_string(certs.path("server.key"))?;
        std::fs::write(certs.path("server-bundle.pem"), bundle)?;
        Ok(certs)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn self_signed(&self, name: &str, subject: &str) -> Result<()> {
        let (cert, key) = (format!("{name}.pem"), format!("{name}.key"));
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={subject}"),
            "-keyout",
            &key,
            "-out",
            &cert,
        ])
    }

    fn signed(&self, name: &str, subject: &str, extension: Option<&str>) -> Result<()> {
        let (cert, key, csr) = (
            format!("{name}.pem"),
            format!("{name}.key"),
            format!("{name}.csr"),
        );
        self.openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={subject}"),
            "-keyout",
            &key,
            "-out",
            &csr,
        ])?;
        let ext = format!("{name}.ext");
        std::fs::write(
            self.path(&ext),
            extension.unwrap_or("basicConstraints=CA:FALSE"),
        )?;
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &cert,
            "-extfile",
            &ext,
        ])
    }

    fn openssl(&self, args: &[&str]) -> Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .context("running openssl")?;
        ensure!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}
