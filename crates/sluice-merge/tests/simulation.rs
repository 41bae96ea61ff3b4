//! The merge policy over many rounds, without storage: properties over random scopes
//! (proptest), and a simulated day of 10 s flushes from 64 partitions into one scope, then the
//! scope going quiet. [`plan`] sees one scope's parts only, so "never crosses scopes" holds by
//! its signature and needs no test here.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use sluice_config::MergeConfig;
use sluice_merge::policy::{is_quiet, plan, Candidate, Plan, Reason};

fn is_mergeable(config: &MergeConfig, p: &Candidate) -> bool {
    p.level < config.max_rewrites && p.bytes < config.target_part_bytes
}

/// Checks what every answer of [`plan`] must hold: 2 to `fan_in` mergeable inputs of the scope,
/// at most the target together, no part in two plans, the output one level above its inputs.
fn check(config: &MergeConfig, parts: &[Candidate], plans: &[Plan]) {
    let mut used = BTreeSet::new();
    for p in plans {
        assert!((2..=config.fan_in).contains(&p.inputs.len()), "{p:?}");
        let inputs: Vec<&Candidate> = p.inputs.iter().map(|n| find(parts, n)).collect();
        assert!(inputs.iter().all(|c| is_mergeable(config, c)), "{p:?}");
        assert_eq!(p.bytes, inputs.iter().map(|c| c.bytes).sum::<u64>());
        assert!(p.bytes <= config.target_part_bytes, "{p:?}");
        assert_eq!(p.level, 1 + inputs.iter().map(|c| c.level).max().unwrap());
        let once = p.inputs.iter().all(|n| used.insert(n.clone()));
        assert!(once, "{p:?} takes a part already taken");
    }
}

fn find<'a>(parts: &'a [Candidate], name: &str) -> &'a Candidate {
    parts
        .iter()
        .find(|c| c.name == name)
        .expect("an input of the scope")
}

/// Replaces each plan's inputs by one part of their summed size at the plan's level, created
/// at `at_ms` (its commit).
fn apply(parts: &mut Vec<Candidate>, plans: &[Plan], at_ms: i64, serial: &mut u64) {
    let gone: BTreeSet<&String> = plans.iter().flat_map(|p| &p.inputs).collect();
    parts.retain(|c| !gone.contains(&c.name));
    for p in plans {
        *serial += 1;
        parts.push(Candidate {
            name: format!("merged-{serial:08}"),
            bytes: p.bytes,
            level: p.level,
            created_at_ms: at_ms,
        });
    }
}

fn configs() -> impl Strategy<Value = MergeConfig> {
    (2usize..8, 200u64..3000, 1u32..5, 2usize..60).prop_map(|(fan_in, target, rewrites, soft)| {
        MergeConfig {
            fan_in,
            target_part_bytes: target,
            max_rewrites: rewrites,
            soft_parts_per_scope: soft,
            hard_parts_per_scope: soft * 3,
            quiet_after_ms: 1000,
            ..MergeConfig::default()
        }
    })
}

/// Up to 120 parts of any size, level and age, named in creation order.
fn scopes() -> impl Strategy<Value = Vec<Candidate>> {
    let part = (1u64..1500, 0u32..6, 0i64..3000);
    prop::collection::vec(part, 0..120).prop_map(|parts| {
        let named = parts.into_iter().enumerate();
        let to = |(i, (bytes, level, at))| Candidate {
            name: format!("p{i:03}"),
            bytes,
            level,
            created_at_ms: at,
        };
        named.map(to).collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn plans_respect_fan_in_size_max_rewrites_and_use_a_part_once(
        config in configs(), parts in scopes(), now in 0i64..6000,
    ) {
        check(&config, &parts, &plan(&config, &parts, now));
    }

    #[test]
    fn plans_do_not_depend_on_the_order_of_the_parts(
        config in configs(),
        (parts, shuffled) in scopes().prop_flat_map(|p| (Just(p.clone()), Just(p).prop_shuffle())),
        now in 0i64..6000,
    ) {
        prop_assert_eq!(plan(&config, &parts, now), plan(&config, &shuffled, now));
    }

    /// Each round reduces the count, so the final merges end; then no two parts that may
    /// still be merged fit together, and every byte is still there.
    #[test]
    fn a_quiet_scope_converges_and_then_plans_nothing(config in configs(), mut parts in scopes()) {
        let (bytes, rounds) = (parts.iter().map(|c| c.bytes).sum::<u64>(), parts.len() + 1);
        let (mut now, mut serial) = (3000 + 1000, 0);
        for _ in 0..rounds {
            let plans = plan(&config, &parts, now);
            check(&config, &parts, &plans);
            prop_assert!(plans.iter().all(|p| p.reason == Reason::Final));
            if plans.is_empty() {
                break;
            }
            // The round commits at `now`: the scope is quiet again one period later.
            apply(&mut parts, &plans, now, &mut serial);
            now += 1000;
        }
        prop_assert_eq!(plan(&config, &parts, now), vec![]);
        prop_assert_eq!(parts.iter().map(|c| c.bytes).sum::<u64>(), bytes);
        let open: Vec<u64> = parts.iter().filter(|c| is_mergeable(&config, c)).map(|c| c.bytes).collect();
        for (i, a) in open.iter().enumerate() {
            prop_assert!(open[i + 1..].iter().all(|b| a + b > config.target_part_bytes));
        }
    }

    /// At the soft limit, any two parts that may be merged (and merged again) together are: the
    /// smallest ones go at once, where the level rule alone would wait for a full group.
    #[test]
    fn at_the_soft_limit_every_possible_merge_is_urgent(config in configs(), parts in scopes()) {
        let twice = |c: &&Candidate| is_mergeable(&config, c) && c.level + 1 < config.max_rewrites;
        let mut open: Vec<u64> = parts.iter().filter(twice).map(|c| c.bytes).collect();
        let soft = config.soft_parts_per_scope.min(open.len()).max(1);
        let config = MergeConfig { soft_parts_per_scope: soft, hard_parts_per_scope: soft * 3, ..config };
        open.sort_unstable();
        let plans = plan(&config, &parts, 0);
        if open.len() >= 2 && open[0] + open[1] <= config.target_part_bytes {
            prop_assert_eq!(plans.first().map(|p| p.reason), Some(Reason::Urgent));
        }
    }
}

/// Flushes come every 10 s; the merge model below advances in the same steps.
const STEP_MS: i64 = 10_000;
const STEPS_PER_HOUR: usize = 360;
const PARTITIONS: usize = 64;
/// The mean flushed part. 100k events/s over 64 partitions is about 15,600 events per partition
/// per 10 s; at 165 raw bytes each (the sample events are 130-200) that is 2.6 MB, of which
/// Parquet with zstd keeps about a ninth (the quickstart writes 0.1 MB of parts for 0.9 MB of
/// events): 0.29 MB. Each partition gets a fixed share of the traffic between 0.5 and 1.5 times
/// the mean (skewed keys), and each flush varies by +-20% around it.
const MEAN_PART_BYTES: f64 = 290_000.0;
/// The scope's merge capacity: two workers running one merge at a time each (the default
/// `max_concurrent`). A merge takes 1 s (listing, Parquet footers, the ZooKeeper swap, object
/// requests) plus its bytes at 25 MB/s (read, merged on the sorting key, re-encoded with zstd and
/// uploaded: about 225 MB/s of raw events). A worker starts the policy's plans in order while
/// its slot has time left in the step; a merge that runs past the step holds its inputs (left
/// out of `plan`) and its slot until it commits, at the first step after it ends.
const SLOTS: usize = 2;
const MERGE_FIXED_MS: i64 = 1_000;
const MERGE_BYTES_PER_MS: u64 = 25_000;

/// splitmix64: a fixed seed gives the same day on every run.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as f64 / u64::MAX as f64
    }
}

/// One scope's parts and running merges, and the bytes written into it.
struct Scope {
    config: MergeConfig,
    parts: Vec<Candidate>,
    running: Vec<(i64, Plan)>,
    busy: BTreeSet<String>,
    slots: [i64; SLOTS],
    serial: u64,
    flushed: u64,
    merged: u64,
    merges: BTreeMap<Reason, u64>,
    last_commit_ms: i64,
}

impl Scope {
    fn new(config: MergeConfig) -> Scope {
        Scope {
            config,
            parts: Vec::new(),
            running: Vec::new(),
            busy: BTreeSet::new(),
            slots: [0; SLOTS],
            serial: 0,
            flushed: 0,
            merged: 0,
            merges: BTreeMap::new(),
            last_commit_ms: 0,
        }
    }

    fn flush(&mut self, bytes: u64, now: i64) {
        self.serial += 1;
        let name = format!("flush-{:08}", self.serial);
        let part = Candidate {
            name,
            bytes,
            level: 0,
            created_at_ms: now,
        };
        self.parts.push(part);
        self.flushed += bytes;
    }

    /// Commits the merges that ended by `now`, each created at its own end.
    fn commit(&mut self, now: i64) {
        let running = std::mem::take(&mut self.running);
        let (done, running): (Vec<_>, Vec<_>) =
            running.into_iter().partition(|(end, _)| *end <= now);
        self.running = running;
        for (end, p) in done {
            p.inputs.iter().for_each(|n| _ = self.busy.remove(n));
            apply(&mut self.parts, &[p], end, &mut self.serial);
            self.last_commit_ms = end;
        }
    }

    /// Starts the policy's plans, in order, while a slot has time left in this step.
    fn start(&mut self, now: i64) {
        let plans = if self.busy.is_empty() {
            plan(&self.config, &self.parts, now)
        } else {
            let idle = self.parts.iter().filter(|c| !self.busy.contains(&c.name));
            plan(&self.config, &idle.cloned().collect::<Vec<_>>(), now)
        };
        for p in plans {
            let slot = (0..SLOTS).min_by_key(|&s| self.slots[s]).unwrap();
            let begin = self.slots[slot].max(now);
            if begin >= now + STEP_MS {
                break;
            }
            let end = begin + MERGE_FIXED_MS + (p.bytes / MERGE_BYTES_PER_MS) as i64;
            self.slots[slot] = end;
            self.busy.extend(p.inputs.iter().cloned());
            self.merged += p.bytes;
            *self.merges.entry(p.reason).or_default() += 1;
            self.running.push((end, p));
        }
    }

    fn merges(&self) -> u64 {
        self.merges.values().sum()
    }

    /// Bytes written by flushes and merges over bytes written by flushes.
    fn write_amplification(&self) -> f64 {
        (self.flushed + self.merged) as f64 / self.flushed as f64
    }
}

/// The flushes: 64 partitions, each with a fixed share of the traffic between 0.5 and 1.5 times
/// the mean (skewed keys), every 10 s; each flush varies by +-20% around its share.
struct Flushes {
    rng: Rng,
    shares: Vec<f64>,
}

impl Flushes {
    fn new() -> Flushes {
        let mut rng = Rng(0x5eed);
        let shares = (0..PARTITIONS).map(|_| 0.5 + rng.unit()).collect();
        Flushes { rng, shares }
    }

    fn step(&mut self, scope: &mut Scope, now: i64) {
        for share in &self.shares {
            let bytes = MEAN_PART_BYTES * share * (0.8 + 0.4 * self.rng.unit());
            scope.flush(bytes as u64, now);
        }
    }
}

const DAY_STEPS: usize = 24 * STEPS_PER_HOUR;

/// 24 hours of flushes into one scope (a day), merged as the default policy plans within the
/// capacity above; then the scope goes quiet. The count includes parts being merged: they are
/// listed until their merge commits.
#[test]
fn a_day_of_flushes_stays_under_the_soft_limit_then_seals() {
    let config = MergeConfig::default();
    let (mut scope, mut flushes, mut max_parts) = (Scope::new(config.clone()), Flushes::new(), 0);
    for step in 0..DAY_STEPS {
        let now = step as i64 * STEP_MS;
        scope.commit(now);
        flushes.step(&mut scope, now);
        if step >= 4 * STEPS_PER_HOUR {
            max_parts = max_parts.max(scope.parts.len());
        }
        scope.start(now);
    }
    let wa = scope.write_amplification();
    println!(
        "day: {} flushed parts ({:.1} GB), {} merges ({:.1} GB written); most parts in hours 4-24: \
         {max_parts}; write amplification {wa:.2}; parts at the end of the day: {}",
        DAY_STEPS * PARTITIONS,
        scope.flushed as f64 / 1e9,
        scope.merges(),
        scope.merged as f64 / 1e9,
        scope.parts.len(),
    );
    assert!(max_parts < config.soft_parts_per_scope, "{max_parts} parts");
    assert!(wa <= 1.0 + config.max_rewrites as f64, "{wa}");

    // Quiet: no more flushes. Merged parts carry their commit time, so each round of final
    // merges waits for another quiet period.
    let last_flush = (DAY_STEPS - 1) as i64 * STEP_MS;
    let mut now = last_flush;
    for step in DAY_STEPS..DAY_STEPS + 12 * STEPS_PER_HOUR {
        now = step as i64 * STEP_MS;
        scope.commit(now);
        scope.start(now);
    }
    let (parts, target) = (&scope.parts, config.target_part_bytes);
    let bytes: u64 = parts.iter().map(|c| c.bytes).sum();
    let open: Vec<u64> = parts
        .iter()
        .filter(|c| is_mergeable(&config, c))
        .map(|c| c.bytes)
        .collect();
    println!(
        "quiet: {} final merges, the last merge committed {:.1} h after the last flush; {} parts \
         left ({} below the target and max_rewrites, no two of which fit together); the target \
         size alone needs at least {} for {:.1} GB",
        scope.merges.get(&Reason::Final).copied().unwrap_or(0),
        (scope.last_commit_ms - last_flush) as f64 / 3.6e6,
        parts.len(),
        open.len(),
        bytes.div_ceil(target),
        bytes as f64 / 1e9,
    );
    assert!(scope.running.is_empty() && is_quiet(&config, parts, now));
    assert_eq!(
        plan(&config, parts, now),
        vec![],
        "sealable: nothing more to merge"
    );
    for (i, a) in open.iter().enumerate() {
        assert!(
            open[i + 1..].iter().all(|b| a + b > target),
            "two parts could still merge"
        );
    }
}

/// Merges stall for 2 minutes, 30 minutes into a day, and 768 small parts pile up: urgent
/// merges (smallest first, groups that need not wait for a full level) bring the count back
/// under half the soft limit no later than the level rule alone. (Not sooner either: the level
/// rule already merges full groups of them as fast as the capacity allows; urgency takes what
/// it leaves waiting, see the policy's unit tests.)
#[test]
fn a_backlog_comes_down_at_least_as_fast_with_urgency() {
    let stall = 30 * STEPS_PER_HOUR / 60;
    let recover = |config: MergeConfig| {
        let (mut scope, mut flushes, mut counts) = (Scope::new(config), Flushes::new(), vec![]);
        for step in 0..stall + 60 {
            let now = step as i64 * STEP_MS;
            scope.commit(now);
            flushes.step(&mut scope, now);
            if step >= stall {
                counts.push(scope.parts.len());
            }
            if !(stall..stall + 12).contains(&step) {
                scope.start(now);
            }
        }
        counts
    };
    let urgent = recover(MergeConfig::default());
    let calm = MergeConfig {
        soft_parts_per_scope: 4999,
        hard_parts_per_scope: 5000,
        ..MergeConfig::default()
    };
    let calm = recover(calm);
    let half_soft = MergeConfig::default().soft_parts_per_scope / 2;
    let back = |counts: &[usize]| counts.iter().rposition(|&n| n >= half_soft).unwrap() + 1;
    println!(
        "stall: peak {} parts; back under {half_soft} after {} steps with urgency, {} without",
        urgent.iter().max().unwrap(),
        back(&urgent),
        back(&calm),
    );
    assert!(back(&urgent) <= back(&calm), "{urgent:?}\n{calm:?}");
}
