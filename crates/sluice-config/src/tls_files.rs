//! The certificate files a TLS section names (`[kafka.security]`, `[coordination.tls]`),
//! checked at load: a typo is then a start-up error naming the field, not a handshake failure
//! at the first request.

use std::path::{Path, PathBuf};

use crate::{invalid, ConfigError};

/// A client certificate and its key come together or not at all.
pub(crate) fn client_certificate_pair(
    section: &str,
    certificate: &Option<PathBuf>,
    key: &Option<PathBuf>,
) -> Result<(), ConfigError> {
    match (certificate, key) {
        (Some(_), None) => Err(invalid(
            format!("{section}.key_file"),
            "is required with certificate_file (a client certificate needs its key)",
            "set it to the client certificate's private key (PEM), or remove certificate_file",
        )),
        (None, Some(_)) => Err(invalid(
            format!("{section}.certificate_file"),
            "is required with key_file (a client certificate needs its key)",
            "set it to the client certificate (PEM), or remove key_file",
        )),
        _ => Ok(()),
    }
}

/// Every named file that is set can be opened by this process.
pub(crate) fn readable_files<'a>(
    section: &str,
    files: impl IntoIterator<Item = (&'a str, Option<&'a Path>)>,
) -> Result<(), ConfigError> {
    for (name, path) in files {
        let Some(path) = path else { continue };
        std::fs::File::open(path).map_err(|e| {
            invalid(
                format!("{section}.{name}"),
                format!("cannot read {}: {e}", path.display()),
                "give the path of a PEM file the worker's user can read",
            )
        })?;
    }
    Ok(())
}
