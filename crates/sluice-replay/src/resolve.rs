//! The time range asked for, as offsets: per partition, from the first message at or after
//! `from`, up to (not including) the first at or after `to`, and never past the offset
//! committed when the replay started: later offsets are the stream's, not the replay's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_config::KafkaConfig;
use sluice_coord::{Coordinator, UnitId};
use sluice_source::KafkaProbe;

use crate::range::Ranges;
use crate::{coord_err, ReplayError};

/// How long the check of a broker's answer waits for the message it names.
const CHECK_WAIT: Duration = Duration::from_secs(5);

/// Per partition, the next offset committed when the replay started (0 if none).
pub type Committed = BTreeMap<i32, i64>;

fn source_err(what: &str) -> impl Fn(sluice_source::SourceError) -> ReplayError + '_ {
    move |source| ReplayError::Source {
        what: what.to_string(),
        source,
    }
}

/// The offsets `[from_ms, to_ms)` stands for in each partition of `topic`, inclusive, with what
/// was committed; partitions with nothing committed in the range are absent.
pub async fn asked_range(
    kafka: &KafkaConfig,
    coord: &dyn Coordinator,
    topic: &str,
    from_ms: i64,
    to_ms: Option<i64>,
) -> Result<(Ranges, Committed), ReplayError> {
    let (kafka, topic_owned) = (kafka.clone(), topic.to_string());
    let (partitions, from, to) = tokio::task::spawn_blocking(move || {
        let probe = Arc::new(KafkaProbe::new(&kafka).map_err(source_err("connecting to Kafka"))?);
        let topic = topic_owned.as_str();
        let partitions = probe
            .partitions(topic)
            .map_err(source_err("listing the topic's partitions"))?;
        let ends = probe
            .watermarks(topic, &partitions)
            .map_err(source_err("reading the topic's watermarks"))?;
        let at = |ts| offsets_at(&probe, topic, &partitions, &ends, ts);
        let from = at(from_ms)?;
        let to = to_ms.map(at).transpose()?;
        Ok::<_, ReplayError>((partitions, from, to))
    })
    .await
    .map_err(|_| ReplayError::Plan {
        table: topic.to_string(),
        problem: "the offset lookup stopped".into(),
    })??;
    let mut committed = Committed::new();
    let mut asked = Ranges::new();
    for p in partitions {
        let next = coord
            .committed_offset(&UnitId::new(topic, p))
            .await
            .map_err(coord_err("reading the committed offsets"))?
            .unwrap_or(0);
        committed.insert(p, next);
        let first = from[&p];
        let end = to.as_ref().map_or(next, |to| to[&p].min(next));
        if first < end {
            asked.insert(p, (first, end - 1));
        }
    }
    Ok((asked, committed))
}

/// Per partition, the first offset at or after `ts_ms`, or the high watermark if none is.
/// A broker that answers an offset whose message is older than asked (some answer 0 when no
/// message is that recent) is taken to mean "none".
fn offsets_at(
    probe: &KafkaProbe,
    topic: &str,
    partitions: &[i32],
    ends: &std::collections::HashMap<i32, (i64, i64)>,
    ts_ms: i64,
) -> Result<BTreeMap<i32, i64>, ReplayError> {
    let answer = probe
        .offsets_at(topic, partitions, ts_ms)
        .map_err(source_err("looking up offsets by time"))?;
    let found: Vec<(String, i32, i64)> = answer
        .iter()
        .filter_map(|(&p, &o)| o.map(|o| (topic.to_string(), p, o)))
        .collect();
    let stamps = probe
        .timestamps_at(&found, CHECK_WAIT)
        .map_err(source_err("reading the timestamps of the offsets found"))?;
    let mut out = BTreeMap::new();
    for &p in partitions {
        let high = ends.get(&p).map_or(0, |&(_, h)| h);
        let offset = match answer.get(&p).copied().flatten() {
            Some(o)
                if stamps
                    .get(&(topic.to_string(), p))
                    .is_some_and(|&t| t >= ts_ms) =>
            {
                o
            }
            _ => high,
        };
        out.insert(p, offset);
    }
    Ok(out)
}
