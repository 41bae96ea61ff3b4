//! Questions about topics rather than their data: partitions, watermarks, the timestamp of the
//! message at an offset.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sluice_config::KafkaConfig;

use crate::kafka::{assign, client_config};
use crate::security::SourceContext;
use crate::SourceError;

/// Polls serving queued events after a failed request.
const MAX_EVENTS_TAKEN: usize = 200;
/// How long one poll of a timestamp probe waits.
const POLL_WAIT: Duration = Duration::from_millis(50);

/// The partition ids of `topic`. Blocking: call it from a blocking thread.
pub fn partitions(kafka: &KafkaConfig, topic: &str) -> Result<Vec<i32>, SourceError> {
    KafkaProbe::new(kafka)?.partitions(topic)
}

/// (low, high) watermarks per partition of `topic`. Blocking.
pub fn watermarks(
    kafka: &KafkaConfig,
    topic: &str,
    partitions: &[i32],
) -> Result<HashMap<i32, (i64, i64)>, SourceError> {
    KafkaProbe::new(kafka)?.watermarks(topic, partitions)
}

/// A Kafka client for questions about topics. Keep one for repeated questions (lag refreshes):
/// a new client costs the broker connections and metadata requests. Every method blocks.
pub struct KafkaProbe {
    consumer: BaseConsumer<SourceContext>,
    brokers: String,
    timeout: Duration,
}

impl std::fmt::Debug for KafkaProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaProbe")
            .field("brokers", &self.brokers)
            .finish_non_exhaustive()
    }
}

impl KafkaProbe {
    pub fn new(kafka: &KafkaConfig) -> Result<KafkaProbe, SourceError> {
        // One message per partition is all a timestamp probe needs: keep the fetches small.
        let consumer: BaseConsumer<SourceContext> = client_config(kafka)
            .set("max.partition.fetch.bytes", "65536")
            .set("fetch.max.bytes", "1048576")
            .set("queued.max.messages.kbytes", "1024")
            .set("client.id", "sluice-probe")
            .create_with_context(SourceContext::default())
            .map_err(|e: KafkaError| SourceError::Client { source: e.into() })?;
        Ok(KafkaProbe {
            consumer,
            brokers: kafka.bootstrap_servers.clone(),
            timeout: Duration::from_millis(kafka.metadata_timeout_ms),
        })
    }

    /// A request that failed: refused if the brokers said so, else unreachable.
    fn failed(&self, error: KafkaError) -> SourceError {
        self.take_errors();
        match self.consumer.context().refusal() {
            Some(reason) => self.refused(reason),
            None => SourceError::Unreachable {
                brokers: self.brokers.clone(),
                timeout: self.timeout,
                source: error.into(),
            },
        }
    }

    /// Serves the events librdkafka queued for this client, so that its context sees what
    /// they say (a consumer reports refused credentials as a queued event, and logs why in
    /// another). A poll answers nothing both for an empty queue and for an event it handled
    /// itself, so it cannot tell when the queue is empty: a bounded number of polls, stopping
    /// at the first refusal. Messages polled here are dropped; only
    /// [`KafkaProbe::timestamps_at`] reads any, and it assigns afresh.
    fn take_errors(&self) {
        for _ in 0..MAX_EVENTS_TAKEN {
            if let Some(Err(e)) = self.consumer.poll(Duration::ZERO) {
                self.consumer.context().note(&e, None);
            }
            if self.consumer.context().refusal().is_some() {
                break;
            }
        }
    }

    fn refused(&self, reason: String) -> SourceError {
        SourceError::Refused {
            brokers: self.brokers.clone(),
            reason,
        }
    }

    /// The partition ids of `topic`, sorted.
    pub fn partitions(&self, topic: &str) -> Result<Vec<i32>, SourceError> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(topic), self.timeout)
            .map_err(|e| self.failed(e))?;
        self.consumer.context().accepted();
        let missing = || SourceError::TopicMissing {
            topic: topic.to_string(),
            brokers: self.brokers.clone(),
        };
        let t = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .ok_or_else(missing)?;
        if t.error().is_some() || t.partitions().is_empty() {
            return Err(missing());
        }
        let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// (low, high) watermarks per partition: one ListOffsets request per partition leader for
    /// the low ends and one for the high ends (timestamps -2 and -1 are Kafka's "earliest" and
    /// "latest"), instead of two round trips per partition.
    pub fn watermarks(
        &self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<HashMap<i32, (i64, i64)>, SourceError> {
        if partitions.is_empty() {
            return Ok(HashMap::new());
        }
        let low = self.ends(topic, partitions, Offset::Beginning)?;
        let high = self.ends(topic, partitions, Offset::End)?;
        partitions
            .iter()
            .map(|&p| match (low.get(&p), high.get(&p)) {
                (Some(&l), Some(&h)) => Ok((p, (l, h))),
                _ => Err(watermark_err(
                    topic,
                    p,
                    "no offsets in the broker's answer".into(),
                )),
            })
            .collect()
    }

    /// The offsets `which` (beginning or end) of the partitions, in one request per leader.
    fn ends(
        &self,
        topic: &str,
        partitions: &[i32],
        which: Offset,
    ) -> Result<HashMap<i32, i64>, SourceError> {
        self.list_offsets(topic, partitions, which)?
            .into_iter()
            .map(|(p, o)| match o {
                Offset::Offset(o) => Ok((p, o)),
                other => Err(watermark_err(
                    topic,
                    p,
                    format!("the broker answered {other:?}").into(),
                )),
            })
            .collect()
    }

    /// Per partition, the first offset whose message has a timestamp at or after `ts_ms` (ms
    /// since the epoch); `None` where no message is that recent (the high watermark is then
    /// where such a message would go). One request per partition leader.
    pub fn offsets_at(
        &self,
        topic: &str,
        partitions: &[i32],
        ts_ms: i64,
    ) -> Result<HashMap<i32, Option<i64>>, SourceError> {
        if partitions.is_empty() {
            return Ok(HashMap::new());
        }
        self.list_offsets(topic, partitions, Offset::Offset(ts_ms))?
            .into_iter()
            .map(|(p, o)| match o {
                Offset::Offset(o) if o >= 0 => Ok((p, Some(o))),
                Offset::End | Offset::Invalid | Offset::Offset(_) => Ok((p, None)),
                other => Err(watermark_err(
                    topic,
                    p,
                    format!("the broker answered {other:?} for a timestamp").into(),
                )),
            })
            .collect()
    }

    /// One ListOffsets round: `query` (a timestamp, or beginning or end) for each partition.
    fn list_offsets(
        &self,
        topic: &str,
        partitions: &[i32],
        query: Offset,
    ) -> Result<Vec<(i32, Offset)>, SourceError> {
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            tpl.add_partition_offset(topic, p, query)
                .map_err(|e| watermark_err(topic, p, e.into()))?;
        }
        let answer = self
            .consumer
            .offsets_for_times(tpl, self.timeout)
            .map_err(|e| {
                self.take_errors();
                match self.consumer.context().refusal() {
                    Some(reason) => self.refused(reason),
                    None => watermark_err(topic, partitions[0], e.into()),
                }
            })?;
        answer
            .elements()
            .iter()
            .map(|e| match e.error() {
                Err(err) => Err(watermark_err(topic, e.partition(), err.into())),
                Ok(()) => Ok((e.partition(), e.offset())),
            })
            .collect()
    }

    /// The timestamp (ms since the epoch) of the message at each (topic, partition, offset) (or
    /// the first after it), for lag in seconds. A partition whose message does not arrive
    /// within `wait` (or has no timestamp) is missing from the answer.
    pub fn timestamps_at(
        &self,
        positions: &[(String, i32, i64)],
        wait: Duration,
    ) -> Result<HashMap<(String, i32), i64>, SourceError> {
        let mut found = HashMap::new();
        if positions.is_empty() {
            return Ok(found);
        }
        assign(
            &self.consumer,
            positions
                .iter()
                .map(|(t, p, o)| (t.as_str(), *p, Offset::Offset(*o))),
        )?;
        let wanted: HashMap<(&str, i32), i64> = positions
            .iter()
            .map(|(t, p, o)| ((t.as_str(), *p), *o))
            .collect();
        let deadline = std::time::Instant::now() + wait;
        while found.len() < wanted.len() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match self.consumer.poll(left.min(POLL_WAIT)) {
                Some(Ok(m)) => {
                    let key = (m.topic(), m.partition());
                    // Earlier probes' messages may still be queued: only the asked-for count.
                    if wanted.get(&key).is_some_and(|&o| m.offset() >= o) {
                        if let Some(ts) = m.timestamp().to_millis() {
                            found
                                .entry((m.topic().to_string(), m.partition()))
                                .or_insert(ts);
                        }
                    }
                }
                Some(Err(e)) => tracing::debug!(error = %e, "lag probe: consumer error"),
                None => {}
            }
        }
        // Stop fetching until the next probe.
        self.consumer
            .unassign()
            .map_err(|e| SourceError::Client { source: e.into() })?;
        Ok(found)
    }
}

fn watermark_err(topic: &str, partition: i32, source: crate::Cause) -> SourceError {
    SourceError::Watermarks {
        topic: topic.to_string(),
        partition,
        source,
    }
}
