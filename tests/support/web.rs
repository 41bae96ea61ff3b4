//! Talking to a worker's HTTP endpoint, and the outside tools that judge what it serves:
//! `promtool` (Debian's `prometheus` package) and headless Chromium (Debian's `chromium`).
//! `scripts/test.sh` installs both.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::fleet::Worker;
use crate::wait_until;

/// The address a worker's endpoint bound, from its start-up log line.
pub async fn endpoint(worker: &Worker) -> Result<SocketAddr> {
    let mut found = None;
    wait_until(
        Duration::from_secs(30),
        Duration::from_millis(50),
        "the worker to log its endpoint",
        || {
            found = worker.log_text().lines().find_map(|l| {
                l.contains("serving the dashboard")
                    .then(|| l.split("address=").nth(1))
                    .flatten()
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|a| a.parse().ok())
            });
            let ok = found.is_some();
            async move { Ok(ok) }
        },
    )
    .await?;
    found.context("endpoint address")
}

/// A plain HTTP/1.1 GET; returns the status code and the body.
pub fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    get_authorized(addr, path, None)
}

/// [`get`] with an `Authorization` header (its value) if given.
pub fn get_authorized(
    addr: SocketAddr,
    path: &str,
    authorization: Option<&str>,
) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let header = authorization.map_or_else(String::new, |a| format!("Authorization: {a}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{header}Connection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw).context("response is not UTF-8")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("response without a header end")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .context("status line")?
        .parse()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut rest: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").context("chunk size")?;
        let size = usize::from_str_radix(size.trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(after.get(..size).context("short chunk")?);
        rest = after.get(size + 2..).context("chunk end")?;
    }
}

/// The value of one series in a Prometheus exposition: `name{labels}` with the labels in the
/// order given, e.g. `series(text, "m", &[("topic", "t"), ("partition", "0")])`.
pub fn series(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (key, value) = line.rsplit_once(' ')?;
        let (n, rest) = key.split_once('{').unwrap_or((key, "}"));
        if n != name {
            return None;
        }
        let inside = rest.strip_suffix('}')?;
        let matches = labels
            .iter()
            .all(|(k, v)| inside.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
        matches.then(|| value.parse().ok()).flatten()
    })
}

/// Runs `promtool <args>`, feeding `stdin`; fails with its output unless it succeeds.
pub fn promtool(args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut child = std::process::Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context(
            "promtool not found: install Debian's `prometheus` package (scripts/test.sh does)",
        )?;
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .context("promtool stdin")?
            .write_all(text.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "promtool {} failed:\n{text}",
        args.join(" ")
    );
    Ok(text)
}

/// Loads `url` in headless Chromium, lets its scripts run for `budget` of virtual time, and
/// returns the DOM as it then is; with `screenshot`, also saves a PNG of the page there.
pub fn chromium(url: &str, budget: Duration, screenshot: Option<&Path>) -> Result<String> {
    let profile = tempfile::tempdir()?;
    let mut cmd = std::process::Command::new("chromium");
    // The machine's network is closed: without these, Chromium's background connections fail
    // loudly at every start.
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1400,1900",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg(format!("--virtual-time-budget={}", budget.as_millis()));
    match screenshot {
        Some(p) => cmd.arg(format!("--screenshot={}", p.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(url).stdin(Stdio::null()).output().context(
        "chromium not found: install Debian's `chromium` package (scripts/test.sh does)",
    )?;
    if !out.status.success() {
        bail!(
            "chromium failed ({:?}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
