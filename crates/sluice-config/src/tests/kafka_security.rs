//! `[kafka.security]` and the librdkafka properties it replaces; `[coordination.tls]`.

use super::*;

/// [`minimal`] with `section` appended as `[kafka.security]`.
fn with_security(section: &str) -> String {
    format!("{}\n[kafka.security]\n{section}", minimal())
}

/// A PEM-ish file that exists (validation checks that it can be read, not its content).
fn some_file(dir: &tempfile::TempDir, name: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, "-----BEGIN CERTIFICATE-----\n").unwrap();
    path.display().to_string()
}

#[test]
fn a_secret_in_kafka_properties_is_refused_without_quoting_it() {
    for key in [
        "sasl.password",
        "ssl.key.password",
        "sasl.oauthbearer.client.secret",
        "ssl.key.pem",
    ] {
        let e = err_of(&with_kafka_properties(&format!(
            "\"{key}\" = \"canary-x9y8\""
        )));
        assert!(e.contains(&format!("kafka.properties.\"{key}\"")), "{e}");
        assert!(e.contains("[kafka.security]"), "{e}");
        assert!(!e.contains("canary"), "the error shows the secret: {e}");
    }
}

#[test]
fn security_properties_name_the_typed_field_to_use_instead() {
    let e = err_of(&with_kafka_properties(
        "\"security.protocol\" = \"sasl_ssl\"",
    ));
    assert!(e.contains("kafka.security.protocol"), "{e}");
    let e = err_of(&with_kafka_properties("\"ssl.ca.location\" = \"/x\""));
    assert!(e.contains("kafka.security.ca_file"), "{e}");
}

#[test]
fn sasl_needs_a_mechanism_a_user_and_a_password() {
    let e = err_of(&with_security("protocol = \"sasl_ssl\"\n"));
    assert!(e.contains("kafka.security.sasl_mechanism"), "{e}");
    let e = err_of(&with_security(
        "protocol = \"sasl_plaintext\"\nsasl_mechanism = \"SCRAM-SHA-256\"\n",
    ));
    assert!(e.contains("kafka.security.sasl_username"), "{e}");
    let e = err_of(&with_security(
        "protocol = \"sasl_plaintext\"\nsasl_mechanism = \"PLAIN\"\nsasl_username = \"u\"\n",
    ));
    assert!(
        e.contains("kafka.security.sasl_password") && e.contains("{ file ="),
        "{e}"
    );
}

#[test]
fn oauthbearer_needs_its_token_endpoint() {
    let e = err_of(&with_security(
        "protocol = \"sasl_ssl\"\nsasl_mechanism = \"OAUTHBEARER\"\nsasl_username = \"client\"\nsasl_password = { env = \"HOME\" }\n",
    ));
    assert!(
        e.contains("kafka.security.oauthbearer_token_endpoint_url"),
        "{e}"
    );
}

#[test]
fn settings_the_protocol_would_ignore_are_refused() {
    let e = err_of(&with_security("sasl_mechanism = \"PLAIN\"\n"));
    assert!(
        e.contains("kafka.security.sasl_mechanism") && e.contains("protocol is plaintext"),
        "{e}"
    );
    let e = err_of(&with_security(
        "protocol = \"sasl_plaintext\"\nsasl_mechanism = \"PLAIN\"\nsasl_username = \"u\"\nsasl_password = { env = \"HOME\" }\nca_file = \"/x\"\n",
    ));
    assert!(
        e.contains("kafka.security.ca_file") && e.contains("ssl or sasl_ssl"),
        "{e}"
    );
    let e = err_of(&with_security("verify_hostname = false\n"));
    assert!(e.contains("kafka.security.verify_hostname"), "{e}");
}

#[test]
fn mutual_tls_needs_both_files_and_each_must_be_readable() {
    let dir = tempfile::tempdir().unwrap();
    let cert = some_file(&dir, "client.pem");
    let e = err_of(&with_security(&format!(
        "protocol = \"ssl\"\ncertificate_file = {cert:?}\n"
    )));
    assert!(e.contains("kafka.security.key_file"), "{e}");
    let e = err_of(&with_security(
        "protocol = \"ssl\"\nca_file = \"/nonexistent/ca.pem\"\n",
    ));
    assert!(
        e.contains("kafka.security.ca_file") && e.contains("/nonexistent/ca.pem"),
        "{e}"
    );
}

#[test]
fn a_full_sasl_ssl_section_loads_and_prints_no_password() {
    let dir = tempfile::tempdir().unwrap();
    let ca = some_file(&dir, "ca.pem");
    let password = dir.path().join("password");
    std::fs::write(&password, "canary-p4ss\n").unwrap();
    let text = with_security(&format!(
        "protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"sluice\"\nsasl_password = {{ file = {:?} }}\nca_file = {ca:?}\n",
        password.display().to_string()
    ));
    let c = Config::from_toml_str(&text, "test.toml").unwrap();
    let s = &c.kafka.security;
    assert_eq!(s.protocol, SecurityProtocol::SaslSsl);
    assert_eq!(s.sasl_mechanism, Some(SaslMechanism::ScramSha512));
    assert!(s.verify_hostname, "hostname verification is on by default");
    assert_eq!(
        s.sasl_password.as_ref().map(Secret::expose),
        Some("canary-p4ss")
    );
    let debug = format!("{c:?}");
    assert!(!debug.contains("canary"), "{debug}");
}

#[test]
fn zookeeper_tls_needs_readable_files_and_both_halves_of_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = some_file(&dir, "ca.pem");
    let cert = some_file(&dir, "client.pem");
    let with_tls = |section: &str| format!("{}\n[coordination.tls]\n{section}", minimal());
    let e = err_of(&with_tls("ca_file = \"/nonexistent/zk-ca.pem\"\n"));
    assert!(
        e.contains("coordination.tls.ca_file") && e.contains("/nonexistent/zk-ca.pem"),
        "{e}"
    );
    let e = err_of(&with_tls(&format!(
        "ca_file = {ca:?}\ncertificate_file = {cert:?}\n"
    )));
    assert!(e.contains("coordination.tls.key_file"), "{e}");
    let c = Config::from_toml_str(&with_tls(&format!("ca_file = {ca:?}\n")), "t").unwrap();
    assert!(c.coordination.tls.is_some());
}
