//! The registry of live views: which views every commit must carry, from which point on, and
//! whether the part before that point (the history) has been computed.
//!
//! A view added to a table that already holds data goes live in one step for the whole fleet
//! ([`crate::Coordinator::activate_view`]): the registry records, per source partition, the
//! committed offset at that moment (its point), read atomically with the change. Every ingest
//! commit checks the registry's version ([`crate::Commit::views_version`]), so no flush made
//! without the view commits after it went live. Rows below the points are in parts committed
//! before; a worker computes the view over those parts once (its history) and registers the
//! result together with a record that it is done ([`crate::Coordinator::complete_view_history`]),
//! which can happen only once.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::PartRecord;

/// A view the fleet maintains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveView {
    pub name: String,
    pub source: String,
    pub target: String,
    /// SHA-256 of the view's definition (name, source, target, SQL), lowercase hex: a worker
    /// whose configuration defines the view otherwise must not apply it.
    pub fingerprint: String,
    pub activated_at_ms: i64,
    /// Per source partition, the offset the view went live at: rows below it are its history,
    /// computed from the parts committed before; rows from it on got the view at their flush.
    /// Empty for a view live since its table began (there is no history to compute).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub points: Vec<ViewPoint>,
    /// Set by `sluice views drop`: no longer applied, never made live again under this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped_at_ms: Option<i64>,
}

/// Where a view went live in one source partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewPoint {
    pub topic: String,
    pub partition: i32,
    /// The partition's committed offset at activation (0 if nothing was committed).
    pub next_offset: i64,
}

impl ViewPoint {
    /// The points a view goes live with: none when nothing was committed anywhere (there is no
    /// history to compute).
    pub(crate) fn recorded(points: Vec<ViewPoint>) -> Vec<ViewPoint> {
        if points.iter().all(|p| p.next_offset == 0) {
            Vec::new()
        } else {
            points
        }
    }
}

/// A view's history, once computed and registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewHistory {
    pub completed_at_ms: i64,
    /// The worker that computed it.
    pub worker: String,
    /// Source parts read, and the view's parts and rows registered.
    pub source_parts: u64,
    pub parts: u64,
    pub rows: u64,
}

/// The registry as read: its version (what commits check) and the views in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViewRegistry {
    /// -1 while the registry does not exist yet.
    pub version: i64,
    pub views: Vec<LiveView>,
    /// Computed histories, by view name.
    pub histories: BTreeMap<String, ViewHistory>,
    /// Who computes a history now, by view name.
    pub history_holders: BTreeMap<String, String>,
}

/// The right to compute one view's history. Only one history is ever registered; the lease
/// keeps two workers from computing it at the same time, and its epoch names their objects
/// apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewHistoryLease {
    pub view: String,
    pub worker_id: String,
    pub epoch: u64,
    pub(crate) token: i64,
}

impl ViewRegistry {
    pub fn exists(&self) -> bool {
        self.version >= 0
    }

    pub fn get(&self, name: &str) -> Option<&LiveView> {
        self.views.iter().find(|v| v.name == name)
    }

    /// Whether flushes must apply the view: live and not dropped.
    pub fn applied(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| v.dropped_at_ms.is_none())
    }

    /// Whether the view is applied but its history is not registered yet.
    pub fn history_pending(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| {
            v.dropped_at_ms.is_none() && !v.points.is_empty() && !self.histories.contains_key(name)
        })
    }

    /// The views reading `table` whose history is pending.
    pub fn pending_on(&self, table: &str) -> Vec<&LiveView> {
        self.views
            .iter()
            .filter(|v| v.source == table && self.history_pending(&v.name))
            .collect()
    }

    /// Whether every row of `part` (a part of the view's source table) lies below the view's
    /// points: part of its history. A part's rows either all are or all are not, as long as
    /// merges do not combine the two sides while the history is pending.
    pub fn before_point(view: &LiveView, part: &PartRecord) -> bool {
        part.source_spans().iter().all(|s| {
            let point = view
                .points
                .iter()
                .find(|p| p.topic == s.topic && p.partition == s.partition)
                .map_or(0, |p| p.next_offset);
            s.last_offset < point
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OffsetSpan;

    fn view(points: &[(i32, i64)]) -> LiveView {
        LiveView {
            name: "v".into(),
            source: "s".into(),
            target: "t".into(),
            fingerprint: "f".into(),
            activated_at_ms: 1,
            points: points
                .iter()
                .map(|&(partition, next_offset)| ViewPoint {
                    topic: "k".into(),
                    partition,
                    next_offset,
                })
                .collect(),
            dropped_at_ms: None,
        }
    }

    fn flushed(partition: i32, first: i64, last: i64) -> PartRecord {
        PartRecord {
            topic: "k".into(),
            partition,
            first_offset: first,
            last_offset: last,
            ..PartRecord::default()
        }
    }

    #[test]
    fn parts_are_history_only_when_every_span_is_below_its_point() {
        let v = view(&[(0, 10), (1, 5)]);
        assert!(ViewRegistry::before_point(&v, &flushed(0, 0, 9)));
        assert!(!ViewRegistry::before_point(&v, &flushed(0, 10, 12)));
        // A partition with no point had nothing committed when the view went live.
        assert!(!ViewRegistry::before_point(&v, &flushed(2, 0, 0)));
        let merged = PartRecord {
            level: 1,
            spans: vec![
                OffsetSpan {
                    topic: "k".into(),
                    partition: 0,
                    first_offset: 0,
                    last_offset: 9,
                },
                OffsetSpan {
                    topic: "k".into(),
                    partition: 1,
                    first_offset: 0,
                    last_offset: 4,
                },
            ],
            ..PartRecord::default()
        };
        assert!(ViewRegistry::before_point(&v, &merged));
    }

    #[test]
    fn pending_until_the_history_is_registered_and_never_for_a_view_live_from_the_start() {
        let mut r = ViewRegistry {
            version: 3,
            views: vec![
                view(&[(0, 10)]),
                LiveView {
                    name: "w".into(),
                    ..view(&[])
                },
            ],
            ..ViewRegistry::default()
        };
        assert!(r.history_pending("v"));
        assert!(!r.history_pending("w"));
        assert_eq!(r.pending_on("s").len(), 1);
        r.histories.insert(
            "v".into(),
            ViewHistory {
                completed_at_ms: 2,
                worker: "w1".into(),
                source_parts: 1,
                parts: 1,
                rows: 1,
            },
        );
        assert!(!r.history_pending("v"));
        r.views[1].dropped_at_ms = Some(5);
        assert!(!r.applied("w"));
    }
}
