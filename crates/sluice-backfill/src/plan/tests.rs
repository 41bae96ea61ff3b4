use std::collections::BTreeMap;
use std::path::PathBuf;

use sluice_config::Config;
use sluice_testkit::fixture::{config_with, events_table};

use super::*;
use crate::{FileFormat, SnapshotFile};

fn config(extra: &str) -> Config {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, config_with(extra)).expect("write");
    Config::load(&path).expect("config loads")
}

fn snapshot(offsets: &[(i32, i64)]) -> Snapshot {
    Snapshot {
        table: "events".into(),
        offsets: offsets.iter().copied().collect(),
        files: vec![SnapshotFile {
            path: PathBuf::from("a.ndjson"),
            format: FileFormat::Ndjson,
            sha256: "0".repeat(64),
        }],
        sha256: "ab".repeat(32),
        dir: PathBuf::new(),
    }
}

fn retained(ranges: &[(i32, i64, i64)]) -> Retained {
    ranges.iter().map(|&(p, l, h)| (p, (l, h))).collect()
}

#[test]
fn a_snapshot_the_topic_still_covers_plans_its_offsets() {
    let r = retained(&[(0, 0, 100), (1, 0, 80)]);
    let p = plan(
        &snapshot(&[(0, 40), (1, 80)]),
        &config(""),
        "bf-1",
        &r,
        false,
        7,
    )
    .expect("plans");
    assert_eq!(
        (p.topic.as_str(), p.offsets, p.files),
        ("events", BTreeMap::from([(0, 40), (1, 80)]), 1)
    );
    assert!(p.accepted_gaps.is_empty());
}

#[test]
fn a_gap_is_refused_unless_accepted_and_then_recorded() {
    let r = retained(&[(0, 30, 100)]);
    let e = plan(&snapshot(&[(0, 10)]), &config(""), "bf", &r, false, 7)
        .expect_err("a gap")
        .to_string();
    assert!(e.contains("10..30") && e.contains("--accept-gap"), "{e}");
    let p = plan(&snapshot(&[(0, 10)]), &config(""), "bf", &r, true, 7).expect("accepted");
    assert_eq!(p.offsets[&0], 30, "the stream starts where the topic does");
    assert_eq!(
        (p.accepted_gaps[0].1.from, p.accepted_gaps[0].1.to),
        (10, 30)
    );
}

#[test]
fn snapshots_that_do_not_fit_are_refused_with_the_reason() {
    let c = config("");
    let r = retained(&[(0, 0, 100), (1, 0, 100)]);
    let cases = [
        (snapshot(&[(0, 5)]), "no offset for partition 1"),
        (snapshot(&[(0, 5), (1, 5), (2, 5)]), "no partition 2"),
        (snapshot(&[(0, 5), (1, 500)]), "past the topic's end 100"),
    ];
    for (s, want) in cases {
        let e = plan(&s, &c, "bf", &r, false, 7)
            .expect_err(want)
            .to_string();
        assert!(e.contains(want), "{want}: {e}");
    }
    let e = plan(&snapshot(&[(0, 5), (1, 5)]), &c, "bad id!", &r, false, 7)
        .expect_err("id")
        .to_string();
    assert!(e.contains("backfill id"), "{e}");
    let mut other = snapshot(&[(0, 5), (1, 5)]);
    other.table = "nope".into();
    let e = plan(&other, &c, "bf", &r, false, 7)
        .expect_err("table")
        .to_string();
    assert!(e.contains("no such table"), "{e}");
}

#[test]
fn a_topic_another_table_reads_is_refused() {
    let second = events_table("events", 1000, 1000).replace("name = \"events\"", "name = \"copy\"");
    let r = retained(&[(0, 0, 100)]);
    let e = plan(&snapshot(&[(0, 5)]), &config(&second), "bf", &r, false, 7)
        .expect_err("shared topic")
        .to_string();
    assert!(e.contains("table `copy` reads topic `events` too"), "{e}");
}
