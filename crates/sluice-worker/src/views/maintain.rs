//! Every check interval: configured views go live when the whole fleet defines them, and a
//! pending history is computed by whichever worker takes its lease.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_config::Config;
use sluice_coord::{CoordError, Coordinator, LiveView, Member, UnitId};
use tokio::task::JoinHandle;

use super::history;
pub(crate) use super::history::HistoryCtx;
use super::{fingerprint, LiveViews};
use crate::retry::chain;
use crate::{now_ms, WorkerError};

/// Makes views live and runs their histories, off the ingest path.
pub(crate) struct Maintainer {
    live: Arc<LiveViews>,
    ctx: Arc<HistoryCtx>,
    /// Configured views: name -> (definition, source topic).
    configured: BTreeMap<String, (sluice_config::ViewConfig, Option<String>)>,
    every: Duration,
    next: Instant,
    /// The history this worker computes, if any, and the flag that stops it.
    running: Option<(String, JoinHandle<bool>, Arc<AtomicBool>)>,
    /// Whether, at the last check, every configured view was live (or dropped) with its history
    /// computed.
    settled: bool,
}

impl Maintainer {
    /// `ctx` is what a history runs with (its `tables` are filled in here).
    pub(crate) fn new(config: &Config, live: Arc<LiveViews>, mut ctx: HistoryCtx) -> Maintainer {
        let configured = config
            .views
            .iter()
            .map(|v| (v.name.clone(), (v.clone(), root_topic(config, &v.source))))
            .collect();
        ctx.tables = config
            .tables
            .iter()
            .map(|t| (t.name.clone(), Arc::new(t.clone())))
            .collect();
        Maintainer {
            live,
            ctx: Arc::new(ctx),
            configured,
            every: Duration::from_millis(config.merge.check_interval_ms),
            next: Instant::now(),
            running: None,
            settled: false,
        }
    }

    /// Whether every configured view is live with its history computed (`--stop-at-end` waits
    /// for it: the work is not done before).
    pub(crate) fn settled(&self) -> bool {
        self.configured.is_empty() || self.settled
    }

    /// Activations and histories, when the interval is over.
    pub(crate) async fn tick(
        &mut self,
        members: &[Member],
        universe: &BTreeSet<UnitId>,
    ) -> Result<(), WorkerError> {
        // A history that just registered is followed up at once, not an interval later; a
        // failed one is tried again after the interval.
        let finished = self
            .running
            .as_ref()
            .is_some_and(|(_, h, _)| h.is_finished());
        let mut registered = false;
        if finished {
            if let Some((_, handle, _)) = self.running.take() {
                registered = handle.await.unwrap_or(false);
            }
        }
        if self.configured.is_empty() || (Instant::now() < self.next && !registered) {
            return Ok(());
        }
        self.next = Instant::now() + self.every;
        let coord = &*self.ctx.coord;
        let registry = coord.read_views().await?;
        self.live.set_registry(registry.clone())?;
        let not_live = self
            .configured
            .keys()
            .filter(|n| registry.get(n).is_none())
            .count();
        let pending = self
            .configured
            .keys()
            .filter(|n| registry.history_pending(n))
            .count();
        metrics::gauge!(sluice_telemetry::metrics::VIEWS_NOT_LIVE).set(not_live as f64);
        metrics::gauge!(sluice_telemetry::metrics::VIEWS_HISTORY_PENDING).set(pending as f64);
        self.settled = self.configured.iter().all(|(name, (_, topic))| {
            topic.is_none() || (registry.get(name).is_some() && !registry.history_pending(name))
        });
        for (name, (view, topic)) in &self.configured {
            if registry.get(name).is_some() {
                continue;
            }
            let Some(topic) = topic else { continue };
            if !defined_by_all(members, name, &fingerprint(view)) {
                continue;
            }
            if let Some(id) = backfill_pending(coord, topic).await? {
                tracing::info!(view = %name, backfill = %id, "the view waits for backfill `{id}` to hand off before going live");
                continue;
            }
            activate(coord, registry.version, view, topic, universe).await?;
            // One activation per check: the registry's version moved. The next check (its
            // history) comes at once.
            self.next = Instant::now();
            return Ok(());
        }
        if self.running.is_some() {
            return Ok(());
        }
        for view in &registry.views {
            if !self.configured.contains_key(&view.name) || !registry.history_pending(&view.name) {
                continue;
            }
            // A chain's history reads its source view's table: that one's history first.
            if registry
                .views
                .iter()
                .any(|u| u.target == view.source && registry.history_pending(&u.name))
            {
                continue;
            }
            let lease = match coord
                .acquire_view_history_lease(&view.name, &self.ctx.worker_id)
                .await
            {
                Ok(lease) => lease,
                Err(CoordError::ViewHistoryHeld { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let ctx = Arc::clone(&self.ctx);
            let view = view.clone();
            let name = view.name.clone();
            let stop = Arc::new(AtomicBool::new(false));
            let flag = Arc::clone(&stop);
            let handle = tokio::spawn(async move { history::run(ctx, view, lease, flag).await });
            self.running = Some((name, handle, stop));
            break;
        }
        Ok(())
    }
}

impl Drop for Maintainer {
    /// Stops a history in progress with the session (its lease ends too): it stops at its next
    /// step and deletes what it wrote; the next worker, or this one's next session, starts it
    /// again.
    fn drop(&mut self) {
        if let Some((name, handle, stop)) = self.running.take() {
            if !handle.is_finished() {
                tracing::info!(view = %name, "stopping the view's history computation with the session");
                stop.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// The topic a table's rows come from: its own, or through views, their first source's.
fn root_topic(config: &Config, table: &str) -> Option<String> {
    let mut table = table.to_string();
    for _ in 0..=config.views.len() {
        let t = config.tables.iter().find(|t| t.name == table)?;
        if let Some(topic) = &t.topic {
            return Some(topic.clone());
        }
        table = config
            .views
            .iter()
            .find(|v| v.target == table)?
            .source
            .clone();
    }
    None
}

/// Whether every live member's configuration defines the view the same way.
fn defined_by_all(members: &[Member], name: &str, fingerprint: &str) -> bool {
    let wanted = format!("{name}:{fingerprint}");
    !members.is_empty() && members.iter().all(|m| m.views.contains(&wanted))
}

/// A backfill of `topic` that has neither handed off nor been cancelled: its parts are made
/// with the views live when it started, so none goes live before it hands off.
async fn backfill_pending(
    coord: &dyn Coordinator,
    topic: &str,
) -> Result<Option<String>, WorkerError> {
    Ok(coord.list_backfills().await?.into_iter().find_map(|b| {
        let s = &b.state;
        (s.plan.topic == topic && s.handed_off_at_ms.is_none() && s.cancelled_at_ms.is_none())
            .then(|| s.plan.id.clone())
    }))
}

/// Makes the view live at the committed offsets of every partition of `topic` the registry
/// knows; a conflict (a commit or another activation meanwhile) is tried again next tick.
async fn activate(
    coord: &dyn Coordinator,
    version: i64,
    view: &sluice_config::ViewConfig,
    topic: &str,
    universe: &BTreeSet<UnitId>,
) -> Result<(), WorkerError> {
    // Every partition the registry knows and every one the broker has: a partition missing
    // here would get no point, and a first commit of it racing the activation would escape.
    let mut units: BTreeSet<UnitId> = coord
        .list_units()
        .await?
        .into_iter()
        .map(|u| u.unit)
        .filter(|u| u.topic == topic)
        .collect();
    units.extend(universe.iter().filter(|u| u.topic == topic).cloned());
    let units: Vec<UnitId> = units.into_iter().collect();
    let live = LiveView {
        name: view.name.clone(),
        source: view.source.clone(),
        target: view.target.clone(),
        fingerprint: fingerprint(view),
        activated_at_ms: now_ms(),
        points: Vec::new(),
        dropped_at_ms: None,
    };
    match coord.activate_view(version, &live, &units).await {
        Ok(()) => {
            tracing::info!(view = %view.name, source = %view.source, partitions = units.len(), "the view went live: every commit carries it from now on; its history over the data already committed is computed next");
            Ok(())
        }
        Err(e @ (CoordError::Conflict { .. } | CoordError::Ambiguous { .. })) => {
            tracing::info!(view = %view.name, reason = %chain(&e), "the view did not go live this time; trying again at the next check");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
