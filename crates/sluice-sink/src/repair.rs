//! Repair and scrub of replicated objects: the registry is the desired state, and each
//! endpoint's contents are compared with it.
//!
//! There is no replication log. A pass lists the directories of the objects it is given on
//! every endpoint, and copies each object missing (or of the wrong size) on an endpoint of its
//! placement from a copy that matches the object's checksum. An endpoint that was down for
//! days is repaired the same way as one that missed one upload, and nothing grew anywhere
//! meanwhile. The scrub re-reads copies whole, at a limited rate, to find the corruption a
//! listing cannot see; a corrupt copy is rewritten from a good one, never deleted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::StreamExt;

use crate::{chain_text, sha256_hex, Storage};

/// An object the registry says must exist: a part, or a sealed scope's manifest.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub path: String,
    /// Its size, where recorded (manifests' sizes are not).
    pub bytes: Option<u64>,
    /// SHA-256, lowercase hex; empty where it was never computed (such a copy is only
    /// compared by size, and copied from any endpoint).
    pub checksum: String,
}

/// Limits the bytes per second a pass reads or copies, across the copies it makes at once.
#[derive(Debug)]
pub struct Throttle {
    bytes_per_s: u64,
    /// When the bytes spent so far will have been spent at the limit.
    next: std::sync::Mutex<tokio::time::Instant>,
}

impl Throttle {
    /// `bytes_per_s` 0: no limit.
    pub fn new(bytes_per_s: u64) -> Throttle {
        Throttle {
            bytes_per_s,
            next: std::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits until moving `bytes` more keeps within the limit.
    pub async fn spend(&self, bytes: u64) {
        if self.bytes_per_s == 0 || bytes == 0 {
            return;
        }
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_s as f64);
        let until = {
            let mut next = self
                .next
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *next = (*next).max(tokio::time::Instant::now()) + cost;
            *next
        };
        tokio::time::sleep_until(until).await;
    }
}

/// What a repair pass found and did.
#[derive(Debug, Default)]
pub struct RepairReport {
    /// Endpoints that could not be listed: their copies count as missing.
    pub unreachable: BTreeSet<String>,
    /// Copies stored, by endpoint, and their bytes.
    pub repaired: BTreeMap<String, (u64, u64)>,
    /// Copies still missing at the end of the pass (on unreachable endpoints, or whose copy
    /// failed).
    pub missing: usize,
    /// Objects with fewer good copies than the replication factor at the end of the pass.
    pub under_replicated: usize,
    /// Per object: the endpoints of its placement known to hold a good copy at the end.
    pub holders: HashMap<String, Vec<String>>,
    /// What went wrong, one line per object.
    pub failures: Vec<String>,
}

/// How many objects a pass repairs at once (their copies share the pass's [`Throttle`]).
const COPY_CONCURRENCY: usize = 8;

/// Brings every object's placement endpoints to a good copy each. `corrupt` are copies known
/// to be bad (path, endpoint): they are rewritten even though the listing shows them.
pub async fn repair(
    storage: &Storage,
    wanted: &[Wanted],
    corrupt: &BTreeSet<(String, String)>,
    throttle: &Throttle,
) -> RepairReport {
    let mut report = RepairReport::default();
    let listings = list_endpoints(storage, wanted, &mut report.unreachable).await;
    let factor = storage.replication().factor;
    // Collected first: a stream over a borrowing closure is not `Send` enough for a task.
    let tasks: Vec<_> = wanted
        .iter()
        .map(|w| repair_one(storage, w, &listings, corrupt, throttle))
        .collect();
    let outcomes: Vec<ObjectOutcome> = futures::stream::iter(tasks)
        .buffer_unordered(COPY_CONCURRENCY)
        .collect()
        .await;
    for mut o in outcomes {
        if o.good.len() < factor {
            report.under_replicated += 1;
        }
        report.missing += o.missing;
        for (endpoint, bytes) in o.repaired {
            let entry = report.repaired.entry(endpoint).or_default();
            entry.0 += 1;
            entry.1 += bytes;
        }
        report.failures.append(&mut o.failures);
        o.good.sort();
        report.holders.insert(o.path, o.good);
    }
    report
}

/// What repairing one object found and did.
struct ObjectOutcome {
    path: String,
    /// Placement endpoints holding a good copy at the end.
    good: Vec<String>,
    /// Copies still missing.
    missing: usize,
    /// Copies stored: endpoint, bytes.
    repaired: Vec<(String, u64)>,
    failures: Vec<String>,
}

/// Sorts an object's placement into endpoints with a good copy and endpoints needing one (by
/// the listings and the known corrupt copies), and copies to the latter.
async fn repair_one(
    storage: &Storage,
    w: &Wanted,
    listings: &HashMap<String, HashMap<String, u64>>,
    corrupt: &BTreeSet<(String, String)>,
    throttle: &Throttle,
) -> ObjectOutcome {
    let mut outcome = ObjectOutcome {
        path: w.path.clone(),
        good: Vec::new(),
        missing: 0,
        repaired: Vec::new(),
        failures: Vec::new(),
    };
    let key = storage.object_path(&w.path);
    let mut need = Vec::new();
    for endpoint in storage.placement_names(&w.path) {
        let Some(listed) = listings.get(&endpoint) else {
            outcome.missing += 1;
            continue;
        };
        let present = listed
            .get(key.as_ref())
            .is_some_and(|size| w.bytes.is_none_or(|b| b == *size));
        if present && !corrupt.contains(&(w.path.clone(), endpoint.clone())) {
            outcome.good.push(endpoint);
        } else {
            need.push(endpoint);
        }
    }
    if !need.is_empty() {
        copy_to(storage, w, &need, throttle, &mut outcome).await;
    }
    outcome
}

/// Each endpoint's objects under the wanted objects' directories (path as the store encodes
/// it -> size); endpoints
/// that cannot be listed are left out and named in `unreachable`.
async fn list_endpoints(
    storage: &Storage,
    wanted: &[Wanted],
    unreachable: &mut BTreeSet<String>,
) -> HashMap<String, HashMap<String, u64>> {
    let dirs: BTreeSet<&str> = wanted
        .iter()
        .map(|w| w.path.rsplit_once('/').map_or("", |(dir, _)| dir))
        .collect();
    let mut listings = HashMap::new();
    'endpoints: for endpoint in storage.endpoint_names() {
        let mut objects = HashMap::new();
        for dir in &dirs {
            match storage.list_on(&endpoint, dir).await {
                Ok(listed) => objects.extend(listed.into_iter().map(|o| (o.path, o.size))),
                Err(e) => {
                    tracing::warn!(endpoint = %endpoint, dir, error = %chain_text(&e), "cannot list a storage endpoint; its copies are repaired once it answers");
                    unreachable.insert(endpoint);
                    continue 'endpoints;
                }
            }
        }
        listings.insert(endpoint, objects);
    }
    listings
}

/// Copies a good copy of `w` to each endpoint of `need`, adding those that took it to the
/// outcome's good ones.
async fn copy_to(
    storage: &Storage,
    w: &Wanted,
    need: &[String],
    throttle: &Throttle,
    outcome: &mut ObjectOutcome,
) {
    let source: Bytes = match storage.get_verified(&w.path, &w.checksum).await {
        Ok((bytes, _)) => bytes,
        Err(e) => {
            outcome.missing += need.len();
            tracing::error!(path = %w.path, error = %chain_text(&e), "no good copy to repair from: the part is unavailable until an endpoint holding it answers");
            outcome
                .failures
                .push(format!("{}: {}", w.path, chain_text(&e)));
            return;
        }
    };
    for endpoint in need {
        throttle.spend(source.len() as u64).await;
        match storage.put_to(endpoint, &w.path, source.clone()).await {
            Ok(()) => {
                tracing::info!(path = %w.path, endpoint = %endpoint, bytes = source.len(), "repaired a copy");
                outcome
                    .repaired
                    .push((endpoint.clone(), source.len() as u64));
                outcome.good.push(endpoint.clone());
            }
            Err(e) => {
                outcome.missing += 1;
                outcome
                    .failures
                    .push(format!("{} on {endpoint}: {}", w.path, chain_text(&e)));
            }
        }
    }
}

/// What a scrub found.
#[derive(Debug, Default)]
pub struct ScrubReport {
    /// Where the next scrub of the same objects starts.
    pub next: usize,
    pub copies_checked: usize,
    pub bytes_read: u64,
    /// Copies whose bytes do not match the checksum: (path, endpoint).
    pub corrupt: BTreeSet<(String, String)>,
}

/// Re-reads the copies of `wanted` from index `start` on, until `budget_bytes` are read
/// (going round to the start once), and checks each against its checksum. Unreachable copies
/// are skipped: the repair deals with those.
pub async fn scrub(
    storage: &Storage,
    wanted: &[Wanted],
    start: usize,
    budget_bytes: u64,
    throttle: &Throttle,
) -> ScrubReport {
    let mut report = ScrubReport::default();
    if wanted.is_empty() {
        return report;
    }
    let mut index = start % wanted.len();
    for _ in 0..wanted.len() {
        if report.bytes_read >= budget_bytes {
            break;
        }
        let w = &wanted[index];
        index = (index + 1) % wanted.len();
        if w.checksum.is_empty() {
            continue;
        }
        for endpoint in storage.placement_names(&w.path) {
            let Ok(bytes) = storage.get_from(&endpoint, &w.path).await else {
                continue;
            };
            report.copies_checked += 1;
            report.bytes_read += bytes.len() as u64;
            throttle.spend(bytes.len() as u64).await;
            if sha256_hex(&bytes) != w.checksum {
                storage.count_corrupt(&endpoint);
                tracing::error!(path = %w.path, endpoint = %endpoint, "the scrub found a copy that does not match its part's checksum; the repair rewrites it from a good copy");
                report.corrupt.insert((w.path.clone(), endpoint));
            }
        }
    }
    report.next = index;
    report
}

#[cfg(test)]
#[path = "repair_tests.rs"]
mod tests;
