//! Source: the seam between the worker and Kafka.
//!
//! No consumer group, no rebalancing, no offsets committed to Kafka: which partitions a worker
//! reads is decided by its leases, and where it starts is the offset committed with its parts.
//! [`Source`] is the seam; [`KafkaSource`] (rdkafka with manual assignment) implements it for
//! real, and an in-memory implementation in the test kit does for unit tests. Both pass one
//! conformance suite.
//!
//! # The contract
//!
//! * [`Source::partitions`] answers a topic's partition ids, sorted, or
//!   [`SourceError::TopicMissing`]. Partitions are never removed from a topic.
//! * [`Source::watermarks`] answers `(low, high)` per asked partition: `low` is the first offset
//!   still retained, `high` the offset the next message will get (`low <= high`; equal when the
//!   partition holds nothing).
//! * [`Source::open`] starts a [`Reader`] of exactly the given partitions. For each partition it
//!   delivers the messages from its start offset on (from `low` if the start is below it), in strictly increasing offset order, without
//!   gaps except where retention deleted messages (then it continues from `low`), and keeps
//!   delivering messages appended later. It never delivers messages of other partitions. Readers
//!   are independent: opening one does not affect another. A reader may deliver a message again
//!   after it is reopened at an earlier offset; the worker skips what it already has.
//! * [`Reader::next`] waits for the next batch; `None` means the reader stopped (after
//!   [`Reader::stop`], or because it cannot go on, after an error batch). Dropping a reader
//!   stops it too.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

mod batch;
mod kafka;
mod probe;
pub mod sample;
mod security;

pub use batch::{SourceBatch, SourceMessage};
pub use kafka::{client_config, KafkaSource};
pub use probe::{partitions, watermarks, KafkaProbe};
pub use security::SourceContext;

/// One partition to read and the offset to start at. Callers resolve "earliest" and "latest"
/// from [`Source::watermarks`] themselves: librdkafka resolving them costs about half a second
/// per reader before the first message (measured against Tansu; docs/performance.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub topic: String,
    pub partition: i32,
    pub start: i64,
}

/// A cause that is only a message, for the places where a client answers with text.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot reach Kafka at {brokers} within {timeout:?}; check that the broker runs and `kafka.bootstrap_servers` is right")]
    Unreachable {
        brokers: String,
        timeout: Duration,
        #[source]
        source: Cause,
    },
    /// Credentials or a certificate refused, either way: it will not pass by itself.
    #[error("authentication with Kafka at {brokers} failed: {reason}; check [kafka.security] (protocol, user, password, CA and certificates)")]
    Refused { brokers: String, reason: String },
    #[error("topic `{topic}` does not exist on {brokers}; create it, or fix the table's `topic`")]
    TopicMissing { topic: String, brokers: String },
    #[error(
        "the Kafka client configuration was refused; check `kafka.properties` and [kafka.security]"
    )]
    Client {
        #[source]
        source: Cause,
    },
    #[error("cannot read the watermarks of {topic}/{partition}")]
    Watermarks {
        topic: String,
        partition: i32,
        #[source]
        source: Cause,
    },
    #[error("the Kafka consumer failed fatally")]
    Fatal {
        #[source]
        source: Cause,
    },
    #[error("cannot start the Kafka poll thread")]
    Thread {
        #[source]
        source: std::io::Error,
    },
    #[error("a blocking Kafka request did not complete")]
    Blocking {
        #[source]
        source: tokio::task::JoinError,
    },
}

/// The seam between the worker and its event source. See the crate docs for the contract.
#[async_trait]
pub trait Source: Send + Sync + fmt::Debug {
    /// The partition ids of `topic`, sorted.
    async fn partitions(&self, topic: &str) -> Result<Vec<i32>, SourceError>;

    /// `(low, high)` watermarks of the given partitions of `topic`.
    async fn watermarks(
        &self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<HashMap<i32, (i64, i64)>, SourceError>;

    /// Starts reading exactly these partitions, each from its start.
    async fn open(&self, assignments: &[Assignment]) -> Result<Box<dyn Reader>, SourceError>;
}

/// A running reader of a fixed set of partitions; see [`Source::open`].
#[async_trait]
pub trait Reader: Send + fmt::Debug {
    /// The next batch of messages, in offset order per partition; `None` once stopped.
    async fn next(&mut self) -> Option<Result<SourceBatch, SourceError>>;

    /// Stops reading and waits for background work to end.
    async fn stop(self: Box<Self>);
}

/// The `(low, high)` watermarks of many partitions, keyed by (topic, partition): one request per
/// topic.
pub async fn watermarks_of(
    source: &dyn Source,
    units: impl IntoIterator<Item = (String, i32)>,
) -> Result<HashMap<(String, i32), (i64, i64)>, SourceError> {
    let mut by_topic: HashMap<String, Vec<i32>> = HashMap::new();
    for (topic, partition) in units {
        by_topic.entry(topic).or_default().push(partition);
    }
    let mut marks = HashMap::new();
    for (topic, partitions) in by_topic {
        let answer = source.watermarks(&topic, &partitions).await?;
        marks.extend(answer.into_iter().map(|(p, m)| ((topic.clone(), p), m)));
    }
    Ok(marks)
}
