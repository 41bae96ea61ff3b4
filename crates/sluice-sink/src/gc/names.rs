//! Object names under a table's directory, parsed back: flushed parts, merged parts,
//! manifests.

use sluice_coord::UnitId;

/// A flushed part's file name `<topic>-<partition>-<first>-<last>-e<epoch>-v<version>.parquet`,
/// parsed back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartName {
    pub unit: UnitId,
    pub first_offset: i64,
    pub last_offset: i64,
    pub lease_epoch: u64,
    pub definition_version: u32,
}

/// Parses a flushed part's path (see [`PartName`]); `None` if it is not a flushed part.
pub fn parse_part_name(path: &str) -> Option<PartName> {
    let name = path.rsplit('/').next()?.strip_suffix(".parquet")?;
    let mut it = name.rsplitn(6, '-');
    let definition_version = it.next()?.strip_prefix('v')?.parse().ok()?;
    let lease_epoch = it.next()?.strip_prefix('e')?.parse().ok()?;
    let last_offset = it.next()?.parse().ok()?;
    let first_offset = it.next()?.parse().ok()?;
    let partition = it.next()?.parse().ok()?;
    let topic = it.next()?;
    Some(PartName {
        unit: UnitId::new(topic, partition),
        first_offset,
        last_offset,
        lease_epoch,
        definition_version,
    })
}

/// A merged part's file name `m<level>-<hash>-e<merge epoch>-v<version>.parquet`, parsed back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedName {
    /// How many merges its rows went through (at least 1).
    pub level: u32,
    /// The hash naming the merge (its inputs), letters and digits.
    pub hash: String,
    /// The epoch of the merge lease it was written under.
    pub merge_epoch: u64,
    pub definition_version: u32,
}

/// Parses a merged part's path (see [`MergedName`]); `None` if it is not a merged part. A
/// flushed part's name never parses as one: it has six dash-separated fields, a merged part's
/// exactly four.
pub fn parse_merged_name(path: &str) -> Option<MergedName> {
    let name = path.rsplit('/').next()?.strip_suffix(".parquet")?;
    let fields: Vec<&str> = name.split('-').collect();
    let [level, hash, epoch, version] = fields.as_slice() else {
        return None;
    };
    let level: u32 = digits(level.strip_prefix('m')?)?;
    let hash_ok = !hash.is_empty() && hash.bytes().all(|b| b.is_ascii_alphanumeric());
    if level == 0 || !hash_ok {
        return None;
    }
    Some(MergedName {
        level,
        hash: hash.to_string(),
        merge_epoch: digits(epoch.strip_prefix('e')?)?,
        definition_version: digits(version.strip_prefix('v')?)?,
    })
}

/// A number written in plain decimal digits (no sign, no blanks).
pub(super) fn digits<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The merge epoch in a manifest's file name `seal-e<epoch>-<ms>.json`, if it has that form.
pub(super) fn manifest_epoch(path: &str) -> Option<u64> {
    let name = path.rsplit('/').next()?.strip_suffix(".json")?;
    let (epoch, ms) = name.strip_prefix("seal-e")?.split_once('-')?;
    digits::<i64>(ms)?;
    digits(epoch)
}

/// What an object under a table's directory is, by its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ObjectKind {
    Flushed(PartName),
    Merged(MergedName),
    /// Anything under `<table>/manifests/<segment>/`, with the merge epoch of its name.
    Manifest(Option<u64>),
    /// A backfill's or a view history's part: its own run deletes what it does not register
    /// (runs of later epochs sweep earlier ones'), so collection leaves it alone.
    Spanned,
    /// A replay's part: its run holds the merge leases of the scopes it writes to until it
    /// swaps, so one nobody references once those are free never will be.
    Replayed,
    Other,
}

pub(super) fn classify(table: &str, path: &str) -> ObjectKind {
    let Some(rest) = path.strip_prefix(table).and_then(|r| r.strip_prefix('/')) else {
        return ObjectKind::Other;
    };
    let dirs: Vec<&str> = rest.split('/').collect();
    match dirs.as_slice() {
        ["manifests", _, _] => ObjectKind::Manifest(manifest_epoch(path)),
        ["data", _, _] | ["quarantine", _] => {
            if let Some(name) = parse_part_name(path) {
                ObjectKind::Flushed(name)
            } else if let Some(name) = parse_merged_name(path) {
                ObjectKind::Merged(name)
            } else if crate::parse_replay_name(path).is_some() {
                ObjectKind::Replayed
            } else if crate::parse_backfill_name(path).is_some()
                || crate::parse_history_name(path).is_some()
            {
                ObjectKind::Spanned
            } else {
                ObjectKind::Other
            }
        }
        _ => ObjectKind::Other,
    }
}
