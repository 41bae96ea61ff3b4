//! The plan a backfill records: checked against the configuration and against what the topic
//! still holds.

use std::collections::BTreeMap;

use sluice_config::Config;
use sluice_coord::{BackfillPlan, Gap};

use crate::{BackfillError, Snapshot};

/// Per partition of the topic, the offsets it holds now: (low watermark, high watermark).
pub type Retained = BTreeMap<i32, (i64, i64)>;

/// The plan for loading `snapshot` as backfill `id`, or why it cannot be loaded.
///
/// Refused: an unknown table or one without a topic; a topic another table also reads (the
/// handoff sets the offsets of the topic's partitions, which would skip the snapshot's events
/// for that table); a partition the manifest misses or the topic lacks; an offset past the
/// partition's end; and, unless `accept_gap`, an offset the topic no longer holds (retention
/// deleted the events between the snapshot and what the stream can still read; accepted, the
/// gap is recorded in the plan).
pub fn plan(
    snapshot: &Snapshot,
    config: &Config,
    id: &str,
    retained: &Retained,
    accept_gap: bool,
    now_ms: i64,
) -> Result<BackfillPlan, BackfillError> {
    let refuse = |problem: String| BackfillError::Plan {
        table: snapshot.table.clone(),
        problem,
    };
    check_id(id).map_err(refuse)?;
    let table = config.table(&snapshot.table).ok_or_else(|| {
        refuse("the configuration has no such table; name a `[[table]]` that reads a topic".into())
    })?;
    let topic = table.topic.clone().ok_or_else(|| {
        refuse("it reads no topic (a view's target): backfill the table the view reads".into())
    })?;
    if let Some(other) = config
        .tables
        .iter()
        .find(|t| t.name != table.name && t.topic.as_deref() == Some(&topic))
    {
        return Err(refuse(format!(
            "table `{}` reads topic `{topic}` too, and the handoff moves the topic's offsets for every table reading it: `{}` would miss the snapshot's events",
            other.name, other.name
        )));
    }
    if let Some(p) = retained.keys().find(|p| !snapshot.offsets.contains_key(p)) {
        return Err(refuse(format!(
            "the manifest gives no offset for partition {p} of topic `{topic}`: give every partition one (0 where the snapshot holds none of its events)"
        )));
    }
    let mut accepted_gaps = Vec::new();
    for (&p, &offset) in &snapshot.offsets {
        let &(low, high) = retained.get(&p).ok_or_else(|| {
            refuse(format!(
                "topic `{topic}` has no partition {p} (it has {})",
                retained.len()
            ))
        })?;
        if offset > high {
            return Err(refuse(format!(
                "partition {p} starts the stream at offset {offset}, past the topic's end {high}: the snapshot claims events the topic never had"
            )));
        }
        if offset < low {
            if !accept_gap {
                return Err(BackfillError::Gap {
                    topic: topic.clone(),
                    partition: p,
                    from: offset,
                    to: low,
                    missing: low - offset,
                });
            }
            accepted_gaps.push((
                p,
                Gap {
                    from: offset,
                    to: low,
                    found_at_ms: now_ms,
                    worker: format!("backfill {id} (accepted)"),
                },
            ));
        }
    }
    Ok(BackfillPlan {
        id: id.to_string(),
        table: table.name.clone(),
        topic,
        offsets: snapshot
            .offsets
            .iter()
            .map(|(&p, &o)| (p, o.max(retained[&p].0)))
            .collect(),
        snapshot_sha256: snapshot.sha256.clone(),
        files: u32::try_from(snapshot.files.len()).unwrap_or(u32::MAX),
        accepted_gaps,
        created_at_ms: now_ms,
    })
}

fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 100
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "backfill id {id:?} must be 1 to 100 letters, digits, `-`, `_` or `.`"
        ))
    }
}

#[cfg(test)]
mod tests;
