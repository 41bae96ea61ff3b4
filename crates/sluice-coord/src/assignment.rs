//! Which worker owns which unit: weighted rendezvous (highest-random-weight) hashing.
//!
//! Every worker computes the same map from the same member list, with no coordination beyond
//! the list itself. For each unit, each member gets a score from a hash of (member id, unit); the
//! highest score owns the unit. When a member joins, it takes exactly the units it now scores
//! highest on (about 1/N of them); when one leaves, only its units move. Nothing else moves.
//!
//! Weights use the logarithmic method (Schindelhauer and Schomaker): the score is
//! `weight / -ln(u)` with `u` the hash mapped into (0, 1), so a member's expected share of the
//! units is its weight over the sum of weights.
//!
//! The hash is FNV-1a 64 followed by the MurmurHash3 64-bit finaliser, both fixed by their
//! specifications: the answer must be the same in every process, on every machine, and after
//! every compiler upgrade (Rust's `DefaultHasher` promises none of that). The golden tests below
//! pin it; changing them reshuffles every fleet during a rolling upgrade.

use std::collections::BTreeMap;

use crate::{Member, UnitId};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// MurmurHash3's `fmix64`: spreads FNV's weak low bits over the whole word.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// The stable 64-bit hash of (member, unit). A 0 byte separates the fields, so
/// ("a", "bc") and ("ab", "c") differ.
pub fn pair_hash(member_id: &str, unit: &UnitId) -> u64 {
    let mut h = fnv1a(FNV_OFFSET, member_id.as_bytes());
    h = fnv1a(h, &[0]);
    h = fnv1a(h, unit.topic.as_bytes());
    h = fnv1a(h, &[0]);
    h = fnv1a(h, &unit.partition.to_le_bytes());
    fmix64(h)
}

/// The member's score for the unit; the highest score owns it.
pub fn score(member_id: &str, weight: f64, unit: &UnitId) -> f64 {
    // The top 53 bits as a float strictly inside (0, 1): never 0 (ln would be -inf) nor 1.
    let u = ((pair_hash(member_id, unit) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    weight / -u.ln()
}

/// The key a merge scope (a table's partition value) is assigned by, as if it were a unit: no
/// topic holds a NUL byte and no partition is negative, so it never collides with a real one.
pub fn scope_key(table: &str, value: &str) -> UnitId {
    UnitId::new(format!("{table}\u{0}{value}"), -1)
}

/// The owner of `unit` among `members`, or `None` when there are none. Ties (practically
/// impossible) go to the smaller member id, so the answer is still the same everywhere.
pub fn owner<'a>(unit: &UnitId, members: &'a [Member]) -> Option<&'a Member> {
    members
        .iter()
        .filter(|m| m.weight > 0.0 && m.weight.is_finite())
        .map(|m| (score(&m.id, m.weight, unit), m))
        .max_by(|(sa, ma), (sb, mb)| sa.total_cmp(sb).then_with(|| mb.id.cmp(&ma.id)))
        .map(|(_, m)| m)
}

/// The whole map: each unit to its owner's id. Units map to nothing when there are no members.
pub fn assign<'a>(
    units: impl IntoIterator<Item = &'a UnitId>,
    members: &[Member],
) -> BTreeMap<UnitId, String> {
    units
        .into_iter()
        .filter_map(|u| owner(u, members).map(|m| (u.clone(), m.id.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn member(id: &str, weight: f64) -> Member {
        Member {
            id: id.to_string(),
            weight,
            address: None,
            host: "test".to_string(),
            pid: 0,
            joined_at_ms: 0,
            views: Vec::new(),
        }
    }

    fn units(topic: &str, n: i32) -> Vec<UnitId> {
        (0..n).map(|p| UnitId::new(topic, p)).collect()
    }

    /// Pins the hash: these values must never change (see the module docs). They were checked
    /// against an independent Python implementation of the same definition.
    #[test]
    fn golden_hashes() {
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        // Published FNV-1a 64 test vector.
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            pair_hash("worker-1", &UnitId::new("events", 0)),
            0xaa9b_6ae3_3398_87e5
        );
        assert_eq!(
            pair_hash("worker-2", &UnitId::new("events", 7)),
            0x4f46_0270_0ece_ee3c
        );
    }

    /// Pins the whole assignment of a small fleet.
    #[test]
    fn golden_assignment() {
        let members = [member("w1", 1.0), member("w2", 1.0), member("w3", 2.0)];
        let map = assign(&units("events", 12), &members);
        let owners: Vec<&str> = map.values().map(String::as_str).collect();
        assert_eq!(
            owners,
            ["w2", "w3", "w1", "w3", "w2", "w3", "w1", "w3", "w2", "w1", "w2", "w1"]
        );
    }

    #[test]
    fn no_members_no_owner_and_zero_weight_owns_nothing() {
        assert!(owner(&UnitId::new("t", 0), &[]).is_none());
        let members = [member("a", 0.0), member("b", 1.0)];
        for u in units("t", 50) {
            assert_eq!(owner(&u, &members).unwrap().id, "b");
        }
    }

    /// The README's figures: the share of 1,024 partitions moving on a join and a leave.
    #[test]
    fn large_topic_moves_close_to_one_over_n() {
        let us = units("events", 1024);
        let fleet_of =
            |n: usize| -> Vec<Member> { (1..=n).map(|i| member(&format!("w{i}"), 1.0)).collect() };
        for n in [3usize, 7] {
            let before = assign(&us, &fleet_of(n));
            let joined = assign(&us, &fleet_of(n + 1));
            let left = assign(&us, &fleet_of(n)[1..]);
            let share = |after: &BTreeMap<UnitId, String>| {
                us.iter().filter(|u| before[*u] != after[*u]).count() as f64 / us.len() as f64
            };
            let (join, leave) = (share(&joined), share(&left));
            println!(
                "{n} -> {}: {:.1} % moved (ideal {:.1} %); {n} -> {}: {:.1} % moved (ideal {:.1} %)",
                n + 1,
                join * 100.0,
                100.0 / (n + 1) as f64,
                n - 1,
                leave * 100.0,
                100.0 / n as f64
            );
            assert!(
                (join - 1.0 / (n + 1) as f64).abs() < 0.03,
                "join moved {join}"
            );
            assert!((leave - 1.0 / n as f64).abs() < 0.03, "leave moved {leave}");
        }
    }

    fn fleet(ids: &BTreeSet<u16>) -> Vec<Member> {
        ids.iter()
            .map(|i| member(&format!("worker-{i}"), 1.0))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The same members in any order give the same map.
        #[test]
        fn deterministic_whatever_the_member_order(
            ids in prop::collection::btree_set(0u16..1000, 1..12),
            seed in any::<u64>(),
        ) {
            let members = fleet(&ids);
            let mut shuffled = members.clone();
            // A deterministic permutation from the seed.
            shuffled.sort_by_key(|m| pair_hash(&m.id, &UnitId::new("shuffle", seed as i32)));
            let us = units("events", 64);
            prop_assert_eq!(assign(&us, &members), assign(&us, &shuffled));
        }

        /// A join moves only units to the newcomer, and about 1/(N+1) of them.
        #[test]
        fn a_join_moves_only_what_the_newcomer_takes(
            ids in prop::collection::btree_set(0u16..1000, 1..10),
            newcomer in 1000u16..2000,
        ) {
            let us = units("events", 600);
            let before_members = fleet(&ids);
            let mut after_ids = ids.clone();
            after_ids.insert(newcomer);
            let after_members = fleet(&after_ids);
            let before = assign(&us, &before_members);
            let after = assign(&us, &after_members);
            let new_id = format!("worker-{newcomer}");
            let moved: Vec<&UnitId> = us.iter().filter(|u| before[*u] != after[*u]).collect();
            for u in &moved {
                prop_assert_eq!(&after[*u], &new_id, "unit {} moved between old members", u);
            }
            // Binomial(600, 1/n): the mean plus a generous 5 standard deviations.
            let n = after_members.len() as f64;
            let mean = us.len() as f64 / n;
            let bound = mean + 5.0 * (mean * (1.0 - 1.0 / n)).sqrt();
            prop_assert!((moved.len() as f64) <= bound, "{} moved, bound {bound:.0}", moved.len());
        }

        /// A leave moves exactly the leaver's units, and nothing else.
        #[test]
        fn a_leave_moves_only_the_leavers_units(
            ids in prop::collection::btree_set(0u16..1000, 2..10),
            pick in any::<prop::sample::Index>(),
        ) {
            let us = units("events", 600);
            let members = fleet(&ids);
            let leaver = members[pick.index(members.len())].id.clone();
            let rest: Vec<Member> = members.iter().filter(|m| m.id != leaver).cloned().collect();
            let before = assign(&us, &members);
            let after = assign(&us, &rest);
            for u in &us {
                if before[u] == leaver {
                    prop_assert_ne!(&after[u], &leaver);
                } else {
                    prop_assert_eq!(&after[u], &before[u], "unit {} moved though its owner stayed", u);
                }
            }
        }

        /// Shares follow weights within a tolerance.
        #[test]
        fn weights_are_respected(
            weights in prop::collection::vec(1u8..=4, 2..6),
        ) {
            let members: Vec<Member> = weights
                .iter()
                .enumerate()
                .map(|(i, w)| member(&format!("node-{i}"), f64::from(*w)))
                .collect();
            let us = units("weighted", 4000);
            let map = assign(&us, &members);
            let total: f64 = weights.iter().map(|w| f64::from(*w)).sum();
            for m in &members {
                let share = map.values().filter(|o| **o == m.id).count() as f64 / us.len() as f64;
                let expected = m.weight / total;
                prop_assert!(
                    (share - expected).abs() <= 0.05,
                    "{} has weight share {expected:.3} but owns {share:.3}", m.id
                );
            }
        }
    }
}
