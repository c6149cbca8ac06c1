//! The deadline schedule: a min-heap of (instant, what).
//!
//! Entries are never removed early; each is re-checked against the store (or the wait lines)
//! when it fires, so a stale entry is harmless. For row expiries (locks, agents, leases) the
//! schedule keeps at most one entry per row however often the row is renewed: a firing entry that
//! finds the row renewed schedules the new instant then.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::{notes, presence, tasks, Engine, Parts, Tx};
use crate::clock::Millis;
use crate::core::types::CoreResult;

/// How often expired notes, old finished tasks and history past its retention are deleted from
/// disk. Readers already treat them as gone; this only reclaims space.
pub(super) const HOUSEKEEPING_MS: Millis = 60_000;

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

// ------------------------------------------------------------ firing them

impl Engine {
    /// Handles every deadline that is due, each in its own step. One that fails is armed
    /// again at its instant, to be retried in a later batch. False if any failed.
    pub(super) fn fire_due(&mut self) -> bool {
        let mut failed = Vec::new();
        loop {
            let now = self.now();
            let Some((at, what)) = self.deadlines.pop_due(now) else {
                break;
            };
            self.fired.push((at, what.clone()));
            let handled = {
                let what = what.clone();
                self.step(move |e| e.fire(what, now))
            };
            if !handled {
                tracing::error!(deadline = ?what, "a deadline could not be handled; will retry");
                failed.push((at, what));
            }
        }
        let all_handled = failed.is_empty();
        for (at, what) in failed {
            self.deadlines.schedule(at, what);
        }
        all_handled
    }

    fn fire(&mut self, what: Deadline, now: Millis) {
        self.note_change();
        let Parts {
            mut tx,
            locks,
            events,
            tasks,
        } = self.parts();
        let tx = &mut tx;
        // An error is already recorded in the step (`Tx::db`), which rolls it back.
        let _ = match what {
            Deadline::LockExpiry(name) => locks.expire(tx, name, now),
            Deadline::AgentLapse(agent) => presence::lapse(tx, locks, tasks, agent, now),
            Deadline::LeaseExpiry(id) => tasks.expire_lease(tx, id, now),
            Deadline::TaskReady(id) => tasks.task_ready(tx, id, now),
            Deadline::TicketWindow(id) => {
                locks.end_ticket_window(tx, id, now);
                Ok(())
            }
            Deadline::TicketGrace(id) => {
                locks.end_grace(id, now);
                Ok(())
            }
            Deadline::EventWindow(call) => {
                events.end_event_window(tx, call, false);
                Ok(())
            }
            Deadline::ClaimWindow(call) => {
                tasks.end_claim_window(tx, call, false);
                Ok(())
            }
            Deadline::Housekeeping => housekeeping(tx, now),
        };
    }
}

/// Deletes what readers already treat as gone (expired notes, old finished tasks) and history
/// past its retention, every
/// [`HOUSEKEEPING_MS`].
fn housekeeping(tx: &mut Tx, now: Millis) -> CoreResult<()> {
    notes::purge_expired(tx, now)?;
    tasks::purge_finished(tx, now)?;
    super::history::prune(tx, now)?;
    tx.schedule(now + HOUSEKEEPING_MS, Deadline::Housekeeping);
    Ok(())
}
