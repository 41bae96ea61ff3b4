//! Sluice's benchmarks, as a library for the `sluice-bench` command and the criterion
//! micro-benchmarks under `micro/`.
//!
//! * [`convert`]: the conversion path alone (NDJSON -> decode -> sort -> Parquet -> storage).
//! * [`consume`]: the raw rate of an rdkafka consumer configured as Sluice's source.
//! * [`run`]: the whole benchmark: a seeded corpus, the conversion path on one thread and on all
//!   cores, then from the broker: raw consumption, one worker and two workers, in one run.

pub mod consume;
pub mod convert;
pub mod micro;
pub mod run;

pub use convert::Figures;
