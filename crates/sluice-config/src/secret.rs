//! Secrets in the configuration: passwords, tokens, keys. A config names where each one is (a
//! file, or an environment variable), never the secret itself, so that config files can be
//! shown, versioned and templated; the value is read once at load and prints as `***`
//! everywhere (`Debug`, `Display`, serialisation), so that no log line, error or `sluice check`
//! output can carry it.
//!
//! ```toml
//! token = { file = "/etc/sluice/http-token" }   # the file's content, one trailing newline dropped
//! token = { env = "SLUICE_HTTP_TOKEN" }         # the variable's value
//! ```

use std::path::PathBuf;

use serde::de::{Error as _, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What every secret prints as.
pub const REDACTED: &str = "***";

/// Starts the message of every error about a secret, so that the loader reports it without
/// quoting the config line (which may hold the secret).
pub(crate) const PROBLEM: &str = "secret: ";

/// A secret value, read from where the config said at load. Its only way out is
/// [`Secret::expose`], which the few places that hand it to a client call.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: String,
    /// Where it came from (`file /path` or `environment variable NAME`), for messages.
    origin: String,
}

impl Secret {
    /// The secret itself: only to hand it to the client that needs it.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// Where the secret was read from, safe to print: `file /etc/x` or `environment variable X`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// A secret made in code (tests, or a value another secret was derived from).
    pub fn new(value: impl Into<String>, origin: impl Into<String>) -> Secret {
        Secret {
            value: value.into(),
            origin: origin.into(),
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({REDACTED} from {})", self.origin)
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

/// Where a secret is, as a config writes it.
#[derive(Default)]
pub(crate) struct SecretSource {
    file: Option<PathBuf>,
    env: Option<String>,
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        let source = deserializer.deserialize_any(SourceVisitor)?;
        read(source).map_err(|e| D::Error::custom(format!("{PROBLEM}{e}")))
    }
}

pub(crate) struct SourceVisitor;

impl<'de> Visitor<'de> for SourceVisitor {
    type Value = SecretSource;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("`{ file = \"/path\" }` or `{ env = \"NAME\" }`")
    }

    // Not echoed: the point is that it is a secret.
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<SecretSource, E> {
        Err(E::custom(format!(
            "{PROBLEM}a secret is not written in the config; put it in a file readable only by the worker's user and write `{{ file = \"/path\" }}`, or in an environment variable and write `{{ env = \"NAME\" }}`",
        )))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SecretSource, A::Error> {
        let mut source = SecretSource::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "file" => source.file = Some(map.next_value()?),
                "env" => source.env = Some(map.next_value()?),
                other => {
                    return Err(A::Error::custom(format!(
                        "{PROBLEM}unknown key `{other}` in a secret; write `{{ file = \"/path\" }}` or `{{ env = \"NAME\" }}`"
                    )))
                }
            }
        }
        Ok(source)
    }
}

pub(crate) fn read(source: SecretSource) -> Result<Secret, String> {
    match (source.file, source.env) {
        (Some(path), None) => {
            let origin = format!("file {}", path.display());
            let text = std::fs::read_to_string(&path).map_err(|e| {
                format!("cannot read the secret's {origin} ({e}); create it or correct the path")
            })?;
            // Files written by editors and `echo` end with a newline that is not part of it.
            let value = text
                .strip_suffix("\r\n")
                .or_else(|| text.strip_suffix('\n'))
                .unwrap_or(&text);
            nonempty(value, origin)
        }
        (None, Some(name)) => {
            let origin = format!("environment variable {name}");
            let value = std::env::var(&name).map_err(|e| {
                format!("cannot read the secret's {origin} ({e}); set it for the worker's process")
            })?;
            nonempty(&value, origin)
        }
        _ => Err(
            "a secret names exactly one source: `{ file = \"/path\" }` or `{ env = \"NAME\" }`"
                .to_string(),
        ),
    }
}

fn nonempty(value: &str, origin: String) -> Result<Secret, String> {
    if value.is_empty() {
        return Err(format!(
            "the secret's {origin} is empty; write the secret into it"
        ));
    }
    Ok(Secret::new(value, origin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Holder {
        secret: Secret,
    }

    /// The problem as the loader reports it (the TOML error's message, without the quoted line).
    fn parse(text: &str) -> Result<Holder, String> {
        toml::from_str(text).map_err(|e| e.message().to_string())
    }

    #[test]
    fn a_secret_from_a_file_loses_one_trailing_newline_and_never_prints() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "canary-7f3a\n").unwrap();
        let h = parse(&format!(
            "secret = {{ file = {:?} }}",
            path.display().to_string()
        ))
        .unwrap();
        assert_eq!(h.secret.expose(), "canary-7f3a");
        for shown in [
            format!("{h:?}"),
            h.secret.to_string(),
            serde_json::to_string(&h.secret).unwrap(),
        ] {
            assert!(!shown.contains("canary"), "{shown}");
            assert!(shown.contains(REDACTED), "{shown}");
        }
    }

    #[test]
    fn a_secret_from_the_environment() {
        std::env::set_var("SLUICE_SECRET_TEST_VAR", "canary-env");
        let h = parse("secret = { env = \"SLUICE_SECRET_TEST_VAR\" }").unwrap();
        assert_eq!(h.secret.expose(), "canary-env");
        assert_eq!(
            h.secret.origin(),
            "environment variable SLUICE_SECRET_TEST_VAR"
        );
    }

    #[test]
    fn an_inline_secret_is_refused_without_being_echoed() {
        let e = parse("secret = \"canary-inline\"").unwrap_err();
        assert!(e.contains("not written in the config"), "{e}");
        assert!(!e.contains("canary"), "{e}");
    }

    #[test]
    fn a_missing_file_an_unset_variable_an_empty_file_and_two_sources_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        for (text, says) in [
            (
                "secret = { file = \"/nonexistent/x\" }".to_string(),
                "cannot read",
            ),
            (
                "secret = { env = \"SLUICE_SECRET_UNSET_VAR\" }".to_string(),
                "set it",
            ),
            (
                format!("secret = {{ file = {:?} }}", empty.display().to_string()),
                "is empty",
            ),
            (
                "secret = { file = \"/x\", env = \"Y\" }".to_string(),
                "exactly one",
            ),
            ("secret = { }".to_string(), "exactly one"),
            (
                "secret = { path = \"/x\" }".to_string(),
                "unknown key `path`",
            ),
        ] {
            let e = parse(&text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
