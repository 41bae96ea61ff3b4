//! What the registry says was committed, read the way a reader must: every scope's live
//! records, the parts of sealed scopes' manifests (read and checksummed here, not through the
//! product), and the objects merges and seals replaced that wait for their grace period; and
//! what each part's record must satisfy on its own (its name, its checksum, its source spans).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{ensure, Context, Result};
use serde::Deserialize;
use sluice_coord::{Coordinator, PartKind, PartRecord};

use super::Objects;

/// What the registry says was committed.
#[derive(Debug, Clone)]
pub struct Committed {
    /// Every live part by table: live records and the parts of sealed scopes' manifests.
    pub parts: BTreeMap<String, Vec<PartRecord>>,
    pub offsets: BTreeMap<i32, Option<i64>>,
    /// Objects that may be in storage without being parts: replaced objects still in their
    /// grace period, and current manifests.
    pub other_objects: BTreeSet<String>,
}

/// The part of a manifest object the checker reads.
#[derive(Deserialize)]
struct Manifest {
    parts: Vec<PartRecord>,
}

impl Committed {
    /// Reads the live parts of `tables` (manifests from `objects`) and the committed offsets of
    /// `topic`.
    pub async fn read(
        coord: &dyn Coordinator,
        objects: &Objects,
        topic: &str,
        tables: &[String],
    ) -> Result<Committed> {
        let mut parts = BTreeMap::new();
        let mut other_objects = BTreeSet::new();
        for t in tables {
            let mut live = Vec::new();
            for scope in coord.list_scopes(t).await? {
                let listing = coord.read_scope(t, &scope.partition_value).await?;
                live.extend(listing.parts);
                if let Some(m) = listing.state.sealed {
                    let bytes = objects.get(&m.path).await?;
                    ensure!(
                        sha256_hex(&bytes) == m.checksum,
                        "manifest {} does not match its checksum",
                        m.path
                    );
                    let manifest: Manifest = serde_json::from_slice(&bytes)
                        .with_context(|| format!("manifest {}", m.path))?;
                    ensure!(
                        manifest.parts.len() as u64 == m.parts,
                        "manifest {} lists {} parts, its pointer says {}",
                        m.path,
                        manifest.parts.len(),
                        m.parts
                    );
                    live.extend(manifest.parts);
                    other_objects.insert(m.path);
                }
            }
            for r in coord.list_retired(t).await? {
                other_objects.extend(r.paths);
            }
            parts.insert(t.clone(), live);
        }
        let offsets = coord
            .list_units()
            .await?
            .into_iter()
            .filter(|u| u.unit.topic == topic)
            .map(|u| (u.unit.partition, u.next_offset))
            .collect();
        Ok(Committed {
            parts,
            offsets,
            other_objects,
        })
    }

    /// The parts of one table (none if it has none).
    pub fn of(&self, table: &str) -> &[PartRecord] {
        self.parts.get(table).map_or(&[], Vec::as_slice)
    }
}

pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// (topic, partition, first, last) of the offsets a part's rows came from: its flush's range,
/// or a merged part's spans.
pub(super) fn spans(part: &PartRecord) -> Vec<(String, i32, i64, i64)> {
    if part.level == 0 && !is_backfill(part) {
        return vec![(
            part.topic.clone(),
            part.partition,
            part.first_offset,
            part.last_offset,
        )];
    }
    part.spans
        .iter()
        .map(|s| (s.topic.clone(), s.partition, s.first_offset, s.last_offset))
        .collect()
}

/// Whether a backfill made the part: level 0, from no one partition, with the spans its
/// snapshot stands for.
pub(super) fn is_backfill(part: &PartRecord) -> bool {
    part.level == 0 && part.partition == -1 && !part.spans.is_empty()
}

/// Whether a row read from `topic`/`partition` (at `offset`, if it has one) is one the part
/// may hold.
pub(super) fn covers(part: &PartRecord, topic: &str, partition: i32, offset: Option<i64>) -> bool {
    spans(part).iter().any(|(t, p, first, last)| {
        t == topic && *p == partition && offset.is_none_or(|o| (*first..=*last).contains(&o))
    })
}

/// [`covers`] for a row of the events table, whose topic every span shares.
pub(super) fn covers_partition(part: &PartRecord, partition: i32, offset: i64) -> bool {
    spans(part)
        .iter()
        .any(|(_, p, first, last)| *p == partition && (*first..=*last).contains(&offset))
}

/// A part is named after what made it: a flush after its unit, offsets, lease epoch and
/// definition version; a merge `m<level>-<16 hex digits>-e<merge epoch>-v<version>`. Either way
/// under its table's `data/` or `quarantine/` directory, with sane spans.
pub(super) fn check_name(table: &str, part: &PartRecord) -> Result<()> {
    ensure!(
        part.table == table,
        "part {} of table {table} says table {}",
        part.path,
        part.table
    );
    let dir = match part.kind {
        PartKind::Data => format!("{table}/data/"),
        PartKind::Quarantine => format!("{table}/quarantine/"),
    };
    let file = part.path.rsplit('/').next().unwrap_or_default();
    ensure!(
        part.path.starts_with(&dir),
        "part {} is not under {dir}",
        part.path
    );
    if is_backfill(part) && file.starts_with("rp.") {
        // A replay's: rp.<id>.t<run>.p<partition>.c<chunk>.v<version>.parquet
        let suffix = format!(".v{}.parquet", part.definition_version);
        let middle = file
            .strip_prefix("rp.")
            .and_then(|rest| rest.strip_suffix(&suffix))
            .unwrap_or_default();
        let mut fields = middle.rsplitn(4, '.');
        let numbered = |f: Option<&str>, tag: char| {
            f.and_then(|f| f.strip_prefix(tag))
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        };
        ensure!(
            numbered(fields.next(), 'c')
                && numbered(fields.next(), 'p')
                && numbered(fields.next(), 't')
                && fields.next().is_some_and(|id| !id.is_empty()),
            "replayed part {} is not named rp.<id>.t<run>.p<partition>.c<chunk>{suffix}",
            part.path
        );
    } else if is_backfill(part) {
        // bf.<id>.f<file>.c<chunk>.e<backfill lease epoch>.v<version>.parquet, or a view's
        // history: vh.<view>.s<scope>.c<chunk>.e<history lease epoch>.v<version>.parquet
        let suffix = format!(
            ".e{}.v{}.parquet",
            part.lease_epoch, part.definition_version
        );
        let (middle, tag) = match file.strip_prefix("bf.") {
            Some(rest) => (rest.strip_suffix(&suffix), 'f'),
            None => (
                file.strip_prefix("vh.")
                    .and_then(|rest| rest.strip_suffix(&suffix)),
                's',
            ),
        };
        let mut fields = middle.unwrap_or_default().rsplitn(3, '.');
        let numbered = |f: Option<&str>, tag: char| {
            f.and_then(|f| f.strip_prefix(tag))
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        };
        ensure!(
            numbered(fields.next(), 'c')
                && numbered(fields.next(), tag)
                && fields.next().is_some_and(|id| !id.is_empty()),
            "spanned part {} is not named bf.<id>.f<file>.c<chunk>{suffix} (a backfill's) or vh.<view>.s<scope>.c<chunk>{suffix} (a view history's)",
            part.path
        );
    } else if part.level == 0 {
        let want = format!(
            "{}-{}-{:020}-{:020}-e{}-v{}.parquet",
            part.topic,
            part.partition,
            part.first_offset,
            part.last_offset,
            part.lease_epoch,
            part.definition_version
        );
        ensure!(
            file == want,
            "flushed part {} is not named {want}",
            part.path
        );
    } else {
        let prefix = format!("m{}-", part.level);
        let suffix = format!(
            "-e{}-v{}.parquet",
            part.lease_epoch, part.definition_version
        );
        let hash = file
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(&suffix))
            .unwrap_or_default();
        ensure!(
            hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
            "merged part {} is not named {prefix}<16 hex digits>{suffix}",
            part.path
        );
        ensure!(
            part.inputs >= 2,
            "merged part {} replaced {} parts",
            part.path,
            part.inputs
        );
        ensure!(
            !part.spans.is_empty(),
            "merged part {} has no source spans",
            part.path
        );
    }
    for (_, _, first, last) in spans(part) {
        ensure!(
            first <= last,
            "part {} has offsets {first}..{last}",
            part.path
        );
    }
    Ok(())
}

/// A part's recorded checksum, where it has one, is its object's SHA-256.
pub(super) fn check_checksum(part: &PartRecord, bytes: &[u8]) -> Result<()> {
    if part.checksum.is_empty() {
        ensure!(part.level == 0, "merged part {} has no checksum", part.path);
        return Ok(());
    }
    ensure!(
        sha256_hex(bytes) == part.checksum,
        "part {} does not match its checksum",
        part.path
    );
    Ok(())
}
