//! The embedded backend's part registry: scopes with their records and state, and retired
//! object sets. Every change checks everything first and then applies all of it, so a refused
//! change leaves nothing behind.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::{
    CoordError, MergeLease, PartRecord, Resealed, Retired, ScopeListing, ScopeState, ScopeSummary,
    SealedManifest,
};

/// One scope: its state, a generation bumped by every merge lease, swap and seal, and its
/// records by name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Scope {
    pub(super) table: String,
    pub(super) value: String,
    pub(super) state: ScopeState,
    pub(super) generation: i64,
    pub(super) records: BTreeMap<String, PartRecord>,
}

/// Scopes by (table, value) and retired sets by (table, name); persisted as lists, since JSON
/// object keys must be strings.
#[derive(Debug, Clone, Default)]
pub(super) struct Registry {
    scopes: BTreeMap<(String, String), Scope>,
    retired: BTreeMap<(String, String), Retired>,
    /// Live merge leases: (table, value) -> (session, worker, epoch).
    holders: HashMap<(String, String), (u64, String, u64)>,
}

/// The registry as the state file holds it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct PersistedRegistry {
    #[serde(default)]
    scopes: Vec<Scope>,
    #[serde(default)]
    retired: Vec<Retired>,
}

fn key(table: &str, value: &str) -> (String, String) {
    (table.to_string(), value.to_string())
}

fn scope_name(table: &str, value: &str) -> String {
    format!("table {table} at {value:?}")
}

impl Registry {
    pub(super) fn from_persisted(p: PersistedRegistry) -> Registry {
        Registry {
            scopes: p
                .scopes
                .into_iter()
                .map(|s| (key(&s.table, &s.value), s))
                .collect(),
            retired: p
                .retired
                .into_iter()
                .map(|r| (key(&r.table, &r.name), r))
                .collect(),
            holders: HashMap::new(),
        }
    }

    pub(super) fn to_persisted(&self) -> PersistedRegistry {
        PersistedRegistry {
            scopes: self.scopes.values().cloned().collect(),
            retired: self.retired.values().cloned().collect(),
        }
    }

    fn scope_mut(&mut self, table: &str, value: &str) -> &mut Scope {
        self.scopes
            .entry(key(table, value))
            .or_insert_with(|| Scope {
                table: table.to_string(),
                value: value.to_string(),
                ..Scope::default()
            })
    }

    /// Registers the parts of a commit, refusing the whole if one is registered already.
    pub(super) fn add(&mut self, at: &str, parts: &[PartRecord]) -> Result<(), CoordError> {
        for part in parts {
            let exists = self
                .scopes
                .get(&key(&part.table, &part.partition_value))
                .is_some_and(|s| s.records.contains_key(&part.name()));
            if exists {
                return Err(CoordError::Conflict {
                    at: at.to_string(),
                    what: format!("part {} is already registered", part.path),
                    source: None,
                });
            }
        }
        for part in parts {
            self.scope_mut(&part.table, &part.partition_value)
                .records
                .insert(part.name(), part.clone());
        }
        Ok(())
    }

    pub(super) fn list_parts(&self, table: &str) -> Vec<PartRecord> {
        self.scopes
            .values()
            .filter(|s| s.table == table)
            .flat_map(|s| s.records.values().cloned())
            .collect()
    }

    pub(super) fn list_scopes(&self, table: &str) -> Vec<ScopeSummary> {
        self.scopes
            .values()
            .filter(|s| s.table == table)
            .map(|s| ScopeSummary {
                partition_value: s.value.clone(),
                live_parts: s.records.len(),
                state: s.state.clone(),
            })
            .collect()
    }

    pub(super) fn read_scope(&self, table: &str, value: &str) -> ScopeListing {
        let scope = self.scopes.get(&key(table, value));
        ScopeListing {
            table: table.to_string(),
            partition_value: value.to_string(),
            state: scope.map(|s| s.state.clone()).unwrap_or_default(),
            generation: scope.map_or(0, |s| s.generation),
            parts: scope.map_or_else(Vec::new, |s| s.records.values().cloned().collect()),
            merge_holder: self.holders.get(&key(table, value)).map(|h| h.1.clone()),
        }
    }

    pub(super) fn acquire(
        &mut self,
        session: u64,
        table: &str,
        value: &str,
        worker_id: &str,
    ) -> Result<MergeLease, CoordError> {
        if let Some((holder_session, holder, epoch)) = self.holders.get(&key(table, value)) {
            // Already this session's: returned as it is, as the ZooKeeper backend does.
            if *holder_session == session {
                return Ok(MergeLease {
                    table: table.to_string(),
                    partition_value: value.to_string(),
                    worker_id: holder.clone(),
                    epoch: *epoch,
                    token: *epoch as i64,
                });
            }
            return Err(CoordError::ScopeLeaseHeld {
                table: table.to_string(),
                value: value.to_string(),
                holder: holder.clone(),
            });
        }
        let scope = self.scope_mut(table, value);
        scope.state.merge_epoch += 1;
        scope.generation += 1;
        let epoch = scope.state.merge_epoch;
        self.holders
            .insert(key(table, value), (session, worker_id.to_string(), epoch));
        Ok(MergeLease {
            table: table.to_string(),
            partition_value: value.to_string(),
            worker_id: worker_id.to_string(),
            epoch,
            token: epoch as i64,
        })
    }

    pub(super) fn release(&mut self, session: u64, lease: &MergeLease) {
        let k = key(&lease.table, &lease.partition_value);
        if self
            .holders
            .get(&k)
            .is_some_and(|(s, _, e)| *s == session && *e == lease.epoch)
        {
            self.holders.remove(&k);
        }
    }

    /// Frees every merge lease a session holds.
    pub(super) fn end_session(&mut self, session: u64) {
        self.holders.retain(|_, (s, _, _)| *s != session);
    }

    /// Checks that `lease` is the scope's current merge lease, held by `session`.
    pub(super) fn check_lease(&self, session: u64, lease: &MergeLease) -> Result<(), CoordError> {
        let k = key(&lease.table, &lease.partition_value);
        let current = self
            .holders
            .get(&k)
            .is_some_and(|(s, _, e)| *s == session && *e == lease.epoch)
            && self
                .scopes
                .get(&k)
                .is_some_and(|s| s.state.merge_epoch == lease.epoch);
        if current {
            Ok(())
        } else {
            Err(CoordError::ScopeLeaseLost {
                table: lease.table.clone(),
                value: lease.partition_value.clone(),
                epoch: lease.epoch,
            })
        }
    }

    /// Checks that every record of `parts` is registered in the lease's scope.
    fn check_present(&self, lease: &MergeLease, parts: &[PartRecord]) -> Result<(), CoordError> {
        let scope = self.scopes.get(&key(&lease.table, &lease.partition_value));
        for p in parts {
            if !scope.is_some_and(|s| s.records.contains_key(&p.name())) {
                return Err(CoordError::Conflict {
                    at: scope_name(&lease.table, &lease.partition_value),
                    what: format!(
                        "part {} is no longer registered (merged or sealed already)",
                        p.path
                    ),
                    source: None,
                });
            }
        }
        Ok(())
    }

    fn check_retired_new(&self, retired: &Retired) -> Result<(), CoordError> {
        if self
            .retired
            .contains_key(&key(&retired.table, &retired.name))
        {
            return Err(CoordError::Conflict {
                at: scope_name(&retired.table, &retired.partition_value),
                what: format!("retired set {} already exists", retired.name),
                source: None,
            });
        }
        Ok(())
    }

    pub(super) fn swap(
        &mut self,
        session: u64,
        lease: &MergeLease,
        inputs: &[PartRecord],
        output: &PartRecord,
        retired: &Retired,
    ) -> Result<(), CoordError> {
        self.check_lease(session, lease)?;
        self.check_present(lease, inputs)?;
        self.check_retired_new(retired)?;
        let scope = self.scope_mut(&lease.table, &lease.partition_value);
        if scope.records.contains_key(&output.name()) {
            return Err(CoordError::Conflict {
                at: scope_name(&lease.table, &lease.partition_value),
                what: format!("part {} is already registered", output.path),
                source: None,
            });
        }
        for p in inputs {
            scope.records.remove(&p.name());
        }
        scope.records.insert(output.name(), output.clone());
        scope.generation += 1;
        self.retired
            .insert(key(&retired.table, &retired.name), retired.clone());
        Ok(())
    }

    pub(super) fn seal(
        &mut self,
        session: u64,
        lease: &MergeLease,
        parts: &[PartRecord],
        manifest: &SealedManifest,
        retired: Option<&Retired>,
    ) -> Result<(), CoordError> {
        self.check_lease(session, lease)?;
        self.check_present(lease, parts)?;
        if let Some(r) = retired {
            self.check_retired_new(r)?;
        }
        let scope = self.scope_mut(&lease.table, &lease.partition_value);
        for p in parts {
            scope.records.remove(&p.name());
        }
        scope.state.sealed = Some(manifest.clone());
        scope.generation += 1;
        if let Some(r) = retired {
            self.retired.insert(key(&r.table, &r.name), r.clone());
        }
        Ok(())
    }

    /// A replay's swap or rollback: under every lease of `leases`, whose scopes must hold every
    /// record of `remove` and `add`, removes `remove` (all still registered), registers `add`,
    /// forgets `forget` and records `sets`; all of it or, on an error, nothing.
    pub(super) fn replace(
        &mut self,
        session: u64,
        leases: &[MergeLease],
        (remove, add): (&[PartRecord], &[PartRecord]),
        (forget, sets): (&[Retired], &[Retired]),
        resealed: &[Resealed],
    ) -> Result<(), CoordError> {
        for lease in leases {
            self.check_lease(session, lease)?;
        }
        for r in resealed {
            let current = self
                .scopes
                .get(&key(&r.table, &r.partition_value))
                .and_then(|s| s.state.sealed.as_ref());
            if current != Some(&r.replaced) {
                return Err(CoordError::Conflict {
                    at: scope_name(&r.table, &r.partition_value),
                    what: format!("the scope no longer points at manifest {}", r.replaced.path),
                    source: None,
                });
            }
        }
        let sealed_scopes = resealed.iter().map(|r| (&r.table, &r.partition_value));
        for (table, value) in remove
            .iter()
            .chain(add)
            .map(|p| (&p.table, &p.partition_value))
            .chain(sealed_scopes)
        {
            let leased = leases
                .iter()
                .any(|l| &l.table == table && &l.partition_value == value);
            if !leased {
                return Err(CoordError::Conflict {
                    at: scope_name(table, value),
                    what: "a part is in a scope the replay holds no lease of".to_string(),
                    source: None,
                });
            }
        }
        for lease in leases {
            let mine = |p: &&PartRecord| {
                p.table == lease.table && p.partition_value == lease.partition_value
            };
            let gone: Vec<PartRecord> = remove.iter().filter(mine).cloned().collect();
            self.check_present(lease, &gone)?;
        }
        for p in add {
            let exists = self
                .scopes
                .get(&key(&p.table, &p.partition_value))
                .is_some_and(|s| s.records.contains_key(&p.name()));
            if exists {
                return Err(CoordError::Conflict {
                    at: scope_name(&p.table, &p.partition_value),
                    what: format!("part {} is registered already", p.path),
                    source: None,
                });
            }
        }
        for r in sets {
            self.check_retired_new(r)?;
        }
        for p in remove {
            self.scope_mut(&p.table, &p.partition_value)
                .records
                .remove(&p.name());
        }
        for p in add {
            self.scope_mut(&p.table, &p.partition_value)
                .records
                .insert(p.name(), p.clone());
        }
        for lease in leases {
            self.scope_mut(&lease.table, &lease.partition_value)
                .generation += 1;
        }
        for r in resealed {
            self.scope_mut(&r.table, &r.partition_value).state.sealed = r.manifest.clone();
        }
        for r in forget {
            self.retired.remove(&key(&r.table, &r.name));
        }
        for r in sets {
            self.retired.insert(key(&r.table, &r.name), r.clone());
        }
        Ok(())
    }

    /// Forgets retired sets (a replay collected).
    pub(super) fn forget_sets(&mut self, sets: &[Retired]) {
        for r in sets {
            self.retired.remove(&key(&r.table, &r.name));
        }
    }

    pub(super) fn set_replicas(&mut self, part: &PartRecord, replicas: &[String]) -> bool {
        let record = self
            .scopes
            .get_mut(&key(&part.table, &part.partition_value))
            .and_then(|s| s.records.get_mut(&part.name()));
        match record {
            Some(r) => {
                r.replicas = replicas.to_vec();
                true
            }
            None => false,
        }
    }

    pub(super) fn list_retired(&self, table: &str) -> Vec<Retired> {
        self.retired
            .values()
            .filter(|r| r.table == table)
            .cloned()
            .collect()
    }

    pub(super) fn forget_retired(&mut self, retired: &Retired) {
        self.retired.remove(&key(&retired.table, &retired.name));
    }
}
