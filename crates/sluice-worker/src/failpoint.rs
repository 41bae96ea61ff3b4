//! Fault injection for the crash and zombie tests: `SLUICE_FAILPOINT=<point>:<n>[:<action>]`
//! makes the process SIGKILL (action `kill`, the default) or SIGSTOP (action `stop`) itself the
//! n-th time it reaches `<point>`, so a test can kill -9 or freeze a worker at an exact step of
//! its cycle instead of racing a timer. Points: `mid_batch` (counted per message pushed into the
//! buffers: events buffered, not flushed), `after_upload` and `before_commit` (parts uploaded,
//! not committed), `after_commit` (committed, buffers not yet reset), `merge_after_upload` (a
//! merged part uploaded and verified, not swapped in), `merge_after_swap` (swapped in, replaced
//! objects not deleted), `seal_after_manifest` (a manifest written, the scope not yet pointing
//! at it), `retire_mid_delete` (counted per replaced object deleted after the grace period),
//! `repair_after_copy` (counted per scope whose missing copies a repair pass stored, before
//! its records name them); and in `sluice backfill run`: `backfill_after_upload` (counted per
//! chunk whose parts are uploaded, its file not staged), `backfill_after_file` (counted per
//! file staged) and `backfill_before_handoff` (every file staged, not handed off); and in a
//! view's history: `view_history_after_upload` (counted per chunk uploaded, nothing
//! registered) and `view_history_before_register` (every chunk uploaded); and in `sluice replay
//! run`: `replay_after_upload` (counted per chunk whose parts are uploaded, nothing swapped)
//! and `replay_before_swap` (every part uploaded and every merge lease taken). A stopped
//! process resumes right there on SIGCONT. Unset in production: `hit` then compares one pointer and returns.
//!
//! Clones share the count: flushes run as tasks of their own and hit the points of the one
//! process-wide arming.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::WorkerError;

pub const POINTS: &[&str] = &[
    "mid_batch",
    "after_upload",
    "before_commit",
    "after_commit",
    "merge_after_upload",
    "merge_after_swap",
    "seal_after_manifest",
    "retire_mid_delete",
    "repair_after_copy",
    "backfill_after_upload",
    "backfill_after_file",
    "backfill_before_handoff",
    "view_history_after_upload",
    "view_history_before_register",
    "replay_after_upload",
    "replay_before_swap",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Kill,
    Stop,
}

#[derive(Debug, Clone, Default)]
pub struct Failpoints {
    armed: Option<Arc<Armed>>,
}

#[derive(Debug)]
struct Armed {
    point: String,
    n: u64,
    action: Action,
    count: AtomicU64,
}

impl Failpoints {
    /// Parses `<point>:<n>[:kill|stop]`; `None` or an empty string arms nothing.
    pub fn parse(spec: Option<&str>) -> Result<Failpoints, WorkerError> {
        let Some(spec) = spec.filter(|s| !s.is_empty()) else {
            return Ok(Failpoints::default());
        };
        let err = |reason: String| WorkerError::Failpoint {
            spec: spec.to_string(),
            reason,
        };
        let mut fields = spec.split(':');
        let (Some(point), Some(n)) = (fields.next(), fields.next()) else {
            return Err(err("expected <point>:<n>[:kill|stop]".into()));
        };
        let action = match fields.next() {
            None | Some("kill") => Action::Kill,
            Some("stop") => Action::Stop,
            Some(other) => return Err(err(format!("unknown action `{other}`; use kill or stop"))),
        };
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
            armed: Some(Arc::new(Armed {
                point: point.to_string(),
                n,
                action,
                count: AtomicU64::new(0),
            })),
        })
    }

    pub fn hit(&self, point: &'static str) {
        let Some(armed) = &self.armed else {
            return;
        };
        if armed.point != point {
            return;
        }
        if armed.count.fetch_add(1, Ordering::SeqCst) + 1 != armed.n {
            return;
        }
        let pid = std::process::id().to_string();
        match armed.action {
            Action::Kill => {
                tracing::warn!(
                    point,
                    "failpoint reached; killing this process with SIGKILL"
                );
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid])
                    .status();
                // SIGKILL is delivered asynchronously; never run past the failpoint.
                loop {
                    std::thread::park();
                }
            }
            Action::Stop => {
                tracing::warn!(
                    point,
                    "failpoint reached; stopping this process with SIGSTOP until SIGCONT"
                );
                // `kill` returns once the signal is queued; the process stops right after, with
                // this thread still here, and carries on past the failpoint on SIGCONT.
                let _ = std::process::Command::new("kill")
                    .args(["-STOP", &pid])
                    .status();
            }
        }
    }
}
