//! Sluice's benchmarks, as a library for the `sluice-bench` command and the criterion
//! micro-benchmarks under `micro/`.
//!
//! * [`convert`]: the conversion path alone (NDJSON -> decode -> sort -> Parquet -> storage).
//! * [`consume`]: the raw rate of an rdkafka consumer configured as Sluice's source.
//! * [`run`]: the whole benchmark: a seeded corpus, the conversion path on one thread and on all
//!   cores, then from the broker: raw consumption, one worker and two workers, in one run.
//! * [`merges`]: the merges benchmark: one paced event stream ingested with and without merges;
//!   parts per scope over time, write amplification, znodes before and after sealing, and a
//!   one-day query over both data sets.

pub mod consume;
pub mod convert;
pub mod merges;
pub mod micro;
pub mod run;

pub use convert::Figures;
