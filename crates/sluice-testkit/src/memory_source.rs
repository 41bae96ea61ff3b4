//! An in-memory [`Source`] for unit tests at the worker's seam: topics are vectors of messages,
//! produced to and trimmed (retention) by the test. It passes the same conformance suite as the
//! Kafka source ([`crate::source_conformance`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sluice_source::{Assignment, Reader, Source, SourceBatch, SourceError};
use tokio::sync::watch;

/// Messages per batch a reader hands over, like the Kafka reader's bounded batches.
const MAX_BATCH: usize = 512;
const BROKERS: &str = "memory";

#[derive(Debug, Clone)]
struct Stored {
    timestamp_ms: Option<i64>,
    payload: Option<Vec<u8>>,
}

/// One partition's log: offsets `low..low + messages.len()`.
#[derive(Debug, Default)]
struct Log {
    low: i64,
    messages: Vec<Stored>,
}

impl Log {
    fn high(&self) -> i64 {
        self.low + self.messages.len() as i64
    }
}

#[derive(Debug, Default)]
struct Topics {
    topics: HashMap<String, (Arc<str>, Vec<Log>)>,
}

/// How far the readers of a source got, for a test to wait on instead of sleeping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadProgress {
    /// Messages handed over by all readers so far.
    pub delivered: u64,
    /// Whether a reader last found nothing to hand over: whoever polls it consumed everything
    /// it was handed before asking again.
    pub idle: bool,
    /// Readers open now (opened and not yet stopped or dropped).
    pub open_readers: usize,
    /// Readers opened so far: a worker opens one each time its set of units changes.
    pub opened: u64,
}

/// Topics in memory, shared by clones: produce to one clone, read from another.
#[derive(Debug, Clone)]
pub struct MemorySource {
    topics: Arc<Mutex<Topics>>,
    /// Bumped on every append, so waiting readers look again.
    appended: Arc<watch::Sender<u64>>,
    progress: Arc<watch::Sender<ReadProgress>>,
}

impl Default for MemorySource {
    fn default() -> Self {
        MemorySource {
            topics: Arc::default(),
            appended: Arc::new(watch::channel(0).0),
            progress: Arc::new(watch::channel(ReadProgress::default()).0),
        }
    }
}

impl MemorySource {
    pub fn new() -> MemorySource {
        MemorySource::default()
    }

    /// Creates `topic` with `partitions` empty partitions, or adds partitions to reach that many.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        let mut t = self.topics.lock().expect("memory source lock");
        let (_, logs) = t
            .topics
            .entry(topic.to_string())
            .or_insert_with(|| (Arc::from(topic), Vec::new()));
        while (logs.len() as i32) < partitions {
            logs.push(Log::default());
        }
    }

    /// Appends a message; returns its offset. Panics if the partition does not exist (a test
    /// bug).
    pub fn produce(
        &self,
        topic: &str,
        partition: i32,
        timestamp_ms: Option<i64>,
        payload: Option<&[u8]>,
    ) -> i64 {
        let offset = {
            let mut t = self.topics.lock().expect("memory source lock");
            let log = &mut t.topics.get_mut(topic).expect("topic exists").1[partition as usize];
            log.messages.push(Stored {
                timestamp_ms,
                payload: payload.map(<[u8]>::to_vec),
            });
            log.high() - 1
        };
        self.appended.send_modify(|n| *n += 1);
        offset
    }

    /// Deletes the messages of a partition below `offset`, as retention would.
    pub fn delete_before(&self, topic: &str, partition: i32, offset: i64) {
        let mut t = self.topics.lock().expect("memory source lock");
        let log = &mut t.topics.get_mut(topic).expect("topic exists").1[partition as usize];
        let drop = (offset - log.low).clamp(0, log.messages.len() as i64);
        log.messages.drain(..drop as usize);
        log.low += drop;
    }

    /// `n` events produced to a partition and deleted by retention before anyone read them,
    /// with everything before them: the partition's next offset moves on by `n` and nothing is
    /// left to read below it.
    pub fn lose_unread(&self, topic: &str, partition: i32, n: i64) {
        let mut t = self.topics.lock().expect("memory source lock");
        let log = &mut t.topics.get_mut(topic).expect("topic exists").1[partition as usize];
        log.low = log.high() + n;
        log.messages.clear();
    }

    /// Waits until readers handed over at least `messages` messages and then asked for more
    /// finding none: everything handed over was consumed.
    pub async fn consumed(&self, messages: u64) {
        let mut progress = self.progress.subscribe();
        let _ = progress
            .wait_for(|p| p.delivered >= messages && p.idle)
            .await;
    }

    /// Waits until no reader is open (the worker stopped reading, e.g. paused).
    pub async fn unread(&self) {
        let mut progress = self.progress.subscribe();
        let _ = progress.wait_for(|p| p.open_readers == 0).await;
    }

    /// How far the readers got so far.
    pub fn progress(&self) -> ReadProgress {
        *self.progress.borrow()
    }

    /// Up to `max` messages of one partition from `*next` on, advancing `*next`.
    fn read(&self, a: &Assignment, next: &mut i64, batch: &mut SourceBatch, max: usize) {
        let t = self.topics.lock().expect("memory source lock");
        let Some((topic, logs)) = t.topics.get(&a.topic) else {
            return;
        };
        let Some(log) = logs.get(a.partition as usize) else {
            return;
        };
        // Deleted by retention: go on from the first message still there.
        *next = (*next).max(log.low);
        while *next < log.high() && batch.len() < max {
            let m = &log.messages[(*next - log.low) as usize];
            batch.push(
                Arc::clone(topic),
                a.partition,
                *next,
                m.timestamp_ms,
                m.payload.as_deref(),
            );
            *next += 1;
        }
    }
}

#[async_trait]
impl Source for MemorySource {
    async fn partitions(&self, topic: &str) -> Result<Vec<i32>, SourceError> {
        let t = self.topics.lock().expect("memory source lock");
        match t.topics.get(topic) {
            Some((_, logs)) if !logs.is_empty() => Ok((0..logs.len() as i32).collect()),
            _ => Err(SourceError::TopicMissing {
                topic: topic.to_string(),
                brokers: BROKERS.to_string(),
            }),
        }
    }

    async fn watermarks(
        &self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<HashMap<i32, (i64, i64)>, SourceError> {
        let t = self.topics.lock().expect("memory source lock");
        let missing = || SourceError::TopicMissing {
            topic: topic.to_string(),
            brokers: BROKERS.to_string(),
        };
        let (_, logs) = t.topics.get(topic).ok_or_else(missing)?;
        partitions
            .iter()
            .map(|&p| {
                let log = logs.get(p as usize).ok_or_else(missing)?;
                Ok((p, (log.low, log.high())))
            })
            .collect()
    }

    async fn open(&self, assignments: &[Assignment]) -> Result<Box<dyn Reader>, SourceError> {
        self.progress.send_modify(|p| {
            p.open_readers += 1;
            p.opened += 1;
        });
        Ok(Box::new(MemoryReader {
            source: self.clone(),
            appended: self.appended.subscribe(),
            positions: assignments.iter().map(|a| (a.clone(), a.start)).collect(),
        }))
    }
}

/// A reader of a [`MemorySource`]: reads a share of each partition per batch, waits for appends.
#[derive(Debug)]
struct MemoryReader {
    source: MemorySource,
    appended: watch::Receiver<u64>,
    positions: Vec<(Assignment, i64)>,
}

#[async_trait]
impl Reader for MemoryReader {
    async fn next(&mut self) -> Option<Result<SourceBatch, SourceError>> {
        loop {
            // Marked seen before reading, so an append during the read is not missed.
            self.appended.borrow_and_update();
            let mut batch = SourceBatch::with_capacity(MAX_BATCH, 0);
            // A share each, so a busy partition does not starve the others.
            let share = (MAX_BATCH / self.positions.len().max(1)).max(1);
            for (a, next) in &mut self.positions {
                let up_to = batch.len() + share;
                self.source.read(a, next, &mut batch, up_to);
            }
            let delivered = batch.len() as u64;
            self.source.progress.send_modify(|p| {
                p.delivered += delivered;
                p.idle = delivered == 0;
            });
            if !batch.is_empty() {
                return Some(Ok(batch));
            }
            if self.appended.changed().await.is_err() {
                return None;
            }
        }
    }

    async fn stop(self: Box<Self>) {}
}

impl Drop for MemoryReader {
    fn drop(&mut self) {
        self.source
            .progress
            .send_modify(|p| p.open_readers = p.open_readers.saturating_sub(1));
    }
}
