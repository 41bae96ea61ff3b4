//! Replays: a range of a table's source offsets rebuilt from the topic and swapped in for the
//! parts that held it, with the old generation kept for a rollback.
//!
//! Per scope, the records whose source spans meet the range are exactly the ones holding the
//! range's rows (a scope's records never share an offset). A replay rebuilds the range after
//! widening it until no record straddles its edge, then swaps the new records for the old in
//! one change ([`crate::Coordinator::replace_range`]), under the merge leases of every scope it
//! touches, so a reader of a scope sees either generation, never both or neither. The old
//! records stay in the [`ReplayGeneration`] and their objects in retired sets kept until
//! `keep_until_ms` ([`crate::KeptFor`]); until then [`crate::Coordinator::roll_back_replay`]
//! restores them.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{KeptFor, OffsetSpan, PartRecord, Retired, SealedManifest};

/// A replay swapped in, as recorded until it is rolled back or collected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayGeneration {
    /// Letters, digits, `-` and `_`: it names the replay's objects.
    pub id: String,
    pub table: String,
    /// The time range asked for: source timestamps (ms since the epoch), `to_ms` exclusive;
    /// `None` means up to what was committed when the replay started.
    pub from_ms: i64,
    pub to_ms: Option<i64>,
    /// Per source partition, the offsets rebuilt (inclusive), once widened over the records
    /// that straddled the asked range. Partitions with nothing to rebuild are absent.
    pub ranges: Vec<OffsetSpan>,
    pub swapped_at_ms: i64,
    /// Until when the old generation's objects are kept for a rollback.
    pub keep_until_ms: i64,
    /// The live records replaced (every table the replay touched: the table, its views,
    /// quarantine).
    pub old: Vec<PartRecord>,
    /// The records registered instead.
    pub new: Vec<PartRecord>,
    /// Records replaced that were sealed into their scope's manifest, and the scopes whose
    /// manifest the swap replaced by one without them. A rollback registers them as live
    /// records (beside the new manifest).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub old_sealed: Vec<PartRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resealed: Vec<Resealed>,
}

/// A sealed scope whose manifest a replay rewrote without the parts it replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resealed {
    pub table: String,
    pub partition_value: String,
    /// The manifest the scope pointed at.
    pub replaced: SealedManifest,
    /// The one it points at after the swap; `None` when no part was left in it.
    pub manifest: Option<SealedManifest>,
}

impl ReplayGeneration {
    /// Every scope (table, partition value) the replay changes.
    pub fn scopes(&self) -> BTreeSet<(String, String)> {
        self.old
            .iter()
            .chain(&self.new)
            .chain(&self.old_sealed)
            .map(|p| (p.table.clone(), p.partition_value.clone()))
            .collect()
    }

    /// The retired sets the swap records: per scope, the old records' objects, kept until
    /// `keep_until_ms`.
    pub fn kept_sets(&self) -> Vec<Retired> {
        let old: Vec<PartRecord> = self.old.iter().chain(&self.old_sealed).cloned().collect();
        sets_of(&old, &format!("replay.{}", self.id), |_| {
            (
                self.swapped_at_ms,
                Some(KeptFor {
                    replay: self.id.clone(),
                    until_ms: self.keep_until_ms,
                }),
            )
        })
    }

    /// The retired sets of the manifests the swap replaced: deleted after the ordinary grace
    /// period (a rollback registers the sealed parts as live records, not the manifest).
    pub fn replaced_manifests(&self) -> Vec<Retired> {
        self.resealed
            .iter()
            .map(|r| Retired {
                table: r.table.clone(),
                name: format!("replay.{}.manifest.{}", self.id, r.partition_value),
                partition_value: r.partition_value.clone(),
                paths: vec![r.replaced.path.clone()],
                retired_at_ms: self.swapped_at_ms,
                kept_for: None,
            })
            .collect()
    }

    /// The records a rollback registers again: the live ones replaced and the sealed ones.
    pub fn restored(&self) -> Vec<PartRecord> {
        self.old.iter().chain(&self.old_sealed).cloned().collect()
    }

    /// The retired sets a rollback at `now_ms` records: per scope, the new records' objects,
    /// deleted after the ordinary grace period.
    pub fn rolled_back_sets(&self, now_ms: i64) -> Vec<Retired> {
        sets_of(&self.new, &format!("rollback.{}", self.id), |_| {
            (now_ms, None)
        })
    }
}

/// One retired set per scope of `records`, named `<prefix>.<value>`.
fn sets_of(
    records: &[PartRecord],
    prefix: &str,
    when: impl Fn(&str) -> (i64, Option<KeptFor>),
) -> Vec<Retired> {
    let mut out: Vec<Retired> = Vec::new();
    for p in records {
        match out
            .iter_mut()
            .find(|r| r.table == p.table && r.partition_value == p.partition_value)
        {
            Some(set) => set.paths.push(p.path.clone()),
            None => {
                let (retired_at_ms, kept_for) = when(&p.partition_value);
                out.push(Retired {
                    table: p.table.clone(),
                    name: format!("{prefix}.{}", p.partition_value),
                    partition_value: p.partition_value.clone(),
                    paths: vec![p.path.clone()],
                    retired_at_ms,
                    kept_for,
                });
            }
        }
    }
    out
}

/// Whether `id` may name a replay: 1 to 64 letters, digits, `-` and `_`.
pub fn valid_replay_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
