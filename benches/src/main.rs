//! `sluice-bench`: Sluice's throughput benchmark. `benches/throughput.sh` runs the whole of it
//! against a stack of its own; the subcommands are its steps, each measured in its own process.
//! `merges` is the merges benchmark, which `benches/merges.sh` runs against a stack of its own.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sluice_bench::convert::{convert, ConvertOptions};
use sluice_bench::merges::{self, MergesOptions, Store};
use sluice_bench::run::{render, run, BrokerSide, RunOptions};
use sluice_config::{Config, StorageConfig};
use sluice_transform::Views;
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    name = "sluice-bench",
    version,
    about = "Sluice's throughput benchmark: the conversion path alone, raw Kafka consumption, and workers end to end",
    long_about = "Measures events/s, MB/s, CPU seconds per million events and peak RSS. `run` does it all \
                  in one go (benches/throughput.sh starts the broker stack it needs); the other \
                  subcommands are its steps, each printing its figures as one JSON line. `merges` \
                  is the merges benchmark (benches/merges.sh): parts per scope over time with and \
                  without merges, write amplification, znodes before and after sealing, query time."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The whole benchmark: corpus, conversion path (1 thread, all cores), and with --brokers
    /// raw consumption, one worker and two workers from the same topic.
    Run {
        /// Events in the seeded corpus.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Seed of the corpus: the same seed gives the same events.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// The deployment to measure (table, flush policy, memory budget).
        #[arg(long, default_value = "benches/bench.toml")]
        config: PathBuf,
        /// Views (and their tables) to append to the config, as a TOML fragment: measures
        /// their cost (benches/view-filter.toml, benches/view-aggregation.toml).
        #[arg(long)]
        views: Option<PathBuf>,
        /// Corpus, parts, logs and results.json go here.
        #[arg(long, default_value = "target/bench")]
        work_dir: PathBuf,
        /// Partitions of the topic (and simulated partitions of the conversion path).
        #[arg(long, default_value_t = 4)]
        partitions: usize,
        /// Threads of the all-cores conversion run [default: the machine's cores].
        #[arg(long)]
        threads: Option<usize>,
        /// Kafka bootstrap servers: also run the broker steps.
        #[arg(long, requires = "zookeeper")]
        brokers: Option<String>,
        /// ZooKeeper connect string of the workers (with --brokers).
        #[arg(long)]
        zookeeper: Option<String>,
        /// The `sluice` binary [default: the one next to this program].
        #[arg(long)]
        sluice: Option<PathBuf>,
    },
    /// The conversion path alone: NDJSON -> decode -> sort -> Parquet -> storage.
    Convert {
        #[arg(long)]
        config: PathBuf,
        /// The table to convert into [default: the config's first].
        #[arg(long)]
        table: Option<String>,
        /// NDJSON events, one per line (`sluice produce --output FILE` writes them).
        #[arg(long)]
        input: PathBuf,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Simulated source partitions, dealt out over the threads.
        #[arg(long, default_value_t = 4)]
        partitions: usize,
        /// Directory the parts are written to (emptied first).
        #[arg(long)]
        output: PathBuf,
    },
    /// The merges benchmark (benches/merges.sh starts the stack it needs): one paced stream of
    /// seeded events ingested with tiny flushes twice, without and with merges; part records
    /// per scope every second, write amplification, the table's znodes before and after
    /// sealing, and a one-day `sluice query` over both data sets.
    Merges {
        /// The deployment: table, flush policy and `[merge]`; connection fields are replaced.
        #[arg(long, default_value = "benches/merges.toml")]
        config: PathBuf,
        /// Events produced in each run (the same events both times).
        #[arg(long, default_value_t = 600_000)]
        events: u64,
        /// Events produced per second.
        #[arg(long, default_value_t = 15_000)]
        rate: u64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Partitions of each run's topic.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// Configs, logs, file:// parts and merges-results.json go here.
        #[arg(long, default_value = "target/bench/merges")]
        work_dir: PathBuf,
        /// Kafka bootstrap servers.
        #[arg(long)]
        brokers: String,
        /// ZooKeeper connect string.
        #[arg(long)]
        zookeeper: String,
        /// S3 endpoint: parts go to s3://BUCKET/merges-<stamp>-<run> there [default: file://
        /// under the work dir].
        /// The secret key is read from `SLUICE_S3_SECRET_KEY`, never from the command line
        /// (which `ps` shows).
        #[arg(long, requires_all = ["s3_bucket", "s3_access_key"])]
        s3_endpoint: Option<String>,
        #[arg(long)]
        s3_bucket: Option<String>,
        #[arg(long)]
        s3_access_key: Option<String>,
        /// The `sluice` binary [default: the one next to this program].
        #[arg(long)]
        sluice: Option<PathBuf>,
        /// Runs of the one-day query per data set.
        #[arg(long, default_value_t = 5)]
        query_runs: usize,
        /// The day the query reads.
        #[arg(long, default_value = "2026-11-20")]
        day: String,
        /// Seconds a run may take, after production ends, to commit everything and (with
        /// merges) to seal every scope.
        #[arg(long, default_value_t = 180)]
        settle_timeout_s: u64,
    },
    /// A plain rdkafka consumer with Sluice's source settings, reading a topic to its end.
    Consume {
        /// A Sluice config: its `[kafka]` section is used.
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        topic: String,
    },
}

fn load(path: &std::path::Path) -> Result<Config> {
    Ok(Config::load(path)?)
}

/// The `sluice` binary: the one given, else the one next to this program.
fn sluice_path(given: Option<PathBuf>) -> Result<PathBuf> {
    Ok(match given {
        Some(s) => s,
        None => std::env::current_exe()?
            .parent()
            .context("no directory around this executable")?
            .join("sluice"),
    })
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run {
            events,
            seed,
            config,
            views,
            work_dir,
            partitions,
            threads,
            brokers,
            zookeeper,
            sluice,
        } => {
            load(&config)?;
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let sluice = sluice_path(sluice)?;
            let broker = match (brokers, zookeeper) {
                (Some(brokers), Some(zookeeper)) => Some(BrokerSide {
                    brokers,
                    zookeeper,
                    sluice,
                }),
                _ => None,
            };
            let opts = RunOptions {
                events,
                seed,
                config,
                views,
                work_dir,
                partitions,
                all_threads: threads.unwrap_or(cores),
                broker,
            };
            let results = run(&opts)?;
            let json = opts.work_dir.join("results.json");
            std::fs::write(&json, serde_json::to_string_pretty(&results)?)?;
            println!("{}", render(&results));
            println!("(figures as JSON: {})", json.display());
        }
        Cmd::Convert {
            config,
            table,
            input,
            threads,
            partitions,
            output,
        } => {
            let config = load(&config)?;
            let table = match table {
                Some(name) => config
                    .tables
                    .iter()
                    .find(|t| t.name == name)
                    .with_context(|| format!("no table `{name}` in the config"))?
                    .clone(),
                None => config.tables[0].clone(),
            };
            let views = tokio::runtime::Builder::new_current_thread()
                .build()?
                .block_on(Views::compile(&config))?;
            let figures = convert(&ConvertOptions {
                input,
                table,
                views: (!views.is_empty()).then(|| Arc::new(views)),
                threads,
                partitions,
                storage: StorageConfig {
                    url: format!("file://{}", output.display()),
                    ..Default::default()
                },
            })?;
            println!("{}", serde_json::to_string(&figures)?);
        }
        Cmd::Merges {
            config,
            events,
            rate,
            seed,
            partitions,
            work_dir,
            brokers,
            zookeeper,
            s3_endpoint,
            s3_bucket,
            s3_access_key,
            sluice,
            query_runs,
            day,
            settle_timeout_s,
        } => {
            let s3_secret_key = std::env::var("SLUICE_S3_SECRET_KEY").ok();
            if s3_endpoint.is_some() && s3_secret_key.is_none() {
                anyhow::bail!("--s3-endpoint needs the secret key in SLUICE_S3_SECRET_KEY");
            }
            let store = match (s3_endpoint, s3_bucket, s3_access_key, s3_secret_key) {
                (Some(endpoint), Some(bucket), Some(access_key), Some(secret_key)) => Store::S3 {
                    endpoint,
                    bucket,
                    access_key,
                    secret_key,
                },
                _ => Store::File,
            };
            let opts = MergesOptions {
                config,
                events,
                rate,
                seed,
                partitions,
                work_dir,
                brokers,
                zookeeper,
                store,
                sluice: sluice_path(sluice)?,
                query_runs,
                day,
                settle_timeout: std::time::Duration::from_secs(settle_timeout_s),
            };
            let results = merges::run(&opts)?;
            let json = opts.work_dir.join("merges-results.json");
            std::fs::write(&json, serde_json::to_string_pretty(&results)?)?;
            println!("{}", merges::render(&results));
            println!("(figures and both series as JSON: {})", json.display());
        }
        Cmd::Consume { config, topic } => {
            let config = load(&config)?;
            let figures = sluice_bench::consume::consume(&config.kafka, &topic)?;
            println!("{}", serde_json::to_string(&figures)?);
        }
    }
    Ok(())
}
