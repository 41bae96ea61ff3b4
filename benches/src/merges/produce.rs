//! The paced producer: `sluice produce`'s events and keys at a fixed rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::ClientContext;
use sluice_source::sample::SampleEvents;

/// Counts failed deliveries; the producer's own thread calls it.
#[derive(Clone, Default)]
struct Failures(Arc<AtomicU64>);

impl ClientContext for Failures {}

impl ProducerContext for Failures {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `sluice produce`'s events and keys (so the same partitions), `rate` a second; returns the
/// seconds it took.
pub(super) fn produce_paced(
    brokers: &str,
    topic: &str,
    events: u64,
    rate: u64,
    seed: u64,
) -> Result<f64> {
    let failures = Failures::default();
    let producer: BaseProducer<Failures> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("message.timeout.ms", "60000")
        .create_with_context(failures.clone())
        .context("creating the Kafka producer")?;
    let generator = SampleEvents::new(seed);
    let started = Instant::now();
    let mut payload = String::with_capacity(256);
    for seq in 0..events {
        if seq % 250 == 0 {
            let due = started + Duration::from_secs_f64(seq as f64 / rate.max(1) as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            producer.poll(Duration::ZERO);
        }
        payload.clear();
        generator.write(seq, &mut payload);
        let key = seq.to_string();
        loop {
            match producer.send(BaseRecord::to(topic).payload(&payload).key(&key)) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => bail!("cannot queue event {seq} for {topic}: {e}"),
            }
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .context("waiting for the last deliveries")?;
    let failed = failures.0.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} events were not delivered to {topic}");
    }
    Ok(started.elapsed().as_secs_f64())
}
