//! The exactly-once checker: reads every committed part back from storage and holds it to the
//! product's promise for the [`fixture`](crate::fixture) events that were produced.
//!
//! * every well-formed event is in exactly one row of the events table, and every column of that
//!   row equals what the event's sequence number says ([`fixture::row`]);
//! * every malformed event is in exactly one quarantine row, with its reason, its raw bytes, and
//!   the topic, partition and offset it was read from;
//! * every part lies in one partition value, is sorted by the sorting key, registers the rows it
//!   holds and the size it has, is named after its unit, offsets, lease epoch and definition
//!   version, and holds only events from the offset range its record claims;
//! * the committed offsets are at the end of every partition;
//! * storage holds nothing but committed parts, under any table's prefix (views' included).
//!
//! Parts and objects are read with `parquet` and `object_store` directly, not through the
//! product's readers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type, TimestampMillisecondType, UInt64Type};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sluice_coord::{PartKind, PartRecord};

use crate::fixture::{self, day_of, Event, Expect};

mod registry;

pub use registry::Committed;

/// The table the fixture events land in.
pub const EVENTS_TABLE: &str = "events";

/// What a test produced: the events, and (partition, offset) -> seq as the broker placed them.
#[derive(Debug, Clone, Copy)]
pub struct Produced<'a> {
    pub events: &'a [Event],
    pub located: &'a HashMap<(i32, i64), u64>,
    /// For events a backfill loaded from snapshot files: (file as the manifest names it, line
    /// number from 1) -> seq, which is where a backfill's quarantine rows say they came from.
    pub backfilled: Option<&'a HashMap<(String, i64), u64>>,
}

impl Produced<'_> {
    /// The end offset of every partition something was produced to.
    pub fn ends(&self) -> BTreeMap<i32, i64> {
        let mut ends = BTreeMap::new();
        for &(p, o) in self.located.keys() {
            let e = ends.entry(p).or_insert(0);
            *e = (*e).max(o + 1);
        }
        ends
    }
}

/// A storage root, read with `object_store` itself.
#[derive(Debug, Clone)]
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    root: Path,
}

impl Objects {
    pub fn new(store: Arc<dyn ObjectStore>, root: Path) -> Objects {
        Objects { store, root }
    }

    fn full(&self, rel: &str) -> Path {
        rel.split('/')
            .filter(|s| !s.is_empty())
            .fold(self.root.clone(), |p, s| p.join(s))
    }

    /// An object's bytes.
    pub async fn get(&self, rel: &str) -> Result<bytes::Bytes> {
        Ok(self
            .store
            .get(&self.full(rel))
            .await
            .with_context(|| format!("reading {rel}"))?
            .bytes()
            .await?)
    }

    /// The Parquet record batches of an object.
    pub async fn batches(&self, rel: &str) -> Result<Vec<RecordBatch>> {
        Self::decode(rel, self.get(rel).await?)
    }

    fn decode(rel: &str, bytes: bytes::Bytes) -> Result<Vec<RecordBatch>> {
        ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.build())
            .with_context(|| format!("{rel} is not a Parquet file"))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("decoding {rel}"))
    }

    /// Every object under the root: path relative to it, and size.
    pub async fn list(&self) -> Result<BTreeMap<String, u64>> {
        let metas: Vec<_> = self.store.list(Some(&self.root)).try_collect().await?;
        Ok(metas
            .into_iter()
            .map(|m| {
                let rel = match m.location.prefix_match(&self.root) {
                    Some(parts) => parts
                        .map(|p| p.as_ref().to_string())
                        .collect::<Vec<_>>()
                        .join("/"),
                    None => m.location.to_string(),
                };
                (rel, m.size)
            })
            .collect())
    }
}

/// Runs every check; fails with the first problems found.
pub async fn verify(
    committed: &Committed,
    objects: &Objects,
    produced: Produced<'_>,
) -> Result<()> {
    verify_with_nulled(committed, objects, produced, &HashSet::new()).await
}

/// [`verify`] of a table ingested for a while with a configuration whose `duration_ms` column
/// read a field the events do not have: the rows of the events in `nulled` must hold null
/// there, every other column as [`verify`] says.
pub async fn verify_with_nulled(
    committed: &Committed,
    objects: &Objects,
    produced: Produced<'_>,
    nulled: &HashSet<u64>,
) -> Result<()> {
    let mut seen = Seen::default();
    for (table, parts) in &committed.parts {
        for part in parts {
            let batches = check_part(objects, table, part).await?;
            if table == EVENTS_TABLE {
                match part.kind {
                    PartKind::Data => {
                        check_event_rows(part, &batches, produced, nulled, &mut seen)?
                    }
                    PartKind::Quarantine => {
                        check_quarantined_events(&batches, produced, &mut seen)?
                    }
                }
            }
        }
    }
    seen.exactly_once(produced)?;
    check_offsets(committed, produced)?;
    check_no_strays(committed, objects).await
}

/// What every part must satisfy whatever its table: its name, its size, its row count, one
/// partition value, and quarantine rows from its own unit and offset range.
async fn check_part(objects: &Objects, table: &str, part: &PartRecord) -> Result<Vec<RecordBatch>> {
    ensure!(
        part.table == table,
        "part {} of table {table} says table {}",
        part.path,
        part.table
    );
    registry::check_name(table, part)?;
    let bytes = objects.get(&part.path).await?;
    registry::check_checksum(part, &bytes)?;
    let batches = Objects::decode(&part.path, bytes)?;
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    ensure!(
        rows as u64 == part.rows,
        "part {} registers {} rows but holds {rows}",
        part.path,
        part.rows
    );
    ensure!(rows > 0, "part {} is empty", part.path);
    if part.kind == PartKind::Quarantine {
        ensure!(
            part.partition_value.is_empty(),
            "quarantine part {} has partition value {}",
            part.path,
            part.partition_value
        );
        for b in &batches {
            let topic = b
                .column_by_name("topic")
                .context("topic column")?
                .as_string::<i32>();
            let partition = column::<Int32Type>(b, "partition")?;
            let offset = column::<Int64Type>(b, "offset")?;
            for i in 0..b.num_rows() {
                // A chained view's failures have no offset: their input was another view's row.
                let at = (!offset.is_null(i)).then(|| offset.value(i));
                // A backfill's quarantine rows name the snapshot file and line instead; the
                // events' check matches them to what the test wrote there.
                let from_file = registry::is_backfill(part) && partition.value(i) == -1;
                ensure!(
                    from_file || registry::covers(part, topic.value(i), partition.value(i), at),
                    "quarantine part {} (spans {:?}) holds a row of {}/{} offset {at:?}",
                    part.path,
                    registry::spans(part),
                    topic.value(i),
                    partition.value(i)
                );
            }
        }
    }
    Ok(batches)
}

fn column<'b, T: arrow::datatypes::ArrowPrimitiveType>(
    b: &'b RecordBatch,
    name: &str,
) -> Result<&'b arrow::array::PrimitiveArray<T>> {
    b.column_by_name(name)
        .with_context(|| format!("no {name} column"))?
        .as_primitive_opt::<T>()
        .with_context(|| {
            format!(
                "column {name} has type {:?}",
                b.column_by_name(name).map(|c| c.data_type().clone())
            )
        })
}

/// How often each event was found as a row and as a quarantine row.
#[derive(Default)]
struct Seen {
    rows: HashMap<u64, usize>,
    quarantined: HashMap<u64, usize>,
}

impl Seen {
    fn exactly_once(&self, produced: Produced<'_>) -> Result<()> {
        let mut problems = Vec::new();
        for e in produced.events {
            let r = self.rows.get(&e.seq).copied().unwrap_or(0);
            let q = self.quarantined.get(&e.seq).copied().unwrap_or(0);
            let ok = match e.expect {
                Expect::Row => r == 1 && q == 0,
                Expect::Quarantine(_) => r == 0 && q == 1,
            };
            if !ok {
                problems.push(format!(
                    "seq {} ({:?}): {r} rows, {q} quarantine rows",
                    e.seq, e.expect
                ));
            }
        }
        let known: HashSet<u64> = produced.events.iter().map(|e| e.seq).collect();
        let unknown: Vec<_> = self.rows.keys().filter(|s| !known.contains(s)).collect();
        if !unknown.is_empty() {
            problems.push(format!("rows with seqs never produced: {unknown:?}"));
        }
        if !problems.is_empty() {
            bail!(
                "exactly-once violated for {} events, first: {:?}",
                problems.len(),
                &problems[..problems.len().min(10)]
            );
        }
        Ok(())
    }
}

/// Every row of a data part of the events table: every column equal to its event's, the part's
/// day, the part's unit and offset range, and sorted by (country, path, ts).
fn check_event_rows(
    part: &PartRecord,
    batches: &[RecordBatch],
    produced: Produced<'_>,
    nulled: &HashSet<u64>,
    seen: &mut Seen,
) -> Result<()> {
    let position: HashMap<u64, (i32, i64)> = produced
        .located
        .iter()
        .map(|(&at, &seq)| (seq, at))
        .collect();
    let mut previous: Option<(String, String, i64)> = None;
    for b in batches {
        let seq = column::<UInt64Type>(b, "seq")?;
        let ts = column::<TimestampMillisecondType>(b, "ts")?;
        let user_id = column::<Int64Type>(b, "user_id")?;
        let duration = column::<Float64Type>(b, "duration_ms")?;
        let country = b
            .column_by_name("country")
            .context("country column")?
            .as_string::<i32>();
        let path = b
            .column_by_name("path")
            .context("path column")?
            .as_string::<i32>();
        let ok = b.column_by_name("ok").context("ok column")?.as_boolean();
        for i in 0..b.num_rows() {
            let s = seq.value(i);
            let want = fixture::row(s);
            let expected = (
                want.ts,
                Some(want.user_id),
                want.country,
                Some(want.path),
                (!nulled.contains(&s)).then_some(want.duration_ms),
                Some(want.ok),
            );
            let got = (
                ts.value(i),
                (!user_id.is_null(i)).then(|| user_id.value(i)),
                country.value(i),
                (!path.is_null(i)).then(|| path.value(i)),
                (!duration.is_null(i)).then(|| duration.value(i)),
                (!ok.is_null(i)).then(|| ok.value(i)),
            );
            ensure!(
                got == expected,
                "part {}: the row of seq {s} holds (ts, user_id, country, path, duration_ms, ok) = {got:?}, its event says {expected:?}",
                part.path
            );
            ensure!(
                day_of(want.ts) == part.partition_value,
                "part {} (partition value {}) holds seq {s} of day {}",
                part.path,
                part.partition_value,
                day_of(want.ts)
            );
            let at = position.get(&s).with_context(|| {
                format!("part {} holds seq {s}, which was never produced", part.path)
            })?;
            ensure!(
                registry::covers_partition(part, at.0, at.1),
                "part {} (spans {:?}) holds seq {s}, produced at {}/{}",
                part.path,
                registry::spans(part),
                at.0,
                at.1
            );
            let key = (want.country.to_string(), want.path.to_string(), want.ts);
            ensure!(
                previous.as_ref().is_none_or(|p| *p <= key),
                "part {} is not sorted by (country, path, ts) at seq {s}",
                part.path
            );
            previous = Some(key);
            *seen.rows.entry(s).or_default() += 1;
        }
    }
    Ok(())
}

/// Every quarantine row of the events table: an event that was produced malformed, with its
/// reason and its raw bytes, and no view's name.
fn check_quarantined_events(
    batches: &[RecordBatch],
    produced: Produced<'_>,
    seen: &mut Seen,
) -> Result<()> {
    let by_seq: HashMap<u64, &Event> = produced.events.iter().map(|e| (e.seq, e)).collect();
    for b in batches {
        let partition = column::<Int32Type>(b, "partition")?;
        let offset = column::<Int64Type>(b, "offset")?;
        let reason = b
            .column_by_name("reason")
            .context("reason column")?
            .as_string::<i32>();
        let raw = b
            .column_by_name("raw")
            .context("raw column")?
            .as_binary::<i32>();
        let view = b.column_by_name("view_name").context("view_name column")?;
        let topic = b
            .column_by_name("topic")
            .context("topic column")?
            .as_string::<i32>();
        for i in 0..b.num_rows() {
            let at = (partition.value(i), offset.value(i));
            let seq = if at.0 == -1 {
                let line = (topic.value(i).to_string(), at.1);
                *produced
                    .backfilled
                    .and_then(|b| b.get(&line))
                    .with_context(|| {
                        format!(
                            "quarantine row from snapshot file {} line {} matches no backfilled event",
                            line.0, line.1
                        )
                    })?
            } else {
                *produced.located.get(&at).with_context(|| {
                    format!(
                        "quarantine row at {}/{} matches no produced event",
                        at.0, at.1
                    )
                })?
            };
            let event = by_seq[&seq];
            ensure!(
                matches!(event.expect, Expect::Quarantine(r) if r == reason.value(i)),
                "seq {seq} quarantined as {}, expected {:?}",
                reason.value(i),
                event.expect
            );
            ensure!(
                raw.value(i) == event.payload.as_deref().unwrap_or_default(),
                "seq {seq}: quarantined raw bytes differ from what was produced"
            );
            ensure!(view.is_null(i), "seq {seq}: a decode failure names a view");
            *seen.quarantined.entry(seq).or_default() += 1;
        }
    }
    Ok(())
}

fn check_offsets(committed: &Committed, produced: Produced<'_>) -> Result<()> {
    for (p, end) in produced.ends() {
        let got = committed.offsets.get(&p).copied().flatten();
        ensure!(
            got == Some(end),
            "partition {p}: committed offset {got:?}, expected {end}"
        );
    }
    Ok(())
}

/// Storage holds exactly the committed parts of every table, each of its registered size.
async fn check_no_strays(committed: &Committed, objects: &Objects) -> Result<()> {
    let stored = objects.list().await?;
    let registered: BTreeMap<&str, u64> = committed
        .parts
        .values()
        .flatten()
        .map(|p| (p.path.as_str(), p.bytes))
        .collect();
    // Objects a merge or a seal replaced stay until their grace period ends, and a sealed
    // scope's manifest is an object too: both are accounted for by the registry.
    let strays: Vec<&String> = stored
        .keys()
        .filter(|k| !registered.contains_key(k.as_str()) && !committed.other_objects.contains(*k))
        .collect();
    ensure!(
        strays.is_empty(),
        "objects in storage that are neither committed parts, nor replaced ones in their grace period, nor manifests: {strays:?}"
    );
    for (path, bytes) in &registered {
        let size = stored
            .get(*path)
            .with_context(|| format!("committed part {path} is missing from storage"))?;
        ensure!(
            size == bytes,
            "part {path} registers {bytes} bytes, storage holds {size}"
        );
    }
    Ok(())
}
