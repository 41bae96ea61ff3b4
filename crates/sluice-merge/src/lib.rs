//! Merges: background compaction of a scope's small parts into larger sorted ones.
//!
//! A **scope** is the set of parts that may be merged together: one table, one partition-key
//! value, one definition version and one kind (data or quarantine). Merged parts may combine
//! rows from several Kafka partitions; merges move no offsets.
//!
//! * [`policy`]: which merges to run, a pure function of a scope's parts and the time.
//! * [`execute`]: merging parts into one sorted part (partial aggregate states combined per
//!   group for aggregating tables), streamed from and to object storage.

pub mod execute;
pub mod policy;
