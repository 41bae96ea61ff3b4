//! Views over existing data: which views a flush applies, making a newly configured view live
//! for the whole fleet, and computing its history.
//!
//! * [`LiveViews`] is this worker's reading of the coordinator's view registry. A flush applies
//!   the views the registry has live (not merely the configured ones) and names the registry
//!   version in its commit, so a flush made before a view went live is refused and made again
//!   with it (`flush.rs`).
//! * `maintain.rs`: every check interval, a configured view that is not live yet goes live once
//!   every live member's configuration defines it the same way (a rolling restart finished) and
//!   no backfill of its topic waits for its handoff; a live view whose history is pending gets
//!   it computed by whichever worker takes its history lease.
//! * `history.rs`: the history: the view over the source parts committed before it went live,
//!   registered in one step with the record that it is done.
//!
//! While a view's history is pending, merges of its source table never combine parts from
//! before and after its points (`merger/scope.rs`), so every part is wholly history or wholly
//! live.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use sluice_config::{Config, ViewConfig};
use sluice_coord::{CoordError, Coordinator, LiveView, ViewRegistry};

use crate::{now_ms, WorkerError};

mod history;
mod maintain;

pub(crate) use maintain::{HistoryCtx, Maintainer};

/// SHA-256 of a view's definition: two configurations define a view the same way iff their
/// fingerprints match.
pub(crate) fn fingerprint(view: &ViewConfig) -> String {
    let definition = serde_json::json!([view.name, view.source, view.target, view.sql]);
    sluice_sink::sha256_hex(definition.to_string().as_bytes())
}

/// What this worker's member record advertises: `name:fingerprint` of each configured view.
pub(crate) fn advertised(config: &Config) -> Vec<String> {
    config
        .views
        .iter()
        .map(|v| format!("{}:{}", v.name, fingerprint(v)))
        .collect()
}

/// Reads the view registry, creating it first if this deployment has none yet: with the views
/// `config` defines, live from the start with nothing to compute (until now every commit
/// carried every configured view). A worker does this before it consumes anything, and so does
/// a backfill before it claims its partitions.
pub async fn ensure_view_registry(
    coord: &dyn Coordinator,
    config: &Config,
) -> Result<ViewRegistry, CoordError> {
    let registry = coord.read_views().await?;
    if registry.exists() {
        return Ok(registry);
    }
    let now = now_ms();
    let initial: Vec<LiveView> = config
        .views
        .iter()
        .map(|v| LiveView {
            name: v.name.clone(),
            source: v.source.clone(),
            target: v.target.clone(),
            fingerprint: fingerprint(v),
            activated_at_ms: now,
            points: Vec::new(),
            dropped_at_ms: None,
        })
        .collect();
    coord.init_views(&initial).await
}

/// The views a flush applies, and the registry version they were read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Applied {
    pub(crate) version: i64,
    pub(crate) names: BTreeSet<String>,
}

/// This worker's reading of the view registry.
#[derive(Debug)]
pub(crate) struct LiveViews {
    /// Configured views: name -> (source table, target table, fingerprint).
    configured: BTreeMap<String, (String, String, String)>,
    /// Tables this worker ingests or writes.
    tables: BTreeSet<String>,
    registry: Mutex<ViewRegistry>,
}

impl LiveViews {
    pub(crate) fn new(config: &Config) -> LiveViews {
        LiveViews {
            configured: config
                .views
                .iter()
                .map(|v| {
                    let definition = (v.source.clone(), v.target.clone(), fingerprint(v));
                    (v.name.clone(), definition)
                })
                .collect(),
            tables: config.tables.iter().map(|t| t.name.clone()).collect(),
            // Not read yet: as if none existed, until `start`.
            registry: Mutex::new(ViewRegistry {
                version: -1,
                ..ViewRegistry::default()
            }),
        }
    }

    /// At the start of a session: reads the registry (creating it if this deployment has none
    /// yet, see [`ensure_view_registry`]) and checks it against the configuration.
    pub(crate) async fn start(
        &self,
        coord: &dyn Coordinator,
        config: &Config,
    ) -> Result<(), WorkerError> {
        let registry = ensure_view_registry(coord, config).await?;
        self.accept(registry)
    }

    /// Reads the registry again (after a commit found it changed).
    pub(crate) async fn refresh(&self, coord: &dyn Coordinator) -> Result<Applied, WorkerError> {
        let registry = coord.read_views().await?;
        self.accept(registry)?;
        Ok(self.applied())
    }

    /// Keeps `registry` if this configuration can serve it: every live view over a table this
    /// worker has must be configured here, and defined the same way.
    fn accept(&self, registry: ViewRegistry) -> Result<(), WorkerError> {
        for view in &registry.views {
            if view.dropped_at_ms.is_some() {
                if self.configured.contains_key(&view.name) {
                    tracing::warn!(view = %view.name, "the view is configured but was dropped (`sluice views drop`): it is not applied; remove it from the configuration");
                }
                continue;
            }
            if !self.tables.contains(&view.source) {
                continue;
            }
            match self.configured.get(&view.name) {
                Some((_, _, fp)) if *fp == view.fingerprint => {}
                Some(_) => {
                    return Err(WorkerError::ViewMismatch {
                        view: view.name.clone(),
                        problem: "is live in the fleet with another definition (source, target or SQL) than this configuration's".into(),
                    })
                }
                None => {
                    return Err(WorkerError::ViewMismatch {
                        view: view.name.clone(),
                        problem: format!("is live in the fleet over table `{}` but this configuration does not define it", view.source),
                    })
                }
            }
        }
        *self.registry.lock().expect("views lock poisoned") = registry;
        Ok(())
    }

    /// The views a flush applies now: configured here and live.
    pub(crate) fn applied(&self) -> Applied {
        let registry = self.registry.lock().expect("views lock poisoned");
        Applied {
            version: registry.version,
            names: self
                .configured
                .keys()
                .filter(|name| registry.applied(name))
                .cloned()
                .collect(),
        }
    }

    pub(crate) fn set_registry(&self, registry: ViewRegistry) -> Result<(), WorkerError> {
        self.accept(registry)
    }
}
