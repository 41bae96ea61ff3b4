//! `sluice check`: validate a configuration file and say what it defines; with --connect, also
//! reach the services it names.

use std::path::PathBuf;

use anyhow::Result;
use sluice_config::Config;
use sluice_sink::Storage;
use sluice_transform::Views;
use sluice_worker::open_coordinator;

use crate::common::load;

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The configuration file to validate.
    #[arg(short, long, env = "SLUICE_CONFIG")]
    config: PathBuf,
    /// Also reach ZooKeeper, Kafka and storage: open the storage, read the committed offsets and
    /// count each topic's partitions.
    #[arg(long)]
    connect: bool,
}

pub async fn check(args: CheckArgs) -> Result<()> {
    let config = load(&args.config)?;
    println!("{}: valid", args.config.display());
    for line in table_lines(&config) {
        println!("{line}");
    }
    // Loading checks each view's fields; only planning its SQL against its source's columns
    // finds a query that cannot run.
    let views = Views::compile(&config).await?;
    for v in &config.views {
        println!(
            "  view {} over {} -> {}: plans against {}'s columns",
            v.name, v.source, v.target, v.source
        );
    }
    drop(views);
    if args.connect {
        check_connections(&config).await?;
    }
    Ok(())
}

/// One line per table: what feeds it (a topic or a view), its columns, sorting and partitioning.
fn table_lines(config: &Config) -> impl Iterator<Item = String> + '_ {
    config.tables.iter().map(|t| {
        let fed_by = match &t.topic {
            Some(topic) => format!("topic {topic}"),
            None => config
                .views
                .iter()
                .find(|v| v.target == t.name)
                .map_or_else(String::new, |v| {
                    format!("view {} over {}", v.name, v.source)
                }),
        };
        format!(
            "  table {} <- {} ({} columns, sorted by [{}], partitioned by {})",
            t.name,
            fed_by,
            t.columns.len(),
            t.sorting_key.join(", "),
            t.partition_key
                .as_ref()
                .map_or("nothing".to_string(), |p| format!(
                    "{:?} of {}",
                    p.granularity, p.column
                )
                .to_lowercase())
        )
    })
}

/// Storage, then coordination, then Kafka: the first that cannot be reached ends the check
/// with its error, after the lines of those that could.
async fn check_connections(config: &Config) -> Result<()> {
    let storage = Storage::open(&config.storage)?;
    let mut unreachable = Vec::new();
    for (name, url, answer) in storage.probe().await {
        let what = if storage.is_replicated() {
            format!("storage endpoint {name} ({url})")
        } else {
            format!("storage {url}")
        };
        match answer {
            Ok(()) => println!("  {what}: ok"),
            Err(e) => {
                println!("  {what}: {:#}", anyhow::Error::new(e));
                unreachable.push(name);
            }
        }
    }
    if !unreachable.is_empty() {
        anyhow::bail!(
            "storage cannot be reached ({}): check the url, the bucket or directory, and the credentials",
            unreachable.join(", ")
        );
    }
    if storage.is_replicated() {
        let r = storage.replication();
        println!(
            "  replication: each part on {} of {} endpoints, committed at {} copies",
            r.factor,
            storage.endpoint_names().len(),
            r.quorum
        );
    }
    let coord = open_coordinator(&config.coordination).await?;
    coord.list_units().await?;
    let (may_write, open) = (coord.may_write(), coord.open_to_anyone());
    coord.close().await?;
    let identity = config
        .coordination
        .auth
        .as_ref()
        .map_or_else(|| "anonymous".to_string(), |a| format!("as `{}`", a.user));
    let transport = if config.coordination.tls.is_some() {
        "TLS"
    } else {
        "plain TCP"
    };
    println!(
        "  coordination ({identity}, {transport}): ok, {}",
        if may_write {
            "read and write"
        } else {
            "read only (enough for lag and members, not for a worker)"
        }
    );
    if open {
        println!(
            "  warning: anyone who reaches ZooKeeper can change the registry under {}: its ACL is open to the world; set [coordination.auth] for a new root (docs/operations.md, Security)",
            config.coordination.root
        );
    }
    for topic in config.topics() {
        let kafka = config.kafka.clone();
        let t = topic.clone();
        // librdkafka's metadata request blocks.
        let partitions =
            tokio::task::spawn_blocking(move || sluice_source::partitions(&kafka, &t)).await??;
        println!("  topic {topic}: {} partitions", partitions.len());
    }
    println!(
        "  kafka: {}",
        match config.kafka.security.sasl_mechanism {
            Some(m) => format!(
                "{} as `{}` ({})",
                config.kafka.security.protocol.librdkafka_name(),
                config.kafka.security.sasl_username.as_deref().unwrap_or(""),
                m.name()
            ),
            None => config.kafka.security.protocol.librdkafka_name().to_string(),
        }
    );
    Ok(())
}
