use super::*;

mod example;
mod kafka_security;
mod replication;

use sluice_testkit::fixture;

/// A nullable column read from a nested path, with a default: appended to the shared events
/// table.
const REGION: &str = r#"
[[table.column]]
name = "region"
type = "string"
default = "unknown"
source = "geo.region"
"#;

/// The shared events table plus [`REGION`], with the table settings the fixture sets
/// (`max_message_bytes`, `flush`) left out, so that every optional setting is omitted.
fn minimal() -> String {
    let full = fixture::config_with(REGION);
    let kept: Vec<&str> = full
        .lines()
        .filter(|l| !l.starts_with("max_message_bytes") && !l.starts_with("flush"))
        .collect();
    kept.join("\n") + "\n"
}

/// [`minimal`] with `properties` set in its `[kafka]` section.
fn with_kafka_properties(properties: &str) -> String {
    minimal().replace(
        "[kafka]\n",
        &format!("[kafka]\nproperties = {{ {properties} }}\n"),
    )
}

fn err_of(text: &str) -> String {
    let e = Config::from_toml_str(text, "test.toml").unwrap_err();
    let mut shown = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        shown.push_str(&format!(": {c}"));
        cause = c.source();
    }
    shown
}

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::from_toml_str(&minimal(), "test.toml").unwrap();
    assert_eq!(c.coordination.backend, CoordinationBackend::Zookeeper);
    assert_eq!(c.tables[0].flush, FlushConfig::default());
    assert_eq!(
        c.tables[0].column("region").unwrap().source_path(),
        vec!["geo", "region"]
    );
    assert_eq!(c.tables[0].column("ts").unwrap().source_path(), vec!["ts"]);
    assert_eq!(
        c.tables[0]
            .arrow_schema()
            .field_with_name("ts")
            .unwrap()
            .data_type(),
        &ColumnType::TimestampMs.arrow_type()
    );
    assert_eq!(c.topics(), vec!["events".to_string()]);
}

/// The literal values are the ones the doc comments and `config/sluice.example.toml` state, so
/// a changed default fails here until the documentation says the same.
#[test]
fn omitted_sections_get_the_documented_defaults() {
    let c = Config::from_toml_str(&minimal(), "test.toml").unwrap();
    assert_eq!(c.worker.memory_budget_bytes, 268_435_456);
    assert_eq!(c.worker.weight, 1.0);
    assert_eq!(c.coordination.session_timeout_ms, 10_000);
    assert_eq!(c.coordination.root, "/sluice");
    assert_eq!(c.kafka.start_from, StartFrom::Earliest);
    assert_eq!(c.kafka.metadata_refresh_ms, 30_000);
    assert_eq!(c.storage.url, "file://sluice-data");
    assert_eq!(c.telemetry.listen_address, "127.0.0.1:9600");
    assert_eq!(c.telemetry.dashboard_history_s, 900);
    assert_eq!(c.merge.fan_in, 10);
    assert_eq!(c.merge.target_part_bytes, 1_073_741_824);
    assert_eq!(c.merge.max_rewrites, 4);
    assert_eq!(
        (c.merge.soft_parts_per_scope, c.merge.hard_parts_per_scope),
        (300, 1000)
    );
    assert_eq!(c.merge.quiet_after_ms, 3_600_000);
    assert_eq!(c.merge.memory_bytes, None);
    assert_eq!(c.merge_memory_bytes(), 67_108_864);
    let t = &c.tables[0];
    assert_eq!(t.version, 1);
    assert_eq!(t.max_message_bytes, 1_048_576);
    assert_eq!(t.flush.max_rows, 200_000);
    assert_eq!(t.flush.max_age_ms, 10_000);
    assert!(t.column("region").unwrap().nullable);
    assert!(c.views.is_empty());
}

/// The cause is the error's source, not repeated in its message: printing the chain shows it
/// once.
#[test]
fn errors_keep_their_cause_as_the_source() {
    let e = Config::load(Path::new("/nonexistent/sluice.toml")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/sluice.toml"), "{e}");
    let cause = std::error::Error::source(&e).map(ToString::to_string);
    assert!(
        cause.as_deref().is_some_and(|c| c.contains("No such file")),
        "{cause:?}"
    );
    assert!(!e.to_string().contains("No such file"), "{e}");
    let e = Config::from_toml_str("[kafka", "t").unwrap_err();
    let cause = std::error::Error::source(&e).map(ToString::to_string);
    assert!(
        cause.as_deref().is_some_and(|c| c.contains("line 1")),
        "{cause:?}"
    );
}

#[test]
fn unknown_field_is_named() {
    let e = err_of(&minimal().replace("sorting_key", "sort_key"));
    assert!(e.contains("unknown field `sort_key`"), "{e}");
}

#[test]
fn unknown_type_lists_the_known_ones() {
    let e = err_of(&minimal().replace("\"string\"", "\"varchar\""));
    assert!(
        e.contains("unknown column type `varchar`") && e.contains("timestamp_ms"),
        "{e}"
    );
}

#[test]
fn sorting_key_must_name_a_column() {
    let text = minimal();
    let c = Config::from_toml_str(&text, "t").unwrap();
    let columns: Vec<&str> = c.tables[0]
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    let columns = columns.join(", ");
    let key = format!("sorting_key = {:?}", c.tables[0].sorting_key);
    assert!(text.contains(&key), "{key}");
    let e = err_of(&text.replace(&key, "sorting_key = [\"city\"]"));
    assert!(
        e.contains("sorting_key") && e.contains("`city`") && e.contains(&columns),
        "{e}"
    );
}

#[test]
fn partition_key_granularity_needs_a_temporal_column() {
    let e = err_of(&minimal().replace(
        "column = \"ts\", granularity = \"day\"",
        "column = \"country\", granularity = \"day\"",
    ));
    assert!(e.contains("partition_key.granularity"), "{e}");
}

#[test]
fn default_must_fit_the_type() {
    let e = err_of(&minimal().replace("default = \"unknown\"", "default = 7"));
    assert!(e.contains("column.region.default"), "{e}");
}

#[test]
fn managed_kafka_properties_are_refused() {
    let e = err_of(&with_kafka_properties("\"enable.auto.commit\" = \"true\""));
    assert!(e.contains("enable.auto.commit"), "{e}");
}

#[test]
fn storage_scheme_is_checked() {
    let e = err_of(&format!(
        "{}\n[storage]\nurl = \"gs://bucket\"\n",
        minimal()
    ));
    assert!(e.contains("storage.url"), "{e}");
}

#[test]
fn kafka_prefetch_follows_the_budget_unless_set() {
    let budget = |b: u64| format!("{}\n[worker]\nmemory_budget_bytes = {b}\n", minimal());
    let c = Config::from_toml_str(&minimal(), "t").unwrap();
    assert_eq!(
        c.kafka_prefetch_kib(),
        32768,
        "an eighth of the default 256 MiB"
    );
    let small = Config::from_toml_str(&budget(40_000), "t").unwrap();
    assert_eq!(small.kafka_prefetch_kib(), 1024);
    let large = Config::from_toml_str(&budget(8 << 30), "t").unwrap();
    assert_eq!(large.kafka_prefetch_kib(), 65536);
    let set = with_kafka_properties("\"queued.max.messages.kbytes\" = \"2048\"");
    assert_eq!(
        Config::from_toml_str(&set, "t")
            .unwrap()
            .kafka_prefetch_kib(),
        2048
    );
    let e = err_of(&set.replace("\"2048\"", "\"lots\""));
    assert!(e.contains("queued.max.messages.kbytes"), "{e}");
}

/// [`minimal`] plus a view target table and a view; `table` and `view` replace their parts.
fn with_view(table: &str, view: &str) -> String {
    format!("{}\n{table}\n{view}\n", minimal())
}

const TARGET: &str = r#"
[[table]]
name = "per_country"
[[table.column]]
name = "country"
type = "string"
[[table.column]]
name = "n"
type = "int64"
aggregate = "count"
"#;

const VIEW: &str = r#"
[[view]]
name = "countries"
source = "events"
target = "per_country"
sql = "SELECT country, count(*) AS n FROM events GROUP BY country"
"#;

#[test]
fn a_view_and_its_aggregating_target_parse() {
    let c = Config::from_toml_str(&with_view(TARGET, VIEW), "t").unwrap();
    assert_eq!(c.views.len(), 1);
    let t = c.table("per_country").unwrap();
    assert!(t.is_aggregating() && t.topic.is_none());
    assert_eq!(c.topics(), vec!["events".to_string()]);
    let fed: Vec<&str> = c
        .tables_fed_by("events")
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(fed, vec!["events", "per_country"]);
}

#[test]
fn views_that_do_not_fit_their_tables_are_refused() {
    let cases: Vec<(String, &str)> = vec![
        (with_view(TARGET, &VIEW.replace("source = \"events\"", "source = \"nope\"")), "view[0] (countries).source"),
        (with_view(TARGET, &VIEW.replace("target = \"per_country\"", "target = \"nope\"")), "view[0] (countries).target"),
        (with_view(TARGET, &VIEW.replace("target = \"per_country\"", "target = \"events\"")), "reads a topic"),
        (with_view(TARGET, &format!("{VIEW}{}", VIEW.replace("name = \"countries\"", "name = \"again\""))), "already the target of view `countries`"),
        (with_view(TARGET, ""), "no view writes to it"),
        (with_view(TARGET, &VIEW.replace("sql = \"SELECT country, count(*) AS n FROM events GROUP BY country\"", "sql = \" \"")), "sql"),
        (with_view(&TARGET.replace("type = \"int64\"\naggregate = \"count\"", "type = \"string\"\naggregate = \"count\""), VIEW), "does not hold `count` states"),
        (with_view(&TARGET.replace("name = \"per_country\"\n", "name = \"per_country\"\nsorting_key = [\"n\"]\n"), VIEW), "aggregate state"),
        (
            format!("{}\n{TARGET}\n{VIEW}", minimal().replace("default = \"unknown\"", "default = \"unknown\"\naggregate = \"max\"")),
            "aggregate states are written by views",
        ),
        (
            with_view(
                &format!("{TARGET}\n[[table]]\nname = \"again\"\n[[table.column]]\nname = \"n\"\ntype = \"int64\"\n"),
                &format!("{VIEW}\n[[view]]\nname = \"over_states\"\nsource = \"per_country\"\ntarget = \"again\"\nsql = \"SELECT n FROM per_country\"\n"),
            ),
            "partial states",
        ),
    ];
    for (text, wanted) in cases {
        let e = err_of(&text);
        assert!(e.contains(wanted), "expected `{wanted}` in: {e}");
    }
}

#[test]
fn views_reading_each_other_in_a_cycle_are_refused() {
    let plain = |name: &str| {
        format!("\n[[table]]\nname = \"{name}\"\n[[table.column]]\nname = \"country\"\ntype = \"string\"\n")
    };
    let view = |name: &str, source: &str, target: &str| {
        format!("\n[[view]]\nname = \"{name}\"\nsource = \"{source}\"\ntarget = \"{target}\"\nsql = \"SELECT country FROM {source}\"\n")
    };
    let text = format!(
        "{}{}{}{}{}",
        minimal(),
        plain("a"),
        plain("b"),
        view("va", "b", "a"),
        view("vb", "a", "b")
    );
    let e = err_of(&text);
    assert!(e.contains("cycle"), "{e}");
}

#[test]
fn telemetry_defaults_to_loopback() {
    let c = Config::from_toml_str(&minimal(), "test.toml").unwrap();
    assert!(c.telemetry.enabled);
    assert_eq!(c.telemetry.listen_address, "127.0.0.1:9600");
}

#[test]
fn telemetry_listen_address_must_be_ip_and_port() {
    let e = err_of(&format!(
        "{}\n[telemetry]\nlisten_address = \"localhost\"\n",
        minimal()
    ));
    assert!(
        e.contains("telemetry.listen_address") && e.contains("127.0.0.1:9600"),
        "{e}"
    );
}

#[test]
fn telemetry_history_must_hold_a_refresh() {
    let e = err_of(&format!(
        "{}\n[telemetry]\nrefresh_ms = 10000\ndashboard_history_s = 5\n",
        minimal()
    ));
    assert!(e.contains("telemetry.dashboard_history_s"), "{e}");
}

/// [`minimal`] with `fields` in a `[merge]` section.
fn with_merge(fields: &str) -> String {
    format!("{}\n[merge]\n{fields}\n", minimal())
}

#[test]
fn merge_soft_limit_must_be_below_the_hard_one() {
    let e = err_of(&with_merge(
        "soft_parts_per_scope = 1000\nhard_parts_per_scope = 1000",
    ));
    assert!(
        e.contains("merge.hard_parts_per_scope") && e.contains("soft_parts_per_scope (1000)"),
        "{e}"
    );
}

#[test]
fn merge_hard_limit_must_stay_listable() {
    let e = err_of(&with_merge("hard_parts_per_scope = 5001"));
    assert!(
        e.contains("merge.hard_parts_per_scope") && e.contains("5000") && e.contains("1 MB"),
        "{e}"
    );
    let c = Config::from_toml_str(&with_merge("hard_parts_per_scope = 5000"), "t").unwrap();
    assert_eq!(c.merge.hard_parts_per_scope, 5000);
}

#[test]
fn merge_fan_in_must_be_at_least_two() {
    let e = err_of(&with_merge("fan_in = 1"));
    assert!(
        e.contains("merge.fan_in") && e.contains("at least 2"),
        "{e}"
    );
}

#[test]
fn merge_memory_must_leave_half_the_budget() {
    let budget = "[worker]\nmemory_budget_bytes = 100000000\n";
    let e = err_of(&format!(
        "{}{budget}[merge]\nmemory_bytes = 50000001\n",
        minimal()
    ));
    assert!(
        e.contains("merge.memory_bytes")
            && e.contains("worker.memory_budget_bytes")
            && e.contains("50000000"),
        "{e}"
    );
    let half = format!("{}{budget}[merge]\nmemory_bytes = 50000000\n", minimal());
    assert_eq!(
        Config::from_toml_str(&half, "t")
            .unwrap()
            .merge_memory_bytes(),
        50_000_000
    );
    // Left out, it follows a budget too small for the 64 MiB default instead of refusing it.
    let small = Config::from_toml_str(&format!("{}{budget}", minimal()), "t").unwrap();
    assert_eq!(small.merge_memory_bytes(), 50_000_000);
}

#[test]
fn a_secret_written_into_the_config_is_refused_and_never_echoed() {
    let text = minimal() + "\n[telemetry]\ntoken = \"canary-a1b2c3\"\n";
    let shown = err_of(&text);
    assert!(shown.contains("line"), "{shown}");
    assert!(shown.contains("not written in the config"), "{shown}");
    assert!(
        !shown.contains("canary"),
        "the error shows the secret: {shown}"
    );
}

#[test]
fn a_token_from_a_file_is_loaded_and_prints_as_stars() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "canary-d4e5f6\n").unwrap();
    let text = minimal()
        + &format!(
            "\n[telemetry]\ntoken = {{ file = {:?} }}\n",
            file.display().to_string()
        );
    let c = Config::from_toml_str(&text, "test.toml").unwrap();
    assert_eq!(
        c.telemetry.token.as_ref().map(Secret::expose),
        Some("canary-d4e5f6")
    );
    let debug = format!("{c:?}");
    assert!(
        !debug.contains("canary") && debug.contains(REDACTED),
        "{debug}"
    );
}

#[test]
fn covering_health_and_metrics_needs_a_token() {
    let text = minimal() + "\n[telemetry]\ntoken_covers_health_and_metrics = true\n";
    assert!(err_of(&text).contains("no `telemetry.token` is set"));
}

#[test]
fn a_storage_secret_written_inline_is_refused_without_quoting_it() {
    let text = minimal()
        + "\n[storage]\nurl = \"s3://b/p\"\noptions = { aws_secret_access_key = \"canary-s3\" }\n";
    let e = err_of(&text);
    assert!(
        e.contains("storage.options.aws_secret_access_key") && e.contains("{ file ="),
        "{e}"
    );
    assert!(!e.contains("canary"), "the error shows the secret: {e}");
}

#[test]
fn a_storage_secret_from_a_file_is_used_and_prints_as_stars() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s3-secret");
    std::fs::write(&file, "canary-s3-key\n").unwrap();
    let text = minimal()
        + &format!(
            "\n[storage]\nurl = \"s3://b/p\"\noptions = {{ aws_access_key_id = \"AKIDEXAMPLE\", aws_secret_access_key = {{ file = {:?} }} }}\n",
            file.display().to_string()
        );
    let c = Config::from_toml_str(&text, "test.toml").unwrap();
    let options = &c.storage.options;
    assert_eq!(options["aws_secret_access_key"].expose(), "canary-s3-key");
    assert_eq!(options["aws_access_key_id"].expose(), "AKIDEXAMPLE");
    let debug = format!("{c:?}");
    assert!(
        !debug.contains("canary") && debug.contains("AKIDEXAMPLE"),
        "{debug}"
    );
}
