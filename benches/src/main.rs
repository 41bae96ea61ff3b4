//! `sluice-bench`: Sluice's throughput benchmark. `benches/throughput.sh` runs the whole of it
//! against a stack of its own; the subcommands are its steps, each measured in its own process.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sluice_bench::convert::{convert, ConvertOptions};
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
                  subcommands are its steps, each printing its figures as one JSON line."
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
            let sluice = match sluice {
                Some(s) => s,
                None => std::env::current_exe()?
                    .parent()
                    .context("no directory around this executable")?
                    .join("sluice"),
            };
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
                    options: Default::default(),
                },
            })?;
            println!("{}", serde_json::to_string(&figures)?);
        }
        Cmd::Consume { config, topic } => {
            let config = load(&config)?;
            let figures = sluice_bench::consume::consume(&config.kafka, &topic)?;
            println!("{}", serde_json::to_string(&figures)?);
        }
    }
    Ok(())
}
