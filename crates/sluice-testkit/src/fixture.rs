//! The shared test table and its events.
//!
//! Every field of an event is a pure function of its sequence number, so a checker can compute
//! what every column of every row must hold from the `seq` alone ([`row`]), independently of
//! the product's decoder. About one event in eight is malformed, in each of the ways the decoder
//! quarantines.

/// The events table's `max_message_bytes`: the `oversized` events exceed it.
pub const MAX_MESSAGE_BYTES: usize = 2048;
const COUNTRIES: &[&str] = &["de", "fr", "us", "br", "jp", "ng"];
const PATHS: &[&str] = &["/", "/docs", "/pricing", "/blog"];
const DAY_MS: i64 = 86_400_000;
/// 2026-11-20T00:00:00Z.
const BASE_MS: i64 = 1_795_132_800_000;

/// The `[[table]]` block of the shared events table reading `topic`: every column type the
/// events use, sorted by (country, path, ts), one part per day, flushing at `max_rows` rows or
/// `max_age_ms`.
pub fn events_table(topic: &str, max_rows: usize, max_age_ms: u64) -> String {
    format!(
        r#"
[[table]]
name = "events"
topic = "{topic}"
sorting_key = ["country", "path", "ts"]
partition_key = {{ column = "ts", granularity = "day" }}
max_message_bytes = {MAX_MESSAGE_BYTES}
flush = {{ max_rows = {max_rows}, max_age_ms = {max_age_ms} }}
{}"#,
        events_columns()
    )
}

/// The events table's columns: name, type, nullable.
const COLUMNS: &[(&str, &str, bool)] = &[
    ("seq", "uint64", false),
    ("ts", "timestamp_ms", false),
    ("user_id", "int64", true),
    ("country", "string", false),
    ("path", "string", true),
    ("duration_ms", "float64", true),
    ("ok", "boolean", true),
];

/// `[[table.column]]` blocks of the named columns, declared as in the events table (for a view's
/// target that copies some of them). Panics on a name the table does not have (a test bug).
pub fn columns(names: &[&str]) -> String {
    names
        .iter()
        .map(|name| {
            let (name, ty, nullable) = COLUMNS
                .iter()
                .find(|(n, _, _)| n == name)
                .unwrap_or_else(|| panic!("the events table has no column `{name}`"));
            format!("[[table.column]]\nname = \"{name}\"\ntype = \"{ty}\"\nnullable = {nullable}\n")
        })
        .collect()
}

/// Every column of the events table, as `[[table.column]]` blocks.
pub fn events_columns() -> String {
    columns(&COLUMNS.iter().map(|(n, _, _)| *n).collect::<Vec<_>>())
}

/// A whole configuration for unit tests: a placeholder broker, the events table reading topic
/// `events`, then `extra` (more columns of the events table if it starts with
/// `[[table.column]]`, or further tables and views).
pub fn config_with(extra: &str) -> String {
    format!(
        "[kafka]\nbootstrap_servers = \"127.0.0.1:9\"\n{}{extra}",
        events_table("events", 200_000, 10_000)
    )
}

/// What should become of one produced event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A row of the events table, equal to [`row`] of its `seq`.
    Row,
    /// A quarantine row with this reason code.
    Quarantine(&'static str),
}

/// One produced event.
#[derive(Debug, Clone)]
pub struct Event {
    pub seq: u64,
    pub partition: i32,
    pub payload: Option<Vec<u8>>,
    pub expect: Expect,
}

/// The row a well-formed event becomes: every column of the events table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub seq: u64,
    pub ts: i64,
    pub user_id: i64,
    pub country: &'static str,
    pub path: &'static str,
    pub duration_ms: f64,
    pub ok: bool,
}

/// The row of event `seq`.
pub fn row(seq: u64) -> Row {
    Row {
        seq,
        ts: event_ts(seq),
        user_id: (seq % 97) as i64,
        country: COUNTRIES[(seq * 7 % COUNTRIES.len() as u64) as usize],
        path: PATHS[(seq * 3 % PATHS.len() as u64) as usize],
        duration_ms: (seq % 1000) as f64 + 0.5,
        ok: seq.is_multiple_of(2),
    }
}

/// The event time of event `seq` (ms since the epoch): spread over three days.
pub fn event_ts(seq: u64) -> i64 {
    BASE_MS + (seq as i64 * 7_919_000).rem_euclid(3 * DAY_MS)
}

/// The day (`YYYY-MM-DD`) of a time in ms since the epoch.
pub fn day_of(ts_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ts_ms)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// The day (`YYYY-MM-DD`) of event `seq`: its part's partition value.
pub fn event_day(seq: u64) -> String {
    day_of(event_ts(seq))
}

/// `n` sequence-numbered events over `partitions` partitions.
pub fn events(n: u64, partitions: i32) -> Vec<Event> {
    events_from(0, n, partitions)
}

/// [`events`] with sequence numbers `start..start + n`, for a stream produced in rounds.
pub fn events_from(start: u64, n: u64, partitions: i32) -> Vec<Event> {
    (start..start + n)
        .map(|seq| {
            let (payload, expect) = payload(seq);
            Event {
                seq,
                partition: (seq % partitions as u64) as i32,
                payload: payload.map(String::into_bytes),
                expect,
            }
        })
        .collect()
}

/// The JSON of event `seq` and what it should become.
fn payload(seq: u64) -> (Option<String>, Expect) {
    let r = row(seq);
    let ts = r.ts;
    let malformed = match seq % 48 {
        5 => format!(r#"{{"seq":{seq},"ts":{ts},"country":"de"#),
        11 => format!(r#"{{"seq":{seq},"ts":"noon","country":"de"}}"#),
        17 => format!(r#"{{"seq":{seq},"ts":{ts}}}"#),
        23 => format!(
            r#"{{"seq":{seq},"ts":{ts},"country":"de","pad":"{}"}}"#,
            "x".repeat(MAX_MESSAGE_BYTES)
        ),
        29 => format!("[{seq}]"),
        35 => return (None, Expect::Quarantine("empty")),
        _ => {
            let good = format!(
                r#"{{"seq":{seq},"ts":{ts},"user_id":{},"country":"{}","path":"{}","duration_ms":{},"ok":{}}}"#,
                r.user_id, r.country, r.path, r.duration_ms, r.ok
            );
            return (Some(good), Expect::Row);
        }
    };
    let reason = match seq % 48 {
        5 => "not_json",
        11 => "wrong_type",
        17 => "missing_field",
        23 => "oversized",
        _ => "not_object",
    };
    (Some(malformed), Expect::Quarantine(reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_events_carry_their_row() {
        let e = &events_from(2, 1, 4)[0];
        assert_eq!(e.expect, Expect::Row);
        let text = String::from_utf8(e.payload.clone().unwrap()).unwrap();
        assert!(text.contains(r#""duration_ms":2.5"#), "{text}");
        assert!(text.contains(r#""ok":true"#), "{text}");
        let kinds: std::collections::BTreeSet<_> = events(48, 3)
            .iter()
            .filter_map(|e| match e.expect {
                Expect::Quarantine(r) => Some(r),
                Expect::Row => None,
            })
            .collect();
        assert_eq!(kinds.len(), 6, "{kinds:?}");
    }
}
