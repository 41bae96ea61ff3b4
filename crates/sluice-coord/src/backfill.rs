//! What the registry keeps of a backfill: its plan (the table, and per partition of the topic
//! the offset the stream takes over from), the parts it staged file by file, and whether it
//! handed the partitions over.
//!
//! A backfill's parts stay invisible until the handoff: the handoff is one atomic change that
//! registers them, sets every partition's committed offset to the plan's (only where none was
//! committed meanwhile) and releases the partitions to the workers. Until it happens, no worker
//! takes a lease on those partitions, so the stream cannot read what the snapshot holds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{CoordError, Gap, PartRecord};

/// What a backfill will hand over, fixed when it is claimed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillPlan {
    /// Names the backfill: letters, digits, `-`, `_` and `.`.
    pub id: String,
    pub table: String,
    pub topic: String,
    /// Per partition of `topic`, the offset the stream starts from after the handoff: the
    /// offset the snapshot is consistent with.
    pub offsets: BTreeMap<i32, i64>,
    /// SHA-256 of the snapshot's manifest: resuming under the same id with another snapshot is
    /// refused.
    pub snapshot_sha256: String,
    /// How many files the snapshot has.
    pub files: u32,
    /// Offsets the topic no longer held when the backfill was planned, which the user accepted
    /// to lose (neither the snapshot nor the stream has them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accepted_gaps: Vec<(i32, Gap)>,
    pub created_at_ms: i64,
}

/// A backfill as the registry holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillState {
    pub plan: BackfillPlan,
    /// Bumped by every [`crate::Coordinator::acquire_backfill_lease`].
    pub epoch: u64,
    /// When the handoff committed; `None` while the backfill runs.
    #[serde(default)]
    pub handed_off_at_ms: Option<i64>,
    /// What the handoff registered, over every file: rows of the table, events quarantined,
    /// parts (views' included). Zero until then: the staged files say it meanwhile.
    #[serde(default)]
    pub rows: u64,
    #[serde(default)]
    pub quarantined: u64,
    #[serde(default)]
    pub parts: u64,
    /// When it was cancelled: it can no longer hand off, and is forgotten once its objects are
    /// deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_at_ms: Option<i64>,
}

/// The parts made from one file of the snapshot, staged (registered nowhere a reader looks)
/// until the handoff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedFile {
    /// The file's position in the snapshot's manifest.
    pub index: u32,
    pub parts: Vec<PartRecord>,
    pub rows: u64,
    pub quarantined: u64,
    pub bytes_read: u64,
}

impl BackfillState {
    /// A backfill as its claim records it.
    pub(crate) fn claimed(plan: &BackfillPlan) -> BackfillState {
        BackfillState {
            plan: plan.clone(),
            epoch: 0,
            handed_off_at_ms: None,
            cancelled_at_ms: None,
            rows: 0,
            quarantined: 0,
            parts: 0,
        }
    }

    /// Records the handoff's time and what the staged files hold.
    pub(crate) fn handed_off<'a>(&mut self, files: impl IntoIterator<Item = &'a StagedFile>) {
        self.handed_off_at_ms = Some(now_ms());
        for f in files {
            self.rows += f.rows;
            self.quarantined += f.quarantined;
            self.parts += f.parts.len() as u64;
        }
    }
}

/// A backfill with what it staged so far and who runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillStatus {
    pub state: BackfillState,
    /// The process holding the backfill lease, if one does.
    pub holder: Option<String>,
    /// By file index.
    pub staged: BTreeMap<u32, StagedFile>,
}

/// Proof that this process runs the backfill, valid until another takes the backfill lease
/// (after this one's session ended).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillLease {
    pub id: String,
    pub holder: String,
    pub epoch: u64,
    /// Backend-specific fencing token (the ZooKeeper backfill znode's version).
    pub(crate) token: i64,
}

/// Wall-clock milliseconds, for the handoff's time.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What a claim finds under an id already claimed: the same plan is a resume.
pub(crate) fn reclaim(recorded: &BackfillPlan, plan: &BackfillPlan) -> Result<(), CoordError> {
    if recorded == plan {
        return Ok(());
    }
    Err(refused(
        &plan.id,
        "a backfill of another plan (snapshot, table or offsets) has this id; resume it with its own snapshot or choose another id".into(),
    ))
}

/// Why a handoff cannot happen yet, or at all, if it cannot.
pub(crate) fn check_handoff(state: &BackfillState, staged: usize) -> Result<(), CoordError> {
    let id = &state.plan.id;
    if state.cancelled_at_ms.is_some() {
        return Err(refused(
            id,
            format!("it was cancelled; `sluice backfill cancel --id {id}` finishes cancelling it"),
        ));
    }
    if staged != state.plan.files as usize {
        return Err(refused(
            id,
            format!(
                "{staged} of the snapshot's {} files are staged; the handoff waits for all",
                state.plan.files
            ),
        ));
    }
    Ok(())
}

/// Why a backfill cannot be cancelled: it was handed off already.
pub(crate) fn check_cancel(state: &BackfillState) -> Result<(), CoordError> {
    if state.handed_off_at_ms.is_some() {
        return Err(refused(
            &state.plan.id,
            "it was handed over to the stream already; its parts are the table's now".into(),
        ));
    }
    Ok(())
}

/// Why a backfill cannot be forgotten: it was not cancelled.
pub(crate) fn check_forget(state: &BackfillState) -> Result<(), CoordError> {
    if state.cancelled_at_ms.is_none() {
        return Err(refused(
            &state.plan.id,
            "only a cancelled backfill is forgotten".into(),
        ));
    }
    Ok(())
}

fn refused(id: &str, what: String) -> CoordError {
    CoordError::Conflict {
        at: format!("backfill {id}"),
        what,
        source: None,
    }
}
