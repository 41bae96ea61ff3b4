//! The conversion path alone: NDJSON events through the worker's own decode
//! ([`sluice_decode::TableBuffer`]), sort, split and Parquet encode ([`sluice_sink::build_parts`])
//! and upload ([`sluice_sink::Storage`]), with no Kafka and no coordination in the way.
//!
//! The file is cut into one contiguous byte range per thread (at line ends); each thread deals
//! its lines round-robin over its share of `partitions` simulated source partitions, as a
//! topic's partitions would arrive at a worker, and flushes a partition's buffer when the
//! table's flush policy says so (rows or bytes; age means nothing here) and at the end.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};

/// Bytes read per read call.
const READ_BUFFER: usize = 4 << 20;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sluice_config::{StorageConfig, TableConfig};
use sluice_coord::UnitId;
use sluice_decode::TableBuffer;
use sluice_sink::{build_parts, FlushSource, Storage};
use sluice_telemetry::process::ProcessUsage;
use sluice_transform::Views;

/// What to convert, and how.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    pub input: PathBuf,
    pub table: TableConfig,
    /// The views over the table, run on every flush as the worker runs them.
    pub views: Option<Arc<Views>>,
    /// Threads working side by side, each on its own byte range of the input.
    pub threads: usize,
    /// Simulated source partitions, dealt out over the threads (at least one each).
    pub partitions: usize,
    /// Where the parts go: a `file://` directory (emptied first) or `s3://`.
    pub storage: StorageConfig,
}

/// What a run did and what it cost.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Figures {
    pub events: u64,
    /// JSON bytes of the events, without line ends.
    pub bytes: u64,
    pub rows: u64,
    pub quarantined: u64,
    pub parts: u64,
    pub part_bytes: u64,
    pub wall_s: f64,
    /// CPU seconds of the whole process (all threads), user plus system.
    pub cpu_s: f64,
    pub peak_rss_bytes: u64,
}

impl Figures {
    pub fn events_per_s(&self) -> f64 {
        self.events as f64 / self.wall_s.max(1e-9)
    }
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.wall_s.max(1e-9)
    }
    pub fn cpu_s_per_million(&self) -> f64 {
        self.cpu_s / (self.events.max(1) as f64 / 1e6)
    }

    /// Adds another run's counts (events, bytes, rows, quarantined, parts, part bytes).
    pub fn add(&mut self, other: &Figures) {
        self.events += other.events;
        self.bytes += other.bytes;
        self.rows += other.rows;
        self.quarantined += other.quarantined;
        self.parts += other.parts;
        self.part_bytes += other.part_bytes;
    }
}

/// Runs the conversion and measures it (wall time from the first read to the last upload).
pub fn convert(opts: &ConvertOptions) -> Result<Figures> {
    if opts.threads == 0 || opts.partitions < opts.threads {
        bail!(
            "need at least one thread and one partition per thread (threads {}, partitions {})",
            opts.threads,
            opts.partitions
        );
    }
    let len = std::fs::metadata(&opts.input)
        .with_context(|| format!("cannot read {}", opts.input.display()))?
        .len();
    let ranges = line_ranges(&opts.input, len, opts.threads)?;
    if let Some(dir) = opts.storage.url.strip_prefix("file://") {
        let _ = std::fs::remove_dir_all(dir);
    }
    let storage = Storage::open(&opts.storage)?;
    let before = ProcessUsage::now().unwrap_or_default();
    let started = Instant::now();
    let mut total = Figures::default();
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = ranges
            .iter()
            .enumerate()
            .map(|(t, &(start, end))| {
                // Thread t owns partitions t, t + threads, t + 2 * threads, ...
                let partitions: Vec<i32> = (t..opts.partitions)
                    .step_by(opts.threads)
                    .map(|p| p as i32)
                    .collect();
                let storage = storage.clone();
                scope.spawn(move || convert_range(opts, &storage, start, end, &partitions))
            })
            .collect();
        for h in handles {
            let f = h
                .join()
                .map_err(|_| anyhow::anyhow!("a conversion thread panicked"))??;
            total.add(&f);
        }
        Ok(())
    })?;
    total.wall_s = started.elapsed().as_secs_f64();
    let after = ProcessUsage::now().unwrap_or_default();
    total.cpu_s = after.cpu_s - before.cpu_s;
    total.peak_rss_bytes = after.peak_rss_bytes;
    Ok(total)
}

/// `threads` byte ranges of the file, each starting at a line start and ending at a line end.
fn line_ranges(path: &Path, len: u64, threads: usize) -> Result<Vec<(u64, u64)>> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut cuts = vec![0u64];
    for t in 1..threads as u64 {
        let guess = (len * t / threads as u64).max(*cuts.last().unwrap_or(&0));
        file.seek(SeekFrom::Start(guess))?;
        // The cut goes right after the next newline at or after the guess.
        let mut reader = BufReader::new((&mut file).take(len - guess));
        let mut skipped = Vec::new();
        let n = reader.read_until(b'\n', &mut skipped)? as u64;
        cuts.push((guess + n).min(len));
    }
    cuts.push(len);
    Ok(cuts.windows(2).map(|w| (w[0], w[1])).collect())
}

struct Partition {
    unit: UnitId,
    buffer: TableBuffer,
    /// Offset of the next line dealt to this partition, and of the first one buffered.
    next_offset: i64,
    first_buffered: i64,
}

fn convert_range(
    opts: &ConvertOptions,
    storage: &Storage,
    start: u64,
    end: u64,
    partition_ids: &[i32],
) -> Result<Figures> {
    let table = &opts.table;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut partitions: Vec<Partition> = partition_ids
        .iter()
        .map(|&p| {
            let mut buffer = TableBuffer::new(table);
            if opts.views.is_some() {
                buffer.record_origins();
            }
            Partition {
                unit: UnitId::new(table.topic.clone().unwrap_or_else(|| table.name.clone()), p),
                buffer,
                next_offset: 0,
                first_buffered: 0,
            }
        })
        .collect();
    let mut file = File::open(&opts.input)?;
    file.seek(SeekFrom::Start(start))?;
    let mut reader = file.take(end - start);
    let mut figures = Figures::default();
    let mut next = 0usize;
    // Lines are cut in place in a large read buffer; only a line cut by the buffer's end is
    // carried over to the next read.
    let mut buf = vec![0u8; READ_BUFFER];
    let mut filled = 0usize;
    loop {
        let n = reader.read(&mut buf[filled..])?;
        filled += n;
        let at_end = n == 0;
        let mut line_start = 0;
        let mut lines: Vec<(usize, usize)> = Vec::new();
        for nl in memchr::memchr_iter(b'\n', &buf[..filled]) {
            lines.push((line_start, nl));
            line_start = nl + 1;
        }
        if at_end && line_start < filled {
            lines.push((line_start, filled));
            line_start = filled;
        }
        for (a, b) in lines {
            let line = &buf[a..b];
            figures.events += 1;
            figures.bytes += line.len() as u64;
            let p = &mut partitions[next];
            next = (next + 1) % partition_ids.len();
            if p.buffer.is_empty() {
                p.first_buffered = p.next_offset;
            }
            p.buffer.push(p.next_offset, None, Some(line));
            p.next_offset += 1;
            let due = p.buffer.rows() + p.buffer.quarantined() >= table.flush.max_rows
                || p.buffer.bytes() >= table.flush.max_bytes;
            if due {
                flush(opts, storage, &runtime, p, &mut figures)?;
            }
        }
        if at_end {
            break;
        }
        // Carry the partial line over; grow the buffer if one line fills it.
        buf.copy_within(line_start..filled, 0);
        filled -= line_start;
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
    }
    for p in &mut partitions {
        if !p.buffer.is_empty() {
            flush(opts, storage, &runtime, p, &mut figures)?;
        }
    }
    Ok(figures)
}

/// One partition's flush, as the worker does it: drain, views, sort and encode, upload.
fn flush(
    opts: &ConvertOptions,
    storage: &Storage,
    runtime: &tokio::runtime::Runtime,
    p: &mut Partition,
    figures: &mut Figures,
) -> Result<()> {
    let table = &opts.table;
    let source = FlushSource {
        unit: p.unit.clone(),
        first_offset: p.first_buffered,
        last_offset: p.next_offset - 1,
        lease_epoch: 1,
    };
    let drained = p.buffer.drain()?;
    figures.rows += drained.batch.num_rows() as u64;
    figures.quarantined += drained.quarantine.len() as u64;
    let mut parts = build_parts(table, &source, &drained.batch, &drained.quarantine)?;
    if let Some(views) = &opts.views {
        let outputs = views.apply(
            runtime.handle(),
            &table.name,
            &drained.batch,
            drained.origins.as_ref(),
        );
        for out in outputs {
            parts.extend(build_parts(
                &out.target,
                &source,
                &out.batch,
                &out.quarantine,
            )?);
        }
    }
    for part in parts {
        figures.parts += 1;
        figures.part_bytes += part.bytes.len() as u64;
        runtime.block_on(storage.put(&part.record.path, part.bytes))?;
    }
    Ok(())
}
