//! `[merge]`: background compaction of a scope's parts.
//!
//! A scope is the set of parts that may be merged together: one table, one partition-key value,
//! one definition version and one kind (data or quarantine). Every flush adds parts to its
//! scopes; merges replace many small parts by fewer large ones.

use serde::Deserialize;

use crate::{invalid, positive, ConfigError};

/// How workers merge parts, and when ingestion waits for merges.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MergeConfig {
    /// Whether workers merge at all. When false, parts still count against
    /// `hard_parts_per_scope`, so ingestion still pauses a scope that reaches it.
    /// Default: true.
    pub enabled: bool,
    /// Parts merged at once: a level's parts merge in groups of this many, and no merge takes
    /// more. At least 2. Larger means fewer merges and fewer levels for the same data, but
    /// more inputs read at once by each merge. Default: 10.
    pub fan_in: usize,
    /// A merge's output (the sum of its inputs' bytes) is kept at or below this, in bytes;
    /// parts at or above it are never merged again. Default: 1073741824 (1 GiB).
    pub target_part_bytes: u64,
    /// The most times merges rewrite a row. A part's level counts the merges its rows went
    /// through (a flushed part is level 0, a merge's output one above its highest input), and
    /// parts at this level are never merged again, so every byte is written at most
    /// 1 + max_rewrites times. At least 1 (to stop merging, set `enabled = false`).
    /// Default: 4.
    pub max_rewrites: u32,
    /// When merges turn urgent, counted in parts an urgent merge could take (below the target
    /// size and two levels or more below `max_rewrites`): past half this many, merges take the
    /// smallest parts first, whatever their level, in groups that need ever fewer parts, down
    /// to 2 at this many. Keep it well above what a steady flow keeps in merging (about the
    /// partitions feeding a scope plus `fan_in` times `max_rewrites`): urgent merges spend the
    /// level budget early and leave more, smaller parts at the last level. Default: 300.
    pub soft_parts_per_scope: usize,
    /// Part count of a scope at which ingestion pauses the partitions feeding it until merges
    /// bring it down. Must exceed `soft_parts_per_scope`, and be at most 5000: a scope's part
    /// records are the children of one ZooKeeper znode, and one listing answer is limited to
    /// about 1 MB (`jute.maxbuffer`), about 5000 part names of up to 200 bytes. A scope holds
    /// at least its bytes over `target_part_bytes` parts: choose the target and the partition
    /// key's granularity to keep that well below. Default: 1000.
    pub hard_parts_per_scope: usize,
    /// A scope whose parts are all at least this old, in milliseconds (no flush, nor merge
    /// commit, for that long), gets its final merges (into as few parts as
    /// `target_part_bytes` allows) and is then sealed. Default: 3600000 (1 h).
    pub quiet_after_ms: u64,
    /// How long after a merge is committed the objects it replaced are deleted, in
    /// milliseconds, so queries that started reading them can finish. Default: 600000 (10 min).
    pub grace_ms: u64,
    /// Merges one worker runs at once. Default: 1.
    pub max_concurrent: usize,
    /// What one running merge is counted for against `worker.memory_budget_bytes`, in bytes
    /// (its inputs' row groups being read, the merged rows and the encoder's buffers). At most
    /// half the budget, so ingestion always keeps the other half. Default: none, which counts
    /// 67108864 (64 MiB) or half the budget, whichever is smaller (see
    /// [`crate::Config::merge_memory_bytes`]), so a small budget stays valid.
    pub memory_bytes: Option<u64>,
    /// How often a worker looks for merges to run, in milliseconds. A busy scope needs more
    /// than one merge per interval (64 partitions flushing every 10 s need about 0.7 a second
    /// with the defaults), so a worker should look again as soon as a merge ends.
    /// Default: 5000 (5 s).
    pub check_interval_ms: u64,
}

impl Default for MergeConfig {
    fn default() -> Self {
        MergeConfig {
            enabled: true,
            fan_in: 10,
            target_part_bytes: 1024 * 1024 * 1024,
            max_rewrites: 4,
            soft_parts_per_scope: 300,
            hard_parts_per_scope: 1000,
            quiet_after_ms: 3_600_000,
            grace_ms: 600_000,
            max_concurrent: 1,
            memory_bytes: None,
            check_interval_ms: 5_000,
        }
    }
}

impl MergeConfig {
    /// The largest `hard_parts_per_scope` accepted: a scope's part records are listed in one
    /// ZooKeeper answer, limited to about 1 MB.
    pub const MAX_HARD_PARTS_PER_SCOPE: usize = 5000;
    /// What one merge is counted for when `memory_bytes` is left out and the budget is at
    /// least twice this: 64 MiB.
    pub const DEFAULT_MEMORY_BYTES: u64 = 64 * 1024 * 1024;

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.validate_fan_in()?;
        positive("merge.target_part_bytes", self.target_part_bytes)?;
        self.validate_max_rewrites()?;
        self.validate_parts_per_scope()?;
        positive("merge.quiet_after_ms", self.quiet_after_ms)?;
        positive("merge.grace_ms", self.grace_ms)?;
        positive("merge.max_concurrent", self.max_concurrent as u64)?;
        if let Some(bytes) = self.memory_bytes {
            positive("merge.memory_bytes", bytes)?;
        }
        positive("merge.check_interval_ms", self.check_interval_ms)
    }

    /// A merge of one part would rewrite it without reducing the count.
    fn validate_fan_in(&self) -> Result<(), ConfigError> {
        if self.fan_in >= 2 {
            return Ok(());
        }
        Err(invalid(
            "merge.fan_in",
            format!("{} would merge fewer than 2 parts at once", self.fan_in),
            format!(
                "use at least 2, e.g. {} (the default)",
                MergeConfig::default().fan_in
            ),
        ))
    }

    /// With 0, a flushed part would already be at the last level and nothing would merge.
    fn validate_max_rewrites(&self) -> Result<(), ConfigError> {
        if self.max_rewrites >= 1 {
            return Ok(());
        }
        Err(invalid(
            "merge.max_rewrites",
            "is 0, so no part could ever be merged",
            format!(
                "use at least 1, e.g. {} (the default), or set merge.enabled = false",
                MergeConfig::default().max_rewrites
            ),
        ))
    }

    /// Urgent merges must start before ingestion pauses, and the hard limit must stay listable.
    fn validate_parts_per_scope(&self) -> Result<(), ConfigError> {
        let (soft, hard) = (self.soft_parts_per_scope, self.hard_parts_per_scope);
        positive("merge.soft_parts_per_scope", soft as u64)?;
        if soft >= hard {
            return Err(invalid(
                "merge.hard_parts_per_scope",
                format!("{hard} does not exceed merge.soft_parts_per_scope ({soft}), so ingestion would pause before merges turn urgent"),
                "make it larger than the soft limit, e.g. three times it",
            ));
        }
        let max = MergeConfig::MAX_HARD_PARTS_PER_SCOPE;
        if hard > max {
            return Err(invalid(
                "merge.hard_parts_per_scope",
                format!("{hard} exceeds {max}: a scope's part records are the children of one ZooKeeper znode, and one listing answer is limited to about 1 MB"),
                format!("use at most {max}, e.g. {} (the default)", MergeConfig::default().hard_parts_per_scope),
            ));
        }
        Ok(())
    }
}
