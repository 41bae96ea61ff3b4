//! `[kafka.security]` as librdkafka properties, and the client context that notices when the
//! brokers refuse the worker (credentials or certificate) instead of being unreachable.
//!
//! librdkafka answers a request made with refused credentials the way it answers one to a
//! broker that is down (a transport failure once its timeout passes); only its error callback
//! says why. [`SourceContext`] keeps the last refusal, so the metadata client can report
//! "refused, fix the configuration" rather than "unreachable, wait".

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use sluice_config::{KafkaSecurity, SaslMechanism};

/// Sets what `security` says on `cfg`. The only place a Kafka secret leaves its [`Secret`]:
/// the resulting configuration is never logged (librdkafka's `debug=conf` would; the
/// properties refuse nothing there, so do not set it in production).
///
/// [`Secret`]: sluice_config::Secret
pub(crate) fn apply(cfg: &mut ClientConfig, security: &KafkaSecurity) {
    cfg.set("security.protocol", security.protocol.librdkafka_name());
    if let Some(mechanism) = security.sasl_mechanism {
        apply_sasl(cfg, security, mechanism);
    }
    if security.protocol.uses_tls() {
        let paths = [
            ("ssl.ca.location", &security.ca_file),
            ("ssl.certificate.location", &security.certificate_file),
            ("ssl.key.location", &security.key_file),
        ];
        for (property, path) in paths {
            if let Some(path) = path {
                cfg.set(property, path.display().to_string());
            }
        }
        if let Some(password) = &security.key_password {
            cfg.set("ssl.key.password", password.expose());
        }
        cfg.set(
            "ssl.endpoint.identification.algorithm",
            if security.verify_hostname {
                "https"
            } else {
                "none"
            },
        );
    }
}

fn apply_sasl(cfg: &mut ClientConfig, security: &KafkaSecurity, mechanism: SaslMechanism) {
    cfg.set("sasl.mechanism", mechanism.name());
    let user = security.sasl_username.clone().unwrap_or_default();
    let password = security
        .sasl_password
        .as_ref()
        .map(|p| p.expose().to_string())
        .unwrap_or_default();
    if mechanism != SaslMechanism::OauthBearer {
        cfg.set("sasl.username", user)
            .set("sasl.password", password);
        return;
    }
    cfg.set("sasl.oauthbearer.method", "oidc")
        .set("sasl.oauthbearer.client.id", user)
        .set("sasl.oauthbearer.client.secret", password);
    if let Some(url) = &security.oauthbearer_token_endpoint_url {
        cfg.set("sasl.oauthbearer.token.endpoint.url", url);
    }
    if let Some(scope) = &security.oauthbearer_scope {
        cfg.set("sasl.oauthbearer.scope", scope);
    }
}

/// How long a refusal explains later failures: librdkafka retries a refused connection about
/// every second, each time reporting it again, so an older one is a thing of the past.
const REFUSAL_FRESH_FOR: Duration = Duration::from_secs(30);

/// The client context of every Sluice consumer: librdkafka's logs and errors go to the log
/// (a refusal at ERROR once, since someone must act; the rest at WARN, since librdkafka
/// retries them), and the last refusal is kept for [`SourceContext::refusal`].
#[derive(Clone, Default)]
pub struct SourceContext {
    state: Arc<Mutex<Seen>>,
}

#[derive(Default)]
struct Seen {
    /// librdkafka's last connection failure as it logged it (facility `FAIL`): the only place
    /// that says why (an error event carries just the code).
    failure: Option<String>,
    refused: Option<(Instant, String)>,
}

impl SourceContext {
    /// What the brokers said when they last refused this client, if that was recent.
    pub fn refusal(&self) -> Option<String> {
        self.seen()
            .refused
            .as_ref()
            .filter(|(at, _)| at.elapsed() < REFUSAL_FRESH_FOR)
            .map(|(_, reason)| reason.clone())
    }

    /// A request went through: any refusal is over.
    pub(crate) fn accepted(&self) {
        self.seen().refused = None;
    }

    /// An error librdkafka reported, by callback (with its reason) or as an event polled from
    /// a consumer (without: the last logged failure says why).
    pub(crate) fn note(&self, error: &KafkaError, reason: Option<&str>) {
        let mut seen = self.seen();
        let reason = reason
            .map(str::to_string)
            .or_else(|| seen.failure.clone())
            .unwrap_or_else(|| error.to_string());
        if !is_refusal(error) && !is_tls_alert(&reason) {
            return;
        }
        let fresh = seen
            .refused
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < REFUSAL_FRESH_FOR);
        if !fresh {
            tracing::error!(target: "librdkafka", error = %error, "authentication with the brokers failed: {reason}; check [kafka.security] (retrying meanwhile)");
        }
        seen.refused = Some((Instant::now(), reason));
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Errors that do not pass by themselves: the brokers refused the credentials, or the TLS
/// handshake failed (an untrusted or misnamed certificate, a protocol mismatch).
pub(crate) fn is_refusal(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::SSL
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::TopicAuthorizationFailed
        )
    )
}

/// A TLS alert from the broker's side (a client certificate required or refused, an unknown
/// CA): with TLS 1.3 the client learns of it only at its first read, which librdkafka reports
/// as a transport failure, though it will not pass by itself either.
fn is_tls_alert(reason: &str) -> bool {
    reason.contains("SSL routines") && reason.contains(" alert ")
}

impl ClientContext for SourceContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if facility == "FAIL" {
            // Without the thread name librdkafka starts its lines with (`[thrd:...]: `).
            let said = match message.split_once("]: ") {
                Some((thread, rest)) if thread.starts_with("[thrd:") => rest,
                _ => message,
            };
            self.seen().failure = Some(said.to_string());
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", facility, "{message}");
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility, "{message}");
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if is_refusal(&error) || is_tls_alert(reason) {
            self.note(&error, Some(reason));
        } else {
            tracing::warn!(target: "librdkafka", error = %error, "{reason}");
        }
    }
}

impl ConsumerContext for SourceContext {}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use sluice_config::{Secret, SecurityProtocol};

    use super::*;

    fn applied(security: &KafkaSecurity) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        apply(&mut cfg, security);
        cfg
    }

    #[test]
    fn scram_over_tls_sets_the_librdkafka_properties() {
        let cfg = applied(&KafkaSecurity {
            protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some(SaslMechanism::ScramSha256),
            sasl_username: Some("sluice".into()),
            sasl_password: Some(Secret::new("pw", "test")),
            ca_file: Some(PathBuf::from("/etc/ca.pem")),
            ..KafkaSecurity::default()
        });
        for (key, value) in [
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanism", "SCRAM-SHA-256"),
            ("sasl.username", "sluice"),
            ("sasl.password", "pw"),
            ("ssl.ca.location", "/etc/ca.pem"),
            ("ssl.endpoint.identification.algorithm", "https"),
        ] {
            assert_eq!(cfg.get(key), Some(value), "{key}");
        }
        assert_eq!(cfg.get("ssl.certificate.location"), None);
    }

    #[test]
    fn oauthbearer_uses_oidc_client_credentials() {
        let cfg = applied(&KafkaSecurity {
            protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some(SaslMechanism::OauthBearer),
            sasl_username: Some("client".into()),
            sasl_password: Some(Secret::new("s", "test")),
            oauthbearer_token_endpoint_url: Some("https://idp/token".into()),
            verify_hostname: false,
            ..KafkaSecurity::default()
        });
        for (key, value) in [
            ("sasl.mechanism", "OAUTHBEARER"),
            ("sasl.oauthbearer.method", "oidc"),
            ("sasl.oauthbearer.client.id", "client"),
            ("sasl.oauthbearer.client.secret", "s"),
            ("sasl.oauthbearer.token.endpoint.url", "https://idp/token"),
            ("ssl.endpoint.identification.algorithm", "none"),
        ] {
            assert_eq!(cfg.get(key), Some(value), "{key}");
        }
        assert_eq!(cfg.get("sasl.username"), None);
    }

    #[test]
    fn plaintext_sets_no_tls_or_sasl_property() {
        let cfg = applied(&KafkaSecurity::default());
        assert_eq!(cfg.get("security.protocol"), Some("plaintext"));
        assert_eq!(cfg.config_map().len(), 1, "{:?}", cfg.config_map().keys());
    }

    #[test]
    fn tls_alerts_and_refusal_codes_count_as_refusals() {
        assert!(is_tls_alert("Receive failed: error:0A00045C:SSL routines::tlsv13 alert certificate required: SSL alert number 116"));
        assert!(!is_tls_alert(
            "Connect to ipv4#127.0.0.1:1 failed: Connection refused"
        ));
        assert!(is_refusal(&KafkaError::Global(
            RDKafkaErrorCode::Authentication
        )));
        assert!(!is_refusal(&KafkaError::Global(
            RDKafkaErrorCode::BrokerTransportFailure
        )));
    }
}
