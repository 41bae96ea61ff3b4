//! The merge tests' machinery: `[merge]` settings in a deployment's config, the scopes as the
//! coordinator, `sluice scopes --json` and ZooKeeper itself hold them, part counts watched while
//! workers run, and the workers' "merged" log lines.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use sluice_coord::Coordinator;

use crate::{describe, load_config, registered, wait_until, zk_client, zk_root, Prepared};

/// Marks where a deployment's `[merge]` section starts: it is always the config's last.
const MERGE_MARK: &str =
    "\n# [merge] of the merge tests: everything below is replaced by set_merge\n";

impl Prepared {
    /// Sets the `[merge]` section to `settings` (TOML lines), replacing any set before.
    pub fn set_merge(&self, settings: &str) -> Result<()> {
        self.edit_config(|text| {
            let base = text
                .split(MERGE_MARK)
                .next()
                .unwrap_or_default()
                .to_string();
            format!("{base}{MERGE_MARK}[merge]\n{settings}\n")
        })?;
        load_config(&self.config).map(|_| ())
    }

    /// Sets the events table's `max_age_ms` (a test deployment flushes at 300 ms).
    pub fn set_flush_age(&self, ms: u64) -> Result<()> {
        let text = std::fs::read_to_string(&self.config)?;
        ensure!(
            text.contains("max_age_ms = 300 }"),
            "the config has no flush age of 300 ms to change"
        );
        self.edit_config(|t| t.replace("max_age_ms = 300 }", &format!("max_age_ms = {ms} }}")))
    }

    /// A coordination session of the deployment's config (closed by the caller).
    pub async fn coordinator(&self) -> Result<Arc<dyn Coordinator>> {
        let config = load_config(&self.config)?;
        Ok(sluice_worker::open_coordinator(&config.coordination).await?)
    }

    /// `sluice scopes --json`: every table's scopes.
    pub async fn scopes(&self) -> Result<Scopes> {
        let out = self.sluice(&["scopes", "--json"]).await?;
        Ok(Scopes(serde_json::from_slice(&out.stdout).with_context(
            || format!("sluice scopes --json printed {}", describe(&out)),
        )?))
    }

    /// Waits until merges have settled: no merge is planned in any scope of any table, no
    /// scope's merge lease is held, and (`retired`) no replaced object waits for its grace
    /// period any more. Returns the scopes then.
    pub async fn wait_merges_settled(&self, retired: bool, limit: Duration) -> Result<Scopes> {
        let coord = self.coordinator().await?;
        let tables: Vec<String> = load_config(&self.config)?
            .tables
            .iter()
            .map(|t| t.name.clone())
            .collect();
        let last: Arc<Mutex<Option<(Scopes, usize)>>> = Arc::default();
        let outcome = wait_until(
            limit,
            Duration::from_millis(250),
            "merges to settle",
            || {
                let (coord, tables, last) = (Arc::clone(&coord), tables.clone(), Arc::clone(&last));
                async move {
                    let scopes = self.scopes().await?;
                    let mut waiting = 0;
                    if retired {
                        for t in &tables {
                            waiting += coord.list_retired(t).await?.len();
                        }
                    }
                    let done = scopes.backlog() == 0 && scopes.merging() == 0 && waiting == 0;
                    *last.lock().unwrap() = Some((scopes, waiting));
                    Ok(done)
                }
            },
        )
        .await;
        coord.close().await?;
        let (scopes, waiting) = last.lock().unwrap().take().context("no scopes read")?;
        outcome.with_context(|| {
            format!(
                "backlog {} merges, {} merge leases held, {waiting} retired sets left: {}",
                scopes.backlog(),
                scopes.merging(),
                scopes.0
            )
        })?;
        Ok(scopes)
    }

    /// The part record znodes of each scope of `table`, counted in ZooKeeper itself: the
    /// children of `<root>/tables/<table>/parts/<encoded value>` (a value without `/`, `%` or
    /// control characters is its own znode name; `_` stands for the empty value).
    pub async fn record_znodes(&self, table: &str) -> Result<BTreeMap<String, usize>> {
        let client = zk_client().await?;
        let dir = format!("{}/tables/{table}/parts", zk_root(&self.topic));
        let mut counts = BTreeMap::new();
        for scope in client.list_children(&dir).await.context(dir.clone())? {
            let records = client.list_children(&format!("{dir}/{scope}")).await?;
            counts.insert(scope, records.len());
        }
        Ok(counts)
    }
}

/// What a crash in the middle of a merge can leave in storage besides committed parts.
#[derive(Debug, Clone)]
pub struct Leftovers {
    /// Objects nothing in the registry accounts for (neither a live part, sealed ones included,
    /// nor a current manifest, nor a replaced object in its grace period): orphans.
    pub unregistered: Vec<String>,
    /// Retired sets: replaced objects waiting for their grace period.
    pub retired_sets: usize,
    /// Objects of retired sets already deleted (a deletion that stopped half-way).
    pub retired_gone: usize,
}

impl Prepared {
    /// What storage holds besides the committed parts, as the registry tells it.
    pub async fn leftovers(&self) -> Result<Leftovers> {
        let config = load_config(&self.config)?;
        let (committed, objects) = registered(&config).await?;
        let stored = objects.list().await?;
        let known: BTreeSet<&str> = committed
            .parts
            .values()
            .flatten()
            .map(|p| p.path.as_str())
            .chain(committed.other_objects.iter().map(String::as_str))
            .collect();
        let coord = self.coordinator().await?;
        let mut retired = Vec::new();
        for t in &config.tables {
            retired.extend(coord.list_retired(&t.name).await?);
        }
        coord.close().await?;
        Ok(Leftovers {
            unregistered: stored
                .keys()
                .filter(|k| !known.contains(k.as_str()))
                .cloned()
                .collect(),
            retired_sets: retired.len(),
            retired_gone: retired
                .iter()
                .flat_map(|r| &r.paths)
                .filter(|p| !stored.contains_key(*p))
                .count(),
        })
    }
}

/// What `sluice scopes --json` printed.
#[derive(Debug, Clone)]
pub struct Scopes(pub Value);

impl Scopes {
    fn tables(&self) -> impl Iterator<Item = &Value> {
        self.0["tables"].as_array().into_iter().flatten()
    }

    /// The scopes of one table.
    pub fn of(&self, table: &str) -> Vec<&Value> {
        self.tables()
            .filter(|t| t["table"] == table)
            .flat_map(|t| t["partition_values"].as_array().into_iter().flatten())
            .collect()
    }

    fn all(&self) -> impl Iterator<Item = &Value> {
        self.tables()
            .flat_map(|t| t["partition_values"].as_array().into_iter().flatten())
    }

    /// Merges planned now, over every table.
    pub fn backlog(&self) -> u64 {
        self.tables().filter_map(|t| t["backlog"].as_u64()).sum()
    }

    /// Scopes whose merge lease is held.
    pub fn merging(&self) -> usize {
        self.all().filter(|s| !s["merge_holder"].is_null()).count()
    }

    /// Live part records of every scope of `table`, by partition value.
    pub fn live(&self, table: &str) -> BTreeMap<String, u64> {
        self.of(table)
            .into_iter()
            .map(|s| {
                let value = s["partition_value"].as_str().unwrap_or_default();
                (value.to_string(), s["live_parts"].as_u64().unwrap_or(0))
            })
            .collect()
    }

    /// Live parts by level, over every scope of `table`.
    pub fn levels(&self, table: &str) -> BTreeMap<u32, u64> {
        let mut levels = BTreeMap::new();
        for s in self.of(table) {
            for (level, n) in s["levels"].as_object().into_iter().flatten() {
                let level: u32 = level.parse().unwrap_or(u32::MAX);
                *levels.entry(level).or_default() += n.as_u64().unwrap_or(0);
            }
        }
        levels
    }
}

/// The most part records the scopes of each table held, sampled from the coordinator while
/// workers run.
#[derive(Debug, Default, Clone)]
pub struct Watched {
    pub samples: usize,
    /// The most live records one scope held, by table.
    pub most: BTreeMap<String, usize>,
    /// The most live records one sealed scope held beside its manifest, by table.
    pub most_beside_manifest: BTreeMap<String, usize>,
}

/// Samples every scope's live part count in the background until stopped.
pub struct ScopeWatch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<Watched>>,
}

impl ScopeWatch {
    pub async fn start(d: &Prepared, tables: &[&str], every: Duration) -> Result<ScopeWatch> {
        let coord = d.coordinator().await?;
        let tables: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut watched = Watched::default();
            let outcome = async {
                while !stopped.load(Ordering::SeqCst) {
                    for t in &tables {
                        for s in coord.list_scopes(t).await? {
                            let most = watched.most.entry(t.clone()).or_default();
                            *most = (*most).max(s.live_parts);
                            if s.state.sealed.is_some() {
                                let most =
                                    watched.most_beside_manifest.entry(t.clone()).or_default();
                                *most = (*most).max(s.live_parts);
                            }
                        }
                    }
                    watched.samples += 1;
                    tokio::time::sleep(every).await;
                }
                Ok::<_, anyhow::Error>(())
            }
            .await;
            coord.close().await?;
            outcome.map(|()| watched)
        });
        Ok(ScopeWatch { stop, task })
    }

    pub async fn stop(self) -> Result<Watched> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await?
    }
}

/// One "merged" line of a worker's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    pub table: String,
    pub value: String,
    pub level: u32,
    pub inputs: u64,
    /// The policy's rule: `Level`, `Urgent` or `Final`.
    pub reason: String,
}

/// The merges a worker's log reports, in order.
pub fn merged_lines(log: &str) -> Vec<Merged> {
    log.lines()
        .filter_map(|line| {
            let (_, fields) = line.split_once(" merged ")?;
            let field = |name: &str| {
                fields
                    .split_whitespace()
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            };
            Some(Merged {
                table: field("table")?.to_string(),
                value: field("value")?.to_string(),
                level: field("level")?.parse().ok()?,
                inputs: field("inputs")?.parse().ok()?,
                reason: field("reason")?.to_string(),
            })
        })
        .collect()
}

/// Every scope of `table` ends as the level rule leaves it once merges have caught up. Each
/// part of level k holds `fan_in^k` flushed parts, and every level below `max_rewrites` keeps
/// fewer than `fan_in` parts, so the parts per level are the digits of the flushed count in base
/// `fan_in` (the top level taking the rest): at most `(fan_in - 1) * max_rewrites` parts plus
/// the flushed count over `fan_in^max_rewrites`. The flushed parts of a scope are its live parts
/// plus what each logged merge removed (inputs - 1). Returns the largest scope's (live, bound).
pub fn check_final_bound(
    table: &str,
    scopes: &Scopes,
    merges: &[Merged],
    fan_in: u64,
    max_rewrites: u32,
) -> Result<(u64, u64)> {
    let mut largest = (0, 0);
    for s in scopes.of(table) {
        let value = s["partition_value"].as_str().unwrap_or_default();
        let live = s["live_parts"].as_u64().unwrap_or(0);
        let removed: u64 = merges
            .iter()
            .filter(|m| m.table == table && m.value == value)
            .map(|m| m.inputs - 1)
            .sum();
        let flushed = live + removed;
        let top = flushed / fan_in.pow(max_rewrites);
        let bound = (fan_in - 1) * u64::from(max_rewrites) + top;
        let digits: BTreeMap<u32, u64> = (0..max_rewrites)
            .map(|k| (k, flushed / fan_in.pow(k) % fan_in))
            .chain([(max_rewrites, top)])
            .filter(|(_, n)| *n > 0)
            .collect();
        let levels: BTreeMap<u32, u64> = s["levels"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, n)| Ok((k.parse()?, n.as_u64().unwrap_or(0))))
            .collect::<Result<_>>()?;
        println!(
            "{table} {value:?}: {flushed} parts flushed, {live} live at the end, by level {levels:?}; bound {bound}"
        );
        ensure!(
            levels == digits && live <= bound,
            "{table} {value:?}: {live} live parts by level {levels:?}; once merges caught up, {flushed} flushed parts leave {digits:?} (at most {bound})"
        );
        largest = largest.max((live, bound));
    }
    Ok(largest)
}
