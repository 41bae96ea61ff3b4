//! The broker side of the tests: topics created with the admin client, and records produced to
//! explicit partitions with their delivered offsets: the fixture's events, and the payloads of
//! the Source conformance suite ([`BrokerTopics`]).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_testkit::fixture::Event;
use sluice_testkit::source_conformance::TestTopics;

/// The client settings of every test client: a small `linger.ms`, so a few records are not held
/// back waiting for more.
fn kafka_config(brokers: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000");
    cfg
}

pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = kafka_config(brokers).create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for r in admin.create_topics([&new], &opts).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
    }
    Ok(())
}

/// One record to produce to an explicit partition.
struct Outgoing<'a> {
    partition: i32,
    key: Option<String>,
    payload: Option<&'a [u8]>,
    timestamp_ms: Option<i64>,
}

/// Sends the records (all queued, then awaited in order); returns each one's (partition, offset)
/// in the order given.
async fn send(
    producer: &FutureProducer,
    topic: &str,
    records: &[Outgoing<'_>],
) -> Result<Vec<(i32, i64)>> {
    let mut pending = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let mut record = FutureRecord::<String, [u8]>::to(topic).partition(r.partition);
        if let Some(key) = &r.key {
            record = record.key(key);
        }
        if let Some(payload) = r.payload {
            record = record.payload(payload);
        }
        if let Some(ts) = r.timestamp_ms {
            record = record.timestamp(ts);
        }
        let delivery = producer
            .send_result(record)
            .map_err(|(err, _)| anyhow::anyhow!("cannot queue record {i} for {topic}: {err}"))?;
        pending.push(delivery);
    }
    let mut delivered = Vec::with_capacity(pending.len());
    for (i, delivery) in pending.into_iter().enumerate() {
        let d = delivery
            .await
            .context("producer dropped")?
            .map_err(|(e, _)| anyhow::anyhow!("delivery of record {i} to {topic} failed: {e}"))?;
        delivered.push((d.partition, d.offset));
    }
    Ok(delivered)
}

/// Produces the events to their partitions; returns (partition, offset) -> seq.
pub async fn produce(
    brokers: &str,
    topic: &str,
    events: &[Event],
) -> Result<HashMap<(i32, i64), u64>> {
    produce_at(brokers, topic, events, None).await
}

/// [`produce`] with every record's Kafka timestamp set to `timestamp_ms` (default: now), for
/// a backlog of a known age.
pub async fn produce_at(
    brokers: &str,
    topic: &str,
    events: &[Event],
    timestamp_ms: Option<i64>,
) -> Result<HashMap<(i32, i64), u64>> {
    let producer: FutureProducer = kafka_config(brokers).create()?;
    let mut located = HashMap::new();
    for chunk in events.chunks(2000) {
        let records: Vec<Outgoing<'_>> = chunk
            .iter()
            .map(|e| Outgoing {
                partition: e.partition,
                key: Some(e.seq.to_string()),
                payload: e.payload.as_deref(),
                timestamp_ms,
            })
            .collect();
        let delivered = send(&producer, topic, &records).await?;
        located.extend(delivered.into_iter().zip(chunk.iter().map(|e| e.seq)));
    }
    ensure!(
        located.len() == events.len(),
        "{} deliveries for {} events",
        located.len(),
        events.len()
    );
    Ok(located)
}

/// The Source conformance suite's topics on the real broker.
pub struct BrokerTopics {
    brokers: String,
    producer: FutureProducer,
}

impl BrokerTopics {
    pub fn new(brokers: &str) -> Result<BrokerTopics> {
        Ok(BrokerTopics {
            brokers: brokers.to_string(),
            producer: kafka_config(brokers).create()?,
        })
    }
}

#[async_trait]
impl TestTopics for BrokerTopics {
    async fn create(&self, topic: &str, partitions: i32) -> Result<()> {
        create_topic(&self.brokers, topic, partitions).await
    }

    async fn append(
        &self,
        topic: &str,
        partition: i32,
        payloads: &[Option<Vec<u8>>],
    ) -> Result<Vec<i64>> {
        let records: Vec<Outgoing<'_>> = payloads
            .iter()
            .map(|p| Outgoing {
                partition,
                key: None,
                payload: p.as_deref(),
                timestamp_ms: None,
            })
            .collect();
        let delivered = send(&self.producer, topic, &records).await?;
        ensure!(
            delivered.iter().all(|&(p, _)| p == partition),
            "records for {topic}/{partition} landed in {delivered:?}"
        );
        Ok(delivered.into_iter().map(|(_, offset)| offset).collect())
    }
}
