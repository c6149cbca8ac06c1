//! The deadline schedule: a min-heap of (instant, what).
//!
//! Entries are never removed early; each is re-checked against the store (or the wait lines)
//! when it fires, so a stale entry is harmless. For row expiries (locks, agents, leases) the
//! schedule keeps at most one entry per row however often the row is renewed: a firing entry that
//! finds the row renewed schedules the new instant then.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::clock::Millis;

/// Something to run at a moment. Stale entries are harmless: each is re-checked when it fires.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Deadline {
    LockExpiry(String),
    AgentLapse(String),
    LeaseExpiry(i64),
    /// A delayed task becomes claimable: its queue may feed a parked claimer.
    TaskReady(i64),
    TicketWindow(u64),
    TicketGrace(u64),
    EventWindow(u64),
    ClaimWindow(u64),
    Housekeeping,
}

impl Deadline {
    /// Row expiries keep one entry per row in the heap (see [`Deadlines::scheduled`]).
    fn is_row_expiry(&self) -> bool {
        matches!(
            self,
            Deadline::LockExpiry(_) | Deadline::AgentLapse(_) | Deadline::LeaseExpiry(_)
        )
    }
}

#[derive(Default)]
pub(super) struct Deadlines {
    heap: BinaryHeap<Reverse<(Millis, Deadline)>>,
    /// For row expiries (locks, agents, leases): the instant already in `heap`. Keeps the heap
    /// at one entry per row however often it is renewed; a firing entry that finds the row
    /// renewed schedules the new instant then.
    scheduled: HashMap<Deadline, Millis>,
}

impl Deadlines {
    pub(super) fn schedule(&mut self, at: Millis, what: Deadline) {
        if what.is_row_expiry() {
            match self.scheduled.get(&what) {
                // An earlier check is already due; it will reschedule to the row's expiry.
                Some(&cur) if cur <= at => return,
                _ => {
                    self.scheduled.insert(what.clone(), at);
                }
            }
        }
        self.heap.push(Reverse((at, what)));
    }

    /// The earliest instant scheduled, if any.
    pub(super) fn next_at(&self) -> Option<Millis> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Takes the earliest entry if it is due at `now`.
    pub(super) fn pop_due(&mut self, now: Millis) -> Option<(Millis, Deadline)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => {}
            _ => return None,
        }
        let Reverse((at, what)) = self.heap.pop()?;
        if self.scheduled.get(&what) == Some(&at) {
            self.scheduled.remove(&what);
        }
        Some((at, what))
    }

    /// For tests: how many entries the heap holds.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.heap.len()
    }
}
