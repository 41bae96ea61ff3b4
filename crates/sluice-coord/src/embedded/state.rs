//! Where the embedded backend's state lives: in memory, or in a directory with a state file
//! rewritten (atomically, by rename) after every change, and a lock file that keeps a second
//! process out.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::registry::Registry;
use super::{
    embedded_err, EmbeddedCoordinator, Persisted, PersistedUnit, Shared, UnitEntry, LOCK_FILE,
    STATE_FILE,
};
use crate::CoordError;

impl EmbeddedCoordinator {
    /// State in memory only, gone with the process.
    pub fn in_memory() -> EmbeddedCoordinator {
        Self::from_shared(Shared {
            units: HashMap::new(),
            gaps: BTreeMap::new(),
            registry: Registry::default(),
            backfills: BTreeMap::new(),
            views: None,
            replays: BTreeMap::new(),
            members: BTreeMap::new(),
            dir: None,
            _lock: None,
            changes: tokio::sync::watch::channel(0).0,
        })
    }

    /// State persisted in `dir` (created if missing). Fails if another process uses it.
    pub fn open(dir: &Path) -> Result<EmbeddedCoordinator, CoordError> {
        std::fs::create_dir_all(dir).map_err(|e| embedded_err(dir, e))?;
        let lock = File::create(dir.join(LOCK_FILE)).map_err(|e| embedded_err(dir, e))?;
        lock.try_lock().map_err(|_| {
            embedded_err(dir, "is in use by another process; the embedded backend serves one worker — use ZooKeeper for several")
        })?;
        let persisted: Persisted = match std::fs::read(dir.join(STATE_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| CoordError::Corrupt {
                path: dir.join(STATE_FILE).display().to_string(),
                source: e.into(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted::default(),
            Err(e) => return Err(embedded_err(dir, e)),
        };
        let units = persisted
            .units
            .into_iter()
            .map(|u| {
                (
                    u.unit,
                    UnitEntry {
                        epoch: u.epoch,
                        next_offset: u.next_offset,
                        holder: None,
                    },
                )
            })
            .collect();
        Ok(Self::from_shared(Shared {
            units,
            gaps: persisted.gaps,
            registry: Registry::from_persisted(persisted.registry),
            backfills: persisted.backfills,
            views: persisted.views,
            replays: persisted.replays,
            members: BTreeMap::new(),
            dir: Some(dir.to_path_buf()),
            _lock: Some(lock),
            changes: tokio::sync::watch::channel(0).0,
        }))
    }
}

impl Shared {
    pub(super) fn persist(&self) -> Result<(), CoordError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let mut units: Vec<PersistedUnit> = self
            .units
            .iter()
            .map(|(unit, e)| PersistedUnit {
                unit: unit.clone(),
                epoch: e.epoch,
                next_offset: e.next_offset,
            })
            .collect();
        units.sort_by(|a, b| a.unit.cmp(&b.unit));
        let state = Persisted {
            units,
            gaps: self.gaps.clone(),
            registry: self.registry.to_persisted(),
            backfills: self.backfills.clone(),
            views: self.views.clone(),
            replays: self.replays.clone(),
        };
        let bytes = serde_json::to_vec(&state).expect("state serializes");
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, dir.join(STATE_FILE))
        };
        write().map_err(|e| embedded_err(dir, e))
    }
}
