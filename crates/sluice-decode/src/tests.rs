//! The unit tests of the crate, and the property test holding the fast path to the reference
//! path (`fast_matches_reference`).

use super::*;
use arrow::array::{Array, AsArray};
use arrow::datatypes::{TimestampMillisecondType, UInt64Type};
use sluice_config::{Config, TableConfig};
use sluice_testkit::fixture;

/// The shared events table plus a nullable `region` read from the nested path
/// `geo.region`, with a default; `extra` adds more columns.
fn table_with(extra: &str) -> TableConfig {
    let columns = format!(
        r#"
[[table.column]]
name = "region"
type = "string"
source = "geo.region"
default = "zz"
{extra}"#
    );
    Config::from_toml_str(&fixture::config_with(&columns), "t")
        .unwrap()
        .tables
        .remove(0)
}

fn table() -> TableConfig {
    table_with("")
}

#[test]
fn good_rows_decode_with_paths_defaults_and_nulls() {
    let mut b = TableBuffer::new(&table());
    b.push(
        0,
        Some(1),
        Some(br#"{"seq":1,"ts":1700000000000,"country":"de","geo":{"region":"eu"},"ok":true}"#),
    );
    b.push(
        1,
        Some(2),
        Some(br#"{"seq":2,"ts":"2023-11-14T22:13:20Z","country":"fr"}"#),
    );
    assert_eq!((b.rows(), b.quarantined()), (2, 0));
    let d = b.drain().unwrap();
    assert_eq!(d.batch.num_rows(), 2);
    let column = |name: &str| d.batch.column_by_name(name).unwrap();
    assert_eq!(column("seq").as_primitive::<UInt64Type>().values(), &[1, 2]);
    assert_eq!(
        column("ts")
            .as_primitive::<TimestampMillisecondType>()
            .value(1),
        1_700_000_000_000
    );
    let region = column("region").as_string::<i32>();
    assert_eq!((region.value(0), region.value(1)), ("eu", "zz"));
    assert!(column("ok").is_null(1));
    assert!(column("user_id").is_null(1));
    assert!(b.is_empty());
}

#[test]
fn every_kind_of_bad_event_is_quarantined_with_its_reason() {
    let t = table();
    let mut b = TableBuffer::new(&t);
    let long = format!(
        r#"{{"seq":1,"ts":1,"country":"de","pad":"{}"}}"#,
        "x".repeat(t.max_message_bytes)
    );
    let cases: Vec<(Option<&[u8]>, QuarantineReason)> = vec![
        (None, QuarantineReason::Empty),
        (Some(b"{\"seq\": 3, broken"), QuarantineReason::NotJson),
        (Some(b"[1,2]"), QuarantineReason::NotObject),
        (
            Some(br#"{"ts":5,"country":"de"}"#),
            QuarantineReason::MissingField,
        ),
        (
            Some(br#"{"seq":"seven","ts":5,"country":"de"}"#),
            QuarantineReason::WrongType,
        ),
        (
            Some(br#"{"seq":7,"ts":"yesterday","country":"de"}"#),
            QuarantineReason::WrongType,
        ),
        (Some(long.as_bytes()), QuarantineReason::Oversized),
    ];
    for (i, (payload, _)) in cases.iter().enumerate() {
        b.push(i as i64, None, *payload);
    }
    // A good row after the bad ones proves no half-written row was left behind.
    b.push(99, None, Some(br#"{"seq":8,"ts":5,"country":"de"}"#));
    let d = b.drain().unwrap();
    assert_eq!(d.batch.num_rows(), 1);
    assert_eq!(d.batch.column(0).as_primitive::<UInt64Type>().value(0), 8);
    let reasons: Vec<_> = d.quarantine.iter().map(|q| q.reason).collect();
    assert_eq!(reasons, cases.iter().map(|c| c.1).collect::<Vec<_>>());
    assert!(
        d.quarantine[4].error.contains("column `seq`"),
        "{}",
        d.quarantine[4].error
    );
    assert_eq!(d.quarantine[1].raw, b"{\"seq\": 3, broken");
    assert_eq!(d.quarantine[1].offset, Some(1));
}

#[test]
fn typical_events_take_the_fast_path() {
    let mut b = TableBuffer::new(&table());
    for e in [
        r#"{"seq":1,"ts":1700000000000,"country":"de","geo":{"region":"eu"},"ok":true}"#,
        r#"{"seq":2,"ts":"2023-11-14T22:13:20Z","country":"fr","geo":{"region":"caf\u00e9"},"extra":[1,{"a":2}]}"#,
        r#"{"seq":3,"ts":5,"country":"us","ok":null}"#,
    ] {
        assert!(b.push_fast(e.as_bytes()), "{e}");
    }
    // The shared test events that are well formed.
    for e in fixture::events(48, 1) {
        if e.expect == fixture::Expect::Row {
            let payload = e.payload.unwrap();
            let shown = String::from_utf8_lossy(&payload).into_owned();
            assert!(b.push_fast(&payload), "{shown}");
        }
    }
    // Anything unusual is left to the reference path, which decides the reason.
    for e in [
        r#"{"ts":5,"country":"de"}"#,
        r#"{"seq":"x","ts":5,"country":"de"}"#,
        "[1]",
        "{",
    ] {
        assert!(!b.push_fast(e.as_bytes()), "{e}");
    }
}

/// The fast path against the reference path on random events: both must build the same
/// rows and the same quarantine rows (reason and message), event for event.
mod fast_matches_reference {
    use super::*;
    use proptest::prelude::*;

    /// Every column type (the types the events table lacks added), and a nested path.
    fn wide_table() -> TableConfig {
        let columns: String = [
            ("n", "int32"),
            ("u", "uint64"),
            ("d", "date"),
            ("us", "timestamp_us"),
        ]
        .iter()
        .map(|(name, ty)| format!("[[table.column]]\nname = \"{name}\"\ntype = \"{ty}\"\n"))
        .collect();
        let mut t = table_with(&columns);
        t.max_message_bytes = 4096;
        t
    }

    /// What each path, fast and reference, made of the same events (offsets from 0).
    fn both_paths<E: AsRef<[u8]>>(events: &[E], timestamp_ms: Option<i64>) -> (Drained, Drained) {
        let table = wide_table();
        let mut fast = TableBuffer::new(&table);
        assert!(fast.has_fast_path());
        let mut reference = TableBuffer::reference_only(&table);
        for (i, e) in events.iter().enumerate() {
            fast.push(i as i64, timestamp_ms, Some(e.as_ref()));
            reference.push(i as i64, timestamp_ms, Some(e.as_ref()));
        }
        (fast.drain().unwrap(), reference.drain().unwrap())
    }

    fn scalar() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("null".to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            any::<i64>().prop_map(|i| i.to_string()),
            any::<u64>().prop_map(|u| u.to_string()),
            (-1000i64..1000).prop_map(|i| i.to_string()),
            (0u32..3_000_000_000).prop_map(|i| i.to_string()),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| serde_json::Value::from(f).to_string()),
            Just("1.0".to_string()),
            Just("-0".to_string()),
            Just("1e3".to_string()),
            "[a-z]{0,6}".prop_map(|s| format!("\"{s}\"")),
            Just(r#""caf\u00e9 \"q\"""#.to_string()),
            Just(r#""2023-11-14T22:13:20Z""#.to_string()),
            Just(r#""2023-11-14T22:13:20.123456+02:00""#.to_string()),
            Just(r#""2024-02-29""#.to_string()),
            Just(r#""2023-02-30""#.to_string()),
            Just("[1,2]".to_string()),
            Just("{}".to_string()),
            // Numbers serde_json reads in ways of its own, or refuses.
            prop_oneof![
                Just("1e400"),
                Just("-1e400"),
                Just("1e-400"),
                Just("2.5E+3"),
                Just("7e2"),
                Just("-0.0"),
                Just("18446744073709551616"),
                Just("-9223372036854775809"),
                Just("123456789012345678901234567890"),
                Just("0.1e1"),
                Just("01"),
                Just("1."),
                Just(".5"),
                Just("+1"),
                Just("1e"),
            ]
            .prop_map(str::to_string),
            // Strings with escapes, non-ASCII text, surrogates and broken escapes.
            prop_oneof![
                Just(r#""a\/b\\c\nd\te""#),
                Just(r#""\ud83d\ude00 ok""#),
                Just(r#""\ud83d lone""#),
                Just(r#""\ude00 lone""#),
                Just(r#""\x bad""#),
                Just(r#""\u12 short""#),
                Just(r#""héllo wörld, ça va 😀""#),
                Just(r#""2023-11-14T22:13:20\u005a""#),
                Just(r#""a long string value that spans several eight-byte words""#),
            ]
            .prop_map(str::to_string),
            // Nesting beyond serde_json's recursion limit, and just inside it.
            (1usize..140).prop_map(|d| format!("{}1{}", "[".repeat(d), "]".repeat(d))),
            Just("[1,[true,{\"a\":[null,\"x\"]}],-2.5]".to_string()),
        ]
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => scalar(),
            1 => proptest::collection::vec(("[a-z]{1,2}|region", scalar()), 0..3).prop_map(
                |kv| {
                    let inner: Vec<String> =
                        kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                    format!("{{{}}}", inner.join(","))
                }
            ),
        ]
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("seq"),
            Just("ts"),
            Just("user_id"),
            Just("path"),
            Just("duration_ms"),
            Just("geo"),
            Just("ok"),
            Just("n"),
            Just("u"),
            Just("d"),
            Just("us"),
            Just("other"),
            Just("s\\u0065q"),
        ]
        .prop_map(str::to_string)
    }

    fn object() -> impl Strategy<Value = String> {
        proptest::collection::vec((key(), value()), 0..12).prop_map(|kv| {
            let fields: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", fields.join(","))
        })
    }

    fn event() -> impl Strategy<Value = String> {
        // Mostly well-formed rows (seq, ts and country present), some anything, a few
        // broken.
        let good = (any::<u64>(), any::<i64>(), "[a-z]{0,3}", object()).prop_map(
            |(seq, ts, country, rest)| {
                let rest = rest.trim_start_matches('{').to_string();
                let sep = if rest == "}" { "" } else { "," };
                format!(r#"{{"seq":{seq},"ts":{ts},"country":"{country}"{sep}{rest}"#)
            },
        );
        prop_oneof![
            6 => good,
            3 => object(),
            1 => value(),
            1 => "[ -~]{0,20}",
        ]
    }

    /// An event as bytes, sometimes damaged or reformatted in a way JSON allows or forbids:
    /// whitespace between tokens, a raw control character, an invalid UTF-8 byte, a
    /// byte-order mark, trailing bytes.
    fn event_bytes() -> impl Strategy<Value = Vec<u8>> {
        (event(), 0u8..12, any::<proptest::sample::Index>()).prop_map(|(e, how, at)| {
            let mut b = e.into_bytes();
            let at = at.index(b.len() + 1);
            match how {
                0 => {
                    for ws in [b"\r\n\t ".as_slice(), b" "] {
                        b.splice(at..at, ws.iter().copied());
                    }
                }
                1 => b.insert(at, 0x01),
                2 => b.insert(at, 0xFF),
                3 => b.splice(at..at, "é".bytes()).for_each(drop),
                4 => b.splice(0..0, [0xEF, 0xBB, 0xBF]).for_each(drop),
                5 => b.extend_from_slice(b" x"),
                6 => b.extend_from_slice(b"\n "),
                7 => b.splice(0..0, *b"  ").for_each(drop),
                _ => {}
            }
            b
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn same_rows_and_quarantine(events in proptest::collection::vec(event_bytes(), 1..40)) {
            let (a, b) = both_paths(&events, Some(7));
            prop_assert_eq!(a.batch, b.batch);
            prop_assert_eq!(a.quarantine, b.quarantine);
        }
    }

    /// Corners too narrow for random placement to find often.
    #[test]
    fn corner_cases_agree_with_the_reference() {
        let cases: [&[u8]; 15] = [
            b"{\"seq\":1,\"ts\":2,\"country\":\"de\",\"x\":[1,2}}",
            b"{\"seq\":1,\"ts\":2,\"country\":\"de\",\"x\":{\"a\":1]}",
            b"{\"seq\":1,\"ts\":2,\"country\":\"de\",\"x\":[[1],{\"a\":[]}]}",
            b"{\"seq\":1,\"ts\":2,\"country\":\"de\",\"ot\xFFher\":1}",
            b"{\"seq\":1,\"ts\":2,\"country\":\"de\",\"other\":\"\xC3\"}",
            b"{\"seq\":1,\"ts\":2,\"country\":\"de\",\"path\":\"caf\xC3\xA9\"}",
            b"{\"seq\":1,\"ts\":2,\"country\":\"de\",\"path\":\"a\\\"b\"}",
            b"{\"seq\":1,\"ts\":2,\"country\":\"de\",\"geo\":{\"region\":\"d\\u00e9\"}}",
            b"{\"seq\":1,\"ts\":2,\"country\":\"de\",\"duration_ms\":-0}",
            b"{\"seq\":1,\"ts\":2,\"country\":\"de\",\"path\":-0}",
            b"{\"seq\":1,\"ts\":2,\"country\":\"de\",\"path\":1.5e3}",
            b"{\"seq\":1,\"ts\":2,\"country\":\"de\",\"x\":{\"y\":[1,{\"z\":\"\\ud83d\"}]}}",
            b"{\"seq\":1,\"ts\":2,\"country\":\"de\",}",
            b"{\"seq\":1 \"ts\":2}",
            b"{\"seq\":1,\"ts\":\"2023-11-14T22:13:20Z\",\"country\":\"de\",\"d\":\"2024-02-29\",\"us\":5}",
        ];
        for e in cases {
            let (a, b) = both_paths(&[e], None);
            let shown = String::from_utf8_lossy(e);
            assert_eq!(a.batch, b.batch, "{shown}");
            assert_eq!(a.quarantine, b.quarantine, "{shown}");
        }
    }

    #[test]
    fn a_later_duplicate_key_wins_as_in_the_reference() {
        for e in [
            r#"{"seq":1,"ts":2,"country":"de","geo":{"region":"eu"},"geo":5}"#,
            r#"{"seq":1,"ts":2,"country":"de","geo":{"region":"eu"},"geo":{"x":1}}"#,
            r#"{"seq":1,"ts":2,"country":"de","path":"a","path":"b"}"#,
            r#"{"seq":1,"ts":2,"country":"de","seq":3}"#,
            r#"{"seq":1,"ts":2,"country":"de","country":"fr"}"#,
        ] {
            let (a, b) = both_paths(&[e], None);
            assert_eq!(a.batch, b.batch, "{e}");
            assert_eq!(a.quarantine, b.quarantine, "{e}");
        }
    }
}
