//! Repair of replicated parts in the scopes this worker merges: a pass per
//! `storage.repair.interval_ms` reads each scope's records (and its manifest's), scrubs a
//! share of their copies, copies what is missing or corrupt from a good copy, and records the
//! endpoints that now hold each live part. The registry is the desired state; nothing is
//! queued anywhere while an endpoint is down.
//!
//! A scope's repair needs no lease: copying a verified copy twice writes the same bytes, and a
//! part merged away meanwhile is not recorded again ([`sluice_coord::Coordinator::set_replicas`]). A copy of
//! such a part stored after its retirement is collected as an unreferenced object.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use sluice_coord::PartRecord;
use sluice_sink::read_manifest;
use sluice_sink::repair::{repair, scrub, RepairReport, Throttle, Wanted};
use sluice_telemetry::metrics as m;

use super::{Key, MergeCtx};
use crate::retry::chain;

/// What a pass found, for the gauges and the next pass.
#[derive(Debug, Default)]
pub(crate) struct PassOutcome {
    /// Under-replicated objects per table (every table passed, 0 included).
    pub(crate) under_replicated: BTreeMap<String, usize>,
    /// Copies the pass could not store.
    pub(crate) backlog: usize,
    /// Endpoints that could not be listed.
    pub(crate) unreachable: BTreeSet<String>,
    /// Where each scope's scrub goes on next pass.
    pub(crate) cursors: HashMap<Key, usize>,
}

/// One pass over `scopes`; `corrupt` are copies reads found bad since the last pass.
pub(crate) async fn pass(
    ctx: Arc<MergeCtx>,
    tables: Vec<String>,
    scopes: Vec<Key>,
    mut cursors: HashMap<Key, usize>,
    corrupt: BTreeSet<(String, String)>,
) -> PassOutcome {
    let mut outcome = PassOutcome {
        under_replicated: tables.into_iter().map(|t| (t, 0)).collect(),
        ..PassOutcome::default()
    };
    let config = &ctx.repair;
    let copy = Throttle::new(config.bandwidth_bytes_per_s);
    let scrub_rate = Throttle::new(config.scrub_bytes_per_s);
    // Every endpoint is asked, whether or not this worker's scopes have objects on it: the
    // up gauge and the dashboard mean the endpoint, not the scopes.
    for (name, _, answer) in ctx.storage.probe().await {
        if let Err(e) = answer {
            tracing::warn!(endpoint = %name, error = %chain(&e), "a storage endpoint does not answer; its copies are repaired once it does");
            outcome.unreachable.insert(name);
        }
    }
    let mut read = Vec::new();
    for key in scopes {
        // A stopping worker does not hold its shutdown for the rest of the pass.
        if ctx.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return outcome;
        }
        match wanted_in(&ctx, &key.0, &key.1).await {
            Ok((live, wanted)) => read.push((key, live, wanted)),
            Err(why) => {
                tracing::warn!(table = %key.0, value = %key.1, error = %why, "cannot read a scope to repair it; trying again next pass");
            }
        }
    }
    // Missing copies first, in every scope: they are what an endpoint's outage left.
    for ((table, _), live, wanted) in &read {
        let report = repair(&ctx.storage, wanted, &corrupt, &copy).await;
        if !report.repaired.is_empty() {
            ctx.failpoints.hit("repair_after_copy");
        }
        record(&ctx, live, &report).await;
        count(&report);
        *outcome.under_replicated.entry(table.clone()).or_default() += report.under_replicated;
        outcome.backlog += report.missing;
        outcome.unreachable.extend(report.unreachable);
    }
    // Then the scrub, as far as the rate allows in one interval, each scope from where its
    // last scrub stopped; what it finds corrupt is rewritten at once.
    let mut scrub_budget = config.scrub_bytes_per_s.saturating_mul(config.interval_ms) / 1000;
    for (key, live, wanted) in &read {
        if scrub_budget == 0 || ctx.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        let start = cursors.get(key).copied().unwrap_or(0);
        let found = scrub(&ctx.storage, wanted, start, scrub_budget, &scrub_rate).await;
        scrub_budget = scrub_budget.saturating_sub(found.bytes_read);
        metrics::counter!(m::SCRUB_BYTES).increment(found.bytes_read);
        cursors.insert(key.clone(), found.next);
        if found.corrupt.is_empty() {
            continue;
        }
        let bad: Vec<Wanted> = wanted
            .iter()
            .filter(|w| found.corrupt.iter().any(|(path, _)| *path == w.path))
            .cloned()
            .collect();
        let report = repair(&ctx.storage, &bad, &found.corrupt, &copy).await;
        record(&ctx, live, &report).await;
        count(&report);
    }
    outcome.cursors = cursors;
    outcome
}

/// A scope's live records, and every object it needs: those records' parts, and if it is
/// sealed, its manifest and the manifest's parts.
async fn wanted_in(
    ctx: &MergeCtx,
    table: &str,
    value: &str,
) -> Result<(Vec<PartRecord>, Vec<Wanted>), String> {
    let listing = ctx
        .coord
        .read_scope(table, value)
        .await
        .map_err(|e| chain(&e))?;
    let mut wanted: Vec<Wanted> = listing.parts.iter().map(part_wanted).collect();
    if let Some(manifest) = &listing.state.sealed {
        wanted.push(Wanted {
            path: manifest.path.clone(),
            bytes: None,
            checksum: manifest.checksum.clone(),
        });
        let sealed = read_manifest(&ctx.storage, manifest)
            .await
            .map_err(|e| chain(&e))?;
        wanted.extend(sealed.iter().map(part_wanted));
    }
    Ok((listing.parts, wanted))
}

fn part_wanted(p: &PartRecord) -> Wanted {
    Wanted {
        path: p.path.clone(),
        bytes: Some(p.bytes),
        checksum: p.checksum.clone(),
    }
}

/// Records the endpoints holding each live part where that changed: what the pass verified on
/// the endpoints it reached, and what the record said of those it did not. So a record is
/// written when a copy is added (or found gone), not on every pass while an endpoint is down.
async fn record(ctx: &MergeCtx, live: &[PartRecord], report: &RepairReport) {
    for part in live {
        let Some(holders) = report.holders.get(&part.path) else {
            continue;
        };
        let mut replicas: Vec<String> = holders.clone();
        replicas.extend(
            part.replicas
                .iter()
                .filter(|r| report.unreachable.contains(*r))
                .cloned(),
        );
        replicas.sort();
        replicas.dedup();
        let mut before = part.replicas.clone();
        before.sort();
        if replicas == before {
            continue;
        }
        match ctx.coord.set_replicas(part, &replicas).await {
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(path = %part.path, error = %chain(&e), "cannot record a part's copies; the next pass records them");
            }
        }
    }
}

fn count(report: &RepairReport) {
    for (endpoint, (copies, bytes)) in &report.repaired {
        let labels = [("endpoint", endpoint.clone())];
        metrics::counter!(m::REPAIR_COPIES, &labels).increment(*copies);
        metrics::counter!(m::REPAIR_BYTES, &labels).increment(*bytes);
    }
    for failure in &report.failures {
        tracing::warn!(failure = %failure, "a copy could not be repaired this pass");
    }
}
