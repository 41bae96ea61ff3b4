//! The conformance suite every [`Source`] must pass: the contract in `sluice_source`'s docs.
//!
//! Each case writes to topics of its own through [`TestTopics`], so the suite can run repeatedly
//! against one broker.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use sluice_source::{Assignment, Reader, Source, SourceError};

use crate::{fail, unique, ConformanceFailure, OrFail};

/// How long a reader may take to deliver what was produced (a real broker's first fetch
/// includes connecting).
const DELIVER_WITHIN: Duration = Duration::from_secs(30);

/// How the suite creates and fills topics of the source under test.
#[async_trait]
pub trait TestTopics: Send + Sync {
    async fn create(&self, topic: &str, partitions: i32) -> anyhow::Result<()>;
    /// Appends messages (a `None` payload is a message without one) to one partition; returns
    /// their offsets.
    async fn append(
        &self,
        topic: &str,
        partition: i32,
        payloads: &[Option<Vec<u8>>],
    ) -> anyhow::Result<Vec<i64>>;
}

#[async_trait]
impl TestTopics for crate::MemorySource {
    async fn create(&self, topic: &str, partitions: i32) -> anyhow::Result<()> {
        self.create_topic(topic, partitions);
        Ok(())
    }

    async fn append(
        &self,
        topic: &str,
        partition: i32,
        payloads: &[Option<Vec<u8>>],
    ) -> anyhow::Result<Vec<i64>> {
        Ok(payloads
            .iter()
            .map(|p| self.produce(topic, partition, Some(0), p.as_deref()))
            .collect())
    }
}

type Outcome = Result<(), ConformanceFailure>;

/// Runs every case; stops at the first failure.
pub async fn run_all(source: &dyn Source, topics: &dyn TestTopics) -> Outcome {
    partitions_are_sorted_and_missing_topics_named(source, topics).await?;
    watermarks_follow_appends(source, topics).await?;
    reader_delivers_from_its_start_in_order_and_follows_appends(source, topics).await?;
    reader_started_at_the_end_gets_only_new_messages(source, topics).await?;
    readers_are_independent(source, topics).await?;
    Ok(())
}

fn payloads(prefix: &str, range: std::ops::Range<i64>) -> Vec<Option<Vec<u8>>> {
    range
        .map(|i| Some(format!("{prefix}-{i}").into_bytes()))
        .collect()
}

async fn create(
    case: &'static str,
    topics: &dyn TestTopics,
    n: i32,
) -> Result<String, ConformanceFailure> {
    let topic = unique("conf-src");
    topics
        .create(&topic, n)
        .await
        .map_err(|e| fail(case, format!("cannot create topic {topic}: {e:#}")))?;
    Ok(topic)
}

async fn append(
    case: &'static str,
    topics: &dyn TestTopics,
    topic: &str,
    partition: i32,
    payloads: &[Option<Vec<u8>>],
) -> Result<Vec<i64>, ConformanceFailure> {
    topics
        .append(topic, partition, payloads)
        .await
        .map_err(|e| fail(case, format!("cannot append to {topic}/{partition}: {e:#}")))
}

/// (partition, offset) -> payload of what a reader delivered, until `want` messages arrived.
async fn collect(
    case: &'static str,
    reader: &mut Box<dyn Reader>,
    want: usize,
) -> Result<BTreeMap<(i32, i64), Option<Vec<u8>>>, ConformanceFailure> {
    let mut got = BTreeMap::new();
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + DELIVER_WITHIN;
    while got.len() < want {
        let batch = match tokio::time::timeout_at(deadline, reader.next()).await {
            Err(_) => {
                return Err(fail(
                    case,
                    format!("{} of {want} messages within {DELIVER_WITHIN:?}", got.len()),
                ))
            }
            Ok(None) => return Err(fail(case, "the reader stopped by itself")),
            Ok(Some(Err(e))) => return Err(fail(case, format!("the reader failed: {e}"))),
            Ok(Some(Ok(batch))) => batch,
        };
        for m in batch.iter() {
            if last.get(&m.partition).is_some_and(|&l| m.offset <= l) {
                return Err(fail(
                    case,
                    format!(
                        "offset {} of partition {} after {:?}",
                        m.offset,
                        m.partition,
                        last.get(&m.partition)
                    ),
                ));
            }
            last.insert(m.partition, m.offset);
            if m.timestamp_ms.is_none() {
                return Err(fail(case, "a message without a timestamp"));
            }
            got.insert((m.partition, m.offset), m.payload.map(<[u8]>::to_vec));
        }
    }
    Ok(got)
}

async fn partitions_are_sorted_and_missing_topics_named(
    source: &dyn Source,
    topics: &dyn TestTopics,
) -> Outcome {
    const CASE: &str = "partitions_are_sorted_and_missing_topics_named";
    let topic = create(CASE, topics, 3).await?;
    let ids = source.partitions(&topic).await.or_fail(CASE)?;
    if ids != vec![0, 1, 2] {
        return Err(fail(
            CASE,
            format!("partitions {ids:?}, expected [0, 1, 2]"),
        ));
    }
    let missing = unique("conf-src-missing");
    match source.partitions(&missing).await {
        Err(SourceError::TopicMissing { topic, .. }) if topic == missing => Ok(()),
        other => Err(fail(CASE, format!("a missing topic gave {other:?}"))),
    }
}

async fn watermarks_follow_appends(source: &dyn Source, topics: &dyn TestTopics) -> Outcome {
    const CASE: &str = "watermarks_follow_appends";
    let topic = create(CASE, topics, 2).await?;
    let before = source.watermarks(&topic, &[0, 1]).await.or_fail(CASE)?;
    if before.get(&0) != Some(&(0, 0)) || before.get(&1) != Some(&(0, 0)) {
        return Err(fail(
            CASE,
            format!("an empty topic has watermarks {before:?}"),
        ));
    }
    append(CASE, topics, &topic, 1, &payloads("w", 0..5)).await?;
    let after = source.watermarks(&topic, &[0, 1]).await.or_fail(CASE)?;
    if after.get(&0) != Some(&(0, 0)) || after.get(&1) != Some(&(0, 5)) {
        return Err(fail(
            CASE,
            format!("after 5 appends to partition 1: {after:?}, expected 0: (0, 0), 1: (0, 5)"),
        ));
    }
    Ok(())
}

async fn reader_delivers_from_its_start_in_order_and_follows_appends(
    source: &dyn Source,
    topics: &dyn TestTopics,
) -> Outcome {
    const CASE: &str = "reader_delivers_from_its_start_in_order_and_follows_appends";
    let topic = create(CASE, topics, 2).await?;
    let mut sent = payloads("a", 0..10);
    sent[4] = None;
    let offsets = append(CASE, topics, &topic, 0, &sent).await?;
    if offsets != (0..10).collect::<Vec<i64>>() {
        return Err(fail(CASE, format!("appends got offsets {offsets:?}")));
    }
    append(CASE, topics, &topic, 1, &payloads("b", 0..10)).await?;
    let mut reader = open(CASE, source, &topic, &[(0, 3)]).await?;
    let got = collect(CASE, &mut reader, 7).await?;
    let want: BTreeMap<(i32, i64), Option<Vec<u8>>> = (3..10)
        .map(|o| ((0, o), sent[o as usize].clone()))
        .collect();
    if got != want {
        return Err(fail(
            CASE,
            format!(
                "delivered {:?}, expected offsets 0/3..=0/9 with their payloads",
                got.keys()
            ),
        ));
    }
    append(CASE, topics, &topic, 0, &payloads("a", 10..15)).await?;
    let more = collect(CASE, &mut reader, 5).await?;
    let keys: Vec<_> = more.keys().copied().collect();
    if keys != (10..15).map(|o| (0, o)).collect::<Vec<_>>() {
        return Err(fail(CASE, format!("after more appends delivered {keys:?}")));
    }
    reader.stop().await;
    Ok(())
}

async fn reader_started_at_the_end_gets_only_new_messages(
    source: &dyn Source,
    topics: &dyn TestTopics,
) -> Outcome {
    const CASE: &str = "reader_started_at_the_end_gets_only_new_messages";
    let topic = create(CASE, topics, 1).await?;
    append(CASE, topics, &topic, 0, &payloads("old", 0..4)).await?;
    let mut reader = open(CASE, source, &topic, &[(0, 4)]).await?;
    append(CASE, topics, &topic, 0, &payloads("new", 4..6)).await?;
    let got = collect(CASE, &mut reader, 2).await?;
    let keys: Vec<_> = got.keys().copied().collect();
    if keys != vec![(0, 4), (0, 5)] {
        return Err(fail(
            CASE,
            format!("delivered {keys:?}, expected 0/4 and 0/5"),
        ));
    }
    reader.stop().await;
    Ok(())
}

async fn readers_are_independent(source: &dyn Source, topics: &dyn TestTopics) -> Outcome {
    const CASE: &str = "readers_are_independent";
    let topic = create(CASE, topics, 2).await?;
    append(CASE, topics, &topic, 1, &payloads("x", 0..6)).await?;
    let mut a = open(CASE, source, &topic, &[(1, 0)]).await?;
    let mut b = open(CASE, source, &topic, &[(0, 0), (1, 2)]).await?;
    let from_a = collect(CASE, &mut a, 6).await?;
    let from_b = collect(CASE, &mut b, 4).await?;
    a.stop().await;
    b.stop().await;
    if from_a.len() != 6
        || from_b.keys().copied().collect::<Vec<_>>() != (2..6).map(|o| (1, o)).collect::<Vec<_>>()
    {
        return Err(fail(
            CASE,
            format!(
                "reader a got {:?}, reader b got {:?}",
                from_a.keys(),
                from_b.keys()
            ),
        ));
    }
    Ok(())
}

async fn open(
    case: &'static str,
    source: &dyn Source,
    topic: &str,
    starts: &[(i32, i64)],
) -> Result<Box<dyn Reader>, ConformanceFailure> {
    let assignments: Vec<Assignment> = starts
        .iter()
        .map(|&(partition, start)| Assignment {
            topic: topic.to_string(),
            partition,
            start,
        })
        .collect();
    source
        .open(&assignments)
        .await
        .map_err(|e| fail(case, format!("cannot open a reader: {e}")))
}
