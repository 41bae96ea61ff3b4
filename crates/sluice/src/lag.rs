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
    out.push_str(&gaps(r));
    out.push_str(&format!(
        "\n{} members; total lag {} messages\n",
        r.members.len(),
        r.lag_messages()
    ));
    out
}

/// The partitions that lost events to Kafka's retention, if any: what was recorded as skipped,
/// and what is deleted but not yet read (skipped when a worker resumes the partition).
fn gaps(r: &FleetReport) -> String {
    let lossy: Vec<_> = r
        .units
        .iter()
        .filter(|u| u.skipped_messages > 0 || u.deleted_unread > 0)
        .collect();
    if lossy.is_empty() {
        return String::new();
    }
    let mut out =
        "\nRETENTION GAPS: events Kafka deleted before they were ingested (lost to Sluice)\n"
            .to_string();
    for u in lossy {
        let last = u.last_gap.as_ref().map_or(String::new(), |g| {
            format!(
                "; last: offsets {}..{} found by {} at {}",
                g.from,
                g.to,
                g.worker,
                chrono::DateTime::from_timestamp_millis(g.found_at_ms)
                    .map_or("?".to_string(), |t| t.to_rfc3339())
            )
        });
        out.push_str(&format!(
            "{:<28} {} skipped{last}{}\n",
            format!("{}/{}", u.topic, u.partition),
            u.skipped_messages,
            if u.deleted_unread > 0 {
                format!(
                    "; {} more deleted before being read (offsets {}..{})",
                    u.deleted_unread,
                    u.committed.unwrap_or(0),
                    u.low_watermark
                )
            } else {
                String::new()
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use sluice_coord::Gap;
    use sluice_telemetry::{lag::totals, UnitLag};

    use super::*;

    fn report(skipped: u64, deleted_unread: i64) -> FleetReport {
        let units = vec![UnitLag {
            topic: "web".into(),
            partition: 0,
            owner: None,
            assigned: None,
            epoch: 2,
            committed: Some(47),
            low_watermark: 47 + deleted_unread,
            high_watermark: 60,
            lag_messages: 13,
            lag_seconds: Some(1.0),
            skipped_messages: skipped,
            last_gap: (skipped > 0).then(|| Gap {
                from: 40,
                to: 47,
                found_at_ms: 0,
                worker: "w1".into(),
            }),
            deleted_unread,
        }];
        FleetReport {
            taken_at_ms: 0,
            members: Vec::new(),
            topics: totals(&units),
            units,
        }
    }

    #[test]
    fn retention_gaps_are_listed_with_their_ranges_and_only_when_there_are_some() {
        let text = render(&report(7, 3));
        for want in [
            "RETENTION GAPS",
            "web/0",
            "7 skipped; last: offsets 40..47 found by w1 at 1970-01-01T00:00:00+00:00",
            "3 more deleted before being read (offsets 47..50)",
        ] {
            assert!(text.contains(want), "no `{want}` in:\n{text}");
        }
        assert!(!render(&report(0, 0)).contains("RETENTION GAPS"));
    }
}
