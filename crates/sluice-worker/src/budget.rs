//! The memory budget: every byte a session holds against `worker.memory_budget_bytes`, in one
//! place.
//!
//! Two things count: events buffered (their raw size, as decoded into the buffers), and flushes
//! in flight until they commit, charged at [`IN_FLIGHT_CHARGE`] times the raw size they took.
//! A flush's [`Charge`] is handed out when it starts and handed back exactly once, when it
//! commits or is aborted.

/// What a flush in flight is counted for against the budget, per raw byte of the events it took
/// from the buffers: besides its decoded columns it holds their sorted copy, the encoder's pages
/// and compressor, and the encoded parts until they are uploaded. Counting only the raw size let
/// peak RSS exceed the budget by up to 100 MiB under backpressure (docs/performance.md).
pub(crate) const IN_FLIGHT_CHARGE: u64 = 2;

/// What one flush in flight holds against the budget. Not `Clone`: it is given back once.
#[derive(Debug)]
#[must_use = "a charge must be given back to the budget"]
pub(crate) struct Charge(u64);

#[derive(Debug)]
pub(crate) struct Budget {
    limit: u64,
    buffered: u64,
    in_flight: u64,
}

impl Budget {
    pub(crate) fn new(limit: u64) -> Budget {
        Budget {
            limit,
            buffered: 0,
            in_flight: 0,
        }
    }

    /// Events of `bytes` raw bytes were buffered.
    pub(crate) fn add_buffered(&mut self, bytes: u64) {
        self.buffered += bytes;
    }

    /// Sets what is buffered after the set of buffers changed (units taken or handed over).
    pub(crate) fn set_buffered(&mut self, bytes: u64) {
        self.buffered = bytes;
    }

    /// A flush took `taken` raw bytes out of the buffers: they are now held in flight.
    pub(crate) fn start_flush(&mut self, taken: u64) -> Charge {
        self.buffered = self.buffered.saturating_sub(taken);
        let charge = taken * IN_FLIGHT_CHARGE;
        self.in_flight += charge;
        Charge(charge)
    }

    /// Reserves `bytes` for work outside the flushes (a merge) if the budget has room for it
    /// now; the charge is given back with [`Budget::release`] when the work ends.
    pub(crate) fn try_reserve(&mut self, bytes: u64) -> Option<Charge> {
        if self.held() + bytes > self.limit {
            return None;
        }
        self.in_flight += bytes;
        Some(Charge(bytes))
    }

    /// A flush committed or was aborted (or a merge ended): what it held is free.
    pub(crate) fn release(&mut self, charge: Charge) {
        self.in_flight = self.in_flight.saturating_sub(charge.0);
    }

    /// Everything held: buffered and in flight.
    pub(crate) fn held(&self) -> u64 {
        self.buffered + self.in_flight
    }

    pub(crate) fn is_exceeded(&self) -> bool {
        self.held() > self.limit
    }

    /// Whether flushes in flight alone hold at most half the budget: then writing out another
    /// buffer still frees memory soon; above it, only waiting for commits does.
    pub(crate) fn room_for_another_flush(&self) -> bool {
        self.in_flight <= self.limit / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_moves_its_bytes_in_flight_at_the_charge_and_gives_them_back() {
        let mut b = Budget::new(1_000);
        b.add_buffered(300);
        assert_eq!(b.held(), 300);
        let charge = b.start_flush(200);
        assert_eq!(b.held(), 100 + 200 * IN_FLIGHT_CHARGE);
        assert!(b.room_for_another_flush());
        b.add_buffered(700);
        assert!(b.is_exceeded());
        b.release(charge);
        assert_eq!(b.held(), 800);
        assert!(!b.is_exceeded());
    }
}
