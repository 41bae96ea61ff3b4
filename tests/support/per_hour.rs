//! The per-hour-per-country aggregation view (every kind of partial state: count, sum, min, max,
//! approx_distinct) the views and merges tests add to a deployment, and what it must hold,
//! computed from the fixture's rows alone (not by the product's SQL).

use std::collections::{BTreeMap, BTreeSet};

use sluice_testkit::fixture::{self, Expect, Row};

use crate::Prepared;

/// The aggregating table the view writes.
pub const PER_HOUR_TABLE: &str = "events_per_hour";

/// The `events_per_hour` table and the `per_hour` view over `events`, for a deployment's config.
pub fn per_hour_view() -> String {
    let columns: String = [
        ("hour", "timestamp_ms", None),
        ("country", "string", None),
        ("events", "int64", Some("count")),
        ("duration_ms", "float64", Some("sum")),
        ("min_duration_ms", "float64", Some("min")),
        ("max_duration_ms", "float64", Some("max")),
        ("users", "uint64", Some("approx_distinct")),
    ]
    .iter()
    .map(|(name, ty, aggregate)| {
        let aggregate = aggregate.map_or(String::new(), |a| format!("aggregate = \"{a}\"\n"));
        format!("[[table.column]]\nname = \"{name}\"\ntype = \"{ty}\"\n{aggregate}")
    })
    .collect();
    format!("{PER_HOUR_TABLE_HEAD}{columns}{PER_HOUR_VIEW}")
}

const PER_HOUR_TABLE_HEAD: &str = r#"
[[table]]
name = "events_per_hour"
sorting_key = ["hour", "country"]
partition_key = { column = "hour", granularity = "day" }
"#;

const PER_HOUR_VIEW: &str = r#"
[[view]]
name = "per_hour"
source = "events"
target = "events_per_hour"
sql = """
SELECT date_trunc('hour', ts) AS hour, country, count(*) AS events,
       sum(duration_ms) AS duration_ms, min(duration_ms) AS min_duration_ms,
       max(duration_ms) AS max_duration_ms, approx_distinct(user_id) AS users
FROM events
GROUP BY date_trunc('hour', ts), country
"""
"#;

/// One (hour, country) group of the landing rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub events: i64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub users: BTreeSet<i64>,
}

impl Default for Group {
    fn default() -> Group {
        Group {
            events: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            users: BTreeSet::new(),
        }
    }
}

/// The landing rows grouped by (the hour they fall in, in ms since the epoch, country).
pub fn per_hour_groups(rows: &[Row]) -> BTreeMap<(i64, String), Group> {
    let mut groups: BTreeMap<(i64, String), Group> = BTreeMap::new();
    for r in rows {
        let hour = r.ts - r.ts.rem_euclid(3_600_000);
        let g = groups.entry((hour, r.country.to_string())).or_default();
        g.events += 1;
        g.sum += r.duration_ms;
        g.min = g.min.min(r.duration_ms);
        g.max = g.max.max(r.duration_ms);
        g.users.insert(r.user_id);
    }
    groups
}

impl Prepared {
    /// The landing table's rows: the produced events that are well-formed, as the fixture says.
    pub fn landing_rows(&self) -> Vec<Row> {
        self.events
            .iter()
            .filter(|e| e.expect == Expect::Row)
            .map(|e| fixture::row(e.seq))
            .collect()
    }
}
