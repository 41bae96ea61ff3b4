//! The worker process and its HTTP endpoint.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::convert::Figures;

/// How long a worker may take to answer /readyz.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

pub(super) fn wait_ready(worker: &mut Child, address: &str, log: &Path) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = worker.try_wait()? {
            bail!(
                "the worker exited ({status}) before it was ready; end of {}:\n{}",
                log.display(),
                tail(log)
            );
        }
        if matches!(http_get(address, "/readyz"), Ok((200, _))) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the worker was not ready within {READY_TIMEOUT:?}; end of {}:\n{}",
                log.display(),
                tail(log)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(super) fn stop_worker(worker: Child, log: &Path) -> Result<Figures> {
    let pid = worker.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status()?;
    if !status.success() {
        bail!("cannot send SIGTERM to the worker (pid {pid})");
    }
    crate::run::finish(worker, log)
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A plain HTTP/1.0 GET: the status and the body.
pub(super) fn http_get(address: &str, path: &str) -> Result<(u16, String)> {
    let addr: std::net::SocketAddr = address.parse()?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status from {address}{path}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    Ok((status, body))
}

/// The sum of a metric's samples in Prometheus text, those of `table` only if given.
pub(super) fn metric(text: &str, name: &str, table: Option<&str>) -> f64 {
    let label = table.map(|t| format!("table=\"{t}\""));
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => {
                    let (labels, value) = r.split_once('}')?;
                    (labels, value)
                }
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            if let Some(label) = &label {
                if !labels.split(',').any(|l| l == label) {
                    return None;
                }
            }
            value.trim().parse::<f64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_by_name_and_table() {
        let text =
            "# HELP x\nsluice_merges_total{table=\"a\"} 3\nsluice_merges_total{table=\"b\"} 4\n\
                    sluice_merges_total_other 9\nsluice_ingest_paused_partitions 2\n";
        assert_eq!(metric(text, "sluice_merges_total", Some("a")), 3.0);
        assert_eq!(metric(text, "sluice_merges_total", None), 7.0);
        assert_eq!(metric(text, "sluice_ingest_paused_partitions", None), 2.0);
    }
}
