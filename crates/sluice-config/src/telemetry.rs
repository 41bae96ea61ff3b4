//! `[telemetry]`: metrics, health endpoints and the dashboard.

use serde::Deserialize;

use crate::{invalid, positive, ConfigError, Secret};

/// The worker's HTTP endpoint: `/metrics` (Prometheus), `/healthz`, `/readyz` and the live
/// dashboard at `/`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Whether the worker serves the endpoint at all. Default: true.
    pub enabled: bool,
    /// `host:port` to bind. Loopback by default: without `token` the page and the metrics need
    /// no authentication, so expose them deliberately. Port 0 picks a free port (logged, and shown
    /// as the member's address by `sluice members` when `worker.address` is unset).
    /// Default: `127.0.0.1:9600`.
    pub listen_address: String,
    /// How often watermarks and lag are refreshed (metrics, dashboard samples).
    /// Default: 5000 (5 s).
    pub refresh_ms: u64,
    /// How much history the dashboard keeps and charts. Default: 900 (15 min).
    pub dashboard_history_s: u64,
    /// Lag in seconds above which the dashboard shows a partition and its topic in red.
    /// Default: 60.
    pub lag_alert_s: f64,
    /// A token the dashboard and `/api/*` require, as `Authorization: Bearer <token>` or as the
    /// password of HTTP Basic authentication (which browsers prompt for), from a file or an
    /// environment variable (see [`crate::Secret`]). Default: none (no authentication; keep
    /// the endpoint on loopback then).
    pub token: Option<Secret>,
    /// Whether the token is required on `/metrics`, `/healthz` and `/readyz` too (then probes
    /// and Prometheus must send it). Default: false (they stay open).
    pub token_covers_health_and_metrics: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            enabled: true,
            listen_address: "127.0.0.1:9600".to_string(),
            refresh_ms: 5_000,
            dashboard_history_s: 900,
            lag_alert_s: 60.0,
            token: None,
            token_covers_health_and_metrics: false,
        }
    }
}

impl TelemetryConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.validate_listen_address()?;
        positive("telemetry.refresh_ms", self.refresh_ms)?;
        self.validate_history()?;
        self.validate_lag_alert()?;
        self.validate_token()
    }

    fn validate_token(&self) -> Result<(), ConfigError> {
        if self.token_covers_health_and_metrics && self.token.is_none() {
            return Err(invalid(
                "telemetry.token_covers_health_and_metrics",
                "is true but no `telemetry.token` is set",
                "set `telemetry.token = { file = \"/path\" }`, or remove this field",
            ));
        }
        Ok(())
    }

    /// Bound without name resolution, so a host name would fail only when the worker starts.
    fn validate_listen_address(&self) -> Result<(), ConfigError> {
        if self.listen_address.parse::<std::net::SocketAddr>().is_ok() {
            return Ok(());
        }
        Err(invalid(
            "telemetry.listen_address",
            format!("`{}` is not an `ip:port` address", self.listen_address),
            format!(
                "use e.g. `{}`, `0.0.0.0:9600` to listen on every interface, or port 0 for a free port",
                TelemetryConfig::default().listen_address
            ),
        ))
    }

    /// The dashboard's charts need at least one sample inside their window.
    fn validate_history(&self) -> Result<(), ConfigError> {
        if self.dashboard_history_s.saturating_mul(1000) >= self.refresh_ms {
            return Ok(());
        }
        Err(invalid(
            "telemetry.dashboard_history_s",
            format!(
                "{} s of history is shorter than one refresh ({} ms)",
                self.dashboard_history_s, self.refresh_ms
            ),
            format!(
                "keep at least a few refreshes of history, e.g. {} (the default)",
                TelemetryConfig::default().dashboard_history_s
            ),
        ))
    }

    fn validate_lag_alert(&self) -> Result<(), ConfigError> {
        if self.lag_alert_s.is_finite() && self.lag_alert_s > 0.0 {
            return Ok(());
        }
        Err(invalid(
            "telemetry.lag_alert_s",
            format!("{} is not a positive number of seconds", self.lag_alert_s),
            format!(
                "use e.g. {} (the default)",
                TelemetryConfig::default().lag_alert_s
            ),
        ))
    }
}
