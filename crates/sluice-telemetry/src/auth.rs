//! The HTTP endpoint's optional token (`telemetry.token`): required for the dashboard and
//! `/api/*`, and for `/metrics`, `/healthz` and `/readyz` too when
//! `telemetry.token_covers_health_and_metrics` says so.
//!
//! Programs send `Authorization: Bearer <token>`. A browser cannot add a header to a page it
//! navigates to, so the token is also accepted as the password of HTTP Basic authentication
//! (any user name): a 401 asks for it, the browser prompts once, and sends it with the
//! dashboard's own requests from then on. The comparison takes the same time wherever the
//! first difference is; the answer to a refusal says nothing about the token.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sluice_config::Secret;
use subtle::ConstantTimeEq;

/// What the middleware needs: the token, and which paths it guards.
#[derive(Clone)]
pub(crate) struct Guard {
    token: Arc<Secret>,
    covers_health_and_metrics: bool,
}

impl Guard {
    pub(crate) fn new(token: Secret, covers_health_and_metrics: bool) -> Guard {
        Guard {
            token: Arc::new(token),
            covers_health_and_metrics,
        }
    }

    fn guards(&self, path: &str) -> bool {
        self.covers_health_and_metrics || !matches!(path, "/metrics" | "/healthz" | "/readyz")
    }

    /// Whether the request carries the token, as a bearer token or a Basic password.
    fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let offered = if let Some(token) = value.strip_prefix("Bearer ") {
            token.trim().as_bytes().to_vec()
        } else if let Some(encoded) = value.strip_prefix("Basic ") {
            let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim())
            else {
                return false;
            };
            // `user:password`; the user name is not checked.
            match decoded.iter().position(|&b| b == b':') {
                Some(i) => decoded[i + 1..].to_vec(),
                None => return false,
            }
        } else {
            return false;
        };
        same(&offered, self.token.expose().as_bytes())
    }
}

/// Compares in time that depends on the lengths only, not on where the first difference is.
fn same(offered: &[u8], token: &[u8]) -> bool {
    offered.len() == token.len() && bool::from(offered.ct_eq(token))
}

/// The middleware: passes what the token admits, or what it does not guard; 401 otherwise.
pub(crate) async fn require_token(
    State(guard): State<Guard>,
    request: Request,
    next: Next,
) -> Response {
    if !guard.guards(request.uri().path()) || guard.admits(request.headers()) {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            r#"Basic realm="sluice", charset="UTF-8""#,
        )],
        "this endpoint needs the worker's token (telemetry.token): send `Authorization: Bearer <token>`, or give it as the password when the browser asks\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn guard() -> Guard {
        Guard::new(Secret::new("s3cret-token", "test"), false)
    }

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn the_token_is_admitted_as_bearer_or_basic_password_and_nothing_else_is() {
        let g = guard();
        let basic = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert!(g.admits(&with("Bearer s3cret-token")));
        assert!(g.admits(&with(&basic("anyone:s3cret-token"))));
        for wrong in [
            "Bearer s3cret-toke".to_string(),
            "Bearer s3cret-token2".to_string(),
            "Bearer ".to_string(),
            "s3cret-token".to_string(),
            basic("s3cret-token"),
            basic("anyone:wrong"),
            "Basic !!!".to_string(),
        ] {
            assert!(!g.admits(&with(&wrong)), "{wrong} was admitted");
        }
        assert!(!g.admits(&HeaderMap::new()));
    }

    #[test]
    fn health_and_metrics_stay_open_unless_covered() {
        assert!(!guard().guards("/metrics"));
        assert!(!guard().guards("/readyz"));
        assert!(guard().guards("/"));
        assert!(guard().guards("/api/state"));
        let all = Guard::new(Secret::new("t", "test"), true);
        assert!(all.guards("/metrics") && all.guards("/healthz"));
    }
}
