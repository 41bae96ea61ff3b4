//! What the part registry holds: part records, and per scope (one table's partition value) its
//! state: the merge lease epoch, and the manifest its parts were sealed into, if any.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Whether a part holds table rows or quarantined events.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum PartKind {
    #[default]
    Data,
    Quarantine,
}

impl fmt::Display for PartKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PartKind::Data => "data",
            PartKind::Quarantine => "quarantine",
        })
    }
}

/// The source offsets some of a part's rows came from: one partition's inclusive range.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OffsetSpan {
    pub topic: String,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// What the registry knows of one committed part. Small: the rows live in object storage.
///
/// A part written by a flush comes from one source partition (`topic`, `partition`, the
/// offsets, the unit's `lease_epoch`) and has level 0. A part a backfill wrote has level 0 too,
/// `partition` -1, and `spans`: the offsets of each partition the snapshot stands for. A merged part combines parts of several
/// partitions: its `topic` is empty, `partition` and the offsets are -1, `spans` say where its
/// rows came from, and `lease_epoch` is the epoch of the merge lease it was made under.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRecord {
    pub table: String,
    pub kind: PartKind,
    /// The partition-key value all rows of the part share (`""` when the table has none).
    pub partition_value: String,
    /// Object path relative to the storage root.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    pub topic: String,
    pub partition: i32,
    /// Offsets of the source messages this part's flush covered, inclusive.
    pub first_offset: i64,
    pub last_offset: i64,
    pub definition_version: u32,
    pub lease_epoch: u64,
    pub created_at_ms: i64,
    /// How many merges its rows went through: 0 for a flushed part.
    #[serde(default)]
    pub level: u32,
    /// How many parts the merge that made it replaced (0 for a flushed part).
    #[serde(default)]
    pub inputs: u32,
    /// For a merged or backfilled part: per source partition, the range of offsets its rows
    /// came from (for a backfill, what its snapshot stands for).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spans: Vec<OffsetSpan>,
    /// SHA-256 of the object, lowercase hex (empty where it was not computed: flushed parts).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub checksum: String,
    /// When the newest flushed part whose rows this part holds was committed (ms): a merged
    /// part inherits its newest input's, so merging does not make a scope look active.
    #[serde(default)]
    pub flushed_at_ms: i64,
    /// The storage endpoints known to hold a verified copy, when parts are replicated across
    /// several (empty with one storage URL). Copies stored after the commit are added by the
    /// repair.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
}

impl PartRecord {
    /// The registry key of the part, unique within table and partition value: its object's
    /// file name, prefixed `quarantine-` for quarantine parts (a table without a partition key
    /// has data and quarantine parts of one flush under the same value, and the same file name).
    pub fn name(&self) -> String {
        let file = self.path.rsplit('/').next().unwrap_or(&self.path);
        match self.kind {
            PartKind::Data => file.to_string(),
            PartKind::Quarantine => format!("quarantine-{file}"),
        }
    }

    /// Whether a merge made it (rather than a flush).
    pub fn is_merged(&self) -> bool {
        self.level > 0
    }

    /// Whether a backfill made it: rows from a snapshot's files, which stand for `spans`.
    pub fn is_backfilled(&self) -> bool {
        !self.is_merged() && !self.spans.is_empty()
    }

    /// Where its rows came from: the flush's one range, or a merged or backfilled part's spans.
    pub fn source_spans(&self) -> Vec<OffsetSpan> {
        if self.is_merged() || self.is_backfilled() {
            return self.spans.clone();
        }
        vec![OffsetSpan {
            topic: self.topic.clone(),
            partition: self.partition,
            first_offset: self.first_offset,
            last_offset: self.last_offset,
        }]
    }

    /// When its newest rows were flushed: for records written before that was recorded, the
    /// time the record was made.
    pub fn flushed_at(&self) -> i64 {
        if self.flushed_at_ms > 0 {
            self.flushed_at_ms
        } else {
            self.created_at_ms
        }
    }
}

/// A sealed scope's parts, written to object storage as one manifest: the registry then keeps
/// only this pointer instead of a record per part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedManifest {
    /// Object path of the manifest, relative to the storage root.
    pub path: String,
    /// SHA-256 of the manifest object, lowercase hex.
    pub checksum: String,
    pub parts: u64,
    pub rows: u64,
    pub sealed_at_ms: i64,
}

/// A scope's own state, kept in its directory znode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeState {
    /// The epoch of the newest merge lease taken on the scope.
    #[serde(default)]
    pub merge_epoch: u64,
    /// The manifest the scope's older parts were sealed into, if any.
    #[serde(default)]
    pub sealed: Option<SealedManifest>,
}

/// One scope of a table, as listed: its partition value, how many part records it holds, and
/// its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeSummary {
    pub partition_value: String,
    pub live_parts: usize,
    pub state: ScopeState,
}

/// A consistent reading of one scope: no merge swap, seal or merge lease happened while its
/// records were read, so every committed row is in exactly one of them (or in the manifest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeListing {
    pub table: String,
    pub partition_value: String,
    pub state: ScopeState,
    /// Changes with every swap, seal and merge lease of the scope (never with ingest commits).
    pub generation: i64,
    /// The live part records (both kinds), in name order.
    pub parts: Vec<PartRecord>,
    /// The worker holding the scope's merge lease, if any.
    pub merge_holder: Option<String>,
}

/// The right to merge (and seal) one scope, valid until a newer merge lease of it is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeLease {
    pub table: String,
    pub partition_value: String,
    pub worker_id: String,
    /// Strictly increasing per scope; recorded in the names of the parts merged under it.
    pub epoch: u64,
    /// Backend-specific fencing token (the ZooKeeper scope znode's version).
    pub(crate) token: i64,
}

/// Objects a swap or a seal replaced, kept until `retired_at_ms` plus the grace period so that
/// queries reading them can finish; then deleted, and the record forgotten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retired {
    pub table: String,
    /// Unique within the table: the object path of the part (or manifest) that replaced them.
    pub name: String,
    pub partition_value: String,
    pub paths: Vec<String>,
    pub retired_at_ms: i64,
    /// Set for the generation a replay replaced ([`crate::ReplayGeneration`]): the objects are
    /// kept for a rollback until then, and deleted with [`crate::Coordinator::collect_replay`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_for: Option<KeptFor>,
}

/// Why a retired set is kept past the grace period: the replay it can roll back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptFor {
    pub replay: String,
    pub until_ms: i64,
}

impl Retired {
    /// Whether its objects may be deleted at `now_ms`, with `grace_ms` for ordinary sets.
    pub fn due(&self, now_ms: i64, grace_ms: i64) -> bool {
        match &self.kept_for {
            Some(k) => k.until_ms <= now_ms,
            None => self.retired_at_ms + grace_ms <= now_ms,
        }
    }
}
