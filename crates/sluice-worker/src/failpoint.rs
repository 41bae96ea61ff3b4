//! Crash injection for the crash tests: `SLUICE_FAILPOINT=<point>:<n>` makes the process
//! SIGKILL itself the n-th time it reaches `<point>`, so a test can kill -9 a worker at an exact
//! step of its cycle instead of racing a timer. Points: `mid_batch` (counted per message pushed into
//! the buffers: events buffered, not flushed), `after_upload` (parts uploaded, not committed), `after_commit` (committed, buffers
//! not yet reset). Unset in production: `hit` is then a counter increment.

use std::collections::HashMap;

use crate::WorkerError;

pub const POINTS: &[&str] = &["mid_batch", "after_upload", "after_commit"];

#[derive(Debug, Clone, Default)]
pub struct Failpoints {
    armed: Option<(String, u64)>,
    counts: HashMap<&'static str, u64>,
}

impl Failpoints {
    /// Parses `<point>:<n>`; `None` or an empty string arms nothing.
    pub fn parse(spec: Option<&str>) -> Result<Failpoints, WorkerError> {
        let Some(spec) = spec.filter(|s| !s.is_empty()) else {
            return Ok(Failpoints::default());
        };
        let err = |reason: String| WorkerError::Failpoint {
            spec: spec.to_string(),
            reason,
        };
        let (point, n) = spec
            .split_once(':')
            .ok_or_else(|| err("expected <point>:<n>".into()))?;
        if !POINTS.contains(&point) {
            return Err(err(format!(
                "unknown point; use one of {}",
                POINTS.join(", ")
            )));
        }
        let n: u64 = n
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| err("n must be a positive integer".into()))?;
        Ok(Failpoints {
            armed: Some((point.to_string(), n)),
            counts: HashMap::new(),
        })
    }

    pub fn hit(&mut self, point: &'static str) {
        let Some((armed, n)) = &self.armed else {
            return;
        };
        if armed != point {
            return;
        }
        let count = self.counts.entry(point).or_insert(0);
        *count += 1;
        if *count == *n {
            tracing::warn!(
                point,
                "failpoint reached; killing this process with SIGKILL"
            );
            let pid = std::process::id().to_string();
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid])
                .status();
            // SIGKILL is delivered asynchronously; never run past the failpoint.
            loop {
                std::thread::park();
            }
        }
    }
}
