//! The Kafka source: rdkafka with manual assignment.
//!
//! librdkafka's poll blocks, so a reader polls on a thread of its own and hands batches of owned
//! messages to the async side through a bounded channel (backpressure: a full channel stops
//! polling, and librdkafka's own prefetch queue is bounded by `queued.max.messages.kbytes`).
//! Questions about topics go through one [`KafkaProbe`] per source, made on first use, on a
//! blocking thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use sluice_config::KafkaConfig;
use tokio::sync::mpsc;

use crate::security::{is_refusal, SourceContext};
use crate::{Assignment, KafkaProbe, Reader, Source, SourceBatch, SourceError};

/// Messages handed over per channel send; amortises the cross-thread hand-off.
const MAX_BATCH: usize = 2048;
/// Payload bytes per batch before it is handed over anyway.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// The arena's initial room: a batch of typical events fits; larger ones grow it.
const BATCH_BYTES_RESERVED: usize = 256 << 10;
/// How long one poll waits when nothing is buffered.
const POLL_WAIT: Duration = Duration::from_millis(50);
/// Batches in flight between the poll thread and the worker.
const CHANNEL_BATCHES: usize = 8;

/// The librdkafka configuration Sluice consumes with: its own settings, `[kafka.security]`,
/// then the user's `kafka.properties` on top. It holds the Kafka secrets: never log it.
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // Tansu (the Kafka-wire broker of the test stack) answers a fetch with one batch per
        // partition and then waits this long; the default of 500 ms makes consumption crawl
        // (docs/operations.md, "Local services").
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
    crate::security::apply(&mut cfg, &kafka.security);
    for (k, v) in &kafka.properties {
        cfg.set(k, v);
    }
    cfg
}

/// Assigns exactly these (topic, partition, start) to the consumer.
pub(crate) fn assign<'a>(
    consumer: &BaseConsumer<SourceContext>,
    positions: impl Iterator<Item = (&'a str, i32, Offset)>,
) -> Result<(), SourceError> {
    let client = |e: KafkaError| SourceError::Client { source: e.into() };
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in positions {
        tpl.add_partition_offset(topic, partition, offset)
            .map_err(client)?;
    }
    consumer.assign(&tpl).map_err(client)
}

/// Kafka as a [`Source`]: readers with manual assignment, and one metadata client.
pub struct KafkaSource {
    kafka: KafkaConfig,
    probe: Mutex<Option<Arc<KafkaProbe>>>,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("brokers", &self.kafka.bootstrap_servers)
            .finish_non_exhaustive()
    }
}

impl KafkaSource {
    /// A source reading with these settings (`kafka.properties` included, as the readers and
    /// the metadata client should use them).
    pub fn new(kafka: KafkaConfig) -> KafkaSource {
        KafkaSource {
            kafka,
            probe: Mutex::new(None),
        }
    }

    /// Asks the metadata client on a blocking thread, making the client on first use.
    async fn ask<T: Send + 'static>(
        &self,
        question: impl FnOnce(&KafkaProbe) -> Result<T, SourceError> + Send + 'static,
    ) -> Result<T, SourceError> {
        let known = self.probe.lock().expect("probe lock poisoned").clone();
        let kafka = self.kafka.clone();
        let (probe, answer) = tokio::task::spawn_blocking(move || {
            let probe = match known {
                Some(p) => p,
                None => Arc::new(KafkaProbe::new(&kafka)?),
            };
            let answer = question(&probe);
            Ok::<_, SourceError>((probe, answer))
        })
        .await
        .map_err(|source| SourceError::Blocking { source })??;
        self.probe
            .lock()
            .expect("probe lock poisoned")
            .get_or_insert(probe);
        answer
    }
}

#[async_trait]
impl Source for KafkaSource {
    async fn partitions(&self, topic: &str) -> Result<Vec<i32>, SourceError> {
        let topic = topic.to_string();
        self.ask(move |k| k.partitions(&topic)).await
    }

    async fn watermarks(
        &self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<HashMap<i32, (i64, i64)>, SourceError> {
        let (topic, partitions) = (topic.to_string(), partitions.to_vec());
        self.ask(move |k| k.watermarks(&topic, &partitions)).await
    }

    async fn open(&self, assignments: &[Assignment]) -> Result<Box<dyn Reader>, SourceError> {
        Ok(Box::new(KafkaReader::start(&self.kafka, assignments)?))
    }
}

/// A running consumer of a fixed set of partitions, polled on its own thread.
struct KafkaReader {
    rx: mpsc::Receiver<Result<SourceBatch, SourceError>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for KafkaReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaReader").finish_non_exhaustive()
    }
}

impl KafkaReader {
    fn start(kafka: &KafkaConfig, assignments: &[Assignment]) -> Result<KafkaReader, SourceError> {
        let consumer: BaseConsumer<SourceContext> = client_config(kafka)
            .create_with_context(SourceContext::default())
            .map_err(|e: KafkaError| SourceError::Client { source: e.into() })?;
        assign(
            &consumer,
            assignments
                .iter()
                .map(|a| (a.topic.as_str(), a.partition, Offset::Offset(a.start))),
        )?;
        let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("sluice-kafka-poll".into())
            .spawn(move || poll_loop(consumer, tx, thread_stop))
            .map_err(|source| SourceError::Thread { source })?;
        Ok(KafkaReader {
            rx,
            stop,
            thread: Some(thread),
        })
    }
}

#[async_trait]
impl Reader for KafkaReader {
    async fn next(&mut self) -> Option<Result<SourceBatch, SourceError>> {
        self.rx.recv().await
    }

    /// Stops polling and waits for the poll thread (at most one poll interval).
    async fn stop(mut self: Box<Self>) {
        self.stop.store(true, Ordering::SeqCst);
        self.rx.close();
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for KafkaReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn poll_loop(
    consumer: BaseConsumer<SourceContext>,
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
                if batch.len() < MAX_BATCH && batch.payload_bytes() < MAX_BATCH_BYTES {
                    continue;
                }
            }
            Some(Err(e @ KafkaError::MessageConsumptionFatal(_))) => {
                let _ = tx.blocking_send(Err(SourceError::Fatal { source: e.into() }));
                return;
            }
            Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange))) => {
                // The worker sees the skip and records the range as a retention gap.
                tracing::warn!("an offset to read is out of the topic's retained range; reading from the earliest retained offset (events in between were deleted by retention before being ingested)");
            }
            Some(Err(e)) if is_refusal(&e) => consumer.context().note(&e, None),
            Some(Err(e)) => {
                // Transport errors are retried by librdkafka itself; say so and go on.
                tracing::warn!(error = &e as &dyn std::error::Error, "kafka consumer error");
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
