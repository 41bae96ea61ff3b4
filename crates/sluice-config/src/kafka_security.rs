//! `[kafka.security]`: how the worker proves who it is to Kafka and checks who Kafka is. Typed,
//! instead of librdkafka properties, so that a password can only come from a file or the
//! environment ([`Secret`]) and a half-configured setup (a mechanism without a user, a client
//! certificate without its key) is refused at start-up instead of failing at the first fetch.
//!
//! ```toml
//! [kafka.security]
//! protocol = "sasl_ssl"
//! sasl_mechanism = "SCRAM-SHA-512"
//! sasl_username = "sluice"
//! sasl_password = { file = "/etc/sluice/kafka-password" }
//! ca_file = "/etc/sluice/kafka-ca.pem"
//! ```

use std::path::PathBuf;

use serde::Deserialize;

use crate::tls_files::{client_certificate_pair, readable_files};
use crate::{invalid, ConfigError, Secret};

/// The transport and authentication to the brokers (librdkafka's `security.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no authentication.
    #[default]
    Plaintext,
    /// TLS; with a client certificate, mutual TLS.
    Ssl,
    /// SASL authentication over plain TCP: the broker sees the client, nobody is protected
    /// from listeners. With PLAIN the password crosses the network as it is.
    SaslPlaintext,
    /// SASL authentication over TLS: what managed Kafka services require.
    SaslSsl,
}

impl SecurityProtocol {
    /// The value of librdkafka's `security.protocol`.
    pub fn librdkafka_name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// A SASL mechanism, named as Kafka names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    /// OAuth 2 client credentials (OIDC): `sasl_username` is the client id, `sasl_password` the
    /// client secret, and the token comes from `oauthbearer_token_endpoint_url`.
    #[serde(rename = "OAUTHBEARER")]
    OauthBearer,
}

impl SaslMechanism {
    /// The value of librdkafka's `sasl.mechanism`.
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::OauthBearer => "OAUTHBEARER",
        }
    }
}

/// `[kafka.security]`. Every field is optional; the defaults are a plaintext connection with no
/// authentication, as before the section existed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSecurity {
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`. Default: `plaintext`.
    #[serde(default)]
    pub protocol: SecurityProtocol,
    /// `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` or `OAUTHBEARER`; required with the `sasl_*`
    /// protocols. Default: none.
    pub sasl_mechanism: Option<SaslMechanism>,
    /// The SASL user (the OAuth client id for `OAUTHBEARER`). Default: none.
    pub sasl_username: Option<String>,
    /// The SASL password (the OAuth client secret), `{ file = ... }` or `{ env = ... }`.
    /// Default: none.
    pub sasl_password: Option<Secret>,
    /// `OAUTHBEARER` only: the OIDC token endpoint. Default: none.
    pub oauthbearer_token_endpoint_url: Option<String>,
    /// `OAUTHBEARER` only: the scope asked for. Default: none (the provider's default).
    pub oauthbearer_scope: Option<String>,
    /// TLS: a PEM file of the certificate authorities to trust. Default: the system's trust
    /// store.
    pub ca_file: Option<PathBuf>,
    /// Mutual TLS: the client certificate, PEM. Default: none (no client certificate).
    pub certificate_file: Option<PathBuf>,
    /// Mutual TLS: the client certificate's private key, PEM. Default: none.
    pub key_file: Option<PathBuf>,
    /// The password of an encrypted `key_file`, `{ file = ... }` or `{ env = ... }`. Default:
    /// none.
    pub key_password: Option<Secret>,
    /// TLS: check that the broker's certificate names the host connected to. Turn it off only
    /// for brokers whose certificates name something else. Default: true.
    #[serde(default = "verify_hostname_default")]
    pub verify_hostname: bool,
}

fn verify_hostname_default() -> bool {
    true
}

impl Default for KafkaSecurity {
    fn default() -> KafkaSecurity {
        KafkaSecurity {
            protocol: SecurityProtocol::default(),
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            oauthbearer_token_endpoint_url: None,
            oauthbearer_scope: None,
            ca_file: None,
            certificate_file: None,
            key_file: None,
            key_password: None,
            verify_hostname: verify_hostname_default(),
        }
    }
}

const SECTION: &str = "kafka.security";

fn field(name: &str) -> String {
    format!("{SECTION}.{name}")
}

impl KafkaSecurity {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.protocol.uses_sasl() {
            self.validate_sasl()?;
        } else {
            self.refuse_unused(
                &[
                    ("sasl_mechanism", self.sasl_mechanism.is_some()),
                    ("sasl_username", self.sasl_username.is_some()),
                    ("sasl_password", self.sasl_password.is_some()),
                    (
                        "oauthbearer_token_endpoint_url",
                        self.oauthbearer_token_endpoint_url.is_some(),
                    ),
                    ("oauthbearer_scope", self.oauthbearer_scope.is_some()),
                ],
                "sasl_plaintext or sasl_ssl",
            )?;
        }
        if self.protocol.uses_tls() {
            self.validate_tls()
        } else {
            self.refuse_unused(
                &[
                    ("ca_file", self.ca_file.is_some()),
                    ("certificate_file", self.certificate_file.is_some()),
                    ("key_file", self.key_file.is_some()),
                    ("key_password", self.key_password.is_some()),
                    ("verify_hostname", !self.verify_hostname),
                ],
                "ssl or sasl_ssl",
            )
        }
    }

    /// A setting the protocol would ignore is a mistake: the user believes it applies.
    fn refuse_unused(&self, set: &[(&str, bool)], applies_with: &str) -> Result<(), ConfigError> {
        match set.iter().find(|(_, is_set)| *is_set) {
            Some((name, _)) => Err(invalid(
                field(name),
                format!(
                    "applies only with protocol {applies_with}, and protocol is {}",
                    self.protocol.librdkafka_name()
                ),
                format!("set {SECTION}.protocol to {applies_with}, or remove it"),
            )),
            None => Ok(()),
        }
    }

    fn validate_sasl(&self) -> Result<(), ConfigError> {
        let Some(mechanism) = self.sasl_mechanism else {
            return Err(invalid(
                field("sasl_mechanism"),
                format!("is required with protocol {}", self.protocol.librdkafka_name()),
                "set it to PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER, as the brokers' listener expects",
            ));
        };
        let oauth = mechanism == SaslMechanism::OauthBearer;
        let (user, password) = if oauth {
            ("the OAuth client id", "the OAuth client secret")
        } else {
            ("the user name", "the password")
        };
        if self.sasl_username.as_deref().is_none_or(str::is_empty) {
            return Err(invalid(
                field("sasl_username"),
                format!("is required with {}", mechanism.name()),
                format!("set it to {user}"),
            ));
        }
        if self.sasl_password.is_none() {
            return Err(invalid(
                field("sasl_password"),
                format!("is required with {}", mechanism.name()),
                format!("put {password} in a file readable only by the worker's user and write `sasl_password = {{ file = \"/path\" }}` (or `{{ env = \"NAME\" }}`)"),
            ));
        }
        match (oauth, &self.oauthbearer_token_endpoint_url) {
            (true, None) => Err(invalid(
                field("oauthbearer_token_endpoint_url"),
                "is required with OAUTHBEARER",
                "set it to the OIDC token endpoint of your identity provider (https://...)",
            )),
            (false, Some(_)) => Err(invalid(
                field("oauthbearer_token_endpoint_url"),
                format!(
                    "applies only with OAUTHBEARER, and sasl_mechanism is {}",
                    mechanism.name()
                ),
                "remove it",
            )),
            _ if !oauth && self.oauthbearer_scope.is_some() => Err(invalid(
                field("oauthbearer_scope"),
                format!(
                    "applies only with OAUTHBEARER, and sasl_mechanism is {}",
                    mechanism.name()
                ),
                "remove it",
            )),
            _ => Ok(()),
        }
    }

    fn validate_tls(&self) -> Result<(), ConfigError> {
        client_certificate_pair(SECTION, &self.certificate_file, &self.key_file)?;
        if self.key_password.is_some() && self.key_file.is_none() {
            return Err(invalid(
                field("key_password"),
                "is set without key_file",
                "remove it, or set key_file to the encrypted key it unlocks",
            ));
        }
        readable_files(
            SECTION,
            [
                ("ca_file", self.ca_file.as_deref()),
                ("certificate_file", self.certificate_file.as_deref()),
                ("key_file", self.key_file.as_deref()),
            ],
        )
    }
}
