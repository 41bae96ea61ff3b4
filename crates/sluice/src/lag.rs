//! `sluice lag`: every partition's lag, from ZooKeeper and Kafka alone (no worker needed).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use sluice_telemetry::FleetReport;
use sluice_worker::open_coordinator;

#[derive(clap::Args, Debug)]
pub struct LagArgs {
    /// The configuration file: its tables' topics, ZooKeeper and Kafka.
    #[arg(short, long, env = "SLUICE_CONFIG")]
    config: PathBuf,
    /// One JSON document (partitions, per-topic totals, members) instead of tables.
    #[arg(long)]
    json: bool,
    /// Refresh in place until interrupted (with --json: one document per line).
    #[arg(long)]
    watch: bool,
    /// Refresh interval for --watch.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(100..))]
    interval_ms: u64,
}

pub async fn lag(args: LagArgs) -> Result<()> {
    let config = crate::common::load(&args.config)?;
    let coord = open_coordinator(&config.coordination).await?;
    let kafka = config.kafka.clone();
    let probe = std::sync::Arc::new(
        tokio::task::spawn_blocking(move || sluice_source::KafkaProbe::new(&kafka)).await??,
    );
    let none = sluice_telemetry::OldestBuffered::new();
    let result = async {
        loop {
            let report = match sluice_telemetry::fleet_report(&config, &*coord, &probe, &none).await
            {
                Ok(r) => r,
                // A watch outlives a broker or ZooKeeper hiccup: say so and try again.
                Err(e) if args.watch => {
                    eprintln!("cannot read lag (retrying): {e}");
                    tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let text = if args.json {
                format!("{}\n", serde_json::to_string(&report)?)
            } else {
                render(&report)
            };
            let mut out = std::io::stdout().lock();
            if args.watch && !args.json {
                // Home and clear, so the table refreshes in place.
                write!(out, "\x1b[H\x1b[2J")?;
            }
            out.write_all(text.as_bytes())?;
            out.flush()?;
            drop(out);
            if !args.watch {
                return Ok::<_, anyhow::Error>(());
            }
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                () = tokio::time::sleep(Duration::from_millis(args.interval_ms)) => {}
            }
        }
    }
    .await;
    coord.close().await?;
    result
}

fn seconds(s: Option<f64>) -> String {
    s.map_or("?".to_string(), |s| format!("{s:.1}"))
}

/// The human table: per partition, then per topic.
pub fn render(r: &FleetReport) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<28} {:<20} {:>6} {:>14} {:>14} {:>12} {:>10}\n",
        "partition", "owner", "epoch", "committed", "end", "lag (msgs)", "lag (s)"
    ));
    for u in &r.units {
        out.push_str(&format!(
            "{:<28} {:<20} {:>6} {:>14} {:>14} {:>12} {:>10}\n",
            format!("{}/{}", u.topic, u.partition),
            u.owner.as_deref().unwrap_or("-"),
            u.epoch,
            u.committed.map_or("-".to_string(), |c| c.to_string()),
            u.high_watermark,
            u.lag_messages,
            seconds(u.lag_seconds)
        ));
    }
    out.push('\n');
    out.push_str(&format!(
        "{:<28} {:>10} {:>10} {:>14} {:>14} {:>12} {:>10}\n",
        "topic", "partitions", "no owner", "committed", "end", "lag (msgs)", "max lag (s)"
    ));
    for t in &r.topics {
        out.push_str(&format!(
            "{:<28} {:>10} {:>10} {:>14} {:>14} {:>12} {:>10}\n",
            t.topic,
            t.partitions,
            t.unowned,
            t.committed_total,
            t.high_watermark_total,
            t.lag_messages,
            seconds(t.max_lag_seconds)
        ));
    }
    out.push_str(&format!(
        "\n{} members; total lag {} messages\n",
        r.members.len(),
        r.lag_messages()
    ));
    out
}
