//! Source: Kafka partitions read with manual assignment.
//!
//! No consumer group, no rebalancing, no offsets committed to Kafka: which partitions a worker
//! reads is decided by its leases, and where it starts is the offset committed with its parts.
//! librdkafka's poll blocks, so it runs on a thread of its own and hands batches of owned
//! messages to the async side through a bounded channel (backpressure: a full channel stops
//! polling, and librdkafka's own prefetch queue is bounded by `queued.max.messages.kbytes`).

pub mod sample;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use sluice_config::KafkaConfig;
use tokio::sync::mpsc;

/// Messages handed over per channel send; amortises the cross-thread hand-off.
const MAX_BATCH: usize = 2048;
/// Payload bytes per batch before it is handed over anyway.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// The arena's initial room: a batch of typical events fits; larger ones grow it.
const BATCH_BYTES_RESERVED: usize = 256 << 10;
/// How long one poll waits when nothing is buffered.
const POLL_WAIT: Duration = Duration::from_millis(50);

/// One Kafka message, borrowed from its [`SourceBatch`].
#[derive(Debug, Clone, Copy)]
pub struct SourceMessage<'a> {
    pub topic: &'a Arc<str>,
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp (create or log-append time), in ms since the epoch.
    pub timestamp_ms: Option<i64>,
    pub payload: Option<&'a [u8]>,
}

#[derive(Debug, Clone)]
struct MessageMeta {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    /// Where the payload sits in the batch's arena, if the message has one.
    payload: Option<(u32, u32)>,
}

/// Messages handed over together, their payloads copied into one buffer: one allocation per
/// batch instead of one per message.
#[derive(Debug, Clone, Default)]
pub struct SourceBatch {
    messages: Vec<MessageMeta>,
    arena: Vec<u8>,
}

impl SourceBatch {
    fn with_capacity(messages: usize, bytes: usize) -> SourceBatch {
        SourceBatch {
            messages: Vec::with_capacity(messages),
            arena: Vec::with_capacity(bytes),
        }
    }

    fn push(
        &mut self,
        topic: Arc<str>,
        partition: i32,
        offset: i64,
        timestamp_ms: Option<i64>,
        payload: Option<&[u8]>,
    ) {
        let payload = payload.map(|p| {
            let start = self.arena.len() as u32;
            self.arena.extend_from_slice(p);
            (start, p.len() as u32)
        });
        self.messages.push(MessageMeta {
            topic,
            partition,
            offset,
            timestamp_ms,
            payload,
        });
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The messages in the order they were polled (offset order per partition).
    pub fn iter(&self) -> impl Iterator<Item = SourceMessage<'_>> {
        self.messages.iter().map(|m| SourceMessage {
            topic: &m.topic,
            partition: m.partition,
            offset: m.offset,
            timestamp_ms: m.timestamp_ms,
            payload: m
                .payload
                .map(|(start, len)| &self.arena[start as usize..(start + len) as usize]),
        })
    }
}

/// Where to start reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOffset {
    At(i64),
    Earliest,
    Latest,
}

/// One partition to read and where to start.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub topic: String,
    pub partition: i32,
    pub start: StartOffset,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot reach Kafka at {brokers} within {timeout:?}: {reason}; check that the broker runs and `kafka.bootstrap_servers` is right")]
    Unreachable {
        brokers: String,
        timeout: Duration,
        reason: String,
    },
    #[error("topic `{topic}` does not exist on {brokers}; create it, or fix the table's `topic`")]
    TopicMissing { topic: String, brokers: String },
    #[error("Kafka client configuration refused: {reason}; check `kafka.properties`")]
    Client { reason: String },
    #[error("cannot read watermarks of {topic}/{partition}: {reason}")]
    Watermarks {
        topic: String,
        partition: i32,
        reason: String,
    },
    #[error("fatal consumer error: {reason}")]
    Fatal { reason: String },
}

/// The librdkafka configuration Sluice consumes with: its own settings, then the user's
/// `kafka.properties` on top.
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // Tansu answers a fetch with one batch per partition and then waits this long; the
        // default of 500 ms makes consumption crawl (see DESIGN.md).
        .set("fetch.wait.max.ms", "10")
        // A full prefetch queue is Sluice's backpressure at work (the pipeline is busy), not a
        // reason to stop fetching for librdkafka's default second: with a queue sized from the
        // memory budget, that pause cut consumption to a few percent.
        .set("fetch.queue.backoff.ms", "10")
        .set("auto.offset.reset", "earliest")
        // librdkafka refuses `assign` without a group id, though Sluice never joins the group
        // nor commits to it: offsets live with the parts.
        .set("group.id", "sluice")
        .set("client.id", "sluice");
    for (k, v) in &kafka.properties {
        cfg.set(k, v);
    }
    cfg
}

fn consumer(kafka: &KafkaConfig) -> Result<BaseConsumer, SourceError> {
    client_config(kafka)
        .create()
        .map_err(|e: KafkaError| SourceError::Client {
            reason: e.to_string(),
        })
}

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

/// Assigns exactly these (topic, partition, start) to the consumer.
fn assign<'a>(
    consumer: &BaseConsumer,
    positions: impl Iterator<Item = (&'a str, i32, Offset)>,
) -> Result<(), SourceError> {
    let client = |e: KafkaError| SourceError::Client {
        reason: e.to_string(),
    };
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in positions {
        tpl.add_partition_offset(topic, partition, offset)
            .map_err(client)?;
    }
    consumer.assign(&tpl).map_err(client)
}

/// A Kafka client for questions about topics rather than their data: partitions, watermarks,
/// the timestamp of a message at an offset. Keep one for repeated questions (lag refreshes):
/// a new client costs the broker connections and metadata requests. Every method blocks.
pub struct KafkaProbe {
    consumer: BaseConsumer,
    kafka: KafkaConfig,
    timeout: Duration,
}

impl std::fmt::Debug for KafkaProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaProbe")
            .field("brokers", &self.kafka.bootstrap_servers)
            .finish_non_exhaustive()
    }
}

impl KafkaProbe {
    pub fn new(kafka: &KafkaConfig) -> Result<KafkaProbe, SourceError> {
        // One message per partition is all a timestamp probe needs: keep the fetches small.
        let consumer: BaseConsumer = client_config(kafka)
            .set("max.partition.fetch.bytes", "65536")
            .set("fetch.max.bytes", "1048576")
            .set("queued.max.messages.kbytes", "1024")
            .set("client.id", "sluice-probe")
            .create()
            .map_err(|e: KafkaError| SourceError::Client {
                reason: e.to_string(),
            })?;
        Ok(KafkaProbe {
            consumer,
            kafka: kafka.clone(),
            timeout: Duration::from_millis(kafka.metadata_timeout_ms),
        })
    }

    /// The partition ids of `topic`, sorted.
    pub fn partitions(&self, topic: &str) -> Result<Vec<i32>, SourceError> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(topic), self.timeout)
            .map_err(|e| SourceError::Unreachable {
                brokers: self.kafka.bootstrap_servers.clone(),
                timeout: self.timeout,
                reason: e.to_string(),
            })?;
        let missing = || SourceError::TopicMissing {
            topic: topic.to_string(),
            brokers: self.kafka.bootstrap_servers.clone(),
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
        let failed = |partition: i32, reason: String| SourceError::Watermarks {
            topic: topic.to_string(),
            partition,
            reason,
        };
        let ends = |which: Offset| -> Result<HashMap<i32, i64>, SourceError> {
            let mut tpl = TopicPartitionList::new();
            for &p in partitions {
                tpl.add_partition_offset(topic, p, which)
                    .map_err(|e| failed(p, e.to_string()))?;
            }
            let answer = self
                .consumer
                .offsets_for_times(tpl, self.timeout)
                .map_err(|e| failed(partitions[0], e.to_string()))?;
            answer
                .elements()
                .iter()
                .map(|e| {
                    if let Err(err) = e.error() {
                        return Err(failed(e.partition(), err.to_string()));
                    }
                    match e.offset() {
                        Offset::Offset(o) => Ok((e.partition(), o)),
                        other => Err(failed(e.partition(), format!("broker answered {other:?}"))),
                    }
                })
                .collect()
        };
        let low = ends(Offset::Beginning)?;
        let high = ends(Offset::End)?;
        partitions
            .iter()
            .map(|&p| match (low.get(&p), high.get(&p)) {
                (Some(&l), Some(&h)) => Ok((p, (l, h))),
                _ => Err(failed(p, "no offsets in the broker's answer".to_string())),
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
        self.consumer.unassign().map_err(|e| SourceError::Client {
            reason: e.to_string(),
        })?;
        Ok(found)
    }
}

/// A running consumer of a fixed set of partitions.
pub struct KafkaSource {
    rx: mpsc::Receiver<Result<SourceBatch, SourceError>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource").finish_non_exhaustive()
    }
}

impl KafkaSource {
    /// Assigns the partitions and starts polling on a thread of its own. `capacity` bounds the
    /// batches in flight between the poll thread and the caller.
    pub fn start(
        kafka: &KafkaConfig,
        assignments: &[Assignment],
        capacity: usize,
    ) -> Result<KafkaSource, SourceError> {
        let consumer = consumer(kafka)?;
        assign(
            &consumer,
            assignments.iter().map(|a| {
                let offset = match a.start {
                    StartOffset::At(o) => Offset::Offset(o),
                    StartOffset::Earliest => Offset::Beginning,
                    StartOffset::Latest => Offset::End,
                };
                (a.topic.as_str(), a.partition, offset)
            }),
        )?;
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("sluice-kafka-poll".into())
            .spawn(move || poll_loop(consumer, tx, thread_stop))
            .map_err(|e| SourceError::Client {
                reason: e.to_string(),
            })?;
        Ok(KafkaSource {
            rx,
            stop,
            thread: Some(thread),
        })
    }

    /// The next batch of messages, in offset order per partition; `None` once stopped.
    pub async fn next(&mut self) -> Option<Result<SourceBatch, SourceError>> {
        self.rx.recv().await
    }

    /// Stops polling and waits for the poll thread (at most one poll interval).
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.rx.close();
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn poll_loop(
    consumer: BaseConsumer,
    tx: mpsc::Sender<Result<SourceBatch, SourceError>>,
    stop: Arc<AtomicBool>,
) {
    let mut topics: HashMap<String, Arc<str>> = HashMap::new();
    let new_batch = || SourceBatch::with_capacity(MAX_BATCH, BATCH_BYTES_RESERVED);
    let mut batch = new_batch();
    while !stop.load(Ordering::SeqCst) {
        let wait = if batch.is_empty() {
            POLL_WAIT
        } else {
            Duration::ZERO
        };
        match consumer.poll(wait) {
            Some(Ok(m)) => {
                // Looked up by &str: no allocation per message once the topic is known.
                let topic = match topics.get(m.topic()) {
                    Some(t) => Arc::clone(t),
                    None => {
                        let t: Arc<str> = Arc::from(m.topic());
                        topics.insert(m.topic().to_string(), Arc::clone(&t));
                        t
                    }
                };
                batch.push(
                    topic,
                    m.partition(),
                    m.offset(),
                    m.timestamp().to_millis(),
                    m.payload(),
                );
                if batch.len() < MAX_BATCH && batch.arena.len() < MAX_BATCH_BYTES {
                    continue;
                }
            }
            Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                let _ = tx.blocking_send(Err(SourceError::Fatal {
                    reason: code.to_string(),
                }));
                return;
            }
            Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange))) => {
                tracing::error!("committed offset is out of the topic's retained range; reading from the earliest retained offset (events in between were deleted by retention before being ingested)");
            }
            Some(Err(e)) => {
                // Transport errors are retried by librdkafka itself; say so and go on.
                tracing::warn!(error = %e, "kafka consumer error");
            }
            None => {}
        }
        if !batch.is_empty() {
            let full = std::mem::replace(&mut batch, new_batch());
            if tx.blocking_send(Ok(full)).is_err() {
                return;
            }
        }
    }
}
