//! The ingest path of a session: routing each message to its owned unit, the flush policies
//! (size, age, memory budget), and the flushes in flight with what they hold of the budget.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use sluice_source::SourceBatch;
use tokio::task::JoinError;

use crate::budget::{Budget, Charge};
use crate::flush::{Committed, FlushContext, FlushTasks};
use crate::unit::OwnedUnit;
use crate::WorkerError;

/// Flushes in flight at once (each sorting, encoding, uploading or waiting to commit), per core
/// (at least two); more wait. Their data also counts against the memory budget until committed,
/// and each encode holds transient copies and a compressor beyond it: more at once than cores
/// add memory, not throughput.
fn max_flushes_in_flight() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

/// What a session ingested and committed, added to the run's summary when it ends.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    pub(crate) events: u64,
    pub(crate) event_bytes: u64,
    pub(crate) rows: u64,
    pub(crate) quarantined: u64,
    pub(crate) parts: u64,
    pub(crate) part_bytes: u64,
    pub(crate) commits: u64,
}

/// The owned units and everything in memory on their behalf.
pub(crate) struct Ingest {
    /// Sorted by unit id.
    pub(crate) owned: Vec<OwnedUnit>,
    /// (topic as the reader hands it over, partition) to the index in `owned`.
    index: HashMap<(Arc<str>, i32), usize>,
    /// The unit the last message went to, tried first for the next (messages come in runs).
    last_unit: Option<(Arc<str>, i32, usize)>,
    budget: Budget,
    /// The flushes in flight; dropping them aborts them.
    flushes: FlushTasks,
    max_flushes: usize,
    ctx: FlushContext,
    pub(crate) counts: Counts,
}

impl Ingest {
    pub(crate) fn new(ctx: FlushContext, memory_budget_bytes: u64) -> Ingest {
        Ingest {
            owned: Vec::new(),
            index: HashMap::new(),
            last_unit: None,
            budget: Budget::new(memory_budget_bytes),
            flushes: FlushTasks::new(),
            max_flushes: max_flushes_in_flight(),
            ctx,
            counts: Counts::default(),
        }
    }

    pub(crate) fn ctx(&self) -> &FlushContext {
        &self.ctx
    }

    /// Bytes held against the memory budget.
    pub(crate) fn held_bytes(&self) -> u64 {
        self.budget.held()
    }

    /// Reserves memory for a merge if the budget has room now.
    pub(crate) fn reserve(&mut self, bytes: u64) -> Option<Charge> {
        self.budget.try_reserve(bytes)
    }

    /// Gives back what a merge held.
    pub(crate) fn release(&mut self, charge: Charge) {
        self.budget.release(charge);
    }

    /// Rebuilds the routing after the set of owned units changed.
    pub(crate) fn reindex(&mut self) {
        self.owned.sort_by(|a, b| a.id.cmp(&b.id));
        self.index = self
            .owned
            .iter()
            .enumerate()
            .filter(|(_, u)| !u.leaving)
            .map(|(i, u)| ((Arc::from(u.id.topic.as_str()), u.id.partition), i))
            .collect();
        self.last_unit = None;
        self.budget
            .set_buffered(self.owned.iter().map(OwnedUnit::bytes).sum());
    }

    /// Decodes a batch, from its message `from` on, into the buffers of its units, flushing
    /// whatever a policy says is due. Never waits: when a unit is full and no flush slot is
    /// free, or the memory budget is full of flushes in flight, it stops and returns the index
    /// of the first message it did not take, for the session to resume from once a flush has
    /// finished. A session must stay free to notice shutdown, membership changes and the end of
    /// its session while its flushes wait for storage.
    pub(crate) fn consume(
        &mut self,
        batch: &SourceBatch,
        from: usize,
    ) -> Result<Option<usize>, WorkerError> {
        let mut stopped = None;
        for (k, m) in batch.iter().enumerate().skip(from) {
            let Some(u) = self.unit_of(m.topic, m.partition) else {
                continue;
            };
            if !self.owned[u].wants(&m) {
                continue;
            }
            if (self.owned[u].over_size_limits() && !self.try_flush_unit(u)?) || self.must_wait() {
                stopped = Some(k);
                break;
            }
            self.counts.events += 1;
            self.counts.event_bytes += m.payload.map_or(0, |p| p.len() as u64);
            let unit = &mut self.owned[u];
            let before = unit.bytes();
            unit.push(&m);
            self.budget.add_buffered(unit.bytes() - before);
            self.ctx.failpoints.hit("mid_batch");
            let unit = &self.owned[u];
            if unit.reached_end() {
                tracing::debug!(unit = %unit.id, position = ?unit.position, "read up to the end this run was asked to reach");
            }
            if unit.reached_end() || unit.over_size_limits() {
                self.try_flush_unit(u)?;
            }
            self.relieve_memory()?;
        }
        for u in &mut self.owned {
            u.record_consumed();
        }
        Ok(stopped)
    }

    /// Memory pressure: writes out the largest buffers while flushes in flight leave room for
    /// another. What flushes in flight hold is freed only by their commits: until then the
    /// session stops reading ([`Ingest::must_wait`]), which is back-pressure on Kafka.
    fn relieve_memory(&mut self) -> Result<(), WorkerError> {
        while self.budget.is_exceeded() && self.budget.room_for_another_flush() {
            let largest = (0..self.owned.len()).max_by_key(|&i| self.owned[i].bytes());
            match largest {
                Some(i) if self.owned[i].bytes() > 0 => {
                    tracing::debug!(unit = %self.owned[i].id, bytes = self.owned[i].bytes(), "memory budget reached; flushing the largest buffer");
                    if !self.try_flush_unit(i)? {
                        break;
                    }
                }
                _ => break,
            }
        }
        Ok(())
    }

    /// Whether the session must stop reading: the budget is exceeded and flushes in flight will
    /// free memory as they commit (however long storage takes to accept them).
    pub(crate) fn must_wait(&self) -> bool {
        self.budget.is_exceeded() && !self.flushes.is_empty()
    }

    /// The index in `owned` of a message's unit; consecutive messages mostly share one.
    fn unit_of(&mut self, topic: &Arc<str>, partition: i32) -> Option<usize> {
        if let Some((t, p, i)) = &self.last_unit {
            if *p == partition && Arc::ptr_eq(t, topic) {
                return Some(*i);
            }
        }
        let i = *self.index.get(&(Arc::clone(topic), partition))?;
        self.last_unit = Some((Arc::clone(topic), partition, i));
        Some(i)
    }

    /// Starts a flush of one unit's buffers, first waiting for a slot if too many are in
    /// flight (handover and draining, which wait for the commit anyway).
    pub(crate) async fn flush_unit(&mut self, i: usize) -> Result<(), WorkerError> {
        while self.owned[i].buffered.is_some() && self.flushes.len() >= self.max_flushes {
            self.wait_for_a_flush().await?;
        }
        self.try_flush_unit(i).map(drop)
    }

    /// Starts a flush of one unit's buffers if a slot is free; whether one started.
    fn try_flush_unit(&mut self, i: usize) -> Result<bool, WorkerError> {
        if self.owned[i].buffered.is_none() || self.flushes.len() >= self.max_flushes {
            return Ok(false);
        }
        let taken = self.owned[i].bytes();
        let charge = self.budget.start_flush(taken);
        self.owned[i].start_flush(&self.ctx, &mut self.flushes, charge)?;
        tracing::debug!(unit = %self.owned[i].id, bytes = taken, in_flight = self.flushes.len(), "flush started");
        Ok(true)
    }

    /// Starts a flush of every unit with something buffered, while slots are free.
    pub(crate) fn flush_all(&mut self) -> Result<(), WorkerError> {
        for i in 0..self.owned.len() {
            if self.owned[i].buffered.is_some() && !self.try_flush_unit(i)? {
                break;
            }
        }
        Ok(())
    }

    /// Starts the flushes a policy asks for (the buffer's size or age, the end reached, the
    /// memory budget) while slots are free: on every tick and whenever a flush finishes.
    pub(crate) fn flush_due(&mut self) -> Result<(), WorkerError> {
        let now = Instant::now();
        for i in 0..self.owned.len() {
            let u = &self.owned[i];
            if u.buffered.is_some()
                && (u.leaving || u.reached_end() || u.over_size_limits() || u.over_age_limit(now))
                && !self.try_flush_unit(i)?
            {
                break;
            }
        }
        self.relieve_memory()
    }

    /// Resolves with the next flush task to finish; pending while none runs.
    pub(crate) async fn next_finished(
        &mut self,
    ) -> Result<Result<Committed, WorkerError>, JoinError> {
        match self.flushes.join_next().await {
            Some(done) => done,
            None => std::future::pending().await,
        }
    }

    async fn wait_for_a_flush(&mut self) -> Result<(), WorkerError> {
        match self.flushes.join_next().await {
            Some(done) => self.complete(done),
            None => Ok(()),
        }
    }

    /// Books a finished flush task: a commit, or the error that ends the session.
    pub(crate) fn complete(
        &mut self,
        done: Result<Result<Committed, WorkerError>, JoinError>,
    ) -> Result<(), WorkerError> {
        let c = done.map_err(|source| WorkerError::Task {
            task: "a flush",
            source,
        })??;
        if let Some(charge) = self
            .owned
            .iter_mut()
            .find(|u| u.id == c.unit)
            .and_then(OwnedUnit::finish_flush)
        {
            self.budget.release(charge);
        }
        self.counts.rows += c.rows;
        self.counts.quarantined += c.quarantined;
        self.counts.parts += c.parts;
        self.counts.part_bytes += c.part_bytes;
        self.counts.commits += 1;
        Ok(())
    }

    /// Waits until the flushes in flight of unit `i` (all units: `None`) have committed.
    pub(crate) async fn settle(&mut self, i: Option<usize>) -> Result<(), WorkerError> {
        loop {
            let pending = match i {
                Some(i) => !self.owned[i].in_flight.is_empty(),
                None => !self.flushes.is_empty(),
            };
            if !pending {
                return Ok(());
            }
            self.wait_for_a_flush().await?;
        }
    }

    /// Gives unit `i` up: it is read no more (the session restarts the reader), and what it
    /// buffered starts flushing now if a slot is free, or later from [`Ingest::flush_due`].
    /// Messages of it still in the batch being consumed are dropped: its next owner reads them
    /// again from the offset this worker commits last.
    pub(crate) fn give_up(&mut self, i: usize) -> Result<(), WorkerError> {
        self.owned[i].leaving = true;
        self.reindex();
        self.try_flush_unit(i).map(drop)
    }

    /// Takes back a unit given up whose lease is still held, because it is assigned here again.
    pub(crate) fn keep(&mut self, i: usize) {
        self.owned[i].leaving = false;
        self.reindex();
    }

    /// Removes and returns the units given up whose last flush has committed: their leases may
    /// now be released.
    pub(crate) fn take_left(&mut self) -> Vec<OwnedUnit> {
        if !self.owned.iter().any(|u| u.leaving && u.settled()) {
            return Vec::new();
        }
        let (left, kept) = std::mem::take(&mut self.owned)
            .into_iter()
            .partition(|u| u.leaving && u.settled());
        self.owned = kept;
        self.reindex();
        left
    }

    /// Stops whatever of unit `i` did not commit, freeing what it held.
    pub(crate) fn abort(&mut self, i: usize) {
        for charge in self.owned[i].abort_flushes() {
            self.budget.release(charge);
        }
    }
}
