//! The yardstick of the end-to-end figures: how fast a plain rdkafka consumer, configured
//! exactly as Sluice's source ([`sluice_source::client_config`]), reads the same topic from the
//! same broker, doing nothing with the messages but counting them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sluice_config::KafkaConfig;
use sluice_telemetry::process::ProcessUsage;

use crate::convert::Figures;

/// Gives up if no message arrives for this long before the ends are reached.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads every partition of `topic` from its low watermark to the high watermark it has when
/// the run starts (the same end `sluice run --stop-at-end` stops at), and measures it.
pub fn consume(kafka: &KafkaConfig, topic: &str) -> Result<Figures> {
    let probe = sluice_source::KafkaProbe::new(kafka)?;
    let partitions = probe.partitions(topic)?;
    let marks = probe.watermarks(topic, &partitions)?;
    drop(probe);
    let consumer: BaseConsumer = sluice_source::client_config(kafka)
        .create()
        .context("creating the consumer")?;
    let mut tpl = TopicPartitionList::new();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for (&p, &(low, high)) in &marks {
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
            ends.insert(p, high);
        }
    }
    consumer.assign(&tpl)?;
    let before = ProcessUsage::now().unwrap_or_default();
    let started = Instant::now();
    let mut last_message = Instant::now();
    let mut figures = Figures::default();
    while !ends.is_empty() {
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                last_message = Instant::now();
                let Some(&end) = ends.get(&m.partition()) else {
                    continue;
                };
                if m.offset() >= end {
                    continue;
                }
                figures.events += 1;
                figures.bytes += m.payload_len() as u64;
                if m.offset() + 1 >= end {
                    ends.remove(&m.partition());
                }
            }
            Some(Err(e)) => bail!("consumer error: {e}"),
            None if last_message.elapsed() > STALL_TIMEOUT => {
                bail!(
                    "no message for {STALL_TIMEOUT:?} with partitions {:?} short of their ends",
                    ends.keys().collect::<Vec<_>>()
                )
            }
            None => {}
        }
    }
    figures.wall_s = started.elapsed().as_secs_f64();
    let after = ProcessUsage::now().unwrap_or_default();
    figures.cpu_s = after.cpu_s - before.cpu_s;
    figures.peak_rss_bytes = after.peak_rss_bytes;
    Ok(figures)
}
