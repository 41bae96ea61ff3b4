//! The merge policy: which merges one scope needs, as a pure function of its parts and the time.
//!
//! [`plan`] is given the parts of ONE scope (one table, partition-key value, definition version
//! and kind), so no plan can combine parts of two scopes: that holds by its signature, and the
//! caller lists one scope at a time. It reads no clock, registry or configuration beyond its
//! arguments, so every worker computes the same plans from the same listing, and a day of
//! flushes replays in a test in a second.
//!
//! A part's **level** counts the merges its rows went through: 0 for a flushed part, one above
//! its highest input for a merged one. Parts at `max_rewrites` or of at least
//! `target_part_bytes` are never inputs, and no merge's output exceeds `target_part_bytes`; the
//! others are *mergeable*. Levels only grow, so no row is rewritten more than `max_rewrites`
//! times, and the bytes written stay within `1 + max_rewrites` times the bytes flushed,
//! whichever rule below picks the merges. Three rules, the first that applies:
//!
//! 1. **Final**: once every part is at least `quiet_after_ms` old, the mergeable parts are
//!    packed first-fit by decreasing size into as few bins of `target_part_bytes` as that finds,
//!    and each bin becomes one merge (several rounds when it holds more than `fan_in` parts).
//!    When no two mergeable parts fit together, nothing is planned: the scope can be sealed.
//! 2. **Urgent** (before 3): when more than half of `soft_parts_per_scope` parts wait that an
//!    urgent merge may take (mergeable, two levels or more below `max_rewrites`), the smallest
//!    of them, whatever their level, are cut into groups of up to `fan_in` that fit the target,
//!    and each group of at least [`urgent_min_group`] parts is merged: the smallest first
//!    remove the most parts per byte rewritten, and the minimum shrinks from `fan_in - 1` to 2
//!    as the count nears the soft limit, so merges wait less for company. Urgency spends the
//!    level budget early, so the last-level parts come out smaller and more numerous; hence
//!    parts it cannot reduce do not count, and last-level merges are left to rule 3. Counting
//!    every part instead, urgency fired all day in a simulated 0.8 TB day and took the scope
//!    from 877 parts to 965; letting it take last-level parts too, the 0.14 TB day of
//!    `tests/simulation.rs` ended past 1300 parts instead of 228. A soft limit near what a
//!    steady flow keeps in merging does the same (40 there: 512 parts).
//! 3. **Level**, as in Quickwit's stable log merge policy, which bounds write amplification by
//!    construction: the mergeable parts of each level, oldest first, are cut into groups of
//!    `fan_in`; each full group becomes one part of the next level. A group whose next part
//!    would take it past the target is merged as it is (at least 2 parts), since it can never
//!    grow; the last, incomplete group waits.

use std::cmp::Ordering;

use sluice_config::MergeConfig;

/// What the policy needs to know of a part of the scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Candidate {
    /// The part's name in the registry, unique within the scope (a repeated name is considered
    /// once).
    pub name: String,
    /// The size of the part's object.
    pub bytes: u64,
    /// The merges its rows went through: 0 for a flushed part, the plan's `level` for a merged
    /// one.
    pub level: u32,
    /// When the part was committed, in ms since the epoch: the quiet clock, and oldest-first
    /// order. A merged part may carry its merge's commit time or its newest input's; with the
    /// commit time, each round of final merges waits another `quiet_after_ms`.
    pub created_at_ms: i64,
}

/// Why a merge is planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// A level holds a full group.
    Level,
    /// The scope nears `soft_parts_per_scope`.
    Urgent,
    /// The scope is quiet: its last merges before it is sealed.
    Final,
}

/// One merge to run.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Plan {
    /// The names of the parts to merge, in the order the rule took them.
    pub inputs: Vec<String>,
    /// The output's level: 1 + the highest input level.
    pub level: u32,
    /// The sum of the inputs' bytes (the output's expected size), at most `target_part_bytes`.
    pub bytes: u64,
    pub reason: Reason,
}

/// The merges to run in one scope, given all its parts not already being merged and the time.
///
/// * Pure and deterministic, whatever the order of `parts`: they are sorted by total orders
///   (every field takes part), so workers that list a scope differently agree on its plans.
/// * No part is in two plans, so the plans can run at once without racing for an input.
/// * Every plan has 2 to `fan_in` inputs (one input would rewrite bytes without reducing the
///   count; more would exceed what a merge is sized to read at once) and at most
///   `target_part_bytes` of them, so outputs stay the size queries and the memory budget expect.
/// * Parts at `max_rewrites` or of at least `target_part_bytes` are never inputs: that bounds
///   write amplification and keeps large parts from being rewritten for little gain.
/// * Plans come in a deterministic order: final or urgent ones first (they matter most), then
///   by level, lowest first (cheapest and the most parts removed per byte).
///
/// Parts being merged are left out by the caller (the urgency then does not count them). With
/// `enabled = false` nothing is planned.
pub fn plan(config: &MergeConfig, parts: &[Candidate], now_ms: i64) -> Vec<Plan> {
    if !config.enabled {
        return Vec::new();
    }
    // A fan-in below 2 (refused at load) would make groups that never merge.
    let config = &MergeConfig {
        fan_in: config.fan_in.max(2),
        ..config.clone()
    };
    let parts = distinct(parts);
    let mergeable = parts.iter().copied().filter(|p| is_mergeable(config, p));
    let mergeable: Vec<&Candidate> = mergeable.collect();
    if is_quiet(config, parts.iter().copied(), now_ms) {
        return final_plans(config, mergeable);
    }
    let mut plans = Vec::new();
    let (twice, mut rest): (Vec<&Candidate>, Vec<&Candidate>) = mergeable
        .into_iter()
        .partition(|p| p.level + 1 < config.max_rewrites);
    match urgent_min_group(config, twice.len()) {
        Some(min_group) => rest.extend(urgent_plans(config, twice, min_group, &mut plans)),
        None => rest.extend(twice),
    }
    level_plans(config, rest, &mut plans);
    plans
}

/// The fewest parts an urgent merge takes when `count` parts of the scope may be taken by one,
/// or `None` while that is at most half of `soft_parts_per_scope`. Linear in between:
/// `fan_in - ceil((fan_in - 2) * (count - soft/2) / (soft - soft/2))`, down to 2 from the soft
/// limit on: the sooner small groups may go, the faster the count falls.
pub fn urgent_min_group(config: &MergeConfig, count: usize) -> Option<usize> {
    let fan_in = config.fan_in.max(2);
    let soft = config.soft_parts_per_scope;
    let start = soft / 2;
    if count <= start {
        return None;
    }
    let span = (soft - start).max(1);
    let shrink = ((fan_in - 2) * (count - start).min(span)).div_ceil(span);
    Some((fan_in - shrink).max(2))
}

/// True when no part is younger than `quiet_after_ms`: nothing was flushed (or merged) for that
/// long, so the scope's final shape can be settled.
pub fn is_quiet<'a>(
    config: &MergeConfig,
    parts: impl IntoIterator<Item = &'a Candidate>,
    now_ms: i64,
) -> bool {
    let quiet = i64::try_from(config.quiet_after_ms).unwrap_or(i64::MAX);
    parts
        .into_iter()
        .all(|p| now_ms.saturating_sub(p.created_at_ms) >= quiet)
}

fn is_mergeable(config: &MergeConfig, p: &Candidate) -> bool {
    p.level < config.max_rewrites && p.bytes < config.target_part_bytes
}

/// Cuts `parts`, in their order, into consecutive groups of at most `fan_in` parts and
/// `target_part_bytes`. A group is done (`true`) when full or when the next part would not fit;
/// the last one is left open (`false`).
fn pack<'a>(config: &MergeConfig, parts: &[&'a Candidate]) -> Vec<(Vec<&'a Candidate>, bool)> {
    let (mut groups, mut group, mut bytes) = (Vec::new(), Vec::new(), 0u64);
    for &p in parts {
        if !group.is_empty() && bytes.saturating_add(p.bytes) > config.target_part_bytes {
            groups.push((std::mem::take(&mut group), true));
            bytes = 0;
        }
        group.push(p);
        bytes += p.bytes;
        if group.len() == config.fan_in {
            groups.push((std::mem::take(&mut group), true));
            bytes = 0;
        }
    }
    if !group.is_empty() {
        groups.push((group, false));
    }
    groups
}

/// One candidate per name, the first by name then age, so a repeated listing entry cannot be
/// merged twice.
fn distinct(parts: &[Candidate]) -> Vec<&Candidate> {
    let mut all: Vec<&Candidate> = parts.iter().collect();
    all.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| by_age(a, b)));
    all.dedup_by(|later, first| later.name == first.name);
    all
}

/// Oldest first; a total order, so equal keys mean identical candidates.
fn by_age(a: &Candidate, b: &Candidate) -> Ordering {
    (a.created_at_ms, &a.name, a.level, a.bytes).cmp(&(b.created_at_ms, &b.name, b.level, b.bytes))
}

/// Smallest first; a total order.
fn by_size(a: &Candidate, b: &Candidate) -> Ordering {
    (a.bytes, a.level, a.created_at_ms, &a.name).cmp(&(b.bytes, b.level, b.created_at_ms, &b.name))
}

fn to_plan(group: &[&Candidate], reason: Reason) -> Plan {
    Plan {
        inputs: group.iter().map(|p| p.name.clone()).collect(),
        level: 1 + group.iter().map(|p| p.level).max().unwrap_or(0),
        bytes: group.iter().map(|p| p.bytes).sum(),
        reason,
    }
}

/// Rule 3: full (or size-closed) groups of each level, oldest first.
fn level_plans(config: &MergeConfig, mut parts: Vec<&Candidate>, plans: &mut Vec<Plan>) {
    parts.sort_by(|a, b| a.level.cmp(&b.level).then_with(|| by_age(a, b)));
    for level in parts.chunk_by(|a, b| a.level == b.level) {
        for (group, done) in pack(config, level) {
            if done && group.len() >= 2 {
                plans.push(to_plan(&group, Reason::Level));
            }
        }
    }
}

/// Rule 2: groups of the smallest of `parts` (those an urgent merge may take), whatever their
/// level; returns the parts left over.
fn urgent_plans<'a>(
    config: &MergeConfig,
    mut parts: Vec<&'a Candidate>,
    min_group: usize,
    plans: &mut Vec<Plan>,
) -> Vec<&'a Candidate> {
    parts.sort_by(|a, b| by_size(a, b));
    let mut rest = Vec::new();
    for (group, _) in pack(config, &parts) {
        if group.len() >= min_group {
            plans.push(to_plan(&group, Reason::Urgent));
        } else {
            rest.extend(group);
        }
    }
    rest
}

/// Rule 1: first-fit decreasing bins of the target size, each merged into one part.
fn final_plans(config: &MergeConfig, mut parts: Vec<&Candidate>) -> Vec<Plan> {
    parts.sort_by(|a, b| by_size(b, a));
    let mut bins: Vec<(u64, Vec<&Candidate>)> = Vec::new();
    for p in parts {
        match bins
            .iter_mut()
            .find(|(bytes, _)| bytes.saturating_add(p.bytes) <= config.target_part_bytes)
        {
            Some((bytes, bin)) => {
                *bytes += p.bytes;
                bin.push(p);
            }
            None => bins.push((p.bytes, vec![p])),
        }
    }
    let mut plans = Vec::new();
    for (_, mut bin) in bins.into_iter().filter(|(_, bin)| bin.len() >= 2) {
        bin.sort_by(|a, b| by_size(a, b));
        if bin.len() <= config.fan_in {
            plans.push(to_plan(&bin, Reason::Final));
        } else {
            shrink_bin(config, &bin, &mut plans);
        }
    }
    plans
}

/// A bin of more than `fan_in` parts takes several rounds. This one merges its smallest parts
/// just enough for the rest to fit one merge next round, keeping the parts one level below
/// `max_rewrites` (whose output could not be merged again) for that last merge. If too few can
/// be merged twice, the bin cannot end as one part: what is left goes in groups of `fan_in`.
fn shrink_bin(config: &MergeConfig, bin: &[&Candidate], plans: &mut Vec<Plan>) {
    let (twice, once): (Vec<&Candidate>, Vec<&Candidate>) = bin
        .iter()
        .copied()
        .partition(|p| p.level + 1 < config.max_rewrites);
    let (fan_in, mut count, mut rest) = (config.fan_in, bin.len(), twice.as_slice());
    while count > fan_in && rest.len() >= 2 {
        let take = fan_in.min(rest.len()).min(count - fan_in + 1);
        plans.push(to_plan(&rest[..take], Reason::Final));
        rest = &rest[take..];
        count -= take - 1;
    }
    if count > fan_in {
        let mut left: Vec<&Candidate> = rest.iter().chain(&once).copied().collect();
        left.sort_by(|a, b| by_size(a, b));
        for group in left.chunks(fan_in).filter(|g| g.len() >= 2) {
            plans.push(to_plan(group, Reason::Final));
        }
    }
}

/// Unit tests of each rule; the properties over random scopes and a simulated day are in
/// `tests/simulation.rs`.
#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> MergeConfig {
        with(4, 40)
    }

    fn with(fan_in: usize, soft: usize) -> MergeConfig {
        MergeConfig {
            fan_in,
            target_part_bytes: 1000,
            max_rewrites: 3,
            soft_parts_per_scope: soft,
            hard_parts_per_scope: soft * 3,
            quiet_after_ms: 1000,
            ..MergeConfig::default()
        }
    }

    fn part(name: &str, bytes: u64, level: u32, created_at_ms: i64) -> Candidate {
        let name = name.to_string();
        Candidate {
            name,
            bytes,
            level,
            created_at_ms,
        }
    }

    /// Parts named `{prefix}{i}`, created at `i` ms.
    fn parts(prefix: &str, n: usize, bytes: u64, level: u32) -> Vec<Candidate> {
        let at = |i: usize| part(&format!("{prefix}{i}"), bytes, level, i as i64);
        (0..n).map(at).collect()
    }

    fn inputs(plans: &[Plan]) -> Vec<Vec<&str>> {
        fn names(p: &Plan) -> Vec<&str> {
            p.inputs.iter().map(String::as_str).collect()
        }
        plans.iter().map(names).collect()
    }

    #[test]
    fn full_groups_of_a_level_merge_oldest_first_and_the_rest_waits() {
        let mut scope = parts("a", 9, 10, 0);
        scope.extend(parts("b", 3, 100, 1));
        scope.reverse();
        let plans = plan(&config(), &scope, 20);
        assert_eq!(
            inputs(&plans),
            [["a0", "a1", "a2", "a3"], ["a4", "a5", "a6", "a7"]]
        );
        assert!(plans.iter().all(|p| p.level == 1 && p.bytes == 40));
        assert!(plans.iter().all(|p| p.reason == Reason::Level));
    }

    #[test]
    fn a_level_group_that_cannot_grow_is_merged_as_it_is() {
        let plans = plan(&config(), &parts("c", 3, 400, 2), 20);
        assert_eq!(inputs(&plans), [["c0", "c1"]]);
        assert_eq!((plans[0].level, plans[0].bytes), (3, 800));
    }

    #[test]
    fn parts_at_max_rewrites_or_the_target_size_are_never_inputs() {
        let mut scope = parts("top", 50, 10, 3);
        scope.extend(parts("big", 50, 1000, 0));
        assert_eq!(plan(&config(), &scope, 20), []);
        assert_eq!(plan(&config(), &scope, 5000), [], "quiet");
    }

    #[test]
    fn the_urgency_curve() {
        let min = |fan_in, soft, n| urgent_min_group(&with(fan_in, soft), n);
        assert_eq!(min(4, 40, 20), None);
        assert_eq!(
            [21, 30, 31, 40, 900].map(|n| min(4, 40, n)),
            [3, 3, 2, 2, 2].map(Some)
        );
        assert_eq!(min(10, 300, 150), None);
        assert_eq!(
            [151, 225, 280, 300].map(|n| min(10, 300, n)),
            [9, 6, 3, 2].map(Some)
        );
    }

    #[test]
    fn urgent_merges_take_the_smallest_parts_whatever_their_level() {
        let mut scope = parts("top", 37, 900, 3);
        scope.extend([
            part("x", 70, 1, 1),
            part("y", 50, 0, 2),
            part("z", 60, 1, 3),
            part("last", 10, 2, 0), // its output could not be merged again
        ]);
        let calm = plan(&config(), &scope, 20);
        assert_eq!(calm, [], "41 parts, but only 3 that urgency could take");
        let plans = plan(&with(4, 4), &scope, 20);
        assert_eq!(inputs(&plans), [["y", "z", "x"]]);
        assert_eq!((plans[0].level, plans[0].reason), (2, Reason::Urgent));
    }

    #[test]
    fn a_quiet_scope_merges_into_as_few_parts_as_the_target_allows() {
        let sizes = [300, 300, 300, 200, 100, 50].into_iter().enumerate();
        let scope: Vec<Candidate> = sizes
            .map(|(i, b)| part(&format!("q{i}"), b, 0, 0))
            .collect();
        let plans = plan(&config(), &scope, 999);
        assert_eq!(
            inputs(&plans),
            [["q0", "q1", "q2"]],
            "not quiet yet: levels only"
        );
        let plans = plan(&config(), &scope, 1000);
        assert_eq!(
            inputs(&plans),
            [vec!["q4", "q0", "q1", "q2"], vec!["q5", "q3"]]
        );
        assert!(plans.iter().all(|p| p.reason == Reason::Final));
    }

    #[test]
    fn a_quiet_bin_of_more_than_fan_in_parts_shrinks_to_one_merge() {
        let scope = parts("s", 9, 10, 0);
        let plans = plan(&config(), &scope, 5000);
        assert_eq!(
            inputs(&plans),
            [vec!["s0", "s1", "s2", "s3"], vec!["s4", "s5", "s6"]]
        );
        let mut next = vec![part("m1", 40, 1, 0), part("m2", 30, 1, 0), scope[7].clone()];
        next.push(scope[8].clone());
        assert_eq!(plan(&config(), &next, 5000).len(), 1);
    }

    #[test]
    fn a_scope_of_one_part_or_of_parts_that_cannot_pair_plans_nothing() {
        assert_eq!(plan(&config(), &parts("one", 1, 10, 0), 5000), []);
        assert_eq!(plan(&config(), &parts("half", 5, 600, 0), 5000), []);
        assert_eq!(plan(&config(), &[], 5000), []);
    }

    #[test]
    fn disabled_merges_plan_nothing_and_a_repeated_name_counts_once() {
        let enabled = false;
        assert_eq!(
            plan(
                &MergeConfig {
                    enabled,
                    ..config()
                },
                &parts("a", 8, 10, 0),
                20
            ),
            []
        );
        let twice = [parts("a", 3, 10, 0), parts("a", 3, 10, 0)].concat();
        assert_eq!(plan(&config(), &twice, 20), []);
    }
}
