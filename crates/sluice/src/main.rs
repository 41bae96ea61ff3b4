//! `sluice`: the command-line entry point. `sluice run` starts a worker; the other commands
//! inspect what was committed or help set up a stack. Each command lives in a module of its own.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod backfill;
mod check;
mod common;
mod gc;
mod lag;
mod members;
mod offsets;
mod parts;
mod produce;
mod query;
mod replay;
mod run;
mod scopes;
mod views;

#[derive(Parser, Debug)]
#[command(
    name = "sluice",
    version,
    about = "Kafka to sorted Parquet parts on object storage, exactly once",
    long_about = "Sluice reads Kafka topics, decodes JSON events into typed tables, and writes them as sorted \
                  Parquet parts to object storage. Parts and the Kafka offsets that produced them are committed \
                  together in ZooKeeper, so every event lands exactly once: in its table, or in the table's \
                  quarantine with the reason it could not be decoded. Materialized views (SQL over each \
                  batch, filters and mergeable aggregations) write further tables in the same commit; \
                  `sluice query` runs SQL over what is committed.\n\nSee config/sluice.example.toml for every \
                  configuration field."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a worker: take the leases of the configured topics' partitions and ingest them,
    /// until SIGTERM or SIGINT (it then drains and commits within worker.shutdown_deadline_ms).
    /// Outages of storage or ZooKeeper are waited out, not exits: /readyz says what it waits for.
    Run(run::RunArgs),
    /// Validate a configuration file (views planned against their source tables) and report
    /// what it defines; with --connect, also reach ZooKeeper, Kafka and storage.
    Check(check::CheckArgs),
    /// List the live parts of the tables: flushed and merged (level, parts replaced), live in
    /// the registry or sealed into a manifest; with --paths, exactly the parts a query reads
    /// now, for other engines.
    Parts(parts::PartsArgs),
    /// Show the part registry per table and partition value (scope): live records by merge
    /// level, bytes, sealed manifests, merge lease holders and the merges the policy would plan
    /// now, largest scopes first.
    Scopes(scopes::ScopesArgs),
    /// Show each source partition's committed offset, lease epoch and holder.
    Offsets(offsets::OffsetsArgs),
    /// Show the fleet: live workers with their weights and addresses, which partitions each
    /// holds (with lease epochs) and which rendezvous hashing assigns it, and partitions that
    /// have no holder or are being handed over.
    Members(members::MembersArgs),
    /// Show every partition's lag: owner, committed offset, end (high watermark), lag in
    /// messages and in seconds (age of the oldest uncommitted event), with totals per topic.
    /// Reads ZooKeeper and Kafka only, so it works with no worker running.
    Lag(lag::LagArgs),
    /// Run SQL over the committed parts of the tables (a consistent snapshot), views'
    /// aggregate states merged into final values.
    Query(query::QueryArgs),
    /// Delete objects nothing references and no running worker can still commit: uploads of
    /// crashed flushes, merges and seals. Never a live or sealed part, nor one a merge replaced
    /// that is still in its grace period.
    Gc(gc::GcArgs),
    /// Backfills from snapshots: check a snapshot against the table and the topic before
    /// loading it, and show recorded backfills.
    Backfill(backfill::BackfillArgs),
    /// Show the views the fleet maintains: when each went live and whether its history over
    /// the data committed before is computed; `views drop NAME` stops maintaining one.
    Views(views::ViewsArgs),
    /// Replays: rebuild a time range of a table and its views from the topic (after fixing the
    /// configuration, say) and swap it in atomically while ingestion goes on; roll it back
    /// while the old generation is kept.
    Replay(replay::ReplayArgs),
    /// Produce seeded sample events (sequence-numbered web-analytics JSON, 130-200 bytes each) to
    /// a topic, or write them to an NDJSON file.
    Produce(produce::ProduceArgs),
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,zookeeper_client=warn"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn main() {
    limit_malloc_arenas();
    init_tracing();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(dispatch(cli.command)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// glibc gives each thread that allocates an arena of its own, up to eight per core, and each
/// arena keeps what its thread freed. A worker allocates on its Kafka poll thread, its runtime
/// threads and its encoding threads alike, so that retained memory came on top of the memory
/// budget: with a 64 MiB budget and a 4-million-event backlog, peak RSS was 195 MiB with the
/// default arenas and 152 MiB with two, at the same throughput (docs/performance.md), which
/// keeps the promise of the budget plus 100 MB. Called first, before any other thread exists.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets an allocator parameter; no other thread is running yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

async fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run(args) => run::run(args).await,
        Command::Check(args) => check::check(args).await,
        Command::Parts(args) => parts::parts(args).await,
        Command::Scopes(args) => scopes::scopes(args).await,
        Command::Offsets(args) => offsets::offsets(args).await,
        Command::Members(args) => members::members(args).await,
        Command::Lag(args) => lag::lag(args).await,
        Command::Backfill(args) => backfill::backfill(args).await,
        Command::Query(args) => query::query(args).await,
        Command::Gc(args) => gc::gc(args).await,
        Command::Produce(args) => produce::produce(args).await,
        Command::Views(args) => views::views(args).await,
        Command::Replay(args) => replay::replay(args).await,
    }
}
