//! `sluice parts`: the live parts of the config's tables, as the registry records them: each
//! scope's live records and the parts of its sealed manifest.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::ValueEnum;
use sluice_coord::{PartKind, PartRecord};
use sluice_query::{read_table, Snapshot};
use sluice_sink::Storage;
use sluice_worker::open_coordinator;

use crate::common::{load, print_json_lines, print_out, selected_tables};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Each line is one live part: a flushed part (level 0: one source \
    partition's offset range) or a merged one (level 1 and up: the parts it replaced, under \
    `inputs`, and how many source partitions its rows came from), listed from the registry or, \
    marked `sealed`, from the manifest a quiet partition value was sealed into.\n\n\
    Other engines (DuckDB, Spark, pyarrow) must read exactly these parts: a directory listing \
    also sees the objects merges replaced, kept for a grace period so running queries can \
    finish, and counts their rows twice. `--paths` prints the parts of one consistent \
    snapshot, the same `sluice query` reads, one location per line:\n  \
    sluice parts --config my.toml --table page_views --paths > parts.txt\n  \
    duckdb -c \"SELECT count(*) FROM read_parquet([$(sed \"s/.*/'&'/\" parts.txt | paste -sd,)])\"\n\
    Read them within `merge.grace_ms` of taking the list: after that, a part a merge replaced \
    meanwhile may be deleted."
)]
pub struct PartsArgs {
    /// The configuration file: its tables, ZooKeeper and storage.
    #[arg(short, long, env = "SLUICE_CONFIG")]
    config: PathBuf,
    /// Only this table [default: all tables of the config].
    #[arg(long)]
    table: Option<String>,
    /// One JSON object per part instead of a table (the part's registry record, plus
    /// `"sealed": true` for parts listed from a manifest).
    #[arg(long, conflicts_with = "paths")]
    json: bool,
    /// Print only the locations of the live parts, one per line (`s3://bucket/key`, or a file
    /// path for file:// storage), from one consistent snapshot: exactly the parts `sluice
    /// query` would read now, for other engines. Data parts only, unless --kind says otherwise
    /// (quarantine parts have another schema).
    #[arg(long)]
    paths: bool,
    /// With --paths: print the paths relative to the storage root, as the registry records
    /// them, instead of locations.
    #[arg(long, requires = "paths")]
    relative: bool,
    /// Only parts of this kind [default: both; data with --paths].
    #[arg(long, value_enum)]
    kind: Option<Kind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    /// Table rows.
    Data,
    /// Events that could not be decoded, and rows a view failed on.
    Quarantine,
    /// Both.
    All,
}

impl Kind {
    fn admits(self, kind: PartKind) -> bool {
        match self {
            Kind::Data => kind == PartKind::Data,
            Kind::Quarantine => kind == PartKind::Quarantine,
            Kind::All => true,
        }
    }
}

pub async fn parts(args: PartsArgs) -> Result<()> {
    let config = load(&args.config)?;
    let tables = selected_tables(&config, &args.config, args.table.clone())?;
    let storage = Storage::open(&config.storage)?;
    let coord = open_coordinator(&config.coordination).await?;
    let listed = list(&args, &tables, &storage, &*coord).await;
    let _ = coord.close().await;
    listed
}

async fn list(
    args: &PartsArgs,
    tables: &[String],
    storage: &Storage,
    coord: &dyn sluice_coord::Coordinator,
) -> Result<()> {
    if args.paths {
        let kind = args.kind.unwrap_or(Kind::Data);
        let snapshot = Snapshot::read_tables(coord, storage, tables.iter().map(String::as_str))
            .await
            .context("reading the live parts")?;
        let mut out = String::new();
        for t in tables {
            let mut parts: Vec<(&PartRecord, bool)> = snapshot
                .parts
                .get(t)
                .into_iter()
                .flatten()
                .filter(|p| kind.admits(p.kind))
                .map(|p| (p, false))
                .collect();
            parts.sort_by(|a, b| listing_order(a).cmp(&listing_order(b)));
            for (p, _) in parts {
                if args.relative {
                    out.push_str(&p.path);
                } else {
                    out.push_str(&location(storage, &p.path));
                }
                out.push('\n');
            }
        }
        return print_out(&out);
    }
    let kind = args.kind.unwrap_or(Kind::All);
    for t in tables {
        let scopes = read_table(coord, storage, t)
            .await
            .with_context(|| format!("reading the parts of table {t}"))?;
        let mut parts: Vec<(&PartRecord, bool)> = scopes
            .iter()
            .flat_map(|s| s.parts())
            .filter(|(p, _)| kind.admits(p.kind))
            .collect();
        parts.sort_by(|a, b| listing_order(a).cmp(&listing_order(b)));
        if args.json {
            print_json_lines(parts.iter().map(|&(p, sealed)| json_line(p, sealed)))?;
        } else {
            let copies = storage
                .is_replicated()
                .then(|| storage.replication().factor);
            print_out(&render_table(t, &parts, copies))?;
        }
    }
    Ok(())
}

/// Where another engine finds a part: `s3://bucket/key`, or the file's path for `file://`
/// storage (the store's own key, which escapes some characters of partition values).
fn location(storage: &Storage, rel: &str) -> String {
    let key = storage.object_path(rel).to_string();
    // Replicated: the first endpoint of the part's placement.
    let url = storage
        .placement_urls(rel)
        .into_iter()
        .next()
        .unwrap_or_default();
    if let Some(dir) = url.strip_prefix("file://") {
        return format!("{}/{key}", dir.trim_end_matches('/'));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let bucket = rest.split('/').next().unwrap_or(rest);
        return format!("s3://{bucket}/{key}");
    }
    key
}

/// The part's record as JSON, with `"sealed"` set for parts listed from a manifest.
fn json_line(p: &PartRecord, sealed: bool) -> serde_json::Result<String> {
    let mut value = serde_json::to_value(p)?;
    if let serde_json::Value::Object(map) = &mut value {
        map.insert("sealed".into(), serde_json::Value::Bool(sealed));
    }
    serde_json::to_string(&value)
}

/// Data before quarantine, so a table's rows come first; then by partition value, merged parts
/// (highest level first) before flushed ones, and by the source offsets each flushed part
/// covers.
fn listing_order<'a>(
    &(p, _): &(&'a PartRecord, bool),
) -> (
    bool,
    &'a str,
    std::cmp::Reverse<u32>,
    &'a str,
    i32,
    i64,
    &'a str,
) {
    (
        p.kind == PartKind::Quarantine,
        &p.partition_value,
        std::cmp::Reverse(p.level),
        &p.topic,
        p.partition,
        p.first_offset,
        &p.path,
    )
}

/// Where a part's rows came from: a flushed part's offset range, or how many source
/// partitions a merged part's rows came from.
fn offsets_cell(p: &PartRecord) -> String {
    if !p.is_merged() {
        return format!(
            "{}/{} {}..{}",
            p.topic, p.partition, p.first_offset, p.last_offset
        );
    }
    let sources: BTreeSet<(String, i32)> = p
        .source_spans()
        .into_iter()
        .map(|s| (s.topic, s.partition))
        .collect();
    match sources.len() {
        1 => "1 partition".to_string(),
        n => format!("{n} partitions"),
    }
}

/// The endpoints a part's record says hold a verified copy, and how many are missing to the
/// replication factor.
fn copies_cell(p: &PartRecord, factor: usize) -> String {
    let mut cell = if p.replicas.is_empty() {
        "?".to_string()
    } else {
        p.replicas.join(",")
    };
    if p.replicas.len() < factor {
        cell.push_str(&format!(" ({} missing)", factor - p.replicas.len()));
    }
    cell
}

/// A table's totals (the line the tests and scripts read), then one line per part; with
/// `copies` (the replication factor, when parts are replicated), the endpoints holding each.
fn render_table(table: &str, parts: &[(&PartRecord, bool)], copies: Option<usize>) -> String {
    let (rows, q): (u64, u64) = parts.iter().fold((0, 0), |(r, q), (p, _)| match p.kind {
        PartKind::Data => (r + p.rows, q),
        PartKind::Quarantine => (r, q + p.rows),
    });
    let merged = parts.iter().filter(|(p, _)| p.is_merged()).count();
    let sealed = parts.iter().filter(|(_, sealed)| *sealed).count();
    let mut out = format!(
        "table {table}: {} parts, {rows} rows, {q} quarantined ({merged} merged, {sealed} sealed)\n",
        parts.len()
    );
    let copies_header = if copies.is_some() { "copies  " } else { "" };
    out.push_str(&format!(
        "  {:<11} {:<13} {:>5} {:>6} {:>9} {:>10} {:>23} {:>6} {:<6}  {copies_header}path\n",
        "kind", "partition", "level", "inputs", "rows", "bytes", "offsets", "epoch", "sealed"
    ));
    for (p, sealed) in parts {
        let copies_cell = copies.map_or(String::new(), |factor| {
            format!("{}  ", copies_cell(p, factor))
        });
        out.push_str(&format!(
            "  {:<11} {:<13} {:>5} {:>6} {:>9} {:>10} {:>23} {:>6} {:<6}  {copies_cell}{}\n",
            p.kind.to_string(),
            if p.partition_value.is_empty() {
                "-"
            } else {
                &p.partition_value
            },
            p.level,
            p.inputs,
            p.rows,
            p.bytes,
            offsets_cell(p),
            p.lease_epoch,
            if *sealed { "sealed" } else { "-" },
            p.path
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_coord::OffsetSpan;

    fn flushed(partition: i32, first: i64) -> PartRecord {
        PartRecord {
            table: "t".into(),
            kind: PartKind::Data,
            partition_value: "2026-11-20".into(),
            path: format!("t/data/2026-11-20/ev-{partition}-{first}.parquet"),
            rows: 10,
            bytes: 100,
            topic: "ev".into(),
            partition,
            first_offset: first,
            last_offset: first + 9,
            definition_version: 1,
            lease_epoch: 1,
            created_at_ms: 1,
            flushed_at_ms: 1,
            ..PartRecord::default()
        }
    }

    fn merged(level: u32, partitions: &[i32]) -> PartRecord {
        let span = |&partition: &i32| OffsetSpan {
            topic: "ev".into(),
            partition,
            first_offset: 0,
            last_offset: 9,
        };
        PartRecord {
            path: format!("t/data/2026-11-20/m{level}-ab-e2-v1.parquet"),
            topic: String::new(),
            partition: -1,
            first_offset: -1,
            last_offset: -1,
            level,
            inputs: 4,
            spans: partitions.iter().map(span).collect(),
            lease_epoch: 2,
            ..flushed(0, 0)
        }
    }

    #[test]
    fn merged_parts_show_their_level_inputs_and_source_partitions() {
        let (a, b, c) = (flushed(1, 20), merged(2, &[0, 1, 1, 2]), merged(1, &[3]));
        let mut parts = vec![(&a, false), (&b, true), (&c, false)];
        parts.sort_by(|x, y| listing_order(x).cmp(&listing_order(y)));
        let text = render_table("t", &parts, None);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "table t: 3 parts, 30 rows, 0 quarantined (2 merged, 1 sealed)"
        );
        assert!(lines[2].contains("    2      4 ") && lines[2].contains("3 partitions"));
        assert!(lines[2].contains(" sealed ") && lines[2].ends_with("m2-ab-e2-v1.parquet"));
        assert!(lines[3].contains("1 partition ") && lines[3].contains("    1      4 "));
        assert!(lines[4].contains("ev/1 20..29") && lines[4].contains(" -      "));
        let json: serde_json::Value = serde_json::from_str(&json_line(&b, true).unwrap()).unwrap();
        assert_eq!(
            (&json["sealed"], &json["level"], &json["inputs"]),
            (
                &serde_json::json!(true),
                &serde_json::json!(2),
                &serde_json::json!(4)
            )
        );
        assert_eq!(json["spans"].as_array().map(Vec::len), Some(4));
    }
}
