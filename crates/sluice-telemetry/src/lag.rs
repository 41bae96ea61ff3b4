//! Lag of every partition of the configured topics, from the coordinator and Kafka alone.
//!
//! A partition's lag is measured from its committed offset (what is durably ingested), not from
//! what a worker has read: events buffered but not committed are still lag, because a crash
//! would re-read them. Lag in seconds is the age of the oldest uncommitted message, from its
//! Kafka timestamp: a backlog of old events shows as old even if it is short.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sluice_config::{Config, StartFrom};
use sluice_coord::{assignment, Coordinator, Gap, Member, UnitId};
use sluice_source::KafkaProbe;

use crate::TelemetryError;

/// How long the probe for the oldest uncommitted message's timestamp may take.
const TIMESTAMP_PROBE_WAIT: Duration = Duration::from_secs(3);

/// One partition's state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnitLag {
    pub topic: String,
    pub partition: i32,
    /// Worker holding the lease, if any.
    pub owner: Option<String>,
    /// Worker rendezvous hashing assigns it to among the live members, if any.
    pub assigned: Option<String>,
    pub epoch: u64,
    /// Next offset to ingest as committed; `None` before the first commit.
    pub committed: Option<i64>,
    pub low_watermark: i64,
    pub high_watermark: i64,
    /// Messages not yet committed.
    pub lag_messages: i64,
    /// Age of the oldest uncommitted message; 0 when caught up, `None` when its timestamp
    /// could not be read.
    pub lag_seconds: Option<f64>,
    /// Messages recorded as deleted by retention before they were ingested ([`Gap`]s).
    pub skipped_messages: u64,
    /// The last such gap recorded, if any.
    pub last_gap: Option<Gap>,
    /// Messages below the broker's oldest offset but above the committed one: deleted by
    /// retention and not read; recorded as a gap when a worker resumes the partition.
    pub deleted_unread: i64,
}

/// Totals of one topic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopicLag {
    pub topic: String,
    pub partitions: usize,
    /// Partitions with no lease holder.
    pub unowned: usize,
    /// Sum of the committed offsets (0 for partitions never committed): its rate of change is
    /// the topic's ingestion rate.
    pub committed_total: i64,
    pub high_watermark_total: i64,
    pub lag_messages: i64,
    /// The largest lag in seconds among the partitions.
    pub max_lag_seconds: Option<f64>,
    /// Messages of the topic's partitions recorded as deleted by retention before ingestion.
    pub skipped_messages: u64,
}

/// The whole picture at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetReport {
    pub taken_at_ms: i64,
    pub members: Vec<Member>,
    pub units: Vec<UnitLag>,
    pub topics: Vec<TopicLag>,
}

impl FleetReport {
    pub fn lag_messages(&self) -> i64 {
        self.topics.iter().map(|t| t.lag_messages).sum()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What a worker already knows of its own partitions: the offset and Kafka timestamp of the
/// first message it holds uncommitted. Where that is the oldest uncommitted message, the report
/// takes it instead of asking Kafka.
pub type OldestBuffered = HashMap<UnitId, (i64, i64)>;

/// Reads the state of every partition of the config's topics: owners and committed offsets
/// from the coordinator, watermarks and the oldest uncommitted message's timestamp from Kafka
/// (unless `buffered` has it).
pub async fn fleet_report(
    config: &Config,
    coord: &dyn Coordinator,
    probe: &Arc<KafkaProbe>,
    buffered: &OldestBuffered,
) -> Result<FleetReport, TelemetryError> {
    let (members, _) = coord.watch_members().await?;
    let known: HashMap<UnitId, sluice_coord::UnitState> = coord
        .list_units()
        .await?
        .into_iter()
        .map(|u| (u.unit.clone(), u))
        .collect();
    let topics = config.topics();
    // One read per topic: its recorded retention gaps.
    let mut gaps = HashMap::new();
    for topic in &topics {
        gaps.insert(topic.clone(), coord.retention_gaps(topic).await?);
    }
    let p = Arc::clone(probe);
    let watermarks = tokio::task::spawn_blocking(move || {
        let mut all = BTreeMap::new();
        for topic in topics {
            let partitions = p.partitions(&topic)?;
            for (p, w) in p.watermarks(&topic, &partitions)? {
                all.insert(UnitId::new(topic.clone(), p), w);
            }
        }
        Ok::<_, sluice_source::SourceError>(all)
    })
    .await
    .map_err(|source| TelemetryError::Task {
        task: "reading watermarks",
        source,
    })??;

    let mut units = Vec::with_capacity(watermarks.len());
    let mut probes = Vec::new();
    let mut stamps = HashMap::new();
    for (unit, &(low, high)) in &watermarks {
        let state = known.get(unit);
        let committed = state.and_then(|s| s.next_offset);
        // Where ingestion resumes: the committed offset, or where a first owner would start;
        // never before the oldest message the broker still has.
        let start = committed
            .unwrap_or(match config.kafka.start_from {
                StartFrom::Earliest => low,
                StartFrom::Latest => high,
            })
            .max(low);
        let lag_messages = (high - start).max(0);
        if lag_messages > 0 {
            match buffered.get(unit) {
                // Still uncommitted: nothing before it is, so it is the oldest.
                Some(&(offset, ts)) if offset >= start => {
                    stamps.insert((unit.topic.clone(), unit.partition), ts);
                }
                _ => probes.push((unit.topic.clone(), unit.partition, start)),
            }
        }
        let recorded = gaps
            .get(&unit.topic)
            .and_then(|g| g.partitions.get(&unit.partition));
        units.push(UnitLag {
            skipped_messages: recorded.map_or(0, |g| g.skipped_messages),
            last_gap: recorded.and_then(|g| g.last.last().cloned()),
            deleted_unread: committed.map_or(0, |c| (low - c).max(0)),
            topic: unit.topic.clone(),
            partition: unit.partition,
            owner: state.and_then(|s| s.holder.clone()),
            assigned: assignment::owner(unit, &members).map(|m| m.id.clone()),
            epoch: state.map_or(0, |s| s.epoch),
            committed,
            low_watermark: low,
            high_watermark: high,
            lag_messages,
            lag_seconds: (lag_messages == 0).then_some(0.0),
        });
    }

    let p = Arc::clone(probe);
    let probed =
        tokio::task::spawn_blocking(move || p.timestamps_at(&probes, TIMESTAMP_PROBE_WAIT))
            .await
            .map_err(|source| TelemetryError::Task {
                task: "reading timestamps",
                source,
            })??;
    stamps.extend(probed);
    let taken_at_ms = now_ms();
    for u in &mut units {
        if u.lag_messages > 0 {
            u.lag_seconds = stamps
                .get(&(u.topic.clone(), u.partition))
                .map(|&ts| (taken_at_ms - ts).max(0) as f64 / 1000.0);
        }
    }
    let topics = totals(&units);
    Ok(FleetReport {
        taken_at_ms,
        members,
        units,
        topics,
    })
}

/// Per-topic totals, in topic order.
pub fn totals(units: &[UnitLag]) -> Vec<TopicLag> {
    let mut by_topic: BTreeMap<&str, TopicLag> = BTreeMap::new();
    for u in units {
        let t = by_topic.entry(&u.topic).or_insert_with(|| TopicLag {
            topic: u.topic.clone(),
            partitions: 0,
            unowned: 0,
            committed_total: 0,
            high_watermark_total: 0,
            lag_messages: 0,
            max_lag_seconds: Some(0.0),
            skipped_messages: 0,
        });
        t.partitions += 1;
        t.unowned += usize::from(u.owner.is_none());
        t.committed_total += u.committed.unwrap_or(0);
        t.high_watermark_total += u.high_watermark;
        t.lag_messages += u.lag_messages;
        t.skipped_messages += u.skipped_messages;
        // An unknown age makes the maximum unknown, unless a known one is already larger.
        t.max_lag_seconds = match (t.max_lag_seconds, u.lag_seconds) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
    }
    by_topic.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(topic: &str, p: i32, owner: Option<&str>, lag: i64, secs: Option<f64>) -> UnitLag {
        UnitLag {
            topic: topic.into(),
            partition: p,
            owner: owner.map(Into::into),
            assigned: None,
            epoch: 1,
            committed: Some(10),
            low_watermark: 0,
            high_watermark: 10 + lag,
            lag_messages: lag,
            lag_seconds: secs,
            skipped_messages: 0,
            last_gap: None,
            deleted_unread: 0,
        }
    }

    #[test]
    fn totals_sum_per_topic_and_keep_the_worst_age() {
        let t = totals(&[
            unit("a", 0, Some("w1"), 5, Some(3.0)),
            unit("a", 1, None, 0, Some(0.0)),
            unit("b", 0, Some("w2"), 7, Some(9.5)),
        ]);
        assert_eq!(t.len(), 2);
        assert_eq!(
            (
                t[0].partitions,
                t[0].unowned,
                t[0].lag_messages,
                t[0].max_lag_seconds
            ),
            (2, 1, 5, Some(3.0))
        );
        assert_eq!((t[0].committed_total, t[0].high_watermark_total), (20, 25));
        assert_eq!((t[1].lag_messages, t[1].max_lag_seconds), (7, Some(9.5)));
    }

    #[test]
    fn an_unknown_age_makes_the_topic_age_unknown() {
        let t = totals(&[
            unit("a", 0, None, 5, None),
            unit("a", 1, None, 1, Some(2.0)),
        ]);
        assert_eq!(t[0].max_lag_seconds, None);
    }
}
