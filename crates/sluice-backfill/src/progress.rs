//! Progress of a backfill: a bar with the rate on a terminal, a log line per file otherwise.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the bar is redrawn.
const REDRAW: Duration = Duration::from_millis(250);
const BAR_WIDTH: usize = 30;

/// Counters the file tasks add to; shared with the bar's task.
#[derive(Debug)]
pub struct Progress {
    started: Instant,
    files: u64,
    total_bytes: u64,
    files_done: AtomicU64,
    bytes_done: AtomicU64,
    rows: AtomicU64,
    /// Bytes already done when this run started (files staged by an earlier run).
    resumed_bytes: u64,
    /// Whether the bar is drawn (stderr is a terminal); otherwise each file is logged.
    drawn: bool,
}

impl Progress {
    pub fn new(files: u64, total_bytes: u64, resumed_files: u64, resumed_bytes: u64) -> Progress {
        Progress {
            started: Instant::now(),
            files,
            total_bytes,
            files_done: AtomicU64::new(resumed_files),
            bytes_done: AtomicU64::new(resumed_bytes),
            rows: AtomicU64::new(0),
            resumed_bytes,
            drawn: std::io::stderr().is_terminal(),
        }
    }

    pub fn add(&self, bytes: u64, rows: u64) {
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
        self.rows.fetch_add(rows, Ordering::Relaxed);
    }

    /// Whether the bar shows progress, so that a log line per file would only garble it.
    pub fn drawn(&self) -> bool {
        self.drawn
    }

    pub fn file_done(&self) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
    }

    /// One line: the bar, files, bytes, rows and the rates of this run.
    pub fn line(&self) -> String {
        let done = self
            .bytes_done
            .load(Ordering::Relaxed)
            .min(self.total_bytes);
        let fraction = if self.total_bytes == 0 {
            1.0
        } else {
            done as f64 / self.total_bytes as f64
        };
        let filled = (fraction * BAR_WIDTH as f64) as usize;
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rows = self.rows.load(Ordering::Relaxed);
        format!(
            "[{}{}] {:>3.0}%  {}/{} files  {:.1}/{:.1} MB  {} rows  {:.0} rows/s  {:.1} MB/s",
            "#".repeat(filled),
            ".".repeat(BAR_WIDTH - filled),
            fraction * 100.0,
            self.files_done.load(Ordering::Relaxed),
            self.files,
            done as f64 / 1e6,
            self.total_bytes as f64 / 1e6,
            rows,
            rows as f64 / secs,
            done.saturating_sub(self.resumed_bytes) as f64 / 1e6 / secs,
        )
    }

    /// Redraws the bar on stderr until `stop` resolves, if stderr is a terminal.
    pub fn draw_until(
        self: &Arc<Self>,
        stop: tokio::sync::oneshot::Receiver<()>,
    ) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            if !me.drawn {
                let _ = stop.await;
                return;
            }
            let mut stop = stop;
            let mut tick = tokio::time::interval(REDRAW);
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tick.tick() => {
                        let mut err = std::io::stderr().lock();
                        let _ = write!(err, "\r{}", me.line());
                        let _ = err.flush();
                    }
                }
            }
            eprintln!("\r{}", me.line());
        })
    }
}
